"""The layout of a run directory: every path inside one is spelled here and nowhere else.

    RUN_DIR/
      config.yaml         the resolved config                             (prepare)
      manifest.json       what was made from what; its absence = unprepared (prepare)
      tokenizer/          joint.model, or src.model and trg.model        (prepare)
      cache/train/        ids of the filtered training pairs, mapped arrays (prepare; idcache.py)
      cache/dev/          ids of every dev pair, the same format         (prepare)
                          (runs prepared before: cache/train.npz, cache/dev.npz; still read)
      cache/input_sums.json  SHA-256 of the user's input files by path, size and mtime, so an
                          unchanged file is not read again at each start (prepare; files.KnownSums)
      cache/plan/         the training batches made of cache/train, mapped at the next start
                          instead of sorting the corpus again (train; batch_plan.py)
      checkpoints/        step_<N>.pt, best.pt, averaged.pt              (train, average)
      metrics.jsonl       one JSON object per log line or validation     (train; read by plot)
      train.log           the training log                               (the CLI, for train)
      eval/               hypotheses `mt eval` scored: <set>.<checkpoint>.beam<k>.txt
      curves.png          `mt plot`'s default picture
      .mt-run             the marker: mt made this folder, so mt may write and delete in it
      .mt-lock            the lock a writing command holds (see lock.py)

The manifest's `files` record names the text files the run came from; `recorded_files` reads
it back, so scoring test sets needs no part of prepare.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Optional

from mt.config import FilePair
from mt.data import ResolvedData
from mt.errors import REDO_PREPARE, MtError
from mt.files import read_lines, write_text
from mt.idcache import cache_exists

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
INPUT_SUMS = "input_sums.json"
TOKENIZER = "tokenizer"
CACHE = "cache"
PLAN = "plan"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
EVAL = "eval"
CURVES = "curves.png"
MARKER = ".mt-run"
LOCK = ".mt-lock"
TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what files.atomic_write leaves when killed
STEP_FILE = re.compile(r"step_(\d+)\.pt$")
EVAL_FILE = re.compile(r".+\.beam\d+\.txt$")  # what eval_output names


def lock_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK


def unmake_if_bare(run_dir: str | Path) -> None:
    """Remove a run dir that holds nothing but its lock and marker (a command refused at once);
    one that holds anything more keeps its marker, so that mt may go on writing there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(entry.name not in (LOCK, MARKER) for entry in run_dir.iterdir()):
        return
    for made in (lock_file(run_dir), marker_file(run_dir)):
        made.unlink(missing_ok=True)
    try:
        run_dir.rmdir()  # only if nothing else was written
    except OSError:
        pass


def marker_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / MARKER


def config_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG


def manifest_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST


def tokenizer_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TOKENIZER


def ids_file(run_dir: str | Path, split: str) -> Path:
    """The id cache folder of `split` (train or dev); `idcache.load_ids` reads the legacy
    `<split>.npz` beside it when the folder is not there."""
    return Path(run_dir) / CACHE / split


def input_sums_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / CACHE / INPUT_SUMS


def plan_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CACHE / PLAN


def read_input_sums(run_dir: str | Path) -> dict:
    """The recorded sums of input files (see `files.KnownSums`); {} when missing or unreadable,
    as it is only a cache: every file is then summed again."""
    try:
        known = json.loads(input_sums_file(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def write_input_sums(run_dir: str | Path, known: dict) -> None:
    write_text(input_sums_file(run_dir), json.dumps(known, indent=1, sort_keys=True) + "\n")


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether any weights were trained in this run dir: from then on its tokenizer is theirs."""
    return bool(step_checkpoints(run_dir)) or any(named_checkpoint(run_dir, name).is_file()
                                                   for name in ("best", "averaged"))


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_checkpoint(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:07d}.pt"


def named_checkpoint(run_dir: str | Path, name: str) -> Path:
    """best.pt or averaged.pt."""
    return checkpoint_dir(run_dir) / f"{name}.pt"


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """step_<N>.pt files, oldest first."""
    found = [(int(m.group(1)), p) for p in checkpoint_dir(run_dir).glob("step_*.pt")
             if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def train_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / TRAIN_LOG


def eval_output(run_dir: str | Path, test_set: str, checkpoint: Path, beam: int) -> Path:
    """Where `mt eval` writes a test set's hypotheses; a name that would lead out of eval/ is an error."""
    path = eval_dir(run_dir) / f"{test_set}.{checkpoint.stem}.beam{beam}.txt"
    if "/" in test_set or "\\" in test_set or path.resolve().parent != eval_dir(run_dir).resolve():
        raise MtError(f"data.test: test set name {test_set!r} is not a plain name (it would write {path} "
                      "outside the run's eval folder): rename it in the config")
    return path


def eval_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL


def curves_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / CURVES


def records(run_dir: str | Path) -> list[Path]:
    """The files a run is made of, which no output option may overwrite (averaged.pt, eval/ and
    curves.png are outputs themselves)."""
    models = list(tokenizer_dir(run_dir).glob("*.model")) + list(tokenizer_dir(run_dir).glob("*.vocab"))
    return [config_file(run_dir), manifest_file(run_dir), metrics_file(run_dir), train_log(run_dir),
            marker_file(run_dir), lock_file(run_dir), ids_file(run_dir, "train"), ids_file(run_dir, "dev"),
            *models, *step_checkpoints(run_dir), named_checkpoint(run_dir, "best")]


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(run_dir: str | Path, missing_ok: bool = True, repair: bool = False) -> list[dict]:
    """The rows of metrics.jsonl. A last line cut short (no newline: a kill mid-write) is dropped
    with a note, and with `repair` the file is rewritten without it; any other line that is not a
    JSON object is an error naming file:line."""
    path = metrics_file(run_dir)
    if not path.is_file():
        if missing_ok:
            return []
        raise MtError(f"{path}: no such file (mt train writes it)")
    text = path.read_text(encoding="utf-8", errors="replace")  # rows are ASCII; a cut one may not be
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not text.endswith("\n"):
                log.info("note: %s:%d: dropped a last line cut short (an interrupted write)", path, number)
                if repair:
                    write_metrics(run_dir, rows)
                break
            raise MtError(f"{path}:{number}: not a JSON object: {e.msg}") from None
        if not isinstance(row, dict):
            raise MtError(f"{path}:{number}: not a JSON object but {type(row).__name__}; "
                          "metrics.jsonl holds only the rows mt train writes")
        rows.append(row)
    return rows


def write_metrics(run_dir: str | Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl whole (atomically, so it never ends in half a line)."""
    write_text(metrics_file(run_dir), "".join(json.dumps(row) + "\n" for row in rows))


def clear_training(run_dir: str | Path) -> None:
    """Remove everything training wrote (mt's checkpoints, metrics.jsonl, train.log, mt's
    hypotheses in eval/, curves.png), for `mt train --restart`. In checkpoints/ and eval/ (a
    symlinked one too: the link stays) only the files mt names so are removed; anything else is
    left, with a note naming it. Whatever cannot be removed stops the restart with an error
    naming it: never half a restart."""
    folder = checkpoint_dir(run_dir)
    try:
        left = _clear_own_files(folder, _is_checkpoint_name) + _clear_own_files(eval_dir(run_dir), _is_eval_name)
        for path in (metrics_file(run_dir), train_log(run_dir), curves_file(run_dir)):
            if path.exists() or path.is_symlink():
                _remove(path)
    except OSError as e:
        raise MtError(f"--restart: cannot remove {e.filename or folder} ({e.strerror or e}); nothing was "
                      "trained: fix it (or remove it yourself) and run again") from None
    if left:
        log.info("note: --restart left what mt did not make: %s", ", ".join(map(str, left)))


def _is_checkpoint_name(name: str) -> bool:
    return bool(STEP_FILE.fullmatch(name)) or name in ("best.pt", "averaged.pt")


def _is_eval_name(name: str) -> bool:
    return bool(EVAL_FILE.fullmatch(name))


def _clear_own_files(folder: Path, ours) -> list[Path]:
    """Remove the files in `folder` that mt names so (and its temp files); returns the entries
    left. A plain folder left empty is removed too."""
    if not (folder.exists() or folder.is_symlink()):
        return []
    left = []
    for entry in sorted(folder.iterdir()):
        mine = ours(entry.name) or TEMP_FILE.match(entry.name)
        if mine and (entry.is_symlink() or not entry.is_dir()):
            entry.unlink()
        else:
            left.append(entry)
    if not left and not folder.is_symlink():
        folder.rmdir()
    return left


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ----------------------------------------------------------------------------- manifest.json
#
# A manifest edited into another shape is an error naming the file and key, checked where each
# part is read, not a traceback. Absent tokenizer models mean "not prepared", as before; a
# `files` record of another shape is rewritten by the next prepare (as when the data moved),
# so only the commands that read it without preparing (eval) stop at it.


def read_manifest(run_dir: str | Path) -> Optional[dict]:
    """The manifest, or None when there is none (the run dir is unprepared)."""
    path = manifest_file(run_dir)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MtError(f"{path}: unreadable ({e}); {REDO_PREPARE}") from None
    return _expect(path, "", manifest, dict)


_MISSING = object()
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "a number",
               float: "a number", type(None): "null"}


def _key(path: Path, parent: dict, dotted: str, kind: type = dict):
    """`parent`'s value for the last part of `dotted` (the key's full name, for the message)."""
    return _expect(path, dotted, parent.get(dotted.rsplit(".", 1)[-1], _MISSING), kind)


def _expect(path: Path, key: str, value: object, kind: type):
    if value is _MISSING:
        raise MtError(f"{path}: missing key '{key}'; {REDO_PREPARE}")
    if not isinstance(value, kind):
        where = f"key '{key}': " if key else ""
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise MtError(f"{path}: {where}expected {_JSON_NAMES[kind]}, got {got}; {REDO_PREPARE}")
    return value


def write_manifest(run_dir: str | Path, manifest: dict) -> None:
    write_text(manifest_file(run_dir), json.dumps(manifest, indent=2) + "\n")


def outputs_exist(run_dir: str | Path, manifest: dict, caches: bool = True, config: bool = True) -> bool:
    """Whether every file prepare makes is there: tokenizer models, config.yaml and the id caches
    (each of the last two unless told not to look)."""
    where = manifest_file(run_dir)
    tokenizer = _expect(where, "tokenizer", manifest.get("tokenizer", {}), dict)
    names = _expect(where, "tokenizer.models", tokenizer.get("models", {}), dict)
    models = [tokenizer_dir(run_dir) / name for name in names]
    return (bool(models) and all(path.is_file() for path in models)
            and (not config or config_file(run_dir).is_file())
            and (not caches or all(cache_exists(ids_file(run_dir, split)) for split in ("train", "dev"))))


def recorded_files(run_dir: str | Path) -> ResolvedData:
    """The train/dev/test text files a prepared run came from; an error if it was never prepared."""
    manifest = read_manifest(run_dir)
    if manifest is None or not outputs_exist(run_dir, manifest):
        raise MtError(f"{run_dir} is not prepared: run mt prepare --config CONFIG")
    path = manifest_file(run_dir)
    record = _key(path, manifest, "files")

    def pair(entry: dict, name: str) -> FilePair:
        return FilePair(**{side: _key(path, _key(path, entry, f"{name}.{side}"), f"{name}.{side}.path", str)
                           for side in ("src", "trg")})

    tests = _key(path, record, "files.test")
    return ResolvedData(train=pair(_key(path, record, "files.train"), "files.train"),
                        dev=pair(_key(path, record, "files.dev"), "files.dev"),
                        tests={name: pair(_expect(path, f"files.test.{name}", entry, dict), f"files.test.{name}")
                               for name, entry in tests.items()})


# ----------------------------------------------------------------------------- ownership


def check_ours(run_dir: str | Path, given_as: str = "run_dir") -> None:
    """Refuse a run dir that mt did not make: a file, or a non-empty folder without the marker
    that is not a run of an older mt either. Reads only, so it runs before the lock is taken.
    `given_as`: the config key (run_dir) or the option (--run-dir) that named it, for the hint."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MtError(f"{given_as}: {run_dir} is a file, not a folder")
    if marker_file(run_dir).is_file() or not run_dir.is_dir() or _made_by_older_mt(run_dir):
        return
    if any(entry.name not in (LOCK, MARKER) for entry in run_dir.iterdir()):
        way_out = ("set run_dir to a new or empty folder" if given_as == "run_dir"
                   else f"give {given_as} a run dir that mt train made")
        raise MtError(f"{run_dir} is a folder that mt did not make (no {MARKER} in it, and it is not empty): "
                      f"mt writes and deletes only in its own run dirs; {way_out}")


def claim(run_dir: str | Path) -> None:
    """Mark `run_dir` as mt's (a run of an older mt is adopted with a note) and remove the
    temporary files a killed command left. Call holding the lock, after `check_ours`."""
    run_dir = Path(run_dir)
    marker = marker_file(run_dir)
    if not marker.is_file():
        if _made_by_older_mt(run_dir):
            log.info("note: %s: a run dir of an older mt; marking it as mt's (%s)", run_dir, MARKER)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(marker, "This folder is a run directory made by mt; mt may write and delete in it.\n")
    remove_temp_files(run_dir)


def _made_by_older_mt(run_dir: Path) -> bool:
    if step_checkpoints(run_dir):
        return True
    try:
        return "prepare_key" in json.loads(manifest_file(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the `.NAME.XXXX.tmp` files that files.atomic_write leaves when a kill cuts a write
    short; none of them is ever a finished file. Call holding the lock: no writer is running."""
    removed = [path for path in Path(run_dir).rglob(".*.tmp")
               if TEMP_FILE.match(path.name) and path.is_file() and not path.is_symlink()]
    for path in removed:
        path.unlink()
    if removed:
        log.info("note: %s: removed %d temporary file(s) left by an interrupted command",
                 run_dir, len(removed))
    return removed
