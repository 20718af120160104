"""`torchrun ... -m mt train`: two CPU processes (gloo) train like one process with update_freq 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_toy_data, run_mt, toy_config
from mt.checkpoint import load_checkpoint

SMALL = {"model__d_model": 32, "model__heads": 2, "model__encoder_layers": 1, "model__decoder_layers": 1,
         "model__ff_dim": 64, "model__dropout": 0.0,  # each rank draws its own dropout masks
         "training__lr": 1e-4, "training__validate_every": 5, "training__save_every": 5,
         "training__log_every": 5, "training__keep_checkpoints": 10}


def torchrun(config: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "mt", "train", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def max_difference(a: Path, b: Path) -> float:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("ddp") / "data", train=600, dev=40, test=20)


def test_two_processes_match_one_process_over_the_same_batches(tmp_path, data):
    """Rank r takes batches r, r+2, ... of the shared order; one process with update_freq 2 takes
    the same pairs of batches in each update, so the parameters agree."""
    two = toy_config(tmp_path / "two.yaml", data, tmp_path / "two", training__max_steps=10, **SMALL)
    result = torchrun(two)
    assert "2 processes" in result.stderr
    one = toy_config(tmp_path / "one.yaml", data, tmp_path / "one", training__max_steps=10,
                     training__update_freq=2, **SMALL)
    run_mt("train", "--config", str(one))
    assert max_difference(tmp_path / "one/checkpoints/step_0000010.pt",
                          tmp_path / "two/checkpoints/step_0000010.pt") <= 1e-5
    # rank 0 alone writes: one set of checkpoints, each metrics row once
    names = sorted(p.name for p in (tmp_path / "two/checkpoints").iterdir())
    assert names == ["best.pt", "step_0000005.pt", "step_0000010.pt"]
    steps = [(row["step"], "loss" in row) for row in map(json.loads, (tmp_path / "two/metrics.jsonl").open())]
    assert len(steps) == len(set(steps))


def test_resume_under_two_processes_continues_exactly(tmp_path, data):
    straight = toy_config(tmp_path / "a.yaml", data, tmp_path / "a", training__max_steps=10, **SMALL)
    torchrun(straight)
    torchrun(toy_config(tmp_path / "b.yaml", data, tmp_path / "b", training__max_steps=5, **SMALL))
    resumed = torchrun(toy_config(tmp_path / "b.yaml", data, tmp_path / "b", training__max_steps=10, **SMALL))
    assert "resuming" in resumed.stderr
    assert max_difference(tmp_path / "a/checkpoints/step_0000010.pt",
                          tmp_path / "b/checkpoints/step_0000010.pt") <= 1e-6
