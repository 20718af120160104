"""`mt export`'s folder and the translate.py it ships, on what users get wrong or do oddly: lines
holding form feeds or U+2028, invalid UTF-8, bad options, a umask, a symlinked --output.

The exported model is the session's trained toy model, exported once for the module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ctranslate2 = pytest.importorskip("ctranslate2")

from conftest import error_line, run_mt  # noqa: E402
from mt.errors import MtError  # noqa: E402
from mt.export import MARKER, export_run  # noqa: E402

FIRST_ANSWER_WAIT_S = 600  # only a guard against a hang: a translate.py that waits for EOF never answers


@pytest.fixture(scope="module")
def exported(toy_run, tmp_path_factory) -> Path:
    return export_run(toy_run / "run", tmp_path_factory.mktemp("hardening") / "exported")


@pytest.fixture(scope="module")
def sources(toy_run) -> list[str]:
    return (toy_run / "data/test.src").read_text(encoding="utf-8").splitlines()[:4]


def translate_py(folder: Path, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    """The exported translate.py run as a user runs it; stdout and stderr as text."""
    result = subprocess.run([sys.executable, str(folder / "translate.py"), *args], input=stdin, capture_output=True)
    result.stdout, result.stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    return result


def exported_model(folder: Path):
    spec = importlib.util.spec_from_file_location(f"hardening_{abs(hash(folder))}", folder / "translate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.ExportedModel(folder)


def test_translate_py_gives_one_line_per_input_line_whatever_characters_a_line_holds(exported, sources):
    a, b, c, d = sources
    lines = [f"{a}\x0c{b}", f"{b}\u2028{c}", f"{c}\x1e{d}\x85{a}", f"{d}\x1c{a}\x1d{b}\u2029{c}", a, b]
    stdin = "\n".join(lines[:4]).encode() + f"\r\n{lines[4]}\n{lines[5]}".encode()  # a CRLF, no final newline
    result = translate_py(exported, stdin=stdin)
    assert result.returncode == 0, result.stderr
    got = result.stdout.split("\n")
    assert got.pop() == "" and len(got) == len(lines)
    model = exported_model(exported)
    assert got == [model.translate([line])[0].text for line in lines]  # each answer beside its own line


def test_translate_py_answers_a_line_before_the_input_ends(exported, sources):
    process = subprocess.Popen([sys.executable, str(exported / "translate.py")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        process.stdin.write(f"{sources[0]}\n".encode())
        process.stdin.flush()
        ready = select.select([process.stdout], [], [], FIRST_ANSWER_WAIT_S)[0]
        assert ready, "no answer to the first line while stdin stays open"
        first = process.stdout.readline().decode()
        process.stdin.write(f"{sources[1]}\n".encode())
        process.stdin.close()
        rest = process.stdout.read().decode()
    finally:
        process.kill()  # nothing left to do if it has ended; a hang ends here
        process.wait()
    model = exported_model(exported)
    assert first + rest == "".join(r.text + "\n" for r in model.translate(sources[:2]))


def test_invalid_utf8_writes_the_lines_before_it_then_names_the_line(exported, sources):
    stdin = f"{sources[0]}\n".encode() + b"lodu \xff\xfe\n" + f"{sources[1]}\n".encode()
    result = translate_py(exported, stdin=stdin)
    assert result.returncode == 1
    assert error_line(result).startswith("stdin:2: invalid UTF-8")
    assert result.stdout == exported_model(exported).translate([sources[0]])[0].text + "\n"


@pytest.mark.parametrize("args, named", [
    (["--beam", "-1"], "--beam -1"),
    (["--beam", "0"], "--beam 0"),
    (["--compute-type", "bogus"], "--compute-type bogus"),
    (["--device", "tpu"], "--device tpu"),
    (["--device", "cuda"], "--device cuda"),
])
def test_bad_options_are_one_line_errors_naming_the_option(exported, sources, args, named):
    if args == ["--device", "cuda"] and ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a GPU: --device cuda is no mistake here")
    result = translate_py(exported, *args, stdin=f"{sources[0]}\n".encode())
    assert result.returncode != 0 and result.stdout == ""
    assert error_line(result).startswith(named)


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder.parent)): stat.S_IMODE(p.stat().st_mode)
            for p in [folder, *folder.rglob("*")]}


def test_the_export_folder_and_its_files_get_the_modes_the_umask_gives(toy_run, tmp_path):
    old = os.umask(0o022)
    try:
        folder = export_run(toy_run / "run", tmp_path / "exported")
    finally:
        os.umask(old)
    want = {name: 0o755 if (tmp_path / name).is_dir() else 0o644 for name in modes(folder)}
    assert modes(folder) == want  # readable by a service account or a colleague, as other folders are


def test_force_through_a_symlink_replaces_the_folder_it_points_at_and_keeps_the_link(toy_run, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    export_run(toy_run / "run", real)
    link.symlink_to("real")
    with pytest.raises(MtError, match=f"--output {link} \\(a symlink to real\\): already exists"):
        export_run(toy_run / "run", link)
    assert export_run(toy_run / "run", link, quantization="int8", force=True) == link
    assert link.is_symlink() and os.readlink(link) == "real"
    assert json.loads((real / MARKER).read_text())["quantization"] == "int8"  # the export it points at is new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .old-* or temporary folder left


def test_a_symlink_to_something_not_exported_is_kept_even_with_force(toy_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(MtError, match="--output .*link .*not a folder made by mt export"):
        export_run(toy_run / "run", tmp_path / "link", force=True)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_dangling_symlink_output_is_refused_naming_the_option_and_the_path(toy_run, tmp_path):
    (tmp_path / "dangling").symlink_to("nowhere")
    result = run_mt("export", "--run-dir", str(toy_run / "run"), "--output", str(tmp_path / "dangling"),
                    check=False)
    assert result.returncode == 1
    assert error_line(result) == f"--output {tmp_path / 'dangling'}: a symlink to nowhere, which does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]
