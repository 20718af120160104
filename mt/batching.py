"""Token-bucket batches: similar lengths together, about N target tokens each, in a seeded
order that can be resumed at any batch.

The batches themselves are made once (length-sorted, cut at `batch_tokens` padded tokens);
each epoch shuffles their order with its own `random.Random(seed + epoch)`, so the position
(epoch, batches done) is all a checkpoint needs to continue exactly where it stopped.
Lengths are padded up to a multiple of `pad_multiple` so that the GPU sees few distinct shapes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


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


def make_batches(src_lengths: Sequence[int], trg_lengths: Sequence[int], batch_tokens: int,
                 pad_multiple: int = 8) -> list[list[int]]:
    """Group sentence indices into batches whose padded size stays within `batch_tokens`.

    Lengths include EOS/BOS. Sorting by (target, source) length keeps padding small; the
    padded size is batch rows x the longer padded side, so memory per batch stays bounded.
    """
    src_lengths, trg_lengths = np.asarray(src_lengths) + 1, np.asarray(trg_lengths) + 1
    order = np.lexsort((src_lengths, trg_lengths))
    batches, current, longest = [], [], 0
    for index in order.tolist():
        length = round_up(max(src_lengths[index], trg_lengths[index]), pad_multiple)
        if current and max(longest, length) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


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
            pad_multiple: int = 8, max_len: int | None = None) -> Batch:
    """Pad the chosen sentences into tensors; sources get EOS, targets BOS (in) and EOS (out)."""
    if max_len is not None:  # leave room for BOS/EOS within the model's positions
        src = [src[i][: max_len - 1] for i in indices]
        trg = [trg[i][: max_len - 1] for i in indices]
    else:
        src, trg = [src[i] for i in indices], [trg[i] for i in indices]
    src_len = round_up(max(len(s) for s in src) + 1, pad_multiple)
    trg_len = round_up(max(len(t) for t in trg) + 1, pad_multiple)
    if max_len is not None:
        src_len, trg_len = min(src_len, max_len), min(trg_len, max_len)
    arrays = (pad_ids(src, src_len, last=EOS_ID), pad_ids(trg, trg_len, first=BOS_ID),
              pad_ids(trg, trg_len, last=EOS_ID))
    tensors = [torch.from_numpy(a) for a in arrays]
    if torch.cuda.is_available():
        tensors = [t.pin_memory() for t in tensors]
    return Batch(*tensors, trg_tokens=sum(len(t) + 1 for t in trg), src_tokens=sum(len(s) + 1 for s in src))


@dataclass
class Position:
    """Where training is in the data: the epoch, and how many of its batches are done."""

    epoch: int = 1
    batches_done: int = 0


class BatchStream:
    """Yields (position after the batch, batch) forever, epoch after epoch, from `position` on."""

    def __init__(self, src: Sequence[np.ndarray], trg: Sequence[np.ndarray], batch_tokens: int,
                 seed: int, max_len: int, rank: int = 0, world: int = 1, pad_multiple: int = 8):
        self.src, self.trg, self.seed, self.max_len = src, trg, seed, max_len
        self.rank, self.world, self.pad_multiple = rank, world, pad_multiple
        lengths = lambda side: [min(len(x), max_len - 1) for x in side]  # noqa: E731
        self.batches = make_batches(lengths(src), lengths(trg), batch_tokens, pad_multiple)

    def batches_per_epoch(self) -> int:
        return len(epoch_order(len(self.batches), self.seed, 1, self.rank, self.world))

    def __call__(self, position: Position) -> Iterator[tuple[Position, Batch]]:
        epoch, done = position.epoch, position.batches_done
        while True:
            order = epoch_order(len(self.batches), self.seed, epoch, self.rank, self.world)
            for k in range(done, len(order)):
                batch = collate(self.src, self.trg, self.batches[order[k]], self.pad_multiple, self.max_len)
                yield Position(epoch, k + 1), batch
            epoch, done = epoch + 1, 0
