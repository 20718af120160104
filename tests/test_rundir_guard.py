"""A run dir that cannot be corrupted (issue 16): one writer at a time, only in folders mt made,
no output option that overwrites an input or a run's records, nothing half-written left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import error_line, run_mt

HOLDER = """
import sys
from pathlib import Path
from mt.lock import hold
with hold(Path(sys.argv[1]), "mt train --config holder.yaml"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def holder(toy):
    """Another process holding the lock of the toy run dir until the test ends."""
    lock = toy.run_dir / ".mt-lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout.readline().strip() == "held"
    yield process
    process.stdin.close()
    process.wait()


def test_a_second_train_on_a_held_run_dir_is_refused_naming_the_holder(toy, holder):
    result = toy.mt("train")
    assert result.returncode == 1
    line = error_line(result)
    assert f"pid {holder.pid}" in line and "`mt train --config holder.yaml`" in line
    assert not (toy.run_dir / "manifest.json").exists()  # refused before preparing anything


def test_prepare_on_a_held_run_dir_is_refused_too(toy, holder):
    result = toy.mt("prepare")
    assert result.returncode == 1 and f"pid {holder.pid}" in error_line(result)
