"""Greedy and beam search on the model the toy config trains: what a user would see as wrong
or unstable translations if the search broke."""

from __future__ import annotations

import pytest
import torch

from mt.batching import pad_ids
from mt.checkpoint import load_for_inference
from mt.files import read_lines
from mt.search import beam_search, greedy_search
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mt.translate import fit_source


@pytest.fixture(scope="module")
def loaded(toy_run):
    return load_for_inference(toy_run / "run", "best", "cpu")


@pytest.fixture(scope="module")
def sources(toy_run) -> list[str]:
    return read_lines(toy_run / "data/dev.src")[:40]


def batch_of(loaded, lines: list[str]) -> torch.Tensor:
    """The lines as translation reads them: pieces + EOS, PAD after."""
    ids = fit_source(loaded, lines)
    return torch.from_numpy(pad_ids(ids, max(map(len, ids)) + 1, last=EOS_ID))


def test_beam_1_is_greedy(loaded, sources):
    src = batch_of(loaded, sources)
    greedy = greedy_search(loaded.model, src, 1.5, 5)
    beam = beam_search(loaded.model, src, 1, 0.0, 1.5, 5)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [round(h.score, 4) for h in greedy] == [round(b[0].score, 4) for b in beam]


def test_beam_5_scores_at_least_greedy(loaded, sources):
    src = batch_of(loaded, sources)
    greedy = greedy_search(loaded.model, src, 1.5, 5)
    beam = beam_search(loaded.model, src, 5, 0.0, 1.5, 5, nbest=5)
    for g, hyps in zip(greedy, beam):
        assert hyps[0].score >= g.score - 1e-4
        assert [h.normalized for h in hyps] == sorted((h.normalized for h in hyps), reverse=True)


def test_batched_search_equals_one_sentence_at_a_time(loaded, sources):
    """Padding, per-sentence length limits and finished sentences leaving the batch change
    nothing: each sentence gets the hypotheses (all five of its 5-best) and scores that it
    gets when searched alone."""
    src = batch_of(loaded, sources)
    batched_greedy = greedy_search(loaded.model, src, 1.5, 5)
    batched_beam = beam_search(loaded.model, src, 5, 1.0, 1.5, 5, nbest=5)
    for k, line in enumerate(sources):
        alone = batch_of(loaded, [line])
        [greedy] = greedy_search(loaded.model, alone, 1.5, 5)
        [beam] = beam_search(loaded.model, alone, 5, 1.0, 1.5, 5, nbest=5)
        assert greedy.tokens == batched_greedy[k].tokens
        assert abs(greedy.score - batched_greedy[k].score) < 1e-4
        assert [h.tokens for h in beam] == [h.tokens for h in batched_beam[k]]
        assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(beam, batched_beam[k]))


def full_prefix_greedy(model, encoder_out, src_mask, limit: int) -> tuple[list[int], float]:
    """Greedy search the slow, obvious way: the decoder re-runs over the whole prefix at every
    step. It stops as the search does: at EOS, or with EOS forced once `limit` tokens are out."""
    prefix, score = [BOS_ID], 0.0
    while prefix[-1] != EOS_ID:
        logits = model.decode(torch.tensor([prefix]), encoder_out, src_mask)[0, -1]
        log_probs = logits.float().log_softmax(-1)
        log_probs[[PAD_ID, BOS_ID]] = -float("inf")
        if len(prefix) - 1 == limit:  # forced: ending stays possible even at probability 0
            token, step_score = EOS_ID, max(float(log_probs[EOS_ID]), -1e9)
        else:
            token = int(log_probs.argmax())
            step_score = float(log_probs[token])
        score += step_score
        prefix.append(token)
    return prefix[1:-1], score


@pytest.mark.parametrize("max_len_a, max_len_b", [(1.5, 5), (0.0, 2)])  # (0, 2): every output is cut at 2 tokens
def test_cached_search_equals_full_prefix_decoding(loaded, sources, max_len_a, max_len_b):
    """Greedy on the cache == greedy that re-runs the decoder over the whole prefix each step,
    also for outputs that reach the length limit, a * (source pieces) + b, and are ended there."""
    model = loaded.model
    src_ids = fit_source(loaded, sources[:8])
    src = batch_of(loaded, sources[:8])
    cached = greedy_search(model, src, max_len_a, max_len_b)
    limits = [min(int(max_len_a * len(ids) + max_len_b), model.max_len - 1) for ids in src_ids]
    if max_len_b == 2:
        assert all(len(h.tokens) == 2 for h in cached)  # the toy outputs are longer: each one is cut
    with torch.inference_mode():
        encoder_out, mask = model.encode(src)
        for row, (hyp, limit) in enumerate(zip(cached, limits)):
            tokens, score = full_prefix_greedy(model, encoder_out[row : row + 1], mask[row : row + 1], limit)
            assert tokens == hyp.tokens
            assert abs(score - hyp.score) < 1e-4


def test_beam_search_ends_every_hypothesis_at_the_length_limit(loaded, sources):
    src = batch_of(loaded, sources[:8])
    for hyps in beam_search(loaded.model, src, 4, 1.0, 0.0, 2, nbest=4):
        assert len(hyps) == 4 and all(len(h.tokens) <= 2 and h.score > -float("inf") for h in hyps)
        assert len({tuple(h.tokens) for h in hyps}) == 4  # four different hypotheses, not one repeated


def test_recorded_cross_attention_is_the_same_greedy_and_beam(loaded, sources):
    """Both searches record attention the same way: one (layers, heads, tokens + 1, src_len)
    tensor per hypothesis, rows summing to one, equal for the same output."""
    src = batch_of(loaded, sources[:6])
    greedy = greedy_search(loaded.model, src, 1.5, 5, record_attention=True)
    beam = beam_search(loaded.model, src, 1, 0.0, 1.5, 5, record_attention=True)
    m = loaded.cfg.model
    for g, [b] in zip(greedy, beam):
        assert g.attention.shape == (m.decoder_layers, m.heads, len(g.tokens) + 1, src.size(1))
        torch.testing.assert_close(g.attention.sum(-1), torch.ones(g.attention.shape[:-1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(b.attention, g.attention, atol=1e-5, rtol=0)
