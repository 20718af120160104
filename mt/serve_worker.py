"""The decoding worker behind `mt serve`: one queue, shared batches, one search at a time.

Request handlers put a `Job` (the request's lines as piece ids, and its options) on an
`asyncio.Queue` and await its future. One worker task takes what is waiting: the first job,
then whatever else arrives within `max_wait_ms` or is already queued, up to `max_batch_tokens`
source tokens. Jobs with the same options are searched together in one call, in a thread, so
the event loop keeps accepting requests while the device runs one search at a time. Under
load the queue fills while a search runs, so the next batch is larger: throughput grows with
the number of clients.

`Engine` is the only code here that calls into mt's translation functions (the same ones
`mt translate` and `mt attention --json` call): loading, encoding, searching, alignments and
attention are each one method, so a change of those APIs touches one place.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

import mt
from mt.align import teacher_forced_attention, word_alignment
from mt.checkpoint import Loaded, load_for_inference
from mt.plot import CheckpointLabel, SentenceAttention, attention_json, checkpoint_label
from mt.tokenizer import BOS_ID, EOS_ID
from mt.translate import Translation, max_source_pieces, source_ids, translate_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What a request asks of the search; jobs with equal options share one search call."""

    beam: int
    nbest: int
    alignments: bool
    attention: bool


@dataclass
class Job:
    sources: list[list[int]]  # piece ids per line, no EOS; [] for an empty line
    options: Options
    future: asyncio.Future
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(s) + 1 for s in self.sources)  # + the source EOS


class Engine:
    """A loaded model and the calls `mt serve` makes into mt's translate functions."""

    def __init__(self, loaded: Loaded, label: CheckpointLabel):
        self.loaded = loaded
        self.label = label  # the checkpoint's file name and step
        self.step = label.step
        self.max_pieces = max_source_pieces(loaded)  # a longer line is refused, not cut

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str, device: str) -> Engine:
        loaded = load_for_inference(run_dir, checkpoint, device)
        return cls(loaded, checkpoint_label(loaded.path))

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Piece ids per line, as `mt translate` makes them, but not cut: lines over
        `max_pieces` are the caller's to refuse."""
        return source_ids(self.loaded, lines)

    def translate(self, sources: Sequence[list[int]], options: Options, batch_tokens: int) -> list[dict]:
        """One result per source: translation, score, and when asked alignments, n-best, attention."""
        results = translate_ids(self.loaded, sources, options.beam, options.nbest, batch_tokens,
                                record_attention=options.alignments)
        return [self._shape(result, options) for result in results]

    def _shape(self, result: Translation, options: Options) -> dict:
        texts = self.loaded.tokenizer.decode_trg([h.tokens for h in result.hyps])
        hyps = [{"translation": text, "score": h.normalized,
                 "alignments": self._alignments(result, h) if options.alignments else None}
                for h, text in zip(result.hyps, texts)]
        best = dict(hyps[0])
        best["nbest"] = hyps if options.nbest > 1 else None
        best["attention"] = self._attention(result, texts[0]) if options.attention else None
        return best

    def _alignments(self, result: Translation, hyp) -> list[list[int]]:
        if not hyp.tokens:
            return []
        return [[i, j] for i, j in word_alignment(self.loaded.tokenizer, result.src_ids, hyp)]

    def _attention(self, result: Translation, text: str) -> Optional[dict]:
        """Tokens and every layer's and head's weights, laid out as `mt attention --json` writes them."""
        if len(result.src_ids) <= 1:  # an empty line: nothing was searched
            return None
        tokenizer, out_ids = self.loaded.tokenizer, result.hyps[0].tokens
        out_pieces = tokenizer.trg_pieces([*out_ids, EOS_ID])
        weights = teacher_forced_attention(self.loaded.model, result.src_ids, out_ids, self.loaded.device)
        sentence = SentenceAttention(0, "", text, tokenizer.src_pieces(result.src_ids), out_pieces,
                                     tokenizer.trg_pieces([BOS_ID]) + out_pieces[:-1], weights)
        shaped = attention_json(sentence, self.label)
        for key in ("checkpoint", "step", "line", "source", "translation"):  # /v1/info and the result hold these
            shaped.pop(key)
        return shaped

    def info(self, beam: int) -> dict:
        cfg = self.loaded.cfg
        m, dec = cfg.model, cfg.decoding
        return {
            "source_language": cfg.data.src_lang, "target_language": cfg.data.trg_lang,
            "model": {"d_model": m.d_model, "heads": m.heads, "encoder_layers": m.encoder_layers,
                      "decoder_layers": m.decoder_layers, "ff_dim": m.ff_dim, "max_len": m.max_len,
                      "source_vocab": self.loaded.tokenizer.src_vocab_size,
                      "target_vocab": self.loaded.tokenizer.trg_vocab_size},
            "checkpoint": {"file": self.loaded.path.name if self.loaded.path else None, "step": self.step},
            "decoding": {"beam": beam, "length_penalty": dec.length_penalty, "max_len_a": dec.max_len_a,
                         "max_len_b": dec.max_len_b},
            "device": str(self.loaded.device),
            "versions": {"mt": mt.__version__, "python": platform.python_version(), "torch": torch.__version__},
        }


class Batcher:
    """The queue and its one worker task; `translate` is what a request handler awaits."""

    def __init__(self, engine: Engine, max_batch_tokens: int, max_wait_ms: float):
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.held: collections.deque[Job] = collections.deque()  # taken, but over the last batch's budget
        self.searches = 0  # searches run; /v1/health reports them
        self.in_flight = 0  # requests handed over and not yet answered
        self.company = 1  # jobs in the last batch: how many to wait for in the next

    async def translate(self, sources: list[list[int]], options: Options) -> list[dict]:
        job = Job(sources, options, asyncio.get_running_loop().create_future())
        self.in_flight += 1
        try:
            await self.queue.put(job)
            return await job.future
        finally:
            self.in_flight -= 1

    async def run(self) -> None:
        """The worker: forever, gather a batch and search it (cancelled at shutdown)."""
        while True:
            jobs = await self._gather()
            groups: dict[Options, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                await self._search(options, group)

    async def _gather(self) -> list[Job]:
        """The oldest job, then what is queued while the token budget lasts; and while the batch
        has fewer jobs than the last one, wait up to max_wait for more: clients that were just
        answered are sending their next requests. A lone client never waits."""
        jobs = [self.held.popleft() if self.held else await self.queue.get()]
        tokens = jobs[0].tokens
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while tokens < self.max_batch_tokens:
            may_wait = len(jobs) < self.company
            job = self.held.popleft() if self.held else await self._next(deadline if may_wait else 0.0)
            if job is None:
                break
            if tokens + job.tokens > self.max_batch_tokens:
                self.held.appendleft(job)  # first in the next batch
                break
            jobs.append(job)
            tokens += job.tokens
        self.company = len(jobs)
        return jobs

    async def _next(self, deadline: float) -> Optional[Job]:
        """A queued job at once, else the next to arrive before the deadline, else None."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), remaining)
        except asyncio.TimeoutError:
            return None

    async def _search(self, options: Options, jobs: list[Job]) -> None:
        """One search over every line of `jobs`, in a thread; each job gets its own lines back."""
        sources = [s for job in jobs for s in job.sources]
        try:
            results = await asyncio.to_thread(self.engine.translate, sources, options, self.max_batch_tokens)
        except Exception as error:  # our bug, not the client's: every job of the batch is told
            log.exception("search failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self.searches += 1
        start = 0
        for job in jobs:
            if not job.future.done():  # done: the client went away and the handler was cancelled
                job.future.set_result(results[start : start + len(job.sources)])
            start += len(job.sources)
