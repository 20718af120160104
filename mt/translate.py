"""Text in, text out: `mt translate`, and the function training and eval use to translate lines.

Lines are encoded with the run's SentencePiece model, sorted by length into batches of about
`batch_tokens` source tokens, searched (greedy for beam 1, else beam search), detokenized and
put back in input order. Every input line gives exactly one output line (n lines with --nbest n):

  - an empty or whitespace-only line gives an empty line, without running the model;
  - a line longer than the model's positions is cut to fit, with a warning on stderr;
  - NUL characters are read as spaces (SentencePiece would otherwise drop what follows them);
  - invalid UTF-8 stops with an error naming the line; every line before it has been written.

`translate_stream` reads stdin in chunks and writes each chunk as soon as it is translated, so
output starts early, memory stays flat, and a line typed at a terminal is answered at once.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, TextIO

import torch
from tqdm import tqdm

from mt.batching import make_batches, pad_ids
from mt.checkpoint import Loaded, load_for_inference
from mt.device import autocast
from mt.errors import MtError
from mt.model import attention_backends
from mt.search import Hypothesis, beam_search, greedy_search
from mt.tokenizer import EOS_ID

log = logging.getLogger(__name__)

CHUNK_LINES = 2000  # lines translated together when input arrives faster than we translate


@dataclass
class Translation:
    """One input line's result: its source pieces (EOS included) and the n best hypotheses."""

    src_ids: list[int]
    hyps: list[Hypothesis]


def translate_ids(loaded: Loaded, src_ids: Sequence[list[int]], beam: Optional[int] = None, nbest: int = 1,
                  batch_tokens: Optional[int] = None, record_attention: bool = False,
                  progress: bool = False, between_batches: Callable[[], None] = lambda: None) -> list[Translation]:
    """Search every source (piece ids, no EOS) and return the results in input order.

    Sources must already fit the model (see `fit_source`); empty ones are not searched. With
    `record_attention` each hypothesis carries the cross-attention that produced it (see
    `Hypothesis.attention`); `mt.align.teacher_forced_attention` gives all three kinds. With
    `progress`, a bar on stderr counts the lines, when stderr is a terminal (never in a log).
    `between_batches` is called before each batch's search: what it raises ends the translation
    (training abandons a validation so).
    """
    dec = loaded.cfg.decoding
    beam = beam or dec.beam
    batch_tokens = batch_tokens or dec.batch_tokens
    results: list[Optional[Translation]] = [None] * len(src_ids)
    todo = [i for i, ids in enumerate(src_ids) if ids]
    for i, ids in enumerate(src_ids):
        if not ids:
            results[i] = Translation([EOS_ID], [Hypothesis([], 0.0, 0.0)] * nbest)
    lengths = [len(src_ids[i]) for i in todo]
    bar = tqdm(total=len(todo), unit="line", desc="translate", leave=False, dynamic_ncols=True,
               disable=not progress or not sys.stderr.isatty())
    # batch size is counted in source tokens times beam: that is what the decoder holds
    for batch in make_batches(lengths, lengths, max(batch_tokens // beam, 1)):
        between_batches()
        indices = [todo[k] for k in batch]
        found = _search(loaded, [src_ids[i] for i in indices], beam, nbest, record_attention)
        bar.update(len(batch))
        for i, hyps in zip(indices, found):
            source = [*src_ids[i], EOS_ID]
            for h in hyps:
                if h.attention is not None:  # drop the batch's padding columns
                    h.attention = h.attention[..., : len(source)]
            results[i] = Translation(source, hyps)
    bar.close()
    return results


def _search(loaded: Loaded, sources: Sequence[Sequence[int]], beam: int, nbest: int,
            record_attention: bool) -> list[list[Hypothesis]]:
    """The n best hypotheses of each source in one batch: greedy search for beam 1, else beam search."""
    dec = loaded.cfg.decoding
    width = max(len(s) for s in sources) + 1  # EOS
    src = torch.from_numpy(pad_ids(sources, width, last=EOS_ID)).to(loaded.device)  # (batch, src_len)
    with attention_backends(), autocast(loaded.device, loaded.autocast_dtype):
        if beam == 1 and nbest == 1:
            return [[h] for h in greedy_search(loaded.model, src, dec.max_len_a, dec.max_len_b, record_attention)]
        return beam_search(loaded.model, src, beam, dec.length_penalty, dec.max_len_a, dec.max_len_b, nbest,
                           record_attention)


def max_source_pieces(loaded: Loaded) -> int:
    """The most pieces of a source line the model takes: one position is the source EOS."""
    return loaded.cfg.model.max_len - 1


def source_ids(loaded: Loaded, lines: Sequence[str]) -> list[list[int]]:
    """Piece ids per line, not cut to the model's maximum; whitespace-only lines give []."""
    cleaned = [line.replace("\0", " ").strip() for line in lines]
    encoded = loaded.tokenizer.encode_src(cleaned)
    return [ids if text else [] for ids, text in zip(encoded, cleaned)]


def fit_source(loaded: Loaded, lines: Sequence[str], first_line: int = 1) -> list[list[int]]:
    """Piece ids per line; whitespace-only lines give []; over-long lines are cut with a warning."""
    limit = max_source_pieces(loaded)
    encoded = source_ids(loaded, lines)
    for k, ids in enumerate(encoded):
        if len(ids) > limit:
            log.warning("warning: line %d: %d pieces, cut to the model's maximum of %d", first_line + k, len(ids), limit)
            encoded[k] = ids[:limit]
    return encoded


def translate_lines(loaded: Loaded, lines: Sequence[str], beam: Optional[int] = None, nbest: int = 1,
                    batch_tokens: Optional[int] = None, alignments: bool = False,
                    first_line: int = 1, progress: bool = False,
                    between_batches: Callable[[], None] = lambda: None) -> list[str]:
    """Detokenized output lines for `lines`: one per line, or `nbest` per line in Moses n-best
    format (`index ||| translation ||| score`); with `alignments`, `i-j` pairs follow after a tab
    (one best) or as a fourth `|||` field (n-best). `between_batches`: see `translate_ids`."""
    src_ids = fit_source(loaded, lines, first_line)
    results = translate_ids(loaded, src_ids, beam, nbest, batch_tokens, record_attention=alignments,
                            progress=progress, between_batches=between_batches)
    out = []
    for k, result in enumerate(results):
        texts = loaded.tokenizer.decode_trg([h.tokens for h in result.hyps])
        for h, text in zip(result.hyps, texts):
            links = ""
            if alignments:
                from mt.align import word_alignment

                pairs = word_alignment(loaded.tokenizer, result.src_ids, h) if h.tokens else []
                links = " ".join(f"{i}-{j}" for i, j in pairs)
            if nbest == 1:
                out.append(f"{text}\t{links}" if alignments else text)
            else:  # alignments as a field of their own, after the score
                line = f"{first_line + k - 1} ||| {text} ||| {h.normalized:.4f}"
                out.append(f"{line} ||| {links}" if alignments else line)
    return out


def read_chunks(stream: BinaryIO, max_lines: int = CHUNK_LINES) -> Iterator[list[bytes]]:
    """Complete input lines, in chunks: up to `max_lines` when input is waiting, else what is there.

    Reading the file descriptor directly (not through a buffer) lets `select` tell whether more
    input is waiting, so a terminal or a pipe that pauses gets its answer without delay.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:  # an in-memory stream: everything is already there; lines end at "\n" only
        lines = stream.read().split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        for start in range(0, len(lines), max_lines):
            yield lines[start : start + max_lines]
        return
    pending, lines = b"", []
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            break
        *complete, pending = (pending + data).split(b"\n")
        lines.extend(complete)
        while len(lines) >= max_lines:
            yield lines[:max_lines]
            lines = lines[max_lines:]
        waiting = select.select([fd], [], [], 0)[0] if os.name == "posix" else [fd]
        if lines and not waiting:
            yield lines
            lines = []
    if pending:  # a last line without a newline is still a line
        lines.append(pending)
    if lines:
        yield lines


def _is_terminal(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # an in-memory stream
        return False


def decode_lines(raw: Sequence[bytes], first_line: int) -> tuple[list[str], Optional[MtError]]:
    """UTF-8 text per line (CR of CRLF endings dropped) up to the first invalid line, and the
    error naming that line, if any: the caller translates the good lines before raising it."""
    text = []
    for k, line in enumerate(raw):
        try:
            text.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as err:
            return text, MtError(f"stdin:{first_line + k}: invalid UTF-8 at byte {err.start}; "
                                 f"the {first_line + k - 1} lines before it were translated")
    return text, None


def translate_stream(run_dir, stdin: BinaryIO, stdout: TextIO, checkpoint: str = "best",
                     beam: Optional[int] = None, nbest: int = 1, batch_tokens: Optional[int] = None,
                     device: str = "auto", alignments: bool = False, precision: Optional[str] = None) -> None:
    """`mt translate`: stdin lines to stdout lines, chunk by chunk, logs on stderr."""
    loaded = load_for_inference(run_dir, checkpoint, device, precision)
    beam = beam or loaded.cfg.decoding.beam
    if nbest < 1 or nbest > beam:
        raise MtError(f"--nbest {nbest}: more than the beam size ({beam}); give --beam {nbest} or more")
    start, count = time.monotonic(), 0
    for raw in read_chunks(stdin):
        lines, error = decode_lines(raw, count + 1)
        out = translate_lines(loaded, lines, beam, nbest, batch_tokens, alignments, first_line=count + 1,
                              progress=not _is_terminal(stdin))  # typed lines need no bar
        stdout.write("".join(line + "\n" for line in out))
        stdout.flush()
        count += len(lines)
        if error:
            raise error
    elapsed = time.monotonic() - start
    log.info("translated %d line%s in %.1f s (%.1f lines/s, beam %d, %s)", count, "" if count == 1 else "s",
             elapsed, count / max(elapsed, 1e-9), beam, loaded.device)
