"""The id cache: each split's token ids as flat binary arrays that training maps without reading.

A split is a folder (`cache/train/`, `cache/dev/`) holding

    src.tokens   int32 token ids of every source sentence, one after another (no BOS/EOS)
    src.offsets  int64, pairs + 1 of them: sentence i is tokens[offsets[i]:offsets[i + 1]]
    trg.tokens, trg.offsets   the same for the targets
    index.json   the format, the number of pairs and of tokens per side

`load_ids` opens them with `np.memmap`: start-up costs nothing whatever the corpus size, and
every process on a node shares the same pages of the OS cache. The writer takes the ids chunk
by chunk, so `mt prepare` never holds a whole corpus, and swaps the finished folder in whole.
Run directories prepared before this format hold one `.npz` per split; `load_ids` still reads those.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from mt.errors import MtError
from mt.files import write_text

CACHE_FORMAT = 2  # 1 was a single .npz per split
TOKEN_DTYPE = np.dtype("<i4")
OFFSET_DTYPE = np.dtype("<i8")
INDEX_FILE = "index.json"
SIDES = ("src", "trg")


@dataclass(frozen=True)
class Ragged:
    """Sentences of token ids as one flat array plus offsets; either may be memory-mapped, and
    taking sentence i reads only the pages it lies on."""

    tokens: np.ndarray
    offsets: np.ndarray  # len(self) + 1 entries, offsets[0] == 0
    source: Optional[Path] = None  # the file the tokens are mapped from, for messages

    @classmethod
    def from_lists(cls, ids_lists: Sequence[Sequence[int]]) -> Ragged:
        return cls(*_flatten(ids_lists))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]: self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class EncodedSplit:
    """One split's token ids per sentence (no BOS/EOS): `src[i]` pairs with `trg[i]`."""

    src: Ragged
    trg: Ragged

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_lengths(self) -> np.ndarray:
        return self.src.lengths

    @property
    def trg_lengths(self) -> np.ndarray:
        return self.trg.lengths


def _flatten(ids_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, ids_lists), dtype=OFFSET_DTYPE, count=len(ids_lists))
    offsets = np.zeros(len(ids_lists) + 1, dtype=OFFSET_DTYPE)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter(itertools.chain.from_iterable(ids_lists), dtype=TOKEN_DTYPE, count=int(offsets[-1]))
    return tokens, offsets


# ---------------------------------------------------------------------------------------------
# Writing, a chunk at a time
# ---------------------------------------------------------------------------------------------


class IdCacheWriter:
    """Writes one split into a temporary folder beside `path`; `close` puts it in place of
    `path` (and of a legacy `path.npz`), `abort` (or an exception in a `with` block) removes it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tmp = self.path.parent / f".{self.path.name}.tmp"
        try:
            shutil.rmtree(self._tmp, ignore_errors=True)  # left by a killed prepare: ours
            self._tmp.mkdir(parents=True)
            self._files = {f"{side}.{part}": open(self._tmp / f"{side}.{part}", "wb")
                           for side in SIDES for part in ("tokens", "offsets")}
        except OSError as e:
            raise MtError(f"{self.path}: cannot write: {e.strerror or e}") from None
        self._tokens = {side: 0 for side in SIDES}
        self.pairs = 0
        for side in SIDES:
            self._write(f"{side}.offsets", np.zeros(1, dtype=OFFSET_DTYPE))

    def add(self, src_ids: Sequence[Sequence[int]], trg_ids: Sequence[Sequence[int]]) -> None:
        """Append a chunk of pairs: ids per sentence on each side."""
        self.add_ragged(Ragged.from_lists(src_ids), Ragged.from_lists(trg_ids))

    def add_ragged(self, src: Ragged, trg: Ragged) -> None:
        """Append a chunk of pairs already flat (offsets from 0)."""
        assert len(src) == len(trg), "source and target id lists must pair up"
        for side, (tokens, offsets) in zip(SIDES, ((src.tokens, src.offsets), (trg.tokens, trg.offsets))):
            self._write(f"{side}.tokens", tokens.astype(TOKEN_DTYPE, copy=False))
            self._write(f"{side}.offsets", offsets[1:] + self._tokens[side])
            self._tokens[side] += len(tokens)
        self.pairs += len(src)

    def _write(self, name: str, array: np.ndarray) -> None:
        try:
            self._files[name].write(array.tobytes())
        except OSError as e:  # a full disk: name the cache the user will look for
            self.abort()
            raise MtError(f"{self.path}: cannot write: {e.strerror or e}") from None

    def close(self) -> None:
        try:
            for f in self._files.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
            index = {"format": CACHE_FORMAT, "pairs": self.pairs, "token_dtype": TOKEN_DTYPE.str,
                     "offset_dtype": OFFSET_DTYPE.str, **{f"{side}_tokens": self._tokens[side] for side in SIDES}}
            write_text(self._tmp / INDEX_FILE, json.dumps(index, indent=2) + "\n")
            shutil.rmtree(self.path, ignore_errors=True)  # an earlier prepare's: mt made it
            self.path.with_suffix(".npz").unlink(missing_ok=True)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise MtError(f"{self.path}: cannot write: {e.strerror or e}") from None

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> IdCacheWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def save_ids(path: str | os.PathLike, src_ids: Sequence[Sequence[int]], trg_ids: Sequence[Sequence[int]]) -> None:
    """Write one split's ids in one go (a small split: dev, or a test's)."""
    with IdCacheWriter(path) as writer:
        writer.add(src_ids, trg_ids)


# ---------------------------------------------------------------------------------------------
# Reading: mapped, not read
# ---------------------------------------------------------------------------------------------


def load_ids(path: str | os.PathLike) -> EncodedSplit:
    """The split at `path` (a cache folder), memory-mapped; a legacy `path.npz` is read whole."""
    path = Path(path)
    legacy = path if path.suffix == ".npz" else path.with_suffix(".npz")
    if not path.is_dir() and legacy.is_file():
        return _load_npz(legacy)
    index = _read_index(path)
    sides = {side: Ragged(_map(path, f"{side}.tokens", index["token_dtype"], index[f"{side}_tokens"]),
                          _map(path, f"{side}.offsets", index["offset_dtype"], index["pairs"] + 1),
                          path / f"{side}.tokens")
             for side in SIDES}
    for side, ragged in sides.items():
        if ragged.offsets[0] != 0 or ragged.offsets[-1] != len(ragged.tokens):
            raise _unreadable(path, f"{side}.offsets do not match {side}.tokens")
    return EncodedSplit(**sides)


def _read_index(path: Path) -> dict:
    try:
        index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
        if index.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {index.get('format')!r}, this mt reads {CACHE_FORMAT}")
        _ = [int(index[key]) for key in ("pairs", "src_tokens", "trg_tokens")]
        np.dtype(index["token_dtype"]), np.dtype(index["offset_dtype"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _unreadable(path, str(e)) from None
    return index


def _map(folder: Path, name: str, dtype: str, count: int) -> np.ndarray:
    """A read-only view of `count` items of the file; an empty file cannot be mapped, and needs not be."""
    path = folder / name
    dtype = np.dtype(dtype)
    try:
        size = path.stat().st_size
        if size != count * dtype.itemsize:
            raise ValueError(f"{name} holds {size} bytes, the index says {count * dtype.itemsize}")
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
    except (OSError, ValueError) as e:
        raise _unreadable(folder, str(e)) from None


def _load_npz(path: Path) -> EncodedSplit:
    try:
        with np.load(path) as arrays:
            parts = {name: arrays[name] for name in ("src_tokens", "src_offsets", "trg_tokens", "trg_offsets")}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:  # empty, truncated, foreign
        raise _unreadable(path, str(e)) from None
    return EncodedSplit(src=Ragged(parts["src_tokens"], parts["src_offsets"], path),
                        trg=Ragged(parts["trg_tokens"], parts["trg_offsets"], path))


def check_ids(tokens: np.ndarray, vocab_size: int, source: Optional[Path]) -> None:
    """Refuse ids the model has no embedding for (a foreign or damaged cache), naming the file.

    Called on each batch's tokens as it is made (a few thousand numbers: two passes cost
    microseconds), not on the whole cache at start-up, which would read every page of a
    mapped corpus of millions of pairs."""
    if tokens.size == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low >= 0 and high < vocab_size:
        return
    split = source if source is None or source.suffix == ".npz" else source.parent
    raise MtError(f"{source or 'id cache'}: token id {high if high >= vocab_size else low} is outside the "
                  f"vocabulary (ids 0-{vocab_size - 1}): this cache was not made by the run's tokenizer; "
                  f"remove {split or 'it'} and run mt prepare to make it again")


def _unreadable(path: Path, why: str) -> MtError:
    return MtError(f"{path}: unreadable id cache ({why}); run mt prepare with the run's config: it encodes "
                   "the cache again with the run's tokenizer")


def cache_exists(path: str | os.PathLike) -> bool:
    """Whether a split was written at `path`, in this format or the legacy one."""
    path = Path(path)
    return (path / INDEX_FILE).is_file() or path.with_suffix(".npz").is_file()

