"""Greedy and beam search over a batch of sentences, on the model's incremental decoding cache.

Both searches run the encoder once per batch and then one decoder position per step
(`Transformer.decode_step`), over one `SearchState`: the sentences still searched, each with
`width` rows (1 for greedy, the beam size for beam search), all in one tensor. A step is

  _next_log_probs      the decoder on the cache: what each row may add (PAD and BOS never,
                       only EOS at the length limit); records the step's cross-attention
  greedy               the best token of each row; sentences that chose EOS are finished
  beam                 _collect_finished: hypotheses ending in EOS among each sentence's best
                       _choose_next_beams: the best continuations that do not end
                       _unfinished_groups: the sentences a live beam can still improve
  _advance             rows follow the hypotheses they continue; finished sentences leave,
                       so later steps only pay for the rest

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
from typing import Iterator, Optional

import torch
from torch import Tensor

from mt.model import LayerCache, Transformer, reorder_cache
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


@dataclass
class Limits:
    """How long each sentence's output may grow (see `max_output_lengths`)."""

    tokens: Tensor  # (batch,) on the device
    host: list[int]  # the same, on the host: no sync to read
    steps: set[int]  # the steps at which some sentence must end

    @classmethod
    def of(cls, src_ids: Tensor, a: float, b: int, model_max_len: int) -> "Limits":
        tokens = max_output_lengths(src_ids, a, b, model_max_len)
        host = tokens.tolist()
        return cls(tokens, host, set(host))


@dataclass
class SearchState:
    """The sentences still searched and their live hypotheses, `width` rows per sentence (1 for
    greedy search, the beam size for beam search): row g * width + j is hypothesis j of group g.
    Each search step replaces every field; finished sentences' groups leave."""

    width: int
    sentences: list[int]  # the input sentence of each group, on the host
    sentence_ids: Tensor  # (groups,) the same on the device
    last: Tensor  # (rows,) each row's last token
    tokens: Tensor  # (rows, steps) the tokens so far, BOS left out
    scores: Tensor  # (groups, width) sum of the tokens' log-probabilities
    src_mask: Tensor  # (rows, 1, 1, src_len)
    cache: list[LayerCache]
    attention: Optional[Tensor]  # (rows, layers, heads, steps, src_len) when recording cross-attention


def _start(model: Transformer, src_ids: Tensor, width: int, record_attention: bool) -> SearchState:
    """Encode the batch once and give each sentence `width` rows; only the first row of each
    sentence is live at first (the others score -inf), so step 0 expands one hypothesis."""
    batch, device = src_ids.size(0), src_ids.device
    encoder_out, src_mask = model.encode(src_ids)
    expand = torch.arange(batch, device=device).repeat_interleave(width)  # row -> its sentence
    scores = torch.full((batch, width), -float("inf"), device=device)
    scores[:, 0] = 0.0
    attention = None
    if record_attention:
        layers, heads = len(model.decoder_layers), model.decoder_layers[0].cross_attn.heads
        attention = encoder_out.new_zeros(batch * width, layers, heads, 0, src_ids.size(1), dtype=torch.float)
    return SearchState(width, list(range(batch)), torch.arange(batch, device=device),
                       torch.full((batch * width,), BOS_ID, dtype=torch.long, device=device),
                       src_ids.new_zeros(batch * width, 0), scores, src_mask[expand],
                       model.start_cache(encoder_out[expand]), attention)


def _next_log_probs(model: Transformer, state: SearchState, limits: Limits, step: int) -> Tensor:
    """One decoder step for every live row: the log-probabilities (rows, vocab) the search
    chooses from. Advances the cache, and records the step's cross-attention when asked to."""
    decoded = model.decode_step(state.last, state.src_mask, state.cache, need_weights=state.attention is not None)
    state.cache = decoded.cache
    if state.attention is not None:
        step_attention = decoded.cross_weights.float()[:, :, :, None, :]  # (rows, layers, heads, 1, src_len)
        state.attention = torch.cat([state.attention, step_attention], dim=3)
    log_probs = _forbid_specials(decoded.log_probs)
    if step in limits.steps:
        at_limit = (limits.tokens[state.sentence_ids] == step).repeat_interleave(state.width)
        log_probs = _force_eos(log_probs, at_limit)
    return log_probs


def _advance(state: SearchState, last: Tensor, scores: Tensor, source_rows: Optional[Tensor],
             keep: Optional[list[int]]) -> None:
    """The state after a step: row r continues row `source_rows[r]` (None: itself) with token
    `last[r]`; only the groups in `keep` stay (None: all)."""
    cross_rows = None  # rows that only moved within their sentences share its encoder rows
    if keep is not None:
        live, groups = len(state.sentences), torch.tensor(keep, device=last.device)
        cross_rows = (groups[:, None] * state.width + torch.arange(state.width, device=last.device)).view(-1)
        source_rows = cross_rows if source_rows is None else source_rows.view(live, state.width)[groups].view(-1)
        last, scores = last.view(live, state.width)[groups].view(-1), scores[groups]
        state.sentences, state.sentence_ids = [state.sentences[g] for g in keep], state.sentence_ids[groups]
        state.src_mask = state.src_mask[cross_rows]
    if source_rows is not None:
        state.tokens = state.tokens[source_rows]
        state.cache = reorder_cache(state.cache, source_rows, cross_index=cross_rows)
        if state.attention is not None:
            state.attention = state.attention[source_rows]
    state.tokens = torch.cat([state.tokens, last[:, None]], dim=1)
    state.last, state.scores = last, scores


def _hypotheses(state: SearchState, rows: Tensor, scores: Tensor, penalty: float = 1.0
                ) -> Iterator[tuple[int, Hypothesis]]:
    """The given rows as finished hypotheses, normalized by `penalty`; each field of all of them
    comes from the device in one transfer (not one `.item()` per hypothesis)."""
    for row, ids, score in zip(rows.tolist(), state.tokens[rows].tolist(), scores.tolist()):
        attention = None if state.attention is None else state.attention[row].cpu()
        yield row, Hypothesis(ids, score, score / penalty, attention)


@torch.inference_mode()
def greedy_search(model: Transformer, src_ids: Tensor, max_len_a: float, max_len_b: int,
                  record_attention: bool = False) -> list[Hypothesis]:
    """The most probable next token at every step, for every sentence of the batch."""
    state = _start(model, src_ids, 1, record_attention)
    limits = Limits.of(src_ids, max_len_a, max_len_b, model.max_len)
    results: list[Optional[Hypothesis]] = [None] * src_ids.size(0)
    for step in range(max(limits.steps) + 1):
        log_probs = _next_log_probs(model, state, limits, step)
        best, last = log_probs.max(dim=-1)
        scores = state.scores + best[:, None]
        done, keep = last == EOS_ID, None
        if done.any():  # the step's one host sync
            ended = done.nonzero()[:, 0]
            found = dict(_hypotheses(state, ended, scores[ended, 0]))
            for row, hyp in found.items():
                results[state.sentences[row]] = hyp
            keep = [g for g in range(len(state.sentences)) if g not in found]
            if not keep:
                break
        _advance(state, last, scores, None, keep)
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
    state = _start(model, src_ids, beam, record_attention)
    limits = Limits.of(src_ids, max_len_a, max_len_b, model.max_len)
    finished: list[list[Hypothesis]] = [[] for _ in range(src_ids.size(0))]
    for step in range(max(limits.steps) + 1):
        log_probs = _next_log_probs(model, state, limits, step)
        candidates = _Candidates.best(state.scores, log_probs, beam)
        _collect_finished(state, candidates, alpha, finished)
        scores, last, source_rows = _choose_next_beams(candidates, beam)
        keep = _unfinished_groups(state, scores, finished, limits, alpha, nbest, step)
        if not keep:
            break
        _advance(state, last, scores, source_rows, None if len(keep) == len(state.sentences) else keep)
    return [_nbest_list(hyps, nbest) for hyps in finished]


@dataclass
class _Candidates:
    """The best continuations of each sentence's beams at a step, best first, (groups, 2 * beam)."""

    scores: Tensor
    beam: Tensor  # which of the sentence's beams each continues
    token: Tensor

    @classmethod
    def best(cls, scores: Tensor, log_probs: Tensor, beam: int) -> "_Candidates":
        """Twice `beam` of them: at most `beam` end in EOS, so `beam` that do not always remain."""
        live, vocab = scores.size(0), log_probs.size(-1)
        totals = (scores[:, :, None] + log_probs.view(live, beam, vocab)).view(live, beam * vocab)
        top_scores, top_index = totals.topk(2 * beam, dim=1)
        return cls(top_scores, top_index // vocab, top_index % vocab)


def _collect_finished(state: SearchState, candidates: _Candidates, alpha: float,
                      finished: list[list[Hypothesis]]) -> None:
    """Hypotheses that end here: EOS among the `beam` best candidates, with a finite score."""
    beam = state.width
    ends = (candidates.token == EOS_ID) & torch.isfinite(candidates.scores)
    ends[:, beam:] = False
    groups, ks = ends.nonzero().unbind(1)  # the step's host sync
    if not groups.numel():
        return
    rows = groups * beam + candidates.beam[groups, ks]
    penalty = length_penalty(state.tokens.size(1) + 1, alpha)  # every one of them has this length
    for group, (_, hyp) in zip(groups.tolist(), _hypotheses(state, rows, candidates.scores[groups, ks], penalty)):
        finished[state.sentences[group]].append(hyp)


def _choose_next_beams(candidates: _Candidates, beam: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best `beam` candidates that do not end: their scores (groups, beam), their tokens
    (rows,), and the row each continues (rows,)."""
    live = candidates.scores.size(0)
    rank = torch.arange(2 * beam, device=candidates.scores.device).expand(live, -1)
    order = (rank + (candidates.token == EOS_ID) * 2 * beam).argsort(dim=1)[:, :beam]
    source_rows = torch.arange(live, device=rank.device)[:, None] * beam + candidates.beam.gather(1, order)
    return candidates.scores.gather(1, order), candidates.token.gather(1, order).view(-1), source_rows.view(-1)


def _unfinished_groups(state: SearchState, scores: Tensor, finished: list[list[Hypothesis]], limits: Limits,
                       alpha: float, nbest: int, step: int) -> list[int]:
    """The groups whose sentences a live beam may still improve; `scores`: the live beams' scores."""
    bounds = None  # only a sentence with nbest finished hypotheses needs its live scores
    if any(len(finished[sentence]) >= nbest for sentence in state.sentences):
        best_lp = length_penalty(limits.tokens[state.sentence_ids].float() + 1, alpha)  # the largest it can get
        bounds = (scores.max(dim=1).values / best_lp).tolist()
    return [g for g, sentence in enumerate(state.sentences)
            if not _sentence_done(finished[sentence], None if bounds is None else bounds[g], state.width, nbest,
                                  step >= limits.host[sentence])]


def _nbest_list(hyps: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    while len(hyps) < nbest:  # only a diverged model (every score -inf) finishes too few
        hyps.append(Hypothesis([], -float("inf"), -float("inf")))
    return sorted(hyps, key=lambda h: h.normalized, reverse=True)[:nbest]


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
