"""Where an `--output` option may write, checked before any work is done.

An output is refused when it would overwrite an input or one of the run's records, when it lies
inside the parts of a run dir that mt alone writes (cache/, tokenizer/, checkpoints/: apart from
a new checkpoint of `mt average` there), or when it cannot be written (a folder, a folder that
cannot be written in). An existing file is replaced only if it is empty or what the command
writes:

    picture     a PNG, PDF or SVG (mt plot, mt attention)
    checkpoint  a checkpoint mt saved (mt average)
    hypotheses  UTF-8 text with as many lines as the source (an earlier `mt eval` of it)
    json        a JSON object (mt attention --json)

Anything else is the user's, and mt did not make it: refused, naming it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from mt import rundir
from mt.errors import MtError
from mt.files import iter_lines, same_file

KINDS = ("picture", "checkpoint", "hypotheses", "json")
PICTURE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"%PDF-")


def check_output(option: str, output: Optional[Path], run_dir: Path, kind: str,
                 inputs: Sequence[Optional[Path]] = ()) -> None:
    """Refuse `output` (one file of `kind`) if writing it would destroy something mt did not
    make or cannot be done; `inputs` are the command's input files (for hypotheses, the
    source first)."""
    if output is None:
        return
    output = Path(output)
    others = _other_runs_around(output, run_dir)
    for path in [*inputs, *rundir.records(run_dir), *(record for run in others for record in rundir.records(run))]:
        if path is not None and same_file(output, path):
            raise MtError(f"{option} {output}: that is {path}, which this command must not overwrite; "
                          "choose another file")
    _check_outside_run_parts(option, output, run_dir, kind)
    for run in others:  # another run's parts are out of bounds whatever the kind
        _check_outside_run_parts(option, output, run, "")
    _check_writable(option, output)
    if output.is_file() and not _is_kind(output, kind, inputs):
        raise MtError(f"{option} {output}: a file mt did not make ({_what(kind)}) is there; mt does not "
                      f"overwrite it: choose a new name, e.g. {_new_name(output)}")


def check_output_folder(option: str, folder: Path, run_dir: Path, files: dict[str, str]) -> None:
    """Refuse a folder for `mt attention` inside the run's own parts, or holding one of the
    `files` (name -> kind) it would write as something that kind is not."""
    _check_outside_run_parts(option, folder / "x", run_dir, "picture")
    if folder.exists() and not folder.is_dir():
        raise MtError(f"{option} {folder}: a file, not a folder")
    for name, kind in files.items():
        path = folder / name
        if path.is_dir() or (path.is_file() and not _is_kind(path, kind, ())):
            raise MtError(f"{option} {folder}: {path} is there and mt did not make it ({_what(kind)}); "
                          "mt does not overwrite it: choose another folder")


def _other_runs_around(output: Path, run_dir: Path) -> list[Path]:
    """Run dirs other than `run_dir` that `output` (links followed) would land in."""
    mine = os.path.realpath(run_dir)
    return [folder for folder in Path(os.path.realpath(output)).parents
            if (folder / rundir.MARKER).is_file() and str(folder) != mine]


def _check_outside_run_parts(option: str, output: Path, run_dir: Path, kind: str) -> None:
    target = Path(os.path.realpath(output))
    for part in (rundir.ids_file(run_dir, "train").parent, rundir.tokenizer_dir(run_dir),
                 rundir.checkpoint_dir(run_dir)):
        resolved = Path(os.path.realpath(part))
        if resolved not in target.parents:
            continue
        if part == rundir.checkpoint_dir(run_dir) and kind == "checkpoint" and target.parent == resolved \
                and not rundir.STEP_FILE.fullmatch(target.name) and target.name != "best.pt":
            continue  # `mt average --output` may add a checkpoint of its own beside the run's
        raise MtError(f"{option} {output}: inside {part}, which only mt prepare and mt train write "
                      "(the run reads it back); choose a file outside it")


def _check_writable(option: str, output: Path) -> None:
    """What would fail at the end of the work, found before it starts."""
    if output.is_dir():
        raise MtError(f"{option} {output}: a directory; give a file name")
    if output.exists() and not output.is_file():
        return  # /dev/null, a FIFO: written in place (files.atomic_write)
    folder = Path(os.path.realpath(output)).parent
    if output.is_symlink() and not folder.is_dir():  # files.atomic_write follows the link; no folder, no file
        raise MtError(f"{option} {output}: a symlink to {os.path.realpath(output)}, whose folder does not exist")
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise MtError(f"{option} {output}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK):
        raise MtError(f"{option} {output}: cannot write in {folder} (permission denied or read-only)")


def _is_kind(path: Path, kind: str, inputs: Sequence[Optional[Path]]) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if not head:
            return True  # an empty file loses nothing (`--output /dev/stdout > hyps.txt` makes one)
        if kind == "picture":
            return head.startswith(PICTURE_MAGIC) or b"<svg" in head
        if kind == "checkpoint":
            return _is_mt_checkpoint(path)
        if kind == "json":
            return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
        return sum(1 for _ in iter_lines(path)) == sum(1 for _ in iter_lines(inputs[0]))
    except (OSError, ValueError, MtError, zipfile.BadZipFile):  # unreadable, not UTF-8, not JSON
        return False


def _is_mt_checkpoint(path: Path) -> bool:
    """A torch.save zip whose pickle names what mt's checkpoints hold (see checkpoint.py)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            return False
        data = archive.read(pickles[0])
    return all(key in data for key in (b"model", b"config", b"tokenizer", b"step"))


def _what(kind: str) -> str:
    return {"picture": "not a PNG, PDF or SVG picture", "checkpoint": "not an mt checkpoint",
            "hypotheses": "not hypotheses of this source: not UTF-8 text with as many lines",
            "json": "not a JSON object"}[kind]


def _new_name(output: Path) -> Path:
    number = 2
    while (candidate := output.with_name(f"{output.stem}.{number}{output.suffix}")).exists():
        number += 1
    return candidate
