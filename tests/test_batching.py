"""batching.py: every pair once per epoch within the token budget, padding that keeps the text,
a stream that resumes at any position, ranks that share an epoch without overlap."""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch

from mt.batching import BatchStream, Position, collate, epoch_order, make_batches
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def corpus(n: int = 300, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sentence pairs of varied lengths, ids 4.. (clear of the special ids)."""
    rng = random.Random(seed)
    side = lambda: [np.array([rng.randrange(4, 50) for _ in range(rng.randrange(1, 30))]) for _ in range(n)]  # noqa: E731
    return side(), side()


def test_each_pair_is_in_exactly_one_batch_within_the_token_budget():
    src, trg = corpus()
    batches = make_batches([len(s) for s in src], [len(t) for t in trg], batch_tokens=256)
    assert sorted(itertools.chain.from_iterable(batches)) == list(range(len(src)))
    for indices in batches:
        batch = collate(src, trg, indices)
        assert batch.src_ids.shape[0] * max(batch.src_ids.shape[1], batch.trg_in.shape[1]) <= 256


def test_collate_keeps_the_text_and_marks_its_ends():
    src, trg = corpus(5)
    batch = collate(src, trg, [0, 1, 2])
    for row, k in enumerate([0, 1, 2]):
        s, t = src[k].tolist(), trg[k].tolist()
        assert batch.src_ids[row, : len(s) + 1].tolist() == s + [EOS_ID]
        assert batch.trg_in[row, : len(t) + 1].tolist() == [BOS_ID] + t
        assert batch.trg_out[row, : len(t) + 1].tolist() == t + [EOS_ID]
        assert (batch.src_ids[row, len(s) + 1:] == PAD_ID).all()
    assert batch.trg_tokens == sum(len(trg[k]) + 1 for k in [0, 1, 2])


def test_a_stream_resumed_at_a_position_continues_exactly():
    src, trg = corpus()
    stream = BatchStream(src, trg, batch_tokens=256, seed=3, max_len=64)
    per_epoch = stream.batches_per_epoch()
    straight = list(itertools.islice(stream(Position()), 2 * per_epoch + 5))
    for stop in (1, per_epoch - 1, per_epoch, per_epoch + 7):
        position = straight[stop - 1][0]
        resumed = list(itertools.islice(stream(position), 5))
        for (p, a), (q, b) in zip(straight[stop: stop + 5], resumed):
            assert p == q
            assert torch.equal(a.src_ids, b.src_ids) and torch.equal(a.trg_out, b.trg_out)


def test_epochs_are_shuffled_differently_and_positions_count_batches():
    src, trg = corpus()
    stream = BatchStream(src, trg, batch_tokens=256, seed=3, max_len=64)
    n = stream.batches_per_epoch()
    positions = [p for p, _ in itertools.islice(stream(Position()), n + 1)]
    assert positions[n - 1] == Position(1, n) and positions[n] == Position(2, 1)
    assert epoch_order(n, 3, 1) != epoch_order(n, 3, 2)


def test_ranks_share_an_epoch_without_overlap():
    orders = [epoch_order(11, seed=5, epoch=1, rank=r, world=2) for r in range(2)]
    assert len(orders[0]) == len(orders[1]) == 5  # the odd batch out is dropped
    assert not set(orders[0]) & set(orders[1])
    assert set(orders[0]) | set(orders[1]) <= set(range(11))
