"""batching.py: every pair once per epoch within the token budget, padding that keeps the text,
a stream that resumes at any position, ranks that share an epoch without overlap; batches made
from the length arrays, padding straight from the mapped id cache, and the background thread
that makes the next batches give the same batches, in the same order, as the per-sentence loops
they replaced (kept here as the reference)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from mt.batching import BatchStream, Position, collate, epoch_order, make_batches, round_up, sort_by_lengths
from mt.idcache import Ragged, load_ids, save_ids
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


def loop_batches(src_lengths, trg_lengths, batch_tokens, pad_multiple=8) -> list[list[int]]:
    """make_batches as it was: one Python step per sentence."""
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


def loop_collate(src, trg, indices, pad_multiple=8, max_len=None):
    """collate as it was: one row at a time; returns (src_ids, trg_in, trg_out) as lists."""
    if max_len is not None:
        src = [src[i][: max_len - 1] for i in indices]
        trg = [trg[i][: max_len - 1] for i in indices]
    else:
        src, trg = [src[i] for i in indices], [trg[i] for i in indices]
    src_len = round_up(max(len(s) for s in src) + 1, pad_multiple)
    trg_len = round_up(max(len(t) for t in trg) + 1, pad_multiple)
    if max_len is not None:
        src_len, trg_len = min(src_len, max_len), min(trg_len, max_len)
    src_ids = [list(s) + [EOS_ID] + [PAD_ID] * (src_len - len(s) - 1) for s in src]
    trg_in = [[BOS_ID] + list(t) + [PAD_ID] * (trg_len - len(t) - 1) for t in trg]
    trg_out = [list(t) + [EOS_ID] + [PAD_ID] * (trg_len - len(t) - 1) for t in trg]
    return src_ids, trg_in, trg_out


def random_ids(rng: np.random.Generator, count: int, longest: int) -> list[list[int]]:
    return [rng.integers(4, 500, size=rng.integers(0, longest + 1)).tolist() for _ in range(count)]


@pytest.mark.parametrize("seed", range(6))
def test_batches_are_exactly_those_of_the_per_sentence_loop(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 3000))
    # long tails too: sentences longer than a whole batch must each be a batch of their own
    src = rng.integers(0, 400 if seed % 2 else 60, size=count)
    trg = rng.integers(0, 60, size=count)
    batch_tokens, pad_multiple = int(rng.choice([64, 500, 2048, 8192])), int(rng.choice([1, 8]))
    batches = make_batches(src, trg, batch_tokens, pad_multiple)
    assert [b.tolist() for b in batches] == loop_batches(src, trg, batch_tokens, pad_multiple)
    assert sorted(itertools.chain.from_iterable(b.tolist() for b in batches)) == list(range(count))


@pytest.mark.parametrize("longest", [300, 70_000])  # the radix sorts, and lexsort beyond 16 bits
def test_sorting_by_lengths_keeps_lexsorts_order_ties_included(longest):
    rng = np.random.default_rng(longest)
    src, trg = rng.integers(1, longest, 50_000), rng.integers(1, 40, 50_000)  # many ties
    assert np.array_equal(sort_by_lengths(src, trg), np.lexsort((src, trg)))


def test_no_sentences_make_no_batches():
    assert len(make_batches([], [], 100)) == 0


@pytest.mark.parametrize("max_len", [None, 12])
def test_collate_pads_exactly_as_the_per_row_loop(tmp_path, max_len):
    rng = np.random.default_rng(1)
    src_ids, trg_ids = random_ids(rng, 300, 30), random_ids(rng, 300, 30)
    save_ids(tmp_path / "train", src_ids, trg_ids)
    mapped = load_ids(tmp_path / "train")
    for indices in ([0], [5, 3, 299, 17], rng.permutation(300)[:64].tolist()):
        batch = collate(mapped.src, mapped.trg, indices, max_len=max_len)
        expected = loop_collate(src_ids, trg_ids, indices, max_len=max_len)
        assert [batch.src_ids.tolist(), batch.trg_in.tolist(), batch.trg_out.tolist()] == list(expected)
        assert batch.trg_tokens == int((batch.trg_out != PAD_ID).sum())
        assert batch.src_tokens == int((batch.src_ids != PAD_ID).sum())
        from_lists = collate(src_ids, trg_ids, indices, max_len=max_len)  # plain lists of ids work too
        assert torch.equal(from_lists.trg_in, batch.trg_in) and torch.equal(from_lists.src_ids, batch.src_ids)


def stream_contents(stream: BatchStream, position: Position, count: int, prefetch: int) -> list:
    items = stream(position, prefetch=prefetch)
    taken = [next(items) for _ in range(count)]
    return [(p.epoch, p.batches_done, b.src_ids.tolist(), b.trg_out.tolist()) for p, b in taken]


def test_prefetching_changes_neither_the_batches_nor_their_order_nor_resuming(tmp_path):
    rng = np.random.default_rng(2)
    save_ids(tmp_path / "train", random_ids(rng, 400, 20), random_ids(rng, 400, 20))
    ids = load_ids(tmp_path / "train")
    stream = BatchStream(ids.src, ids.trg, batch_tokens=256, seed=3, max_len=16, rank=1, world=2)
    per_epoch = stream.batches_per_epoch()
    whole = stream_contents(stream, Position(), 2 * per_epoch + 3, prefetch=0)
    assert stream_contents(stream, Position(), 2 * per_epoch + 3, prefetch=3) == whole
    # resuming mid-epoch gives the rest of that epoch, then the next, exactly
    assert stream_contents(stream, Position(1, 5), per_epoch, prefetch=3) == whole[5: 5 + per_epoch]


def test_an_error_while_making_a_batch_reaches_the_caller(tmp_path):
    save_ids(tmp_path / "train", [[5, 6]] * 10, [[7]] * 10)
    ids = load_ids(tmp_path / "train")
    broken = Ragged(ids.trg.tokens, ids.trg.offsets + 10**6)  # offsets past the end of the tokens
    stream = BatchStream(ids.src, broken, batch_tokens=64, seed=1, max_len=8)
    items = stream(Position(), prefetch=2)
    with pytest.raises(IndexError):
        next(items)
    with pytest.raises(IndexError):  # and stays raised, rather than waiting forever
        next(items)
