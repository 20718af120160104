"""The code's shape (docs/architecture.md): module and function sizes, imports pointing one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mt"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    """The mt modules a module imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mt"):
            if node.module == "mt":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("mt."))
    return found


# Each module's layer, bottom (0) up: a module imports only from layers below its own.
# A new module gets a row here and in docs/architecture.md.
LAYERS = {
    "errors": 0, "exported_translate": 0,
    "files": 1, "lock": 1, "yaml_bounds": 1, "progress": 1, "signals": 1, "workers": 1,
    "config": 2, "idcache": 2,
    "data": 3, "tokenizer": 3, "device": 3, "model": 3,
    "rundir": 4, "batching": 4, "search": 4, "distributed": 4, "blocks": 4,
    "checkpoint": 5, "align": 5, "batch_plan": 5, "loss": 5, "meter": 5, "prepare": 5, "outputs": 5,
    "translate": 6, "run": 6, "export": 6, "options": 6,
    "evaluate": 7, "plot": 7,
    "train": 8, "serve_worker": 8,
    "serve": 9,
    "cli": 10,
    "__main__": 11, "__init__": 11,
}


def test_imports_point_down():
    for name, tree in modules().items():
        assert name in LAYERS, f"mt/{name}.py has no layer: add it to LAYERS and to docs/architecture.md"
        upward = [other for other in imported(tree) - {name} if LAYERS[other] >= LAYERS[name]]
        assert not upward, f"mt/{name}.py imports {upward}, which are not below it"


def test_no_module_is_over_400_lines():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_is_over_50_lines():
    long = {f"{name}.{node.name}": node.end_lineno - node.lineno + 1
            for name, tree in modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long, long


def test_imports_form_no_cycle():
    graph = {name: imported(tree) - {name} for name, tree in modules().items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        for other in graph.get(name, ()):
            visit(other, path + [name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_only_main_imports_cli_and_only_faces_print_or_exit():
    trees = modules()
    assert [name for name, tree in trees.items() if "cli" in imported(tree)] == ["__main__"]
    faces = {"cli", "__main__", "exported_translate"}  # the last is a script mt export ships, not used by mt
    for name, tree in trees.items():
        if name in faces:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"mt/{name}.py prints (only cli.py does)"
            if isinstance(node, ast.Name):
                assert node.id != "SystemExit", f"mt/{name}.py exits (only cli.py does)"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("addHandler", "basicConfig"), f"mt/{name}.py sets up logging handlers"


def test_config_files_and_cli_import_no_torch():
    """`mt --help` and config errors stay instant."""
    for name in ("config", "errors", "files", "options", "cli"):
        tree = modules()[name]
        names = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in node.names} | {node.module for node in ast.walk(tree)
                                              if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(n.split(".")[0] == "torch" for n in names if n), name


def test_the_names_the_layers_table_gives_are_in_their_modules():
    """docs/architecture.md's row for a module names functions and classes as `name`: each must
    still be there (a renamed or removed one leaves the table describing code that is gone)."""
    table = (PACKAGE.parent / "docs/architecture.md").read_text(encoding="utf-8")
    gone = []
    for module, description in re.findall(r"^\| *\d+ *\| *`(\w+)\.py` *\|(.*)\|$", table, flags=re.MULTILINE):
        source = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
        for name in re.findall(r"`([A-Za-z_][\w.]*)`", description):
            if not re.search(rf"\b{re.escape(name.split('.')[-1])}\b", source):
                gone.append(f"{module}.py: {name}")
    assert not gone, f"docs/architecture.md names what its module no longer has: {gone}"
