"""A run dir made by an older mt (before the module reorganisation of issue 15) still loads and
translates identically: tests/fixtures/run_before_refactor holds its config, manifest, tokenizer
and best.pt (a 32-wide toy model trained 400 steps), with the outputs that code printed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_before_refactor"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)  # a copy: reading a run must not need to write into the repo
    return run_dir


def translate(run_dir: Path, *options: str) -> list[str]:
    stdin = (FIXTURE / "input.txt").read_text(encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mt", "translate", "--run-dir", str(run_dir), *options],
                            input=stdin, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_old_run_translates_greedy_exactly_as_before(old_run):
    expected = (FIXTURE / "expected.greedy.txt").read_text(encoding="utf-8").splitlines()
    assert translate(old_run) == expected


def test_old_run_gives_the_same_nbest_lists_scores_and_alignments(old_run):
    expected = (FIXTURE / "expected.beam5.nbest2.txt").read_text(encoding="utf-8").splitlines()
    got = translate(old_run, "--beam", "5", "--nbest", "2", "--alignments")
    assert len(got) == len(expected)
    for line, old in zip(got, expected):
        index, text, score, links = line.split(" ||| ")
        old_index, old_text, old_score, old_links = old.split(" ||| ")
        assert (index, text, links) == (old_index, old_text, old_links)
        assert float(score) == pytest.approx(float(old_score), abs=1e-3)
