"""checkpoint.py: writes that survive failure, loads that refuse code and damage, averaging."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from mt.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint
from mt.errors import MtError


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    path = tmp_path / "step.pt"
    good = {"model": {"w": torch.ones(3)}, "config": {}, "step": 1}
    save_checkpoint(path, good)
    with pytest.raises(Exception):  # pickling fails halfway through the write
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "step": 2, "bad": lambda: None})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.pt"]  # no temporary file left



def test_truncated_checkpoint_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "step.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}, "config": {}, "step": 1})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(MtError, match="step.pt"):
        load_checkpoint(path)



class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))



def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "step": 1, "x": _Payload(str(marker))}, path)
    with open(tmp_path / "check.pkl", "wb") as f:  # the payload is real: plain unpickling runs it
        pickle.dump(_Payload(str(tmp_path / "proof")), f)
    with open(tmp_path / "check.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "proof").exists()
    with pytest.raises(MtError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()



def test_averaging_gives_the_parameter_mean(tmp_path):
    run_dir = tmp_path / "run"
    tensors = [torch.randn(4, 3), torch.randn(4, 3)]
    for step, t in zip((10, 20), tensors):
        save_checkpoint(run_dir / f"checkpoints/step_{step:07d}.pt",
                        {"model": {"w": t}, "config": {}, "tokenizer": {}, "step": step})
    out = average_checkpoints(run_dir, last=2)
    assert torch.allclose(load_checkpoint(out)["model"]["w"], (tensors[0] + tensors[1]) / 2, atol=1e-7)


def test_a_text_file_is_not_a_checkpoint_rather_than_code_that_could_run(tmp_path):
    path = tmp_path / "best.pt"
    path.write_text("hello\n")
    with pytest.raises(MtError, match=r"best\.pt: not a checkpoint \(not a file written by torch\.save\)"):
        load_checkpoint(path)


def test_a_directory_named_like_a_checkpoint_is_called_a_directory(tmp_path):
    path = tmp_path / "step_0000100.pt"
    path.mkdir()
    with pytest.raises(MtError, match=r"step_0000100\.pt: a directory, not a file"):
        load_checkpoint(path)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(MtError, match=r"nope\.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
