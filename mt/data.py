"""Parallel text: where the files are (a known corpus, downloaded and checked, or the user's),
reading and checking pairs, and counted filters. The id cache that training reads is idcache.py.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from mt.config import DataConfig, FilePair, FilterConfig
from mt.errors import ConfigError, MtError
from mt.files import KnownSums, atomic_write, open_binary, read_lines, sha256_file
from mt.idcache import EncodedSplit, load_ids, save_ids  # noqa: F401  (the id cache, named here as before)

log = logging.getLogger(__name__)

# Multi30k task 1 (Elliott et al., 2016; French 2017, Czech 2018): image captions, 29k training
# pairs in English, German, French and Czech. Czech has only the 2016 test set, so a direction's
# test sets are those published in both of its languages.
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_TRAIN = "train"
MULTI30K_DEV = "val"
MULTI30K_TESTS = {  # language -> the test sets published in it
    "cs": ("test_2016_flickr",),
    "de": ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"),
    "en": ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"),
    "fr": ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"),
}
MULTI30K_LANGS = tuple(MULTI30K_TESTS)
MULTI30K_SHA256 = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.fr.gz": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ResolvedData:
    """Local paths of every file a run reads; tests are keyed by test set name."""

    train: FilePair
    dev: FilePair
    tests: dict[str, FilePair]


# ---------------------------------------------------------------------------------------------
# Which files: the user's, or a known corpus found locally, in the cache, or downloaded
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """One split's files as the config asks for them: given paths, or else a corpus file stem."""

    given: Optional[FilePair]
    corpus_stem: Optional[str] = None

    def corpus_names(self, cfg: DataConfig) -> FilePair:
        return FilePair(f"{self.corpus_stem}.{cfg.src_lang}.gz", f"{self.corpus_stem}.{cfg.trg_lang}.gz")


def _plan(cfg: DataConfig) -> dict[str, _Split]:
    """'train', 'dev' and each test name -> its files. Files the config names win over the
    corpus'; named test sets are added to the corpus' (replacing one of the same name)."""
    corpus = cfg.corpus is not None
    plan = {
        "train": _Split(cfg.train) if cfg.train else _Split(None, MULTI30K_TRAIN),
        "dev": _Split(cfg.dev) if cfg.dev else _Split(None, MULTI30K_DEV),
    }
    if corpus:
        _check_languages(cfg)
    elif any(split.given is None for split in plan.values()):
        raise ConfigError("data.train and data.dev: expected src/trg files, or data.corpus: multi30k")
    tests = {name: _Split(None, name) for name in corpus_tests(cfg.src_lang, cfg.trg_lang)} if corpus else {}
    tests.update({name: _Split(pair) for name, pair in cfg.test.items()})
    plan.update({f"test.{name}": split for name, split in tests.items()})
    return plan


def corpus_tests(src_lang: str, trg_lang: str) -> tuple[str, ...]:
    """Multi30k's test sets for this direction: those published in both languages."""
    trg_tests = MULTI30K_TESTS.get(trg_lang, ())
    return tuple(name for name in MULTI30K_TESTS.get(src_lang, ()) if name in trg_tests)


def _check_languages(cfg: DataConfig) -> None:
    for key, lang in (("data.src_lang", cfg.src_lang), ("data.trg_lang", cfg.trg_lang)):
        if lang not in MULTI30K_LANGS:
            raise ConfigError(f"{key}: {lang!r} is not a language of corpus {cfg.corpus} here; "
                              f"supported: {', '.join(MULTI30K_LANGS)}")


def input_sums(cfg: DataConfig, known: Optional[KnownSums] = None) -> dict[str, str]:
    """SHA-256 of every input file by role ('train.src', 'test.NAME.trg', ...), downloading
    nothing: a corpus file's sum is the pinned one that `resolve_files` enforces. With `known`,
    a file of unchanged size and mtime is not read again (see `files.KnownSums`)."""
    known = known or KnownSums({})
    sums = {}
    for role, split in _plan(cfg).items():
        pair = split.given or split.corpus_names(cfg)
        for side in ("src", "trg"):
            name = getattr(pair, side)
            sums[f"{role}.{side}"] = known.sha256(name) if split.given else MULTI30K_SHA256[name]
    return sums


def resolve_files(cfg: DataConfig) -> ResolvedData:
    """Local paths of the train, dev and test files, fetching corpus files as needed."""
    resolved = {}
    for role, split in _plan(cfg).items():
        if split.given:
            resolved[role] = FilePair(str(Path(split.given.src).resolve()), str(Path(split.given.trg).resolve()))
        else:
            names = split.corpus_names(cfg)
            resolved[role] = FilePair(str(_corpus_file(cfg, names.src)), str(_corpus_file(cfg, names.trg)))
    tests = {role.removeprefix("test."): pair for role, pair in resolved.items() if role.startswith("test.")}
    return ResolvedData(train=resolved["train"], dev=resolved["dev"], tests=tests)


def cache_dir() -> Path:
    """Where downloads live: $MT_CACHE, else $XDG_CACHE_HOME/mt, else ~/.cache/mt."""
    if os.environ.get("MT_CACHE"):
        return Path(os.environ["MT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mt"


def _corpus_file(cfg: DataConfig, name: str) -> Path:
    """A checked local copy of a corpus file: from data_dir/$MT_DATA, the cache, or the web."""
    expected = MULTI30K_SHA256[name]
    data_dir = cfg.data_dir or os.environ.get("MT_DATA")
    if data_dir and (Path(data_dir) / name).is_file():
        path = (Path(data_dir) / name).resolve()
        got = sha256_file(path)
        if got != expected:
            raise MtError(f"{path}: checksum mismatch: expected sha256 {expected}, got {got} "
                          f"(not the {cfg.corpus} file of that name)")
        return path
    cached = cache_dir() / str(cfg.corpus) / name
    if cached.is_file():
        if sha256_file(cached) == expected:
            return cached.resolve()
        log.warning("%s: checksum mismatch in the cache; downloading it again", cached)
    base = os.environ.get("MT_CORPUS_URL") or MULTI30K_URL
    _download(base.rstrip("/") + "/" + name, cached, expected)
    return cached.resolve()


def _download(url: str, dest: Path, expected: str) -> None:
    """Fetch `url` into `dest` only if its SHA-256 is `expected`; on any failure no file is left
    (atomic_write removes its temporary file), so running again simply retries."""
    from tqdm import tqdm  # only downloads need it

    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                atomic_write(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.sha256()
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
            if digest.hexdigest() != expected:
                raise MtError(f"{url}: checksum mismatch for {dest.name}: expected sha256 {expected}, "
                              f"got {digest.hexdigest()}; nothing was kept")
    except urllib.error.HTTPError as e:
        raise MtError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, a cut connection
        reason = getattr(e, "reason", None) or e
        raise MtError(f"{url}: download failed: {reason} (or put {dest.name} in data.data_dir "
                      f"or $MT_DATA)") from None


# ---------------------------------------------------------------------------------------------
# Reading and filtering pairs
# ---------------------------------------------------------------------------------------------


def read_parallel(src_path: str | os.PathLike, trg_path: str | os.PathLike) -> list[tuple[str, str]]:
    """Line-aligned (source, target) pairs; both files must have the same number of lines."""
    src, trg = read_lines(src_path), read_lines(trg_path)
    if len(src) != len(trg):
        raise MtError(f"{src_path} has {len(src)} lines but {trg_path} has {len(trg)}; "
                      "parallel files need one line per sentence on both sides")
    if not src:
        raise MtError(f"{src_path}, {trg_path}: empty corpus (no lines)")
    return list(zip(src, trg))


def count_lines(path: str | os.PathLike) -> int:
    """Lines in a text file (plain or .gz), counted in blocks without decoding: a second or two
    per few hundred MB, so that a long read can show how far along it is."""
    count, last = 0, b"\n"
    try:
        with open_binary(path) as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                count, last = count + block.count(b"\n"), block[-1:]
    except (OSError, EOFError, zlib.error) as e:
        raise MtError(f"{path}: cannot read: {e}") from None
    return count + (last != b"\n")  # a last line without a newline


def filter_pairs(pairs: Sequence[tuple[str, str]], cfg: FilterConfig) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Drop unusable training pairs; return the kept ones and how many each filter dropped
    (see PairFilter: the same rules, applied to one list)."""
    pair_filter = PairFilter(cfg)
    keep = pair_filter.keep([src for src, _ in pairs], [trg for _, trg in pairs])
    pair_filter.check_some_kept()
    return [pair for pair, kept in zip(pairs, keep) if kept], pair_filter.dropped


class PairFilter:
    """The `data.filter` rules over a stream of chunks, counting what each one drops.

    Filters run in the order of `dropped` and a pair counts against the first that drops it, so
    the counts add up to the pairs seen less those kept. A duplicate is found by a 64-bit hash
    of the pair (8 bytes a pair kept, not the pair itself); two different pairs share one with
    odds of about 1 in 10^7 at 20 million pairs, and then the later one is dropped.
    """

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.dropped = {"drop_empty": 0, "max_words": 0, "max_ratio": 0, "drop_duplicates": 0}
        self.seen_pairs = 0
        self._hashes = _HashSet()

    def keep(self, src_lines: Sequence[str], trg_lines: Sequence[str]) -> np.ndarray:
        """Which pairs of this chunk to keep (a bool per pair); later chunks see these as seen."""
        return self.keep_counted(word_counts(src_lines), word_counts(trg_lines), pair_hashes(src_lines, trg_lines))

    def keep_counted(self, src_words: np.ndarray, trg_words: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """`keep`, from each pair's word counts and hash (`word_counts`, `pair_hashes`)."""
        keep = np.ones(len(src_words), dtype=bool)
        for reason, drops in _length_drops(src_words, trg_words, self.cfg):
            dropped_here = keep & drops  # a pair counts against the first filter that drops it
            self.dropped[reason] += int(dropped_here.sum())
            keep &= ~drops
        if self.cfg.drop_duplicates:
            candidates = np.flatnonzero(keep)
            repeated = self._hashes.add(hashes[candidates])
            keep[candidates[repeated]] = False
            self.dropped["drop_duplicates"] += int(repeated.sum())
        self.seen_pairs += len(src_words)
        return keep

    def check_some_kept(self) -> None:
        if sum(self.dropped.values()) == self.seen_pairs:
            counts = ", ".join(f"{name} {n}" for name, n in self.dropped.items() if n)
            raise MtError(f"data.filter dropped all {self.seen_pairs} training pairs ({counts}); loosen data.filter")


def _length_drops(src_words: np.ndarray, trg_words: np.ndarray,
                  cfg: FilterConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(filter, which pairs it drops) for each length filter that is on, in `dropped`'s order."""
    longer = np.maximum(src_words, trg_words)
    if cfg.drop_empty:
        yield "drop_empty", (src_words == 0) | (trg_words == 0)
    if cfg.max_words:
        yield "max_words", longer > cfg.max_words
    if cfg.max_ratio:
        # an empty side counts as one word, so with drop_empty off it is judged like a one-word side
        yield "max_ratio", longer / np.maximum(np.minimum(src_words, trg_words), 1) > cfg.max_ratio


def word_counts(lines: Sequence[str]) -> np.ndarray:
    """Each line's words, as str.split() finds them."""
    return np.fromiter(map(len, map(str.split, lines)), dtype=np.int64, count=len(lines))


def pair_hashes(src_lines: Sequence[str], trg_lines: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each pair, the same in every run (Python's hash() is salted per process)."""
    digests = b"".join(hashlib.blake2b(f"{src}\n{trg}".encode(), digest_size=8).digest()
                       for src, trg in zip(src_lines, trg_lines))
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


class _HashSet:
    """A set of 64-bit hashes as a few sorted numpy arrays (log-structured: each new chunk is
    one more array, and arrays of similar size merge), so memory is 8 bytes an entry."""

    def __init__(self):
        self._levels: list[np.ndarray] = []

    def add(self, hashes: np.ndarray) -> np.ndarray:
        """Add `hashes` in order; return which of them were already there (earlier in the same
        array included), as a bool per entry."""
        unique, first = np.unique(hashes, return_index=True)
        seen = np.zeros(len(unique), dtype=bool)
        for level in self._levels:  # never empty; sorted keys make the search run along the level
            where = np.minimum(np.searchsorted(level, unique), len(level) - 1)
            seen |= level[where] == unique
        repeated = np.ones(len(hashes), dtype=bool)
        repeated[first[~seen]] = False  # the first copy of a hash never seen before
        new = unique[~seen]
        if not len(new):
            return repeated
        self._levels.append(new)
        while len(self._levels) > 1 and len(self._levels[-2]) <= 2 * len(self._levels[-1]):
            top = self._levels.pop()
            # two sorted runs of different hashes: a stable sort merges them in one pass (np.union1d
            # hashes every entry again, and took half of prepare's reading at 5 M pairs)
            self._levels[-1] = np.sort(np.concatenate([self._levels[-1], top]), kind="stable")
        return repeated
