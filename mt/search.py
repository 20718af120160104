"""Greedy and beam search over a batch of sentences, on the model's incremental decoding cache.

Both searches run the encoder once per batch and then one decoder position per step
(`Transformer.decode_step`). Beam search keeps all beams of all sentences in one tensor of
batch x beam rows; finished sentences leave the batch so later steps only pay for the rest.

Scores: a hypothesis' `score` is the sum of its token log-probabilities, EOS included. Beam
search ranks finished hypotheses by `score / lp(length)`, GNMT's length penalty
lp(n) = ((5 + n) / 6) ** alpha, where n counts EOS; alpha = 0 ranks by raw score.

Beam 1 takes the same argmax at each step as greedy search, so it returns the same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from mt.model import AttentionWeights, Transformer, reorder_cache
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float  # sum of log-probabilities, EOS included
    normalized: float  # beam search: score / lp(len(tokens) + 1), what it ranks by; greedy: score
    # cross-attention that produced each output position, EOS included, when asked for:
    # (decoder layers, heads, len(tokens) + 1, source length with EOS), rows summing to 1
    attention: Optional[Tensor] = None


def length_penalty(length: int | Tensor, alpha: float):
    return ((5 + length) / 6) ** alpha


def max_output_lengths(src_ids: Tensor, a: float, b: int, model_max_len: int) -> Tensor:
    """Per sentence, the most target tokens (EOS excluded) search may produce: a * |src| + b.

    |src| counts source pieces without EOS; positions beyond the model's maximum do not exist.
    """
    src_len = (src_ids != PAD_ID).sum(dim=1) - 1
    return (a * src_len.float() + b).floor().long().clamp(min=1, max=model_max_len - 1)


def _forbid_specials(log_probs: Tensor) -> Tensor:
    """PAD and BOS are never outputs; NaN (a diverged model) counts as impossible."""
    log_probs = log_probs.nan_to_num(nan=-float("inf"))
    log_probs[:, PAD_ID] = -float("inf")
    log_probs[:, BOS_ID] = -float("inf")
    return log_probs


def _force_eos(log_probs: Tensor, at_limit: Tensor) -> Tensor:
    """Rows that reached their length limit can only end."""
    if at_limit.any():
        eos = log_probs[at_limit][:, EOS_ID]
        log_probs[at_limit] = -float("inf")
        # ending must stay possible even when the model gives EOS no probability at all
        log_probs[at_limit.nonzero()[:, 0], EOS_ID] = eos.clamp(min=-1e9)
    return log_probs


def _cross_attention(weights: AttentionWeights) -> Tensor:
    """This step's cross-attention, (rows, layers, heads, src_len), and forget it."""
    step = torch.stack([w[:, :, -1, :] for w in weights.cross], dim=1).float()
    weights.cross.clear()
    weights.decoder_self.clear()
    return step


@torch.inference_mode()
def greedy_search(model: Transformer, src_ids: Tensor, max_len_a: float, max_len_b: int,
                  record_attention: bool = False) -> list[Hypothesis]:
    """The most probable next token at every step, for every sentence of the batch."""
    batch = src_ids.size(0)
    encoder_out, src_mask = model.encode(src_ids)
    cache = model.start_cache(encoder_out)
    limits = max_output_lengths(src_ids, max_len_a, max_len_b, model.max_len)
    weights = AttentionWeights() if record_attention else None
    rows = torch.arange(batch, device=src_ids.device)  # which sentence each live row is
    last = torch.full((batch,), BOS_ID, dtype=torch.long, device=src_ids.device)
    tokens = src_ids.new_zeros(batch, 0)
    scores = torch.zeros(batch, device=src_ids.device)
    attention = [] if record_attention else None
    results: list[Optional[Hypothesis]] = [None] * batch
    for step in range(int(limits.max()) + 1):
        log_probs, cache = model.decode_step(last, src_mask, cache, weights)
        log_probs = _force_eos(_forbid_specials(log_probs), limits[rows] == step)
        best, last = log_probs.max(dim=-1)
        tokens, scores = torch.cat([tokens, last[:, None]], dim=1), scores + best
        if record_attention:
            attention.append(_cross_attention(weights))
        done = last == EOS_ID
        if not done.any():
            continue
        for row in done.nonzero()[:, 0].tolist():
            attn = torch.stack([a[row] for a in attention], dim=2).cpu() if record_attention else None
            score = float(scores[row])
            results[int(rows[row])] = Hypothesis(tokens[row, :-1].tolist(), score, score, attn)
        keep = (~done).nonzero()[:, 0]
        if keep.numel() == 0:
            break
        rows, last, tokens, scores = rows[keep], last[keep], tokens[keep], scores[keep]
        src_mask, cache = src_mask[keep], reorder_cache(cache, keep)
        if record_attention:
            attention = [a[keep] for a in attention]
    return results


@torch.inference_mode()
def beam_search(model: Transformer, src_ids: Tensor, beam: int, alpha: float, max_len_a: float,
                max_len_b: int, nbest: int = 1, record_attention: bool = False) -> list[list[Hypothesis]]:
    """The `nbest` best of the hypotheses that a beam of size `beam` finds, per sentence.

    A sentence is finished when it has `beam` finished hypotheses, or when its best live beam,
    even with the most favourable length penalty, cannot enter its n-best list.
    """
    if nbest > beam:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam})")
    batch, device = src_ids.size(0), src_ids.device
    encoder_out, src_mask = model.encode(src_ids)
    # every sentence's row repeated `beam` times: row r * beam + j is beam j of sentence r
    expand = torch.arange(batch, device=device).repeat_interleave(beam)
    src_mask = src_mask[expand]
    cache = model.start_cache(encoder_out[expand])
    limits = max_output_lengths(src_ids, max_len_a, max_len_b, model.max_len)
    best_lp = length_penalty(limits.float() + 1, alpha)  # the largest penalty a sentence can get
    weights = AttentionWeights() if record_attention else None

    sentences = torch.arange(batch, device=device)  # which sentence each live group of rows is
    tokens = src_ids.new_zeros(batch * beam, 0)
    scores = torch.full((batch, beam), -float("inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: let only the first one expand at step 0
    last = torch.full((batch * beam,), BOS_ID, dtype=torch.long, device=device)
    attention = src_ids.new_zeros(batch * beam, 0).float() if record_attention else None
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for step in range(int(limits.max()) + 1):
        live = sentences.numel()
        log_probs, cache = model.decode_step(last, src_mask, cache, weights)
        at_limit = (limits[sentences] == step).repeat_interleave(beam)
        log_probs = _force_eos(_forbid_specials(log_probs), at_limit)
        vocab = log_probs.size(-1)
        candidates = (scores[:, :, None] + log_probs.view(live, beam, vocab)).view(live, beam * vocab)
        top_scores, top_index = candidates.topk(2 * beam, dim=1)  # at most `beam` of them end in EOS
        top_beam, top_token = top_index // vocab, top_index % vocab
        if record_attention:
            step_attn = _cross_attention(weights)  # (live * beam, layers, heads, src_len)
            attention = step_attn[:, :, :, None, :] if step == 0 else torch.cat(
                [attention, step_attn[:, :, :, None, :]], dim=3)

        # finished: EOS among the `beam` best candidates, with a finite score
        ends = (top_token == EOS_ID) & torch.isfinite(top_scores)
        ends[:, beam:] = False
        for group, k in ends.nonzero().tolist():
            row = group * beam + int(top_beam[group, k])
            score = float(top_scores[group, k])
            n = tokens.size(1) + 1
            attn = attention[row].cpu() if record_attention else None
            finished[int(sentences[group])].append(
                Hypothesis(tokens[row].tolist(), score, score / length_penalty(n, alpha), attn))

        # the next live beams: the best `beam` candidates that do not end
        rank = torch.arange(2 * beam, device=device).expand(live, -1)
        order = (rank + (top_token == EOS_ID) * 2 * beam).argsort(dim=1)[:, :beam]
        next_beam = top_beam.gather(1, order)
        scores = top_scores.gather(1, order)
        last = top_token.gather(1, order).view(-1)
        source_rows = (torch.arange(live, device=device)[:, None] * beam + next_beam).view(-1)

        done = _sentences_done(finished, sentences, scores, best_lp, beam, nbest, limits, step)
        keep_groups = (~done).nonzero()[:, 0]
        if keep_groups.numel() == 0:
            break
        if keep_groups.numel() < live:  # drop finished sentences' rows
            keep_rows = (keep_groups[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            source_rows = source_rows.view(live, beam)[keep_groups].view(-1)
            last = last.view(live, beam)[keep_groups].view(-1)
            scores, sentences = scores[keep_groups], sentences[keep_groups]
            src_mask = src_mask[keep_rows]
        tokens = torch.cat([tokens[source_rows], last[:, None]], dim=1)
        cache = reorder_cache(cache, source_rows)
        if record_attention:
            attention = attention[source_rows]

    for hyps in finished:
        while len(hyps) < nbest:  # only a diverged model (every score -inf) finishes too few
            hyps.append(Hypothesis([], -float("inf"), -float("inf")))
        hyps.sort(key=lambda h: h.normalized, reverse=True)
    return [hyps[:nbest] for hyps in finished]


def _sentences_done(finished: list[list[Hypothesis]], sentences: Tensor, scores: Tensor, best_lp: Tensor,
                    beam: int, nbest: int, limits: Tensor, step: int) -> Tensor:
    """Per live sentence: True when no live beam can still change its n-best list."""
    done = torch.zeros(sentences.numel(), dtype=torch.bool)
    # a live beam's score only falls as it grows; the most it can reach, normalized, is
    # its score now over the largest length penalty this sentence allows
    bound = (scores.max(dim=1).values / best_lp[sentences]).tolist()
    for group, sentence in enumerate(sentences.tolist()):
        hyps = finished[sentence]
        if len(hyps) >= beam or step >= int(limits[sentence]):
            done[group] = True
        elif len(hyps) >= nbest:
            worst_kept = sorted((h.normalized for h in hyps), reverse=True)[nbest - 1]
            done[group] = bound[group] <= worst_kept
    return done.to(sentences.device)
