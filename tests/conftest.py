"""Fixtures shared by several test modules."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def _multi30k_places() -> list[Path]:
    """$MT_DATA, then where the project keeps a copy (../shared/data/multi30k); read when the
    tests are collected, before any test's monkeypatch removes MT_DATA."""
    places = [Path(os.environ["MT_DATA"])] if os.environ.get("MT_DATA") else []
    return places + [Path(__file__).resolve().parents[2] / "shared/data/multi30k"]


MULTI30K_PLACES = _multi30k_places()


@pytest.fixture
def multi30k_dir() -> Path:
    """The Multi30k task-1 files (*.de.gz, *.en.gz); skips without them."""
    for path in MULTI30K_PLACES:
        if (path / "train.de.gz").is_file():
            return path
    pytest.skip(f"Multi30k files not found in {' or '.join(map(str, MULTI30K_PLACES))}")


@pytest.fixture(scope="session")
def toy_pairs() -> list[tuple[str, str]]:
    """600 distinct German-English sentence pairs built from a few phrases; enough to train a
    small SentencePiece model in well under a second."""
    subjects = [("Der Hund", "The dog"), ("Die Katze", "The cat"), ("Ein Mann", "A man"),
                ("Eine Frau", "A woman"), ("Das Kind", "The child"), ("Ein Mädchen", "A girl")]
    verbs = [("sieht", "sees"), ("füttert", "feeds"), ("sucht", "looks for"), ("mag", "likes"), ("trägt", "carries")]
    objects = [("einen Ball", "a ball"), ("das Boot", "the boat"), ("eine Blume", "a flower"),
               ("den Schuh", "the shoe"), ("ein Buch", "a book")]
    places = [(" im Park", " in the park"), (" am Strand", " on the beach"), (" zu Hause", " at home"), ("", "")]
    return [(f"{s[0]} {v[0]} {o[0]}{p[0]}.", f"{s[1]} {v[1]} {o[1]}{p[1]}.")
            for s, v, o, p in itertools.product(subjects, verbs, objects, places)]


ROOT = Path(__file__).resolve().parents[1]


def run_mt(*args: str, check: bool = True, stdin: str | None = None, env: dict[str, str] | None = None,
           **kwargs) -> subprocess.CompletedProcess:
    """`python -m mt ARGS` in a subprocess, as a user runs it; output captured as text. `env`
    adds to the environment (without MT_VERBOSE, so messages look as users see them); no time
    limit, as a busy machine may be slow."""
    environ = {k: v for k, v in os.environ.items() if k != "MT_VERBOSE"}
    if stdin is not None:
        kwargs["input"] = stdin
    result = subprocess.run([sys.executable, "-m", "mt", *args], capture_output=True, text=True,
                            env={**environ, **(env or {})}, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"mt {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def make_toy_data(out: Path, task: str = "map", **sizes: int) -> Path:
    options = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
    subprocess.run([sys.executable, str(ROOT / "scripts/make_toy_task.py"), "--out", str(out), "--task", task,
                    *options], check=True, capture_output=True)
    return out


def toy_config(path: Path, data: Path, run_dir: Path, **overrides) -> Path:
    """configs/toy.yaml with its data and run_dir pointed at `data` and `run_dir`."""
    cfg = yaml.safe_load((ROOT / "configs/toy.yaml").read_text())
    cfg["run_dir"] = str(run_dir)
    for split in ("train", "dev"):
        cfg["data"][split] = {"src": str(data / f"{split}.src"), "trg": str(data / f"{split}.trg")}
    cfg["data"]["test"] = {"toy_test": {"src": str(data / "test.src"), "trg": str(data / "test.trg")}}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """A run dir trained with configs/toy.yaml, unchanged, on the map task: the model users get."""
    base = tmp_path_factory.mktemp("toy_run")
    data = make_toy_data(base / "data")
    config = toy_config(base / "toy.yaml", data, base / "run")
    run_mt("train", "--config", str(config))
    return base


# ---------------------------------------------------------------------------------------------
# A toy config for prepare and config tests
# ---------------------------------------------------------------------------------------------

# Line numbers below refer to this layout: keep it in step with the tests that name lines.
CONFIG = """\
run_dir: {run_dir}
data:
  train: {{src: {train_src}, trg: {train_trg}}}
  dev: {{src: {dev_src}, trg: {dev_trg}}}
tokenizer:
  vocab_size: 60
training:
  lr: 5e-4
"""


@dataclass
class Toy:
    """A toy run: its config file, run directory and data files (500 train pairs, 100 dev)."""

    folder: Path
    config: Path
    run_dir: Path
    train_src: Path
    train_trg: Path
    dev_src: Path
    dev_trg: Path

    def prepare(self, *overrides: str, force: bool = False):
        from mt.config import load_config
        from mt.prepare import prepare

        return prepare(load_config(self.config, list(overrides)), force=force)

    def mt(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_mt(*args, "--config", str(self.config), check=False, cwd=self.folder, env=env)

    def write_config(self, text: str) -> Path:
        self.config.write_text(text, encoding="utf-8")
        return self.config


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def toy(tmp_path, toy_pairs) -> Toy:
    files = {}
    for split, pairs in (("train", toy_pairs[:500]), ("dev", toy_pairs[500:])):
        files[f"{split}_src"] = write_lines(tmp_path / f"{split}.de", [src for src, _ in pairs])
        files[f"{split}_trg"] = write_lines(tmp_path / f"{split}.en", [trg for _, trg in pairs])
    for path in files.values():  # made an hour ago, as a user's data is: prepare records the sum
        os.utime(path, ns=(time.time_ns() - 3600 * 10**9,) * 2)  # of a file only once its mtime has settled
    run_dir = tmp_path / "run"
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG.format(run_dir=run_dir, **files), encoding="utf-8")
    return Toy(tmp_path, config, run_dir, **files)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line a failed command prints, after checking it printed no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last.removeprefix("error: ")
