"""Token-bucket batches: similar lengths together, about N target tokens each, in a seeded
order that can be resumed at any batch.

The batches themselves are made once (length-sorted, cut at `batch_tokens` padded tokens);
each epoch shuffles their order with its own `random.Random(seed + epoch)`, so the position
(epoch, batches done) is all a checkpoint needs to continue exactly where it stopped.
Lengths are padded up to a multiple of `pad_multiple` so that the GPU sees few distinct shapes.
"""

from __future__ import annotations

import queue
import random
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from mt.idcache import Ragged, check_ids
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


PAD_MULTIPLE = 8  # training batches' lengths are rounded up to a multiple of this


@dataclass
class Batch:
    src_ids: torch.Tensor  # (batch, src_len), ids + EOS, PAD after
    trg_in: torch.Tensor  # (batch, trg_len), BOS + ids, PAD after
    trg_out: torch.Tensor  # (batch, trg_len), ids + EOS, PAD after
    trg_tokens: int  # real (non-pad) target tokens
    src_tokens: int

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731  (pinned memory: async copy)
        return Batch(move(self.src_ids), move(self.trg_in), move(self.trg_out), self.trg_tokens, self.src_tokens)

    @property
    def padded_tokens(self) -> int:
        return self.src_ids.numel() + self.trg_in.numel()


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


class Batches:
    """Batches of sentence indices as two arrays, not a list per batch (a few bytes a sentence
    at any corpus size): batch k is `order[bounds[k]:bounds[k + 1]]`."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray):
        self.order, self.bounds = order, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        return self.order[self.bounds[k]: self.bounds[k + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[k] for k in range(len(self)))


def make_batches(src_lengths: Sequence[int], trg_lengths: Sequence[int], batch_tokens: int,
                 pad_multiple: int = 8) -> Batches:
    """Group sentence indices into batches whose padded size stays within `batch_tokens`.

    Lengths include EOS/BOS. Sorting by (target, source) length keeps padding small; the
    padded size is batch rows x the longer padded side, so memory per batch stays bounded.
    Sentences join the current batch in sorted order until one more would break the bound;
    a sentence longer than the bound is a batch of its own.
    """
    src_lengths = np.asarray(src_lengths, dtype=np.int64) + 1
    trg_lengths = np.asarray(trg_lengths, dtype=np.int64) + 1
    order = sort_by_lengths(src_lengths, trg_lengths)
    padded = -(-np.maximum(src_lengths, trg_lengths)[order] // pad_multiple) * pad_multiple
    bounds, start = [0], 0
    while start < len(order):  # a numpy step per batch, not a Python step per sentence
        # the batch's longest is at least its first, so no more than this many can fit
        window = padded[start: start + max(batch_tokens // int(padded[start]), 1) + 1]
        too_big = np.maximum.accumulate(window) * np.arange(1, len(window) + 1) > batch_tokens
        too_big[0] = False  # the first always goes in
        start += int(too_big.argmax()) if too_big.any() else len(window)
        bounds.append(start)
    return Batches(order, np.asarray(bounds, dtype=np.int64))


def sort_by_lengths(src_lengths: np.ndarray, trg_lengths: np.ndarray) -> np.ndarray:
    """`np.lexsort((src_lengths, trg_lengths))`: by target length, then source length, ties in
    corpus order. When lengths fit 16 bits, two stable radix sorts give the same order 2.5x
    faster (0.44 s against 1.10 s for 5 M pairs: most of `mt train`'s start-up on big corpora)."""
    if len(src_lengths) and max(src_lengths.max(), trg_lengths.max()) < 1 << 16:
        by_src = np.argsort(src_lengths.astype(np.uint16), kind="stable")
        return by_src[np.argsort(trg_lengths[by_src].astype(np.uint16), kind="stable")]
    return np.lexsort((src_lengths, trg_lengths))


def epoch_order(num_batches: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The batch order of one epoch, and this process's share of it under data parallelism.

    Every rank computes the same shuffle and takes every world-th batch; the tail that does
    not divide evenly is dropped so that all ranks do the same number of steps.
    """
    order = list(range(num_batches))
    random.Random(seed + epoch).shuffle(order)
    usable = len(order) - len(order) % world
    return order[rank:usable:world]


def pad_ids(rows: Sequence[Sequence[int]], width: int, *, first: Optional[int] = None,
            last: Optional[int] = None) -> np.ndarray:
    """Rows of ids in one (rows, width) int64 array, PAD after each: `first` (BOS) before
    every row and `last` (EOS) after it, when given. Training batches and translation both
    pad this way, so a sentence reaches the model the same in both."""
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    start = 0 if first is None else 1
    for row, ids in enumerate(rows):
        if first is not None:
            out[row, 0] = first
        out[row, start : start + len(ids)] = ids
        if last is not None:
            out[row, start + len(ids)] = last
    return out


def collate(src: Sequence[np.ndarray], trg: Sequence[np.ndarray], indices: Sequence[int],
            pad_multiple: int = 8, max_len: int | None = None,
            vocab_sizes: tuple[int, int] | None = None) -> Batch:
    """Pad the chosen sentences into tensors; sources get EOS, targets BOS (in) and EOS (out).

    `src` and `trg` are best `Ragged` (the mapped id cache): the rows are then gathered with
    one fancy index per side, reading only the pages they lie on. With `vocab_sizes` (source,
    target), an id outside them is an error naming the cache file, not an index error in the
    model's embedding.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not isinstance(src, Ragged):
        src, trg = (Ragged.from_lists([side[i] for i in indices]) for side in (src, trg))
        indices = np.arange(len(indices))
    limit = max_len - 1 if max_len is not None else None  # leave room for BOS/EOS within the model's positions
    src_tokens, src_lengths = _take(src, indices, limit)
    trg_tokens, trg_lengths = _take(trg, indices, limit)
    if vocab_sizes is not None:
        check_ids(src_tokens, vocab_sizes[0], src.source)
        check_ids(trg_tokens, vocab_sizes[1], trg.source)
    src_len = round_up(int(src_lengths.max()) + 1, pad_multiple)
    trg_len = round_up(int(trg_lengths.max()) + 1, pad_multiple)
    if max_len is not None:
        src_len, trg_len = min(src_len, max_len), min(trg_len, max_len)
    rows = np.arange(len(indices))
    src_ids = _pad(src_tokens, src_lengths, src_len)
    src_ids[rows, src_lengths] = EOS_ID
    trg_in = np.full((len(indices), trg_len), PAD_ID, dtype=np.int64)
    trg_in[:, 0] = BOS_ID
    trg_in[:, 1:] = _pad(trg_tokens, trg_lengths, trg_len - 1)
    trg_out = _pad(trg_tokens, trg_lengths, trg_len)
    trg_out[rows, trg_lengths] = EOS_ID
    tensors = [torch.from_numpy(a) for a in (src_ids, trg_in, trg_out)]
    if torch.cuda.is_available():
        tensors = [t.pin_memory() for t in tensors]
    return Batch(*tensors, trg_tokens=int(trg_lengths.sum()) + len(indices),
                 src_tokens=int(src_lengths.sum()) + len(indices))


def _take(side: Ragged, indices: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The chosen sentences' tokens, one after another, and their lengths, each cut to `limit`."""
    starts = np.asarray(side.offsets[indices])
    lengths = np.asarray(side.offsets[indices + 1]) - starts
    if limit is not None:
        lengths = np.minimum(lengths, limit)
    width = int(lengths.max(initial=0))
    positions = starts[:, None] + np.arange(width)  # (batch, width)
    return np.asarray(side.tokens[positions[np.arange(width) < lengths[:, None]]]), lengths


def _pad(tokens: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Rows of `tokens` (cut by `lengths`, in order) left-aligned in a (batch, width) PAD matrix."""
    padded = np.full((len(lengths), width), PAD_ID, dtype=np.int64)
    padded[np.arange(width) < lengths[:, None]] = tokens
    return padded


@dataclass
class Position:
    """Where training is in the data: the epoch, and how many of its batches are done (by each
    process: under torchrun, `world` times as many are done over all of them)."""

    epoch: int = 1
    batches_done: int = 0


def resplit(position: Position, old_world: int, new_world: int) -> Position:
    """The same place in the data for another number of processes.

    All ranks share one order per epoch, rank r taking batches r, r + world, ...: so the
    batches done so far over all ranks are the first `batches_done * old_world` of that order,
    and the new ranks go on from there. Exact when the new number of processes divides them;
    otherwise rounded up, so that no batch is seen twice in the epoch (up to new_world - 1 are
    left out of it, as the tail that does not divide among the ranks always is).
    """
    done_by_all = position.batches_done * old_world
    return Position(position.epoch, -(-done_by_all // new_world))


class BatchStream:
    """Yields (position after the batch, batch) forever, epoch after epoch, from `position` on."""

    def __init__(self, src: Sequence[np.ndarray], trg: Sequence[np.ndarray], batch_tokens: int,
                 seed: int, max_len: int, rank: int = 0, world: int = 1, pad_multiple: int = PAD_MULTIPLE,
                 vocab_sizes: tuple[int, int] | None = None, batches: Batches | None = None):
        """`batches`: those `plan_batches` makes of these arguments, when already made (batch_plan.py
        keeps them in the run dir); made here when not given."""
        self.src, self.trg, self.seed, self.max_len = src, trg, seed, max_len
        self.rank, self.world, self.pad_multiple, self.vocab_sizes = rank, world, pad_multiple, vocab_sizes
        self.batches = batches if batches is not None else plan_batches(src, trg, batch_tokens, max_len, pad_multiple)

    def batches_per_epoch(self) -> int:
        return len(epoch_order(len(self.batches), self.seed, 1, self.rank, self.world))

    def __call__(self, position: Position, prefetch: int = 4) -> Iterator[tuple[Position, Batch]]:
        """The stream from `position`; with `prefetch` > 0 the next batches are made in a
        background thread while the caller trains on this one (numpy and torch release the GIL)."""
        batches = self._batches(position)
        return Prefetcher(batches, prefetch) if prefetch > 0 else batches

    def _batches(self, position: Position) -> Iterator[tuple[Position, Batch]]:
        epoch, done = position.epoch, position.batches_done
        while True:
            order = epoch_order(len(self.batches), self.seed, epoch, self.rank, self.world)
            for k in range(done, len(order)):
                batch = collate(self.src, self.trg, self.batches[order[k]], self.pad_multiple, self.max_len,
                                self.vocab_sizes)
                yield Position(epoch, k + 1), batch
            epoch, done = epoch + 1, 0


def plan_batches(src: Sequence[np.ndarray], trg: Sequence[np.ndarray], batch_tokens: int, max_len: int,
                 pad_multiple: int = PAD_MULTIPLE) -> Batches:
    """The training batches of a corpus: lengths clipped to what collate keeps of a sentence."""
    return make_batches(np.minimum(lengths_of(src), max_len - 1), np.minimum(lengths_of(trg), max_len - 1),
                        batch_tokens, pad_multiple)


def lengths_of(side: Sequence[np.ndarray]) -> np.ndarray:
    """Each sentence's length: from the offsets of a `Ragged`, else one len() per sentence."""
    if isinstance(side, Ragged):
        return side.lengths
    return np.fromiter(map(len, side), dtype=np.int64, count=len(side))


class Prefetcher:
    """Runs an iterator in a daemon thread, up to `depth` items ahead of the caller.

    The items and their order are the iterator's own; only the time they are made changes. An
    error in the thread is raised in the caller at the item where it happened. The thread
    stops once the prefetcher is closed or no longer referenced.
    """

    def __init__(self, items: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended: BaseException | None = None
        # the thread holds the queue and the event, not self: dropping the prefetcher stops it
        self._thread = threading.Thread(target=_fill, args=(items, self._queue, self._stop), daemon=True,
                                        name="mt-batches")
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        if self._ended is not None:
            raise self._ended
        done, item = self._queue.get()
        if done:
            self._ended = item
            raise item
        return item

    def close(self) -> None:
        """Stop and wait for the thread: one still making a batch at interpreter exit aborts it."""
        self._stop.set()
        self._thread.join()

    def __del__(self) -> None:
        self._stop.set()


def _fill(items: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """Put (False, item) for each item, then (True, the exception that ended the items)."""
    try:
        for item in items:
            if not _put(out, stop, (False, item)):
                return
        _put(out, stop, (True, StopIteration()))
    except BaseException as e:  # noqa: BLE001  (handed to the caller, who raises it)
        _put(out, stop, (True, e))


def _put(out: queue.Queue, stop: threading.Event, entry: tuple) -> bool:
    while not stop.is_set():
        try:
            out.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
