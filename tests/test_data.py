"""Reading, checking and filtering parallel text; the id cache; the Multi30k download."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mt.config import DataConfig, FilterConfig
from mt.data import (MULTI30K_SHA256, PairFilter, corpus_tests, count_lines, filter_pairs, input_sums, load_ids,
                     read_parallel, resolve_files, save_ids)
from mt.errors import MtError
from mt.files import read_lines, sha256_file
from mt.idcache import IdCacheWriter


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_pairs(folder: Path, stem: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    return (write_lines(folder / f"{stem}.de", [src for src, _ in pairs]),
            write_lines(folder / f"{stem}.en", [trg for _, trg in pairs]))


# ---------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------


def test_different_line_counts_name_both_files_and_counts(tmp_path, toy_pairs):
    src = write_lines(tmp_path / "train.de", [s for s, _ in toy_pairs[:10]])
    trg = write_lines(tmp_path / "train.en", [t for _, t in toy_pairs[:9]])
    with pytest.raises(MtError) as caught:
        read_parallel(src, trg)
    message = str(caught.value)
    assert f"{src} has 10 lines" in message and f"{trg} has 9" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    src = tmp_path / "train.de"
    src.write_bytes("Ein Hund.\nZwei Hunde.\n".encode() + b"Drei \xff Hunde.\n")
    trg = write_lines(tmp_path / "train.en", ["A dog.", "Two dogs.", "Three dogs."])
    with pytest.raises(MtError, match=rf"^{src}:3: invalid UTF-8$"):
        read_parallel(src, trg)


def test_invalid_utf8_in_gz_names_file_and_line(tmp_path):
    src = tmp_path / "train.de.gz"
    src.write_bytes(gzip.compress(b"ok\n\xc3\x28 broken\n"))
    trg = write_lines(tmp_path / "train.en", ["ok", "broken"])
    with pytest.raises(MtError, match=rf"^{src}:2: invalid UTF-8$"):
        read_parallel(src, trg)


def test_lines_across_read_blocks_are_whole_and_errors_name_the_right_line(tmp_path):
    # the reader decodes blocks of about 1 MB: a line longer than a block, many blocks, CRLF
    # endings and a last line without a newline must read as they would one at a time
    lines = ["kurz", "ä" * 1_500_000, ""] + [f"Zeile {i} ü" for i in range(200_000)] + ["ende"]
    path = tmp_path / "big.txt"
    path.write_bytes(("\r\n".join(lines[:3]) + "\n" + "\n".join(lines[3:])).encode())
    assert read_lines(path) == lines
    broken = tmp_path / "broken.txt"
    broken.write_bytes(("\n".join(lines[:-1]) + "\n").encode() + b"kaputt \xff\n")
    with pytest.raises(MtError, match=rf"broken.txt:{len(lines)}: invalid UTF-8"):
        read_lines(broken)


def test_empty_corpus_is_an_error(tmp_path):
    src, trg = tmp_path / "train.de", tmp_path / "train.en"
    src.write_text("")
    trg.write_text("")
    with pytest.raises(MtError, match="empty corpus"):
        read_parallel(src, trg)


def test_gz_inputs_read_the_same_as_plain(tmp_path, toy_pairs):
    src, trg = write_pairs(tmp_path, "train", toy_pairs)
    for path in (src, trg):
        Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
    assert read_parallel(f"{src}.gz", f"{trg}.gz") == read_parallel(src, trg) == toy_pairs


def test_truncated_gz_is_an_error_naming_the_file(tmp_path, toy_pairs):
    src, trg = write_pairs(tmp_path, "train", toy_pairs)
    whole = gzip.compress(src.read_bytes())
    cut = tmp_path / "cut.de.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MtError, match=rf"^{cut}: cannot read"):
        read_parallel(cut, trg)


def test_windows_line_endings_are_not_part_of_the_text(tmp_path):
    src, trg = tmp_path / "train.de", tmp_path / "train.en"
    src.write_bytes(b"Ein Hund.\r\nEine Katze.\r\n")
    trg.write_bytes(b"A dog.\r\nA cat.\r\n")
    assert read_parallel(src, trg) == [("Ein Hund.", "A dog."), ("Eine Katze.", "A cat.")]


def test_count_lines_counts_a_last_line_without_newline(tmp_path):
    (tmp_path / "a").write_bytes(b"one\ntwo\nthree")
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"one\n\nthree\n"))
    (tmp_path / "c").write_bytes(b"")
    assert [count_lines(tmp_path / name) for name in ("a", "b.gz", "c")] == [3, 3, 0]


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------

GOOD = [("Ein Hund läuft.", "A dog runs."), ("Eine Katze schläft.", "A cat sleeps.")]
EMPTY = [("", "A dog."), ("Ein Hund.", "   ")]
LONG = [("wort " * 6, "word " * 6)]  # 6 words a side: over max_words 5
SKEWED = [("Hund", "a very very long dog")]  # 1 vs 5 words: over max_ratio 4
DUPLICATES = [GOOD[0], GOOD[0]]  # the pair itself is kept once; these two copies go


def test_each_filter_drops_what_it_says_and_counts_it():
    pairs = GOOD + EMPTY + LONG + SKEWED + DUPLICATES
    kept, dropped = filter_pairs(pairs, FilterConfig(max_words=5, max_ratio=4.0))
    assert kept == GOOD
    assert dropped == {"drop_empty": 2, "max_words": 1, "max_ratio": 1, "drop_duplicates": 2}
    assert sum(dropped.values()) == len(pairs) - len(kept)


def test_filters_turned_off_keep_everything():
    pairs = GOOD + EMPTY + LONG + SKEWED + DUPLICATES
    off = FilterConfig(drop_empty=False, max_words=0, max_ratio=0, drop_duplicates=False)
    kept, dropped = filter_pairs(pairs, off)
    assert kept == pairs
    assert not any(dropped.values())


def test_a_pair_at_the_limits_is_kept():
    at_limits = [("eins zwei drei vier", "one"), ("a b c d e", "v w x y z")]  # ratio exactly 4; 5 words
    kept, _ = filter_pairs(at_limits, FilterConfig(max_words=5, max_ratio=4.0))
    assert kept == at_limits


def test_duplicates_are_found_across_chunks_and_within_one():
    pair_filter = PairFilter(FilterConfig())
    first = pair_filter.keep(["a b", "c d", "a b"], ["x", "y", "x"])
    second = pair_filter.keep(["c d", "e f", "c d", "a b"], ["y", "z", "other", "x"])
    assert first.tolist() == [True, True, False]
    assert second.tolist() == [False, True, True, False]  # same source, another target: kept
    assert pair_filter.dropped["drop_duplicates"] == 3 and pair_filter.seen_pairs == 7



def test_duplicates_over_many_chunks_are_those_a_set_finds():
    """Enough chunks that the duplicate set's sorted levels merge again and again, each later
    chunk looked up in the merged ones."""
    rng = np.random.default_rng(4)
    pair_filter, seen = PairFilter(FilterConfig()), set()
    for size in rng.integers(1, 60, size=80):
        src = [f"w{n}" for n in rng.integers(0, 1500, size=size)]
        trg = ["x"] * len(src)
        expected = []
        for pair in zip(src, trg):
            expected.append(pair not in seen)
            seen.add(pair)
        assert pair_filter.keep(src, trg).tolist() == expected

def test_filters_dropping_every_pair_is_a_clear_error():
    expected = r"dropped all 3 training pairs \(drop_empty 2, max_ratio 1\); loosen data.filter"
    with pytest.raises(MtError, match=expected):
        filter_pairs(EMPTY + SKEWED, FilterConfig())


# ---------------------------------------------------------------------------------------------
# The id cache
# ---------------------------------------------------------------------------------------------


def test_id_cache_round_trips_ids_written_in_chunks(tmp_path):
    src_ids = [[5, 6, 7], [8], [], [9, 10]]
    trg_ids = [[11], [], [12, 13, 14, 15], [16]]
    with IdCacheWriter(tmp_path / "train") as writer:
        writer.add(src_ids[:3], trg_ids[:3])
        writer.add([], [])
        writer.add(src_ids[3:], trg_ids[3:])
    split = load_ids(tmp_path / "train")
    assert len(split) == 4
    assert [ids.tolist() for ids in split.src] == src_ids
    assert [ids.tolist() for ids in split.trg] == trg_ids
    assert split.src_lengths.tolist() == [3, 1, 0, 2]
    assert split.trg_lengths.tolist() == [1, 0, 4, 1]
    assert isinstance(split.src.tokens, np.memmap), "the cache is mapped, not read"


def test_a_failed_write_leaves_the_old_cache_and_no_temporary_folder(tmp_path):
    save_ids(tmp_path / "train", [[5]], [[6]])
    with pytest.raises(RuntimeError):
        with IdCacheWriter(tmp_path / "train") as writer:
            writer.add([[7, 8]], [[9]])
            raise RuntimeError("killed half way")
    assert [ids.tolist() for ids in load_ids(tmp_path / "train").src] == [[5]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_a_cache_of_the_earlier_npz_format_is_still_read(tmp_path):
    """Run directories prepared before the mapped format hold cache/train.npz."""
    src_ids, trg_ids = [[5, 6, 7], [8]], [[11], [12, 13]]
    np.savez(tmp_path / "train.npz", src_tokens=np.array([5, 6, 7, 8], dtype=np.int32),
             src_offsets=np.array([0, 3, 4]), trg_tokens=np.array([11, 12, 13], dtype=np.int32),
             trg_offsets=np.array([0, 1, 3]))
    for path in (tmp_path / "train", tmp_path / "train.npz"):
        split = load_ids(path)
        assert [ids.tolist() for ids in split.src] == src_ids and [ids.tolist() for ids in split.trg] == trg_ids
    save_ids(tmp_path / "train", [[1]], [[2]])  # prepared again: the new format replaces the old
    assert not (tmp_path / "train.npz").exists()
    assert load_ids(tmp_path / "train").src_lengths.tolist() == [1]


@pytest.mark.parametrize("damage", ["no index", "garbage index", "cut tokens", "bad offsets", "missing"])
def test_unreadable_id_cache_says_to_prepare_again(tmp_path, damage):
    path = tmp_path / "train"
    save_ids(path, [[5, 6, 7], [8]], [[9], [10, 11]])
    if damage == "no index":
        (path / "index.json").unlink()
    elif damage == "garbage index":
        (path / "index.json").write_text("not json")
    elif damage == "cut tokens":
        (path / "trg.tokens").write_bytes((path / "trg.tokens").read_bytes()[:-4])
    elif damage == "bad offsets":
        (path / "src.offsets").write_bytes(np.array([0, 3, 9], dtype="<i8").tobytes())
    else:
        path = tmp_path / "dev"
    with pytest.raises(MtError, match=rf"^{path}: unreadable id cache \(.+\); run mt prepare with the run's config: it encodes the cache again with the run's tokenizer$"):
        load_ids(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"not an id cache"],
                         ids=["empty", "truncated", "garbage"])
def test_unreadable_legacy_id_cache_says_to_prepare_again(tmp_path, content):
    path = tmp_path / "train.npz"
    path.write_bytes(content)
    with pytest.raises(MtError, match=rf"^{path}: unreadable id cache .*run mt prepare with the run's config: it encodes the cache again"):
        load_ids(tmp_path / "train")


# ---------------------------------------------------------------------------------------------
# The Multi30k download: a real HTTP server on 127.0.0.1 serving copies of the real files
# ---------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path.rpartition("/")[2])
        super().do_GET()


@dataclass
class Server:
    folder: Path  # what it serves
    url: str
    requests: list[str] = field(default_factory=list)  # file names asked for, in order


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Server(folder, f"http://127.0.0.1:{httpd.server_address[1]}/multi30k/", httpd.requests)
    httpd.shutdown()
    httpd.server_close()


def refused_url() -> str:
    """A URL on a port where nothing listens (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> Path:
    """Every test gets an empty cache and no MT_DATA; nothing can reach the real corpus URL."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MT_CACHE", str(cache))
    monkeypatch.delenv("MT_DATA", raising=False)
    monkeypatch.setenv("MT_CORPUS_URL", refused_url())
    return cache


def serve_corpus(server: Server, multi30k_dir: Path, monkeypatch) -> Path:
    """Put copies of all Multi30k files where `server` serves them; point mt at it."""
    corpus = server.folder / "multi30k"
    corpus.mkdir(exist_ok=True)
    for name in MULTI30K_SHA256:
        shutil.copyfile(multi30k_dir / name, corpus / name)
    monkeypatch.setenv("MT_CORPUS_URL", server.url)
    return corpus


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def cached_names(cache: Path) -> list[str]:
    """Every file in the cache, temporary ones included."""
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


MULTI30K = DataConfig(corpus="multi30k")
DE_EN_FILES = sorted(name for name in MULTI30K_SHA256 if name.endswith((".de.gz", ".en.gz")))


def test_download_is_verified_cached_and_reused_without_the_server(server, multi30k_dir, monkeypatch, offline):
    serve_corpus(server, multi30k_dir, monkeypatch)
    first = resolve_files(MULTI30K)
    assert sorted(server.requests) == DE_EN_FILES
    assert cached_names(offline) == DE_EN_FILES
    assert sha256_file(first.dev.src) == MULTI30K_SHA256["val.de.gz"]
    assert set(first.tests) == {"test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"}
    assert len(read_parallel(first.dev.src, first.dev.trg)) == 1014

    monkeypatch.setenv("MT_CORPUS_URL", refused_url())  # the server is gone: the cache must do
    assert resolve_files(MULTI30K) == first


def test_checksum_mismatch_keeps_nothing_and_a_retry_works(server, multi30k_dir, monkeypatch, offline):
    corpus = serve_corpus(server, multi30k_dir, monkeypatch)
    corrupt(corpus / "val.en.gz")
    with pytest.raises(MtError, match=r"checksum mismatch for val\.en\.gz: expected sha256 14f7d25d.*nothing was kept"):
        resolve_files(MULTI30K)
    assert "val.en.gz" in server.requests
    assert not any("val.en" in name for name in cached_names(offline)), "a partial or bad file was kept"

    shutil.copyfile(multi30k_dir / "val.en.gz", corpus / "val.en.gz")  # the server is fixed
    server.requests.clear()
    files = resolve_files(MULTI30K)
    assert sha256_file(files.dev.trg) == MULTI30K_SHA256["val.en.gz"]
    assert "train.de.gz" not in server.requests, "files already verified were fetched again"
    assert cached_names(offline) == DE_EN_FILES


def test_a_corrupted_cached_file_is_downloaded_again(server, multi30k_dir, monkeypatch, offline):
    serve_corpus(server, multi30k_dir, monkeypatch)
    files = resolve_files(MULTI30K)
    corrupt(Path(files.train.src))
    server.requests.clear()
    again = resolve_files(MULTI30K)
    assert server.requests == ["train.de.gz"]
    assert sha256_file(again.train.src) == MULTI30K_SHA256["train.de.gz"]


def test_http_404_is_a_clear_error(server, monkeypatch, offline):
    monkeypatch.setenv("MT_CORPUS_URL", server.url)  # serves nothing
    with pytest.raises(MtError, match=r"train\.de\.gz: download failed: HTTP 404"):
        resolve_files(MULTI30K)
    assert cached_names(offline) == []


def test_connection_refused_is_a_clear_error_that_says_what_else_to_do(offline):
    with pytest.raises(MtError) as caught:
        resolve_files(MULTI30K)
    message = str(caught.value)
    assert "train.de.gz: download failed" in message
    assert "data.data_dir or $MT_DATA" in message
    assert cached_names(offline) == []


def test_local_corpus_folder_needs_no_download(multi30k_dir, monkeypatch, offline):
    monkeypatch.setenv("MT_DATA", str(multi30k_dir))  # MT_CORPUS_URL refuses: nothing may be fetched
    files = resolve_files(MULTI30K)
    assert Path(files.train.src) == (multi30k_dir / "train.de.gz").resolve()
    assert input_sums(MULTI30K)["train.src"] == sha256_file(files.train.src)
    assert cached_names(offline) == []


def test_wrong_file_in_data_dir_is_a_checksum_error(tmp_path, multi30k_dir):
    data_dir = tmp_path / "mine"
    data_dir.mkdir()
    for name in MULTI30K_SHA256:
        shutil.copyfile(multi30k_dir / name, data_dir / name)
    corrupt(data_dir / "val.de.gz")
    with pytest.raises(MtError, match=rf"{data_dir / 'val.de.gz'}: checksum mismatch"):
        resolve_files(DataConfig(corpus="multi30k", data_dir=str(data_dir)))


def test_corpus_with_an_unsupported_language_is_a_config_error():
    with pytest.raises(MtError, match=r"^data.trg_lang: 'ja' is not a language of corpus multi30k here; "
                                      r"supported: cs, de, en, fr$"):
        resolve_files(DataConfig(corpus="multi30k", src_lang="de", trg_lang="ja"))
    with pytest.raises(MtError, match=r"^data.src_lang: 'ja' is not"):
        input_sums(DataConfig(corpus="multi30k", src_lang="ja", trg_lang="en"))


def test_every_multi30k_file_of_every_language_is_pinned():
    for lang, tests in {"cs": 1, "de": 3, "en": 3, "fr": 3}.items():
        assert sum(name.endswith(f".{lang}.gz") for name in MULTI30K_SHA256) == 2 + tests


@pytest.mark.parametrize("src, trg, tests", [
    ("fr", "cs", {"test_2016_flickr"}),
    ("cs", "en", {"test_2016_flickr"}),
    ("en", "fr", {"test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"}),
])
def test_a_direction_gets_the_test_sets_both_languages_have(multi30k_dir, monkeypatch, src, trg, tests):
    monkeypatch.setenv("MT_DATA", str(multi30k_dir))  # the refused MT_CORPUS_URL: nothing may be fetched
    cfg = DataConfig(corpus="multi30k", src_lang=src, trg_lang=trg)
    files = resolve_files(cfg)
    assert set(files.tests) == set(corpus_tests(src, trg)) == tests
    assert Path(files.train.src).name == f"train.{src}.gz" and Path(files.dev.trg).name == f"val.{trg}.gz"
    for name, pair in files.tests.items():
        assert sha256_file(pair.trg) == MULTI30K_SHA256[f"{name}.{trg}.gz"]
    assert len(read_parallel(files.train.src, files.train.trg)) == 29000
    assert len(read_parallel(files.dev.src, files.dev.trg)) == 1014
