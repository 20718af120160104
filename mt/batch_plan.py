"""The training batches kept in the run dir, so that `mt train` starts as fast at 5 M pairs as at 1 M.

Making the batches (`batching.plan_batches`) reads every sentence's length and sorts them all:
most of a second and a few hundred MB of index arrays at 5 M pairs, at every start. The first
start saves what it made, `Batches.order` and `Batches.bounds`, as two .npy files in cache/plan/;
the next ones map them (`np.load(mmap_mode="r")`): checked in one pass over `order`, no copy
made, and the ranks of a torchrun job share the pages.

Both files are named by a key over everything the batches depend on: the train id cache's files
(size, mtime_ns and inode of each: a cache encoded again is new files, so it never meets an old
plan), batch_tokens, pad_multiple, max_len (lengths are clipped to it) and PLAN_FORMAT. A plan
that is missing, unreadable or does not fit the cache is made again and saved over it; saving
removes the plans of other keys. A run dir that cannot be written to makes its plan at each
start, in memory, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np

from mt import rundir
from mt.batching import PAD_MULTIPLE, Batches, plan_batches
from mt.errors import MtError
from mt.files import atomic_write
from mt.idcache import EncodedSplit

log = logging.getLogger(__name__)

PLAN_FORMAT = 1
PLAN_FILE = re.compile(r"^([0-9a-f]{16})\.(order|bounds)\.npy$")  # what `plan_files` names


def load_or_make_plan(run_dir: str | Path, train_ids: EncodedSplit, batch_tokens: int, max_len: int,
                      pad_multiple: int = PAD_MULTIPLE, save: bool = True) -> Batches:
    """The training batches of the run's train cache: the saved plan when its key matches, else
    made (exactly as `plan_batches` makes them) and, with `save`, kept for the next start."""
    key = plan_key(run_dir, batch_tokens, max_len, pad_multiple)
    if key is None or not len(train_ids):  # no cache files to key on, or nothing to save
        return plan_batches(train_ids.src, train_ids.trg, batch_tokens, max_len, pad_multiple)
    batches = _load(plan_files(run_dir, key), len(train_ids))
    if batches is not None:
        return batches
    batches = plan_batches(train_ids.src, train_ids.trg, batch_tokens, max_len, pad_multiple)
    if len(batches.order) < 2**31:
        batches = Batches(batches.order.astype(np.int32), batches.bounds)  # half the bytes, same indices
    if save:
        _save(run_dir, key, batches)
    return batches


def plan_key(run_dir: str | Path, batch_tokens: int, max_len: int, pad_multiple: int) -> Optional[str]:
    """The key of the plan these settings make of the run's train cache, as it is on disk now;
    None when the cache's files cannot be looked at."""
    cache = rundir.ids_file(run_dir, "train")
    try:
        files = sorted(cache.iterdir()) if cache.is_dir() else [cache.with_suffix(".npz")]  # the legacy format
        stats = {}
        for path in files:
            info = path.stat()
            stats[path.name] = [info.st_size, info.st_mtime_ns, info.st_ino]
    except OSError:
        return None
    payload = {"format": PLAN_FORMAT, "cache": stats, "batch_tokens": batch_tokens, "max_len": max_len,
               "pad_multiple": pad_multiple}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def plan_files(run_dir: str | Path, key: str) -> tuple[Path, Path]:
    """The order and bounds files of the plan under `key`."""
    folder = rundir.plan_dir(run_dir)
    return folder / f"{key}.order.npy", folder / f"{key}.bounds.npy"


def _load(paths: tuple[Path, Path], pairs: int) -> Optional[Batches]:
    """The saved plan, mapped; None when there is none, or it is unreadable or does not fit."""
    if not all(path.is_file() for path in paths):
        return None
    try:
        order, bounds = (np.load(path, mmap_mode="r", allow_pickle=False) for path in paths)
        why = _misfit(order, bounds, pairs)
    except Exception as e:  # noqa: BLE001  (only a cache: whatever is wrong with it, it is made again)
        why = f"unreadable ({str(e).split('. ')[0]})"
    if why is None:
        return Batches(order, bounds)
    named = str(paths[0]).replace(".order.", ".*.")
    log.info("note: %s: the saved training batches are %s; making them again", named, why)
    return None


def _misfit(order: np.ndarray, bounds: np.ndarray, pairs: int) -> Optional[str]:
    """What makes `order` and `bounds` not a plan of `pairs` pairs: their shapes, `bounds` (a few
    numbers a batch), and `order`'s range and sum (one read of it: each pair there once, but for
    entries changed together so that the sum stays; no sort at every start)."""
    if order.ndim != 1 or bounds.ndim != 1 or order.dtype.kind not in "iu" or bounds.dtype.kind not in "iu":
        return f"not a plan (arrays of {order.dtype} {order.shape} and {bounds.dtype} {bounds.shape})"
    if len(order) != pairs:
        return f"of {len(order)} pairs, the cache holds {pairs}"
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != pairs or not np.all(bounds[1:] > bounds[:-1]):
        return "cut into batches that do not fit (bounds not rising from 0 to the pairs)"
    if order.min() < 0 or order.max() >= pairs:  # one read of the file: 20 MB at 5 M pairs
        return f"naming pairs outside the cache's {pairs}"
    if int(order.sum(dtype=np.int64)) != pairs * (pairs - 1) // 2:  # a pair named twice, another never
        return "naming a pair twice"
    return None


def _save(run_dir: str | Path, key: str, batches: Batches) -> None:
    """Write the plan (each file whole or not at all), then remove the plans of other keys."""
    try:
        for path, array in zip(plan_files(run_dir, key), (batches.order, batches.bounds)):
            with atomic_write(path, "wb") as f:
                np.save(f, array, allow_pickle=False)
        for path in rundir.plan_dir(run_dir).iterdir():
            found = PLAN_FILE.match(path.name)
            if found and found.group(1) != key and not path.is_dir():
                path.unlink(missing_ok=True)
    except (MtError, OSError) as e:  # a read-only run dir, a full disk: only the next start pays
        log.info("note: the training batches are not kept for the next start (%s)", e)
