"""How `mt prepare` reads a large corpus: blocks of lines cut at the same line numbers, words and
pair hashes counted on raw bytes, SentencePiece's sample, and the work done in worker processes,
all giving exactly what one process reading decoded lines gives."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mt.blocks import Sample, aligned_blocks, lines_of, scan
from mt.config import FilterConfig
from mt.data import PairFilter, pair_hashes, read_parallel, word_counts
from mt.errors import MtError
from mt.idcache import load_ids
from mt.workers import Workers

from conftest import ROOT, write_lines

WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace() and chr(c) not in "\n"]


def write_pairs(folder: Path, stem: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    return (write_lines(folder / f"{stem}.de", [src for src, _ in pairs]),
            write_lines(folder / f"{stem}.en", [trg for _, trg in pairs]))


@pytest.mark.parametrize("size", [1, 3, 10, 1000])
def test_blocks_give_the_pairs_and_the_errors_read_parallel_gives(tmp_path, toy_pairs, size):
    src, trg = write_pairs(tmp_path, "train", toy_pairs[:10])
    blocks = list(aligned_blocks(src, trg, size))
    assert all(0 < block.pairs <= size for block in blocks)
    assert [block.first_line for block in blocks] == list(range(0, 10, size))
    assert [pair for block in blocks for pair in zip(*lines_of(block))] == read_parallel(src, trg)
    at_a_block_end = ((size, size + 1), (size + 1, size)) if size < len(toy_pairs) else ()
    for src_count, trg_count in ((10, 9), (9, 10), (0, 3), (3, 0), *at_a_block_end):
        short_src = write_lines(tmp_path / "a.de", [s for s, _ in toy_pairs[:src_count]])
        short_trg = write_lines(tmp_path / "a.en", [t for _, t in toy_pairs[:trg_count]])
        with pytest.raises(MtError, match=rf"^{short_src} has {src_count} lines but {short_trg} has {trg_count};"):
            list(aligned_blocks(short_src, short_trg, size))
    empty = write_lines(tmp_path / "empty.de", [])
    with pytest.raises(MtError, match="empty corpus"):
        list(aligned_blocks(empty, write_lines(tmp_path / "empty.en", []), size))


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_crlf_a_missing_last_newline_and_gzip_read_as_read_parallel_reads_them(tmp_path, size):
    src, trg = tmp_path / "a.de", tmp_path / "a.en.gz"
    src.write_bytes(b"Ein Hund.\r\n\r\nEine Katze.")  # CRLF, an empty line, no LF at the end
    trg.write_bytes(gzip.compress(b"A dog.\n\nA cat.\r\n"))
    blocks = list(aligned_blocks(src, trg, size))
    assert [pair for block in blocks for pair in zip(*lines_of(block))] == read_parallel(src, trg) == [
        ("Ein Hund.", "A dog."), ("", ""), ("Eine Katze.", "A cat.")]


def test_words_and_hashes_from_bytes_are_those_of_the_decoded_lines(tmp_path):
    """Every character str.split() splits at (the wide ones are 2 and 3 bytes in UTF-8), among
    letters of every width, CRs and empty lines."""
    rng = random.Random(7)
    letters = ["a", "ß", "€", "中", "😀", "\u3001", "\u2009x", "\xa0", "\x85", "\r"]
    lines = ["".join(rng.choice(letters + WHITESPACE) for _ in range(rng.randrange(0, 12))) for _ in range(3000)]
    lines = [line.rstrip("\r") for line in lines] + ["", " ", "\u3000".join("abc")]
    src = tmp_path / "a.src"
    src.write_bytes("".join(line + ("\r\n" if k % 3 else "\n") for k, line in enumerate(lines)).encode())
    trg = write_lines(tmp_path / "a.trg", list(reversed(lines)))
    for block in aligned_blocks(src, trg, 700):
        scanned = scan((block, None))
        src_lines, trg_lines = lines_of(block)
        assert scanned.src_words.tolist() == word_counts(src_lines).tolist() == [len(x.split()) for x in src_lines]
        assert scanned.trg_words.tolist() == word_counts(trg_lines).tolist()
        assert scanned.hashes.tolist() == pair_hashes(src_lines, trg_lines).tolist()


def test_invalid_utf8_in_a_worker_names_the_file_and_line(tmp_path, toy_pairs):
    src, trg = write_pairs(tmp_path, "train", toy_pairs[:20])
    data = src.read_bytes().split(b"\n")
    data[13] += b" Caf\xe9"
    src.write_bytes(b"\n".join(data))
    with Workers(2) as workers, pytest.raises(MtError, match=rf"^{src}:14: invalid UTF-8$"):
        list(workers.map(scan, ((block, None) for block in aligned_blocks(src, trg, 3))))


def test_the_sample_is_the_kept_pairs_of_smallest_hash_in_corpus_order(tmp_path, toy_pairs):
    """Fed block by block, with ties (repeated pairs, not dropped) and pairs the filters drop."""
    pairs = toy_pairs[:300] + toy_pairs[:40] + [("", "x")] * 5
    random.Random(3).shuffle(pairs)
    src, trg = write_pairs(tmp_path, "train", pairs)
    pair_filter = PairFilter(FilterConfig(drop_duplicates=False))
    for size in (1, 50, 330, 1000):
        sample, keeps = Sample(size), []
        for block in aligned_blocks(src, trg, 17):
            scanned = scan((block, sample.bound()))
            keeps.append(pair_filter.keep_counted(scanned.src_words, scanned.trg_words, scanned.hashes))
            sample.offer(scanned, keeps[-1])
        keep = np.concatenate(keeps)
        hashes = pair_hashes(*zip(*pairs)).tolist()
        expected = sorted(sorted(np.flatnonzero(keep), key=lambda i: (hashes[i], i))[:size])
        assert sample.pairs() == ([pairs[i][0] for i in expected], [pairs[i][1] for i in expected])


def test_prepare_in_worker_processes_makes_the_run_one_process_makes(toy):
    """A sample smaller than the corpus (the hash bound at work), plain and gzipped inputs."""
    from mt.config import load_config
    from mt.prepare import prepare

    for path in (toy.train_src, toy.train_trg):
        Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
    runs = {}
    for processes in (1, 2):
        for suffix in ("", ".gz"):
            run_dir = toy.folder / f"run{processes}{suffix}"
            cfg = load_config(toy.config, [f"run_dir={run_dir}", "tokenizer.max_sentences=200",
                                           f"data.train.src={toy.train_src}{suffix}",
                                           f"data.train.trg={toy.train_trg}{suffix}"])
            prepare(cfg, processes=processes)
            runs[run_dir.name] = {path.relative_to(run_dir): path.read_bytes() for path in sorted(run_dir.rglob("*"))
                                  if path.is_file() and path.parent.name in ("tokenizer", "train", "dev")}
    assert len(runs["run1"]) == 11  # joint.model, and five files in each of the two caches
    assert all(files == runs["run1"] for files in runs.values())


def test_a_script_without_a_main_guard_prepares_in_worker_processes(toy):
    """The workers are fresh interpreters: they do not run the caller's script again, as
    multiprocessing's spawned children would (starting more workers, without end)."""
    script = toy.folder / "prepare_it.py"
    script.write_text(textwrap.dedent(f"""\
        from mt.config import load_config
        from mt.prepare import prepare
        prepare(load_config({str(toy.config)!r}), processes=2)
        print("prepared")
        """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "prepared\n"
    assert len(load_ids(toy.run_dir / "cache/train")) == 500


def test_blocks_in_worker_processes_make_the_run_one_block_makes(toy, toy_pairs, monkeypatch):
    """Many blocks (the sample's bound sent a block or two late to each worker, each block's
    share of the kept pairs encoded by the worker it went to) give exactly the run one block
    gives, and its cache is the tokenized text of the pairs the filters keep."""
    from mt import blocks
    from mt.config import load_config
    from mt.data import filter_pairs
    from mt.prepare import prepare
    from mt.tokenizer import Tokenizer

    train = toy_pairs[:500] + [("", "An empty source.")] + toy_pairs[:30] + toy_pairs[200:230]  # drops in later blocks
    random.Random(5).shuffle(train)
    write_pairs(toy.folder, "many", train)
    runs = {}
    for block_pairs, processes in ((None, 1), (37, 1), (37, 2)):
        monkeypatch.setattr(blocks, "BLOCK_PAIRS", block_pairs or 50_000)
        run_dir = toy.folder / f"run{block_pairs}_{processes}"
        cfg = load_config(toy.config, [f"run_dir={run_dir}", "tokenizer.max_sentences=200",
                                       f"data.train.src={toy.folder / 'many.de'}", f"data.train.trg={toy.folder / 'many.en'}"])
        prepare(cfg, processes=processes)
        runs[run_dir] = {path.relative_to(run_dir): path.read_bytes() for path in sorted(run_dir.rglob("*"))
                         if path.is_file() and path.parent.name in ("tokenizer", "train", "dev")}
    assert all(files == runs[run_dir] for files in runs.values())
    kept, _ = filter_pairs(train, cfg.data.filter)
    tokenizer, cache = Tokenizer.load(run_dir / "tokenizer"), load_ids(run_dir / "cache/train")
    assert len(kept) == 500 and [ids.tolist() for ids in cache.src] == tokenizer.encode_src([s for s, _ in kept])
    assert [ids.tolist() for ids in cache.trg] == tokenizer.encode_trg([t for _, t in kept])


def test_workers_import_this_mt_whatever_the_current_folder_holds(toy):
    """`python -c` puts the current folder first on the import path: an `mt` there (another
    checkout, a user's package), or a json.py, was imported by the workers instead of the
    parent's. The script's sys.path holds a Path too, as scripts' often do (imports skip it)."""
    shadow = toy.folder / "elsewhere"
    (shadow / "mt").mkdir(parents=True)
    (shadow / "mt/__init__.py").write_text("raise SystemExit('the mt of the current folder')\n")
    (shadow / "json.py").write_text("raise SystemExit('the json of the current folder')\n")
    script = toy.folder / "prepare_it.py"
    script.write_text(textwrap.dedent(f"""\
        import pathlib, sys
        sys.path.append(pathlib.Path({str(toy.folder)!r}))
        from mt.config import load_config
        from mt.prepare import prepare
        prepare(load_config({str(toy.config)!r}), processes=2)
        print("prepared")
        """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # not a relative entry of ours: that would name `shadow` too
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=shadow, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "prepared\n"


@pytest.mark.parametrize("processes", [1, 2])
def test_a_bad_line_before_the_files_part_is_the_error_however_many_processes(tmp_path, toy_pairs, processes):
    """The pairs ahead of a line-count mismatch are in flight when the reading finds it: their
    error (invalid UTF-8 at line 1) is the one raised, as one process raises it."""
    src, trg = write_pairs(tmp_path, "train", toy_pairs[:6])
    src.write_bytes(src.read_bytes().replace(b"\n", b" Caf\xe9\n", 1))
    trg.write_bytes(trg.read_bytes() + b"one line more\n")
    with Workers(processes) as workers, pytest.raises(MtError, match=rf"^{src}:1: invalid UTF-8$"):
        list(workers.map(scan, ((block, None) for block in aligned_blocks(src, trg, 3))))


def test_a_line_longer_than_a_block_reads_whole(tmp_path):
    """A line of 8 MB as the last of a block, on one side: read in many small reads, joined once
    (joined one read at a time, a line of 80 MB near a block's end took 32 s to read, not 0.2 s)."""
    long_line = "Wort " * (8 * 2**20 // 5)
    src = write_lines(tmp_path / "a.de", ["a b", "c d", long_line, "e f", "g"])
    trg = write_lines(tmp_path / "a.en", ["A B", "C D", "long", "E F", "G"])
    blocks = list(aligned_blocks(src, trg, 3))
    assert [block.pairs for block in blocks] == [3, 2]
    assert [pair for block in blocks for pair in zip(*lines_of(block))] == read_parallel(src, trg)
    assert scan((blocks[0], None)).src_words.tolist() == [2, 2, len(long_line.split())]
