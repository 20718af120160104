"""A run dir's records changed by hand (issue 16): an id cache holding ids beyond the vocabulary
(a foreign or damaged cache) and a manifest.json edited into another shape are one-line errors
naming the file (and key), never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import error_line, run_mt, toy_config
from mt.errors import REDO_PREPARE, MtError


@pytest.fixture
def trained(toy_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the session's trained toy run (800 steps) and a config for it."""
    run_dir = tmp_path / "run"
    shutil.copytree(toy_run / "run", run_dir, ignore=shutil.ignore_patterns(".mt-lock"))
    return run_dir, toy_config(tmp_path / "toy.yaml", toy_run / "data", run_dir)


def set_ids(tokens: Path, value: int, where=slice(None)) -> np.ndarray:
    """Overwrite ids in a cache's tokens file in place; returns the ids it held."""
    ids = np.memmap(tokens, dtype="<i4", mode="r+")
    before = np.array(ids)
    ids[where] = value
    ids.flush()
    return before


def test_a_cache_with_ids_beyond_the_vocabulary_is_an_error_naming_the_file(trained):
    run_dir, config = trained
    train_tokens, dev_tokens = run_dir / "cache/train/src.tokens", run_dir / "cache/dev/trg.tokens"
    original = set_ids(train_tokens, 10_000)  # the vocabulary has 80 ids
    result = run_mt("train", "--config", str(config), "--set", "training.max_steps=810", check=False)
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"{train_tokens}: token id 10000 is outside the vocabulary (ids 0-79)")
    assert f"remove {run_dir / 'cache/train'} and run mt prepare" in line
    train_tokens.write_bytes(original.tobytes())  # the training cache as it was
    set_ids(dev_tokens, -1, 0)  # the dev cache is read whole before training starts
    result = run_mt("train", "--config", str(config), "--set", "training.max_steps=810", check=False)
    assert result.returncode == 1
    assert error_line(result).startswith(f"{dev_tokens}: token id -1 is outside the vocabulary")
    assert "training on" not in result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))[-1] == "step_0000800.pt"


def test_a_manifest_of_another_shape_is_an_error_naming_the_file_in_every_command_reading_it(trained):
    run_dir, config = trained
    manifest = run_dir / "manifest.json"
    good = json.loads(manifest.read_text(encoding="utf-8"))
    manifest.write_text(json.dumps([good]), encoding="utf-8")
    for command in (["prepare", "--config", str(config)], ["train", "--config", str(config)],
                    ["eval", "--run-dir", str(run_dir)]):
        result = run_mt(*command, check=False)
        assert result.returncode == 1
        assert error_line(result) == f"{manifest}: expected an object, got a list; {REDO_PREPARE}"
    translated = run_mt("translate", "--run-dir", str(run_dir), stdin="a b c\n")  # reads no manifest
    assert len(translated.stdout.splitlines()) == 1


def edited(good: dict, key: str, value) -> dict:
    """`good` with the dotted `key` set to `value` (removed when value is None)."""
    copy = json.loads(json.dumps(good))
    *parents, last = key.split(".")
    parent = copy
    for name in parents:
        parent = parent[name]
    if value is None:
        del parent[last]
    else:
        parent[last] = value
    return copy


@pytest.mark.parametrize("key, value, message", [
    ("files", None, "missing key 'files'"),
    ("files.dev.src.path", 3, "key 'files.dev.src.path': expected a string, got a number"),
    ("files.train.trg", "x", "key 'files.train.trg': expected an object, got a string"),
    ("files.test", ["x"], "key 'files.test': expected an object, got a list"),
    ("tokenizer.models", ["joint.model"], "key 'tokenizer.models': expected an object, got a list"),
])
def test_a_manifest_key_of_another_shape_is_named(trained, key, value, message):
    """What `mt eval` and the end of `mt train` read (the CLI prints the MtError as one line)."""
    from mt import rundir

    run_dir, _ = trained
    manifest = run_dir / "manifest.json"
    manifest.write_text(json.dumps(edited(json.loads(manifest.read_text(encoding="utf-8")), key, value)),
                        encoding="utf-8")
    with pytest.raises(MtError) as error:
        rundir.recorded_files(run_dir)
    assert str(error.value) == f"{manifest}: {message}; {REDO_PREPARE}"


def test_a_files_record_of_another_shape_is_rewritten_by_prepare(trained):
    """The record of where the data lies is prepare's to rewrite (as when the data moved)."""
    from mt import rundir

    run_dir, config = trained
    manifest = run_dir / "manifest.json"
    good = json.loads(manifest.read_text(encoding="utf-8"))
    manifest.write_text(json.dumps(edited(good, "files", [])), encoding="utf-8")
    assert "updated" in run_mt("prepare", "--config", str(config)).stderr
    assert rundir.recorded_files(run_dir).dev.src.endswith("dev.src")
