"""Translate with a model folder made by `mt export`, giving `mt translate`'s output.

`mt export` copies this file into the folder as translate.py: it imports only ctranslate2 and
sentencepiece (never mt), so the folder works wherever CTranslate2 does.

    python translate.py [--beam N] [--device cpu|cuda] [--compute-type default|int8] < input > output

One line out per line in: lines end at "\n" only (a CR before it is dropped), as `mt translate`
reads them, and are translated in chunks as they arrive. Invalid UTF-8 stops with an error
naming the line, after the lines before it are written.

What it does to match mt (mt.translate and mt.search):
  - a line is cleaned as mt does (NUL read as a space, stripped), cut to max_len - 1 pieces; an
    empty line gives an empty line and score 0 without searching;
  - each sentence may produce at most floor(max_len_a * pieces + max_len_b) tokens (at least 1,
    at most max_len - 1): CTranslate2 takes one limit per call, so sentences with equal limits
    are translated together;
  - greedy search (beam 1) with no length normalisation: the score is the sum of token
    log-probabilities, </s> included;
  - beam search keeps searching until `beam` hypotheses have finished (a non-zero length
    penalty turns off CTranslate2's early exit), returns them all with </s>, and the best is
    chosen by mt's GNMT normalisation: score / ((5 + n) / 6) ** alpha, n counting </s>.
Left different (README.md of mt says more): on a sentence whose search reaches its length limit,
mt forces </s> and adds its log-probability, CTranslate2 stops the hypothesis without it; and
when more than `beam` hypotheses have finished by the time CTranslate2 stops, it returns only
its `beam` best by score / n, so mt's choice may not be among those re-ranked here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, NoReturn, Optional, Sequence, TextIO

import ctranslate2
import sentencepiece as spm

CT2_LENGTH_PENALTY = 1.0  # any non-zero value: CTranslate2's scores are then score / n, undone below
CHUNK_LINES = 1000  # lines read before translating while more input is waiting
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class Result:
    text: str
    score: float  # sum of log-probabilities, </s> included (mt's Hypothesis.score)
    normalized: float  # what mt ranks by: score / ((5 + n) / 6) ** alpha for beam search, score for greedy
    ended: bool  # False when the length limit stopped it (where mt would have forced </s>)
    length: int  # n: output tokens, </s> included when it ended


class ExportedModel:
    def __init__(self, folder: str | Path, device: str = "cpu", compute_type: str = "default", threads: int = 0):
        folder = Path(folder)
        self.settings = json.loads((folder / "mt_export.json").read_text())
        self.src = spm.SentencePieceProcessor(model_file=str(folder / self.settings["source_spm"]))
        self.trg = spm.SentencePieceProcessor(model_file=str(folder / self.settings["target_spm"]))
        self.translator = ctranslate2.Translator(str(folder), device=device, compute_type=compute_type,
                                                 intra_threads=threads)

    def pieces(self, line: str) -> list[str]:
        ids = self.src.encode(line.replace("\0", " ").strip(), out_type=int)[: self.settings["max_len"] - 1]
        return [self.src.id_to_piece(i) for i in ids]

    def limit(self, length: int) -> int:
        d, most = self.settings["decoding"], self.settings["max_len"] - 1
        return min(max(math.floor(d["max_len_a"] * length + d["max_len_b"]), 1), most)

    def translate(self, lines: Sequence[str], beam: Optional[int] = None) -> list[Result]:
        beam = self.settings["decoding"]["beam"] if beam is None else beam
        if beam < 1:
            raise ValueError(f"beam {beam}: expected a whole number >= 1")
        sources = [self.pieces(line) for line in lines]
        results = [Result("", 0.0, 0.0, True, 0)] * len(lines)
        groups: dict[int, list[int]] = {}
        for i, pieces in enumerate(sources):
            if pieces:
                groups.setdefault(self.limit(len(pieces)), []).append(i)
        for limit, indices in sorted(groups.items()):
            found = self.translator.translate_batch(
                [sources[i] for i in indices], beam_size=beam, num_hypotheses=beam,
                length_penalty=CT2_LENGTH_PENALTY if beam > 1 else 0.0, return_end_token=True,
                return_scores=True, max_decoding_length=limit, min_decoding_length=0,  # mt may end at once
                max_batch_size=max(self.settings["decoding"]["batch_tokens"] // beam, 1), batch_type="tokens")
            for i, found_one in zip(indices, found):
                results[i] = self.best(found_one, beam)
        return results

    def best(self, found, beam: int) -> Result:
        alpha = self.settings["decoding"]["length_penalty"]
        candidates = []
        for tokens, score in zip(found.hypotheses, found.scores):
            n = len(tokens)  # </s> included when it ended
            raw = score * n ** CT2_LENGTH_PENALTY if beam > 1 else score
            normalized = raw / ((5 + n) / 6) ** alpha if beam > 1 else raw
            candidates.append((normalized, raw, tokens))
        normalized, raw, tokens = max(candidates, key=lambda c: c[0])
        ended = bool(tokens) and tokens[-1] == self.trg.id_to_piece(self.trg.eos_id())
        ids = [self.trg.piece_to_id(p) for p in tokens]
        ids = [i for i in ids if i not in (self.trg.pad_id(), self.trg.bos_id(), self.trg.eos_id())]
        return Result(self.trg.decode(ids), raw, normalized, ended, len(tokens))


def main() -> None:
    args = parse_args()
    model = open_model(args)
    try:
        translate_stream(model, sys.stdin.buffer, sys.stdout, args.beam)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Translate stdin to stdout with this exported mt model.")
    parser.add_argument("--beam", type=int, default=None, help="default: the run's decoding.beam")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--compute-type", default="default", help="default (as exported), int8, float16, ...")
    args = parser.parse_args(argv)
    if args.beam is not None and args.beam < 1:
        fail(f"--beam {args.beam}: expected a whole number >= 1", code=2)
    return args


def open_model(args: argparse.Namespace) -> ExportedModel:
    """This folder's model on --device as --compute-type; what CTranslate2 cannot do here is a
    one-line error naming the option, checked before any input is read."""
    gpus = ctranslate2.get_cuda_device_count()
    if args.device not in DEVICES:
        fail(f"--device {args.device}: expected one of {', '.join(DEVICES)}", code=2)
    if args.device == "cuda" and gpus == 0:
        fail("--device cuda: CTranslate2 finds no CUDA GPU here (use --device cpu)")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and gpus > 0) else "cpu"
    types = sorted({"default", "auto"} | set(ctranslate2.get_supported_compute_types(device)))
    if args.compute_type not in types:
        fail(f"--compute-type {args.compute_type}: expected one of {', '.join(types)} on {device}", code=2)
    folder = Path(__file__).resolve().parent
    try:
        return ExportedModel(folder, args.device, args.compute_type)
    except (OSError, RuntimeError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fail(f"{folder}: cannot load the model on {device} as {args.compute_type}: {reason}")


def translate_stream(model: ExportedModel, stdin: BinaryIO, stdout: TextIO, beam: Optional[int]) -> None:
    """stdin lines to stdout lines, one out per line in, chunk by chunk as input arrives."""
    done = 0
    for raw in read_chunks(stdin):
        lines, error = decode_lines(raw, first_line=done + 1)
        for result in model.translate(lines, beam):
            stdout.write(result.text + "\n")
        stdout.flush()
        done += len(lines)
        if error:
            fail(error)


def read_chunks(stream: BinaryIO, max_lines: int = CHUNK_LINES) -> Iterator[list[bytes]]:
    """Complete input lines, split at b"\\n" only, in chunks: up to `max_lines` while more input
    is waiting, else what has arrived, so a pipe that pauses gets its answer without delay.
    `mt translate` reads stdin the same way (mt.translate); this file is copied into exports and
    runs without mt installed, so it keeps its own copy."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream: everything is there
        fd = None
    pending, lines = b"", []
    while True:
        data = os.read(fd, 1 << 16) if fd is not None else stream.read()
        if not data:
            break
        *complete, pending = (pending + data).split(b"\n")
        lines.extend(complete)
        while len(lines) >= max_lines:
            yield lines[:max_lines]
            lines = lines[max_lines:]
        waiting = fd is None or (select.select([fd], [], [], 0)[0] if os.name == "posix" else True)
        if lines and not waiting:
            yield lines
            lines = []
    if pending:  # a last line without a newline is still a line
        lines.append(pending)
    if lines:
        yield lines


def decode_lines(raw: Sequence[bytes], first_line: int) -> tuple[list[str], Optional[str]]:
    """UTF-8 text per line (CR of a CRLF ending dropped) up to the first invalid line, and the
    error naming that line, if any: the lines before it are translated first."""
    text = []
    for k, line in enumerate(raw):
        try:
            text.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as err:
            number = first_line + k
            return text, (f"stdin:{number}: invalid UTF-8 at byte {err.start}; "
                          f"the {number - 1} lines before it were translated")
    return text, None


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
