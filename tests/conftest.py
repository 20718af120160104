"""Fixtures shared by several test modules."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


# read at start-up: some tests clear $MT_DATA before this fixture runs
MULTI30K_DIR = Path(os.environ.get("MT_DATA") or Path(__file__).resolve().parents[2] / "shared/data/multi30k")


@pytest.fixture
def multi30k_dir() -> Path:
    """The Multi30k task-1 files where the project keeps a copy ($MT_DATA, else ../shared beside
    the checkout); skips without them."""
    path = MULTI30K_DIR
    if not (path / "train.de.gz").is_file():
        pytest.skip(f"Multi30k files not found in {path}")
    return path


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


def run_mt(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`python -m mt ARGS` in a subprocess, as a user runs it; output captured as text."""
    result = subprocess.run([sys.executable, "-m", "mt", *args], capture_output=True, text=True, **kwargs)
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
