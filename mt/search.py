"""Greedy and beam search over a batch of sentences, on the model's incremental decoding cache.

Both searches run the encoder once per batch and then one decoder position per step
(`Transformer.decode_step`). Beam search keeps all beams of all sentences in one tensor of
batch x beam rows; finished sentences leave the batch so later steps only pay for the rest.

Scores: a hypothesis' `score` is the sum of its token log-probabilities, EOS included. Beam
search ranks finished hypotheses by `score / lp(length)`, GNMT's length penalty
lp(n) = ((5 + n) / 6) ** alpha, where n counts EOS; alpha = 0 ranks by raw score.

Beam 1 takes the same argmax at each step as greedy search, so it returns the same output.

On a GPU the search loop is bound by the host, not the device, so each step waits for the
device as little as it can: length limits are known on the host, what finished at a step
comes over in one transfer per field (not one `.item()` per hypothesis), and beam search reads
its live scores only when some sentence has enough finished hypotheses to need them.
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
    """Rows that reached their length limit can only end (no host sync: `where`, not indexing)."""
    forced = torch.full_like(log_probs, -float("inf"))
    # ending must stay possible even when the model gives EOS no probability at all
    forced[:, EOS_ID] = log_probs[:, EOS_ID].clamp(min=-1e9)
    return torch.where(at_limit[:, None], forced, log_probs)


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
    limit_steps = set(limits.tolist())  # the steps at which some sentence must end
    weights = AttentionWeights() if record_attention else None
    rows = torch.arange(batch, device=src_ids.device)  # which sentence each live row is
    last = torch.full((batch,), BOS_ID, dtype=torch.long, device=src_ids.device)
    tokens = src_ids.new_zeros(batch, 0)
    scores = torch.zeros(batch, device=src_ids.device)
    attention = [] if record_attention else None
    results: list[Optional[Hypothesis]] = [None] * batch
    for step in range(max(limit_steps) + 1):
        log_probs, cache = model.decode_step(last, src_mask, cache, weights)
        log_probs = _forbid_specials(log_probs)
        if step in limit_steps:
            log_probs = _force_eos(log_probs, limits[rows] == step)
        best, last = log_probs.max(dim=-1)
        tokens, scores = torch.cat([tokens, last[:, None]], dim=1), scores + best
        if record_attention:
            attention.append(_cross_attention(weights))
        done = last == EOS_ID
        if not done.any():  # the step's one host sync
            continue
        ended = done.nonzero()[:, 0]
        # one transfer for every sentence that ended at this step
        for row, sentence, ids, score in zip(ended.tolist(), rows[ended].tolist(), tokens[ended, :-1].tolist(),
                                             scores[ended].tolist()):
            attn = torch.stack([a[row] for a in attention], dim=2).cpu() if record_attention else None
            results[sentence] = Hypothesis(ids, score, score, attn)
        keep = (~done).nonzero()[:, 0]
        if keep.numel() == 0:
            break
        rows, last, tokens, scores = rows[keep], last[keep], tokens[keep], scores[keep]
        src_mask, cache = src_mask[keep], reorder_cache(cache, keep, cross_index=keep)
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
    limits_host = limits.tolist()
    limit_steps = set(limits_host)  # the steps at which some sentence must end
    best_lp = length_penalty(limits.float() + 1, alpha)  # the largest penalty a sentence can get
    weights = AttentionWeights() if record_attention else None

    sentences = torch.arange(batch, device=device)  # which sentence each live group of rows is
    sentences_host = list(range(batch))
    tokens = src_ids.new_zeros(batch * beam, 0)
    scores = torch.full((batch, beam), -float("inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: let only the first one expand at step 0
    last = torch.full((batch * beam,), BOS_ID, dtype=torch.long, device=device)
    attention = src_ids.new_zeros(batch * beam, 0).float() if record_attention else None
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for step in range(max(limit_steps) + 1):
        live = len(sentences_host)
        log_probs, cache = model.decode_step(last, src_mask, cache, weights)
        log_probs = _forbid_specials(log_probs)
        if step in limit_steps:
            log_probs = _force_eos(log_probs, (limits[sentences] == step).repeat_interleave(beam))
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
        groups, ks = ends.nonzero().unbind(1)  # the step's host sync
        if groups.numel():
            ended_rows = groups * beam + top_beam[groups, ks]
            n = tokens.size(1) + 1
            # one transfer each for every hypothesis that ended at this step
            for group, row, ids, score in zip(groups.tolist(), ended_rows.tolist(), tokens[ended_rows].tolist(),
                                              top_scores[groups, ks].tolist()):
                attn = attention[row].cpu() if record_attention else None
                finished[sentences_host[group]].append(
                    Hypothesis(ids, score, score / length_penalty(n, alpha), attn))

        # the next live beams: the best `beam` candidates that do not end
        rank = torch.arange(2 * beam, device=device).expand(live, -1)
        order = (rank + (top_token == EOS_ID) * 2 * beam).argsort(dim=1)[:, :beam]
        next_beam = top_beam.gather(1, order)
        scores = top_scores.gather(1, order)
        last = top_token.gather(1, order).view(-1)
        source_rows = (torch.arange(live, device=device)[:, None] * beam + next_beam).view(-1)

        bounds = None  # only a sentence with nbest finished hypotheses needs its live scores
        if any(len(finished[sentence]) >= nbest for sentence in sentences_host):
            bounds = (scores.max(dim=1).values / best_lp[sentences]).tolist()
        keep = [g for g, sentence in enumerate(sentences_host)
                if not _sentence_done(finished[sentence], None if bounds is None else bounds[g], beam, nbest,
                                      step >= limits_host[sentence])]
        if not keep:
            break
        cross_rows = None  # beams only moved within their sentences: the encoder rows stay
        if len(keep) < live:  # drop finished sentences' rows
            keep_groups = torch.tensor(keep, device=device)
            cross_rows = (keep_groups[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            source_rows = source_rows.view(live, beam)[keep_groups].view(-1)
            last = last.view(live, beam)[keep_groups].view(-1)
            scores, sentences = scores[keep_groups], sentences[keep_groups]
            sentences_host = [sentences_host[g] for g in keep]
            src_mask = src_mask[cross_rows]
        tokens = torch.cat([tokens[source_rows], last[:, None]], dim=1)
        cache = reorder_cache(cache, source_rows, cross_index=cross_rows)
        if record_attention:
            attention = attention[source_rows]

    for hyps in finished:
        while len(hyps) < nbest:  # only a diverged model (every score -inf) finishes too few
            hyps.append(Hypothesis([], -float("inf"), -float("inf")))
        hyps.sort(key=lambda h: h.normalized, reverse=True)
    return [hyps[:nbest] for hyps in finished]


def _sentence_done(hyps: list[Hypothesis], bound: Optional[float], beam: int, nbest: int, at_limit: bool) -> bool:
    """True when no live beam can still change this sentence's n-best list.

    `bound` is the most a live beam can still reach, normalized: a live beam's score only falls
    as it grows, so the most is its score now over the largest length penalty the sentence allows.
    """
    if len(hyps) >= beam or at_limit:
        return True
    if len(hyps) < nbest:
        return False
    worst_kept = sorted((h.normalized for h in hyps), reverse=True)[nbest - 1]
    return bound <= worst_kept
