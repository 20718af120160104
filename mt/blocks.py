"""The training files as blocks of whole lines cut at the same line numbers, and `mt prepare`'s
work on each block, done in worker processes when the corpus is large.

`mt prepare` passes over the training pairs twice: to filter them and choose SentencePiece's
sample (`scan`: word counts and a hash of each pair, from the raw bytes; `Sample`), and to
encode the kept pairs (`Encode`). The main process only reads raw bytes and cuts them
(`aligned_blocks`); the per-line work of each block runs in worker processes, one a core
(workers.py), in order. That work, on one Python thread, made prepare 1.8x slower than
SentencePiece's own training and encoding. A small corpus is done in-process by the same
functions, so the outputs never depend on how many processes made them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from mt.errors import MtError
from mt.files import open_binary
from mt.idcache import Ragged
from mt.tokenizer import Tokenizer

BLOCK_PAIRS = 50_000  # pairs a block: what each process holds at a time, whatever the corpus


@dataclass(frozen=True)
class Block:
    """Pairs first_line .. first_line + pairs - 1 (0-based) of two line-aligned files, as the
    raw bytes of their lines, each ending in LF."""

    src_path: str
    trg_path: str
    first_line: int
    pairs: int
    src: bytes
    trg: bytes


def aligned_blocks(src_path: str | os.PathLike, trg_path: str | os.PathLike,
                   pairs: Optional[int] = None) -> Iterator[Block]:
    """The pairs of two files `pairs` (default BLOCK_PAIRS) at a time, with the checks
    `data.read_parallel` makes: the same number of lines on both sides, and at least one."""
    pairs = pairs or BLOCK_PAIRS  # read here, not at import: a test cuts a small corpus into many blocks
    with _Lines(src_path) as src, _Lines(trg_path) as trg:
        first = 0
        while True:
            src_bytes, n = src.take(pairs)
            trg_bytes, m = trg.take(n)
            if m != n or (n < pairs and not trg.at_end()):
                src_count, trg_count = first + n + src.count_rest(), first + m + trg.count_rest()
                raise MtError(f"{src_path} has {src_count} lines but {trg_path} has {trg_count}; "
                              "parallel files need one line per sentence on both sides")
            if not n:
                if not first:
                    raise MtError(f"{src_path}, {trg_path}: empty corpus (no lines)")
                return
            yield Block(str(src_path), str(trg_path), first, n, src_bytes, trg_bytes)
            first += n


class _Lines:
    """A file (plain or .gz) handed out as bytes of whole lines, LF-terminated; a last line
    without its LF gets one."""

    def __init__(self, path: str | os.PathLike):
        self.path, self._file = path, open_binary(path)
        self._buffer, self._end, self._line_bytes = b"", False, 256

    def take(self, count: int) -> tuple[bytes, int]:
        """Up to `count` whole lines, and how many."""
        if not count:
            return b"", 0
        parts, lines = [self._buffer], self._buffer.count(b"\n")
        while lines < count and not self._end:  # joined once: a line of many MB is many reads
            more = self._read((count - lines) * self._line_bytes * 9 // 8 + (1 << 16))
            self._end = not more
            parts.append(more)
            lines += more.count(b"\n")
        self._buffer = b"".join(parts)
        if lines < count and self._buffer and not self._buffer.endswith(b"\n"):
            self._buffer, lines = self._buffer + b"\n", lines + 1  # the last line, without its LF
        if lines < count or (lines == count and self._buffer.endswith(b"\n")):  # all of it, whole lines
            taken, self._buffer = self._buffer, b""
        else:
            cut = int(np.flatnonzero(np.frombuffer(self._buffer, dtype=np.uint8) == 10)[count - 1]) + 1
            taken, self._buffer, lines = self._buffer[:cut], self._buffer[cut:], count
        self._line_bytes = max(len(taken) // max(lines, 1), 1)
        return taken, lines

    def at_end(self) -> bool:
        return not self._buffer and (self._end or not self._peek())

    def count_rest(self) -> int:
        rest, last = self._buffer.count(b"\n"), self._buffer[-1:]
        while block := self._read(1 << 22):
            rest, last = rest + block.count(b"\n"), block[-1:]
        return rest + (last not in (b"", b"\n"))

    def _peek(self) -> bool:
        self._buffer = self._read(1 << 16)
        self._end = not self._buffer
        return not self._end

    def _read(self, size: int) -> bytes:
        try:
            return self._file.read(size)
        except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
            raise MtError(f"{self.path}: cannot read: {e}") from None

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


# ---------------------------------------------------------------------------------------------
# The work on one block: plain functions of picklable arguments, so a worker process can run them
# ---------------------------------------------------------------------------------------------


def lines_of(block: Block) -> tuple[list[str], list[str]]:
    """The block's lines on each side, as `files.iter_lines` gives them (split at LF only, the
    CRs before it dropped); invalid UTF-8 is an error naming the file and line."""
    return _decode(block.src, block.src_path, block.first_line), _decode(block.trg, block.trg_path, block.first_line)


def _decode(data: bytes, path: str, first_line: int) -> list[str]:
    lines = _text(data, path, first_line).split("\n")
    lines.pop()  # the empty string after the last LF
    return [line.rstrip("\r") for line in lines] if b"\r" in data else lines


@dataclass(frozen=True)
class Scanned:
    """What the filters need of each pair of a block, its words on each side and its hash, and
    the text of the pairs whose hash is within the sample's bound (`candidates`)."""

    first_line: int
    src_words: np.ndarray
    trg_words: np.ndarray
    hashes: np.ndarray
    candidates: np.ndarray  # positions in the block
    candidate_src: list[str]
    candidate_trg: list[str]


def scan(task: tuple[Block, Optional[int]]) -> Scanned:
    """Scan a block on raw bytes (no line is made a str but the candidates): the same word
    counts as `str.split()` and the same hashes as `data.pair_hashes` on the decoded lines."""
    block, bound = task
    for data, path in ((block.src, block.src_path), (block.trg, block.trg_path)):
        _text(data, path, block.first_line)  # invalid UTF-8 is an error here too
    src, trg = _Spans(block.src), _Spans(block.trg)
    hashes = np.frombuffer(b"".join(hashlib.blake2b(s + b"\n" + t, digest_size=8).digest()
                                    for s, t in zip(src.lines(), trg.lines())), dtype="<u8").astype(np.uint64)
    candidates = np.flatnonzero(hashes <= bound) if bound is not None else np.empty(0, dtype=np.int64)
    return Scanned(block.first_line, src.word_counts(), trg.word_counts(), hashes, candidates,
                   src.text(candidates), trg.text(candidates))


def _text(data: bytes, path: str, first_line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start) + 1
        raise MtError(f"{path}:{line}: invalid UTF-8") from None


# str.split()'s whitespace, as bytes: ASCII ones by value, the rest by their UTF-8 lead byte and code point
_SPACES = [c for c in range(0x10000) if chr(c).isspace()]
_BYTE_KIND = np.zeros(256, dtype=np.uint8)  # 1: an ASCII space, 2: may begin a multi-byte one
_BYTE_KIND[[c for c in _SPACES if c < 0x80]] = 1
_BYTE_KIND[sorted({chr(c).encode()[0] for c in _SPACES if c >= 0x80})] = 2
_WIDE_SPACES = np.array([c for c in _SPACES if c >= 0x80], dtype=np.int64)


class _Spans:
    """One side of a block as byte spans, one a line (LF and the CRs before it left out)."""

    def __init__(self, data: bytes):
        self.data, self.bytes = data, np.frombuffer(data, dtype=np.uint8)
        self.ends = np.flatnonzero(self.bytes == 10)
        self.starts = np.concatenate([[0], self.ends[:-1] + 1])

    def lines(self) -> Iterator[bytes]:
        data = self.data
        spans = zip(self.starts.tolist(), self.ends.tolist())
        if b"\r" in data:
            return (data[a:b].rstrip(b"\r") for a, b in spans)
        return (data[a:b] for a, b in spans)

    def text(self, which: np.ndarray) -> list[str]:
        return [self.data[a:b].decode().rstrip("\r") for a, b in zip(self.starts[which].tolist(),
                                                                      self.ends[which].tolist())]

    def word_counts(self) -> np.ndarray:
        """Words a line, counted as the starts of runs of non-space bytes."""
        kind = _BYTE_KIND[self.bytes]
        space = kind == 1
        leads = np.flatnonzero(kind == 2)
        if len(leads):  # a multi-byte character that may be a space: decode it, every byte is space if it is
            space |= self._wide_spaces(leads)
        word_start = ~space
        word_start[1:] &= space[:-1]
        return np.diff(np.searchsorted(np.flatnonzero(word_start), self.ends), prepend=0)

    def _wide_spaces(self, leads: np.ndarray) -> np.ndarray:
        # only the candidates' bytes made wide (the whole block as int64 was 8x its size, per side)
        last = len(self.bytes) - 1  # the block's final LF: no character's bytes run past it
        lead, second, third = (self.bytes[np.minimum(leads + k, last)].astype(np.int64) for k in range(3))
        two = (lead & 0x1F) << 6 | (second & 0x3F)
        three = (lead & 0x0F) << 12 | (second & 0x3F) << 6 | (third & 0x3F)
        width = np.where(lead < 0xE0, 2, 3)
        found = np.isin(np.where(width == 2, two, three), _WIDE_SPACES)
        space = np.zeros(len(self.bytes), dtype=bool)
        for offset in range(3):
            at = leads[found & (offset < width)] + offset
            space[at] = True
        return space


class Sample:
    """SentencePiece's training sample: the `size` kept pairs of smallest hash (ties: the earlier
    first), so a uniform random sample of the distinct pairs, the same for the same corpus
    however many processes read it; all of them while they fit. The scan sends the text of a
    pair only while its hash is within `bound()`: about size x (1 + ln(pairs / size)) pairs."""

    def __init__(self, size: int):
        self.size = size
        self._hashes, self._lines = np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
        self._src: list[str] = []
        self._trg: list[str] = []
        self._bound: Optional[int] = 2**64 - 1 if size else None  # None: no sample wanted

    def bound(self) -> Optional[int]:
        """The largest hash that can still enter the sample."""
        return self._bound

    def offer(self, scanned: Scanned, keep: np.ndarray) -> None:
        kept = keep[scanned.candidates]
        chosen = scanned.candidates[kept]
        self._hashes = np.concatenate([self._hashes, scanned.hashes[chosen]])
        self._lines = np.concatenate([self._lines, chosen + scanned.first_line])
        self._src += itertools.compress(scanned.candidate_src, kept)
        self._trg += itertools.compress(scanned.candidate_trg, kept)
        if len(self._lines) > 2 * self.size:  # dropping what cannot stay, now and then, costs less
            self._keep(self._smallest())
        if self.size and len(self._lines) >= self.size:
            self._bound = int(np.partition(self._hashes, self.size - 1)[self.size - 1])

    def pairs(self) -> tuple[list[str], list[str]]:
        """The sample's pairs, in corpus order, handed over: the sample is empty after."""
        chosen = self._smallest()
        self._keep(chosen[np.argsort(self._lines[chosen], kind="stable")])
        src, trg, self._src, self._trg = self._src, self._trg, [], []
        self._hashes, self._lines = self._hashes[:0], self._lines[:0]
        return src, trg

    def _smallest(self) -> np.ndarray:
        """Positions of the `size` smallest (hash, line) entries."""
        if len(self._lines) <= self.size:
            return np.arange(len(self._lines))
        kth = np.partition(self._hashes, self.size - 1)[self.size - 1]
        ties = np.flatnonzero(self._hashes == kth)
        ties = ties[np.argsort(self._lines[ties], kind="stable")]
        return np.concatenate([np.flatnonzero(self._hashes < kth), ties])[: self.size]

    def _keep(self, chosen: np.ndarray) -> None:
        self._hashes, self._lines = self._hashes[chosen], self._lines[chosen]
        self._src = [self._src[i] for i in chosen]
        self._trg = [self._trg[i] for i in chosen]


class Encode:
    """Encodes a block's kept pairs into flat id arrays: (block, a bool per pair) -> (src, trg)
    as `Ragged`. It pickles as the models' bytes; the tokenizer is loaded at the first block
    (once a worker: workers.py sends the function once per map)."""

    def __init__(self, models: dict[str, bytes], threads: Optional[int] = None):
        self.models, self.threads = models, threads
        self._tokenizer: Optional[Tokenizer] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def __call__(self, task: tuple[Block, np.ndarray]) -> tuple[Ragged, Ragged]:
        block, keep = task
        src, trg = lines_of(block)
        chosen = np.flatnonzero(keep)
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.models)
        return (Ragged.from_lists(self._tokenizer.encode_src([src[i] for i in chosen], self.threads)),
                Ragged.from_lists(self._tokenizer.encode_trg([trg[i] for i in chosen], self.threads)))
