"""`torchrun ... -m mt train`: two CPU processes (gloo) train like one process with update_freq 2;
a run resumed by another number of processes goes on from the same place in the data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_toy_data, run_mt, toy_config
from mt.checkpoint import load_checkpoint

SMALL = {"model__d_model": 32, "model__heads": 2, "model__encoder_layers": 1, "model__decoder_layers": 1,
         "model__ff_dim": 64, "model__dropout": 0.0,  # each rank draws its own dropout masks
         "training__lr": 1e-4, "training__validate_every": 5, "training__save_every": 5,
         "training__log_every": 5, "training__keep_checkpoints": 10}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
STEP_10 = "checkpoints/step_0000010.pt"
# the same batches in another order of summation differ by ~2e-7; resuming from the wrong place
# in the data (as before re-splitting) by ~2e-5
TIGHT = 2e-6


def torchrun(config: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([*TORCHRUN, "-m", "mt", "train", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def max_difference(a: Path, b: Path) -> float:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def from_step_5(trained: Path, copy: Path) -> Path:
    """A copy of a ten-step run without its step-10 checkpoint: training it again resumes at step 5."""
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns(".mt-lock"))
    (copy / STEP_10).unlink()
    return copy


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("ddp") / "data", train=600, dev=40, test=20)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data) -> Path:
    """Ten steps under torchrun with two processes, a checkpoint every five; its run dir."""
    folder = tmp_path_factory.mktemp("two")
    torchrun(toy_config(folder / "two.yaml", data, folder / "run", training__max_steps=10, **SMALL))
    return folder / "run"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data) -> Path:
    """The same ten steps in one process with update_freq 2; its run dir."""
    folder = tmp_path_factory.mktemp("one")
    run_mt("train", "--config", str(toy_config(folder / "one.yaml", data, folder / "run", training__max_steps=10,
                                               training__update_freq=2, **SMALL)))
    return folder / "run"


def test_two_processes_match_one_process_over_the_same_batches(two_processes, one_process):
    """Rank r takes batches r, r+2, ... of the shared order; one process with update_freq 2 takes
    the same pairs of batches in each update, so the parameters agree."""
    assert "2 processes" in (two_processes / "train.log").read_text(encoding="utf-8")
    assert max_difference(one_process / STEP_10, two_processes / STEP_10) <= 1e-5
    # rank 0 alone writes: one set of checkpoints, each metrics row once
    names = sorted(p.name for p in (two_processes / "checkpoints").iterdir())
    assert names == ["best.pt", "step_0000005.pt", "step_0000010.pt"]
    steps = [(row["step"], "loss" in row) for row in map(json.loads, (two_processes / "metrics.jsonl").open())]
    assert len(steps) == len(set(steps))


def test_resume_under_two_processes_continues_exactly(tmp_path, data, two_processes):
    run_dir = from_step_5(two_processes, tmp_path / "run")
    resumed = torchrun(toy_config(tmp_path / "b.yaml", data, run_dir, training__max_steps=10, **SMALL))
    assert "resuming" in resumed.stderr
    assert max_difference(two_processes / STEP_10, run_dir / STEP_10) <= 1e-6


def test_a_run_of_two_processes_resumed_by_one_goes_on_from_the_same_batches(tmp_path, data, two_processes):
    """The position saved is each rank's count of batches; one process takes twice as many
    (update_freq 2 keeps the updates the same), so the run ends where two processes end it."""
    run_dir = from_step_5(two_processes, tmp_path / "run")
    result = run_mt("train", "--config", str(toy_config(tmp_path / "one.yaml", data, run_dir, training__max_steps=10,
                                                        training__update_freq=2, **SMALL)))
    assert max_difference(two_processes / STEP_10, run_dir / STEP_10) <= TIGHT
    assert "trained by 2 process(es), now 1" in result.stderr


def test_a_run_of_one_process_resumed_by_two_goes_on_from_the_same_batches(tmp_path, data, one_process):
    run_dir = from_step_5(one_process, tmp_path / "run")
    result = torchrun(toy_config(tmp_path / "two.yaml", data, run_dir, training__max_steps=10, **SMALL))
    assert max_difference(one_process / STEP_10, run_dir / STEP_10) <= TIGHT
    assert "trained by 1 process(es), now 2" in result.stderr


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it: torchrun starts each rank in a session of
    its own, so killing torchrun's process group would leave the ranks spinning (Linux /proc)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                kill_tree(int(child))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


HANG_S = 600  # a safety kill only: the command fails in well under a minute; a hang must fail, not wait forever


def test_fewer_batches_than_processes_is_an_error_on_every_rank_not_a_hang(tmp_path, data):
    """One batch for two processes: each rank would wait for a batch of its own forever."""
    config = toy_config(tmp_path / "big.yaml", data, tmp_path / "run", training__batch_tokens=10**6, **SMALL)
    process = subprocess.Popen([*TORCHRUN, "-m", "mt", "train", "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.communicate()
        pytest.fail(f"torchrun with fewer batches than processes still running after {HANG_S} s: a hang")
    assert process.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, stderr[-3000:]  # one line from each rank
    assert "makes 1 batch" in errors[0] and "2 processes" in errors[0]
    assert "fewer processes" in errors[0] and "training.batch_tokens" in errors[0]
    assert not (tmp_path / "run/checkpoints").exists()


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").glob("*")
            for child in (task / "children").read_text().split()]


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker of this rank (Linux /proc)."""
    for pid in children(torchrun_pid):
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in variables:
            return pid
    raise AssertionError(f"no rank {rank} among torchrun's children")


def test_a_signal_that_reaches_one_process_stops_every_process_at_the_same_step(tmp_path, data):
    """torchrun forwards a scheduler's SIGTERM to every rank, but not at the same instant: here it
    reaches rank 1 alone. Every rank stops after the same step, which is saved; before, rank 1
    went into the save's collective while rank 0 went on into the next step's."""
    settings = {**SMALL, "training__save_every": 10**6, "training__validate_every": 10**6}
    config = toy_config(tmp_path / "long.yaml", data, tmp_path / "run", training__max_steps=10**6, **settings)
    process = subprocess.Popen([*TORCHRUN, "-m", "mt", "train", "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while not (tmp_path / "run/metrics.jsonl").exists() and process.poll() is None:  # a few steps done
            time.sleep(0.2)
        os.kill(rank_pid(process.pid, 1), signal.SIGTERM)
        _, stderr = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.communicate()
        pytest.fail(f"torchrun still running {HANG_S} s after SIGTERM reached rank 1: a hang")
    assert "SIGTERM on another process: stopping here too, then saving" in stderr, stderr[-3000:]
    saved = list((tmp_path / "run/checkpoints").glob("step_*.pt"))
    assert len(saved) == 1, stderr[-3000:]
    step = load_checkpoint(saved[0])["state"]["step"]
    assert 1 <= step < 10**6  # metrics.jsonl has its first row at step 1
    assert f"SIGTERM: saved step {step}; run `mt train` again to continue" in stderr
