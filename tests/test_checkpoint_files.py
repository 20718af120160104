"""What `--checkpoint` names is described as what it is: a text file, a directory, a missing file."""

from __future__ import annotations

import pytest

from mt.checkpoint import load_checkpoint
from mt.errors import MtError


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
