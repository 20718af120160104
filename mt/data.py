"""Parallel text: where the files are (a known corpus, downloaded and checked, or the user's),
reading and checking pairs, counted filters, and the id cache that training reads.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mt.config import DataConfig, FilePair, FilterConfig
from mt.errors import ConfigError, MtError
from mt.files import atomic_write, read_lines, sha256_file

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


def input_sums(cfg: DataConfig) -> dict[str, str]:
    """SHA-256 of every input file by role ('train.src', 'test.NAME.trg', ...), downloading
    nothing: a corpus file's sum is the pinned one that `resolve_files` enforces."""
    sums = {}
    for role, split in _plan(cfg).items():
        pair = split.given or split.corpus_names(cfg)
        for side in ("src", "trg"):
            name = getattr(pair, side)
            sums[f"{role}.{side}"] = sha256_file(name) if split.given else MULTI30K_SHA256[name]
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


def filter_pairs(pairs: Sequence[tuple[str, str]], cfg: FilterConfig) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Drop unusable training pairs; return the kept ones and how many each filter dropped.

    Filters run in the order of the returned dict and a pair counts against the first that
    drops it, so the counts add up to len(pairs) - len(kept).
    """
    dropped = {"drop_empty": 0, "max_words": 0, "max_ratio": 0, "drop_duplicates": 0}
    seen: set[tuple[str, str]] = set()
    kept = []
    for pair in pairs:
        reason = _drop_reason(pair, cfg, seen)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(pair)
    if not kept:
        counts = ", ".join(f"{name} {n}" for name, n in dropped.items() if n)
        raise MtError(f"data.filter dropped all {len(pairs)} training pairs ({counts}); loosen data.filter")
    return kept, dropped


def _drop_reason(pair: tuple[str, str], cfg: FilterConfig, seen: set[tuple[str, str]]) -> Optional[str]:
    src_words, trg_words = len(pair[0].split()), len(pair[1].split())
    if cfg.drop_empty and (src_words == 0 or trg_words == 0):
        return "drop_empty"
    if cfg.max_words and max(src_words, trg_words) > cfg.max_words:
        return "max_words"
    # an empty side counts as one word, so with drop_empty off it is judged like a one-word side
    if cfg.max_ratio and max(src_words, trg_words) / max(min(src_words, trg_words), 1) > cfg.max_ratio:
        return "max_ratio"
    if cfg.drop_duplicates:
        if pair in seen:
            return "drop_duplicates"
        seen.add(pair)
    return None


# ---------------------------------------------------------------------------------------------
# The id cache: one .npz per split, each side one flat int32 array plus offsets
# ---------------------------------------------------------------------------------------------


@dataclass
class EncodedSplit:
    """Token ids per sentence (no BOS/EOS); `src[i]` and `trg[i]` are views into flat arrays."""

    src: list[np.ndarray]
    trg: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.src), dtype=np.int64, count=len(self.src))

    @property
    def trg_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.trg), dtype=np.int64, count=len(self.trg))


def _flatten(ids_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, ids_lists), dtype=np.int64, count=len(ids_lists))
    offsets = np.zeros(len(ids_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((i for ids in ids_lists for i in ids), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


def save_ids(path: str | os.PathLike, src_ids: Sequence[Sequence[int]], trg_ids: Sequence[Sequence[int]]) -> None:
    """Write one split's ids as a single uncompressed .npz (loads in milliseconds)."""
    assert len(src_ids) == len(trg_ids), "source and target id lists must pair up"
    src_tokens, src_offsets = _flatten(src_ids)
    trg_tokens, trg_offsets = _flatten(trg_ids)
    buffer = io.BytesIO()  # np.savez seeks; write the finished bytes in one go
    np.savez(buffer, src_tokens=src_tokens, src_offsets=src_offsets,
             trg_tokens=trg_tokens, trg_offsets=trg_offsets)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_ids(path: str | os.PathLike) -> EncodedSplit:
    try:
        with np.load(path) as arrays:
            parts = {name: arrays[name] for name in ("src_tokens", "src_offsets", "trg_tokens", "trg_offsets")}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:  # missing, empty, truncated, foreign
        raise MtError(f"{path}: unreadable id cache ({e}); run mt prepare --force") from None
    return EncodedSplit(src=_unflatten(parts["src_tokens"], parts["src_offsets"]),
                        trg=_unflatten(parts["trg_tokens"], parts["trg_offsets"]))


def _unflatten(tokens: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    bounds = offsets.tolist()  # plain ints: slicing with them is several times faster than np.split
    return [tokens[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
