"""`mt prepare`: config errors as the user sees them, the prepared run directory, doing nothing
when nothing changed, redoing when something did, and leaving a run alone when it fails."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mt.config import load_config
from mt.data import load_ids
from mt.errors import MtError
from mt.prepare import prepare
from mt.tokenizer import JOINT_MODEL, SRC_MODEL, TRG_MODEL, Tokenizer

from conftest import Toy, error_line, run_mt, write_lines  # noqa: F401  (the toy fixture is in conftest)

def snapshot(run_dir: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under run_dir: inode (a rename makes a new one), mtime and content hash."""
    def state(path: Path) -> tuple[int, int, str]:
        return path.stat().st_ino, path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(p.relative_to(run_dir)): state(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Data mistakes: one line, exit code 1, nothing written
# ---------------------------------------------------------------------------------------------


def test_different_line_counts_fail_before_writing_anything(toy):
    write_lines(toy.train_trg, toy.train_trg.read_text().splitlines()[:-1])
    result = toy.mt("prepare")
    assert result.returncode == 1
    assert error_line(result) == (f"{toy.train_src} has 500 lines but {toy.train_trg} has 499; "
                                  "parallel files need one line per sentence on both sides")
    assert not toy.run_dir.exists()


def test_invalid_utf8_names_file_and_line(toy):
    with open(toy.dev_src, "ab") as f:
        f.write(b"Caf\xe9 (latin-1)\n")
    write_lines(toy.dev_trg, [*toy.dev_trg.read_text().splitlines(), "Cafe"])
    result = toy.mt("prepare")
    assert result.returncode == 1
    assert error_line(result) == f"{toy.dev_src}:101: invalid UTF-8"
    assert not toy.run_dir.exists()


def test_empty_corpus_is_an_error(toy):
    toy.train_src.write_text("")
    toy.train_trg.write_text("")
    result = toy.mt("prepare")
    assert result.returncode == 1
    assert "empty corpus" in error_line(result)


def test_filtering_out_every_pair_is_an_error(toy):
    result = toy.mt("prepare", "--set", "data.filter.max_words=2")
    assert result.returncode == 1
    assert error_line(result) == "data.filter dropped all 500 training pairs (max_words 500); loosen data.filter"
    assert not toy.run_dir.exists()


def test_vocab_size_too_large_says_to_lower_it(toy):
    result = toy.mt("prepare", "--set", "tokenizer.vocab_size=5000")
    assert result.returncode == 2
    assert re.fullmatch(r"tokenizer\.vocab_size: 5000 is more than this data allows; lower it to at most \d+",
                        error_line(result))
    assert not toy.run_dir.exists()


# ---------------------------------------------------------------------------------------------
# A prepared run directory
# ---------------------------------------------------------------------------------------------


def test_prepare_writes_the_run_directory(toy):
    toy.prepare()
    cache = [f"cache/{split}/{name}" for split in ("dev", "train")
             for name in ("index.json", "src.offsets", "src.tokens", "trg.offsets", "trg.tokens")]
    cache.insert(5, "cache/input_sums.json")
    assert sorted(snapshot(toy.run_dir)) == [*cache, "config.yaml", "manifest.json", f"tokenizer/{JOINT_MODEL}"]
    manifest = json.loads((toy.run_dir / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 500, "train_kept": 500, "dev": 100, "test": {}}
    assert manifest["files"]["train"]["src"] == {"path": str(toy.train_src),
                                                 "sha256": hashlib.sha256(toy.train_src.read_bytes()).hexdigest()}
    assert manifest["tokenizer"] == Tokenizer.load(toy.run_dir / "tokenizer").identity()
    assert load_config(toy.run_dir / "config.yaml") == load_config(toy.config)


def test_cached_ids_are_the_tokenized_text(toy, toy_pairs):
    toy.prepare()
    tokenizer = Tokenizer.load(toy.run_dir / "tokenizer")
    train = load_ids(toy.run_dir / "cache/train")
    assert [ids.tolist() for ids in train.src] == tokenizer.encode_src([src for src, _ in toy_pairs[:500]])
    assert [ids.tolist() for ids in train.trg] == tokenizer.encode_trg([trg for _, trg in toy_pairs[:500]])
    dev = load_ids(toy.run_dir / "cache/dev")
    assert tokenizer.decode_trg(dev.trg) == [trg for _, trg in toy_pairs[500:]]


def test_prepare_drops_filtered_pairs_and_reports_the_counts(toy, toy_pairs):
    extra = [("", "An empty source."), ("Hund " * 300, "dog " * 300), ("Hund", "a very very long dog here"),
             toy_pairs[0], toy_pairs[0]]
    write_lines(toy.train_src, [src for src, _ in toy_pairs[:500] + extra])
    write_lines(toy.train_trg, [trg for _, trg in toy_pairs[:500] + extra])
    write_lines(toy.dev_src, [*toy.dev_src.read_text().splitlines(), toy_pairs[500][0]])  # dev keeps duplicates
    write_lines(toy.dev_trg, [*toy.dev_trg.read_text().splitlines(), toy_pairs[500][1]])
    result = toy.mt("prepare")
    assert result.returncode == 0, result.stderr
    assert ("train: 505 pairs, 500 kept (dropped: drop_empty 1, max_words 1, max_ratio 1, drop_duplicates 2)"
            in result.stderr)
    assert "dev: 101 pairs (all kept)" in result.stderr
    manifest = json.loads((toy.run_dir / "manifest.json").read_text())
    assert manifest["filter_dropped"] == {"drop_empty": 1, "max_words": 1, "max_ratio": 1, "drop_duplicates": 2}
    assert len(load_ids(toy.run_dir / "cache/train")) == 500
    assert len(load_ids(toy.run_dir / "cache/dev")) == 101


def test_a_corpus_over_tokenizer_max_sentences_trains_on_a_sample_and_encodes_every_pair(toy):
    result = toy.mt("prepare", "--set", "tokenizer.max_sentences=100")
    assert result.returncode == 0, result.stderr
    # a joint model takes both sides of each sampled pair: 50 pairs, 100 sentences
    assert "training SentencePiece (unigram, vocab 60, joint) on a sample of 50 kept pairs" in result.stderr
    assert "encoded 500 training pairs" in result.stderr
    assert "\r" not in result.stderr, "progress bars in a log that is not a terminal"
    assert len(load_ids(toy.run_dir / "cache/train")) == 500
    sample = Tokenizer.load(toy.run_dir / "tokenizer")
    toy.prepare("tokenizer.max_sentences=100", force=True)  # the same sample again: the same model
    assert Tokenizer.load(toy.run_dir / "tokenizer").identity() == sample.identity()


def test_gz_inputs_prepare_the_same_as_plain(toy):
    toy.prepare()
    plain = load_ids(toy.run_dir / "cache/train")
    for path in (toy.train_src, toy.train_trg):
        Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
    toy.prepare(f"data.train.src={toy.train_src}.gz", f"data.train.trg={toy.train_trg}.gz",
                f"run_dir={toy.folder / 'run_gz'}")
    packed = load_ids(toy.folder / "run_gz/cache/train")
    assert [a.tolist() for a in packed.src] == [a.tolist() for a in plain.src]
    assert [a.tolist() for a in packed.trg] == [a.tolist() for a in plain.trg]


def test_second_prepare_with_the_same_inputs_does_nothing(toy, caplog):
    toy.prepare()
    before = snapshot(toy.run_dir)
    with caplog.at_level(logging.INFO, logger="mt.prepare"):
        toy.prepare()
    assert snapshot(toy.run_dir) == before
    assert "already prepared (nothing changed)" in caplog.text


def test_a_run_dir_with_the_earlier_npz_cache_is_still_prepared_and_force_renews_it(toy, caplog):
    toy.prepare()
    ids = {split: load_ids(toy.run_dir / "cache" / split) for split in ("train", "dev")}
    for split, encoded in ids.items():  # as mt wrote run directories before the mapped format
        np.savez(toy.run_dir / "cache" / f"{split}.npz", src_tokens=encoded.src.tokens, src_offsets=encoded.src.offsets,
                 trg_tokens=encoded.trg.tokens, trg_offsets=encoded.trg.offsets)
        shutil.rmtree(toy.run_dir / "cache" / split)
    with caplog.at_level(logging.INFO, logger="mt.prepare"):
        toy.prepare()
    assert "already prepared (nothing changed)" in caplog.text
    assert [a.tolist() for a in load_ids(toy.run_dir / "cache/train").trg] == [a.tolist() for a in ids["train"].trg]
    toy.prepare(force=True)
    assert sorted(p.name for p in (toy.run_dir / "cache").iterdir()) == ["dev", "input_sums.json", "train"]
    assert [a.tolist() for a in load_ids(toy.run_dir / "cache/train").trg] == [a.tolist() for a in ids["train"].trg]


def test_a_new_tokenizer_vocab_size_redoes_everything(toy):
    toy.prepare()
    before = snapshot(toy.run_dir)
    toy.prepare("tokenizer.vocab_size=50")
    after = snapshot(toy.run_dir)
    for name in ("cache/train/src.tokens", "cache/dev/trg.tokens", f"tokenizer/{JOINT_MODEL}", "manifest.json"):
        assert after[name][2] != before[name][2], f"{name} was not redone"
    assert Tokenizer.load(toy.run_dir / "tokenizer").src_vocab_size == 50
    assert json.loads((toy.run_dir / "manifest.json").read_text())["tokenizer"]["src_vocab_size"] == 50


def test_changed_data_redoes_it(toy, toy_pairs):
    toy.prepare()
    write_lines(toy.train_src, [src for src, _ in toy_pairs[:400]])
    write_lines(toy.train_trg, [trg for _, trg in toy_pairs[:400]])
    toy.prepare()
    assert len(load_ids(toy.run_dir / "cache/train")) == 400


def test_a_model_setting_change_keeps_the_data_and_updates_the_config(toy):
    toy.prepare()
    before = snapshot(toy.run_dir)
    toy.prepare("model.d_model=32")
    after = snapshot(toy.run_dir)
    for name in ("cache/train/src.tokens", "cache/dev/trg.tokens", f"tokenizer/{JOINT_MODEL}"):
        assert after[name] == before[name], f"{name} was redone for a model setting"
    assert load_config(toy.run_dir / "config.yaml").model.d_model == 32


def test_an_input_of_unchanged_size_and_mtime_is_not_read_again(toy, caplog):
    # the documented rule: same size and mtime = same bytes. Proven by a file whose bytes change
    # behind prepare's back (same size, mtime put back): had it been read, the data would differ
    toy.prepare()
    recorded = json.loads((toy.run_dir / "cache/input_sums.json").read_text())[str(toy.train_src)]
    assert recorded == {"size": toy.train_src.stat().st_size, "mtime_ns": toy.train_src.stat().st_mtime_ns,
                        "sha256": hashlib.sha256(toy.train_src.read_bytes()).hexdigest()}
    before = snapshot(toy.run_dir)
    lines = toy.train_src.read_text(encoding="utf-8").splitlines()
    write_lines(toy.train_src, lines[1:] + lines[:1])  # the same bytes in another order
    os.utime(toy.train_src, ns=(recorded["mtime_ns"], recorded["mtime_ns"]))
    with caplog.at_level(logging.INFO, logger="mt.prepare"):
        toy.prepare()
    assert "already prepared (nothing changed)" in caplog.text
    assert snapshot(toy.run_dir) == before


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_an_input_whose_size_or_mtime_changed_is_read_again(toy, change):
    toy.prepare()
    mtime = toy.train_src.stat().st_mtime_ns
    lines = toy.train_src.read_text(encoding="utf-8").splitlines()
    if change == "mtime":  # the same size: the same bytes in another order, written now
        lines = lines[1:] + lines[:1]
        write_lines(toy.train_src, lines)
    else:  # another size, its mtime put back
        lines = ["Ein Wal schwimmt."] + lines[1:]
        write_lines(toy.train_src, lines)
        os.utime(toy.train_src, ns=(mtime, mtime))
    toy.prepare()
    manifest = json.loads((toy.run_dir / "manifest.json").read_text())
    assert manifest["files"]["train"]["src"]["sha256"] == hashlib.sha256(toy.train_src.read_bytes()).hexdigest()
    tokenizer = Tokenizer.load(toy.run_dir / "tokenizer")
    assert load_ids(toy.run_dir / "cache/train").src[0].tolist() == tokenizer.encode_src(lines[:1])[0]


def test_moved_data_and_an_added_test_set_update_only_the_records(toy):
    toy.prepare()
    before = snapshot(toy.run_dir)
    moved = toy.folder / "moved"
    moved.mkdir()
    for path in (toy.train_src, toy.train_trg, toy.dev_src, toy.dev_trg):
        shutil.copy2(path, moved / path.name)
    toy.prepare(f"data.train.src={moved / 'train.de'}", f"data.train.trg={moved / 'train.en'}",
                f"data.test={{extra: {{src: {toy.dev_src}, trg: {toy.dev_trg}}}}}")
    after = snapshot(toy.run_dir)
    made = [name for name in before if name.startswith(("tokenizer/", "cache/train/", "cache/dev/"))]
    assert made and all(after[name] == before[name] for name in made)
    manifest = json.loads((toy.run_dir / "manifest.json").read_text())
    assert manifest["files"]["train"]["src"]["path"] == str(moved / "train.de")
    assert manifest["files"]["test"]["extra"]["src"]["path"] == str(toy.dev_src)
    assert manifest["counts"]["test"] == {"extra": 100}


def test_force_redoes_it(toy):
    toy.prepare()
    before = snapshot(toy.run_dir)
    toy.prepare(force=True)
    after = snapshot(toy.run_dir)
    assert all(after[name][0] != before[name][0] for name in before)  # every file written anew


def test_switching_to_separate_tokenizers_replaces_the_joint_model(toy):
    toy.prepare()
    toy.prepare("tokenizer.joint=false", "model.share_embeddings=false", "tokenizer.vocab_size=40")
    assert sorted(p.name for p in (toy.run_dir / "tokenizer").iterdir()) == [SRC_MODEL, TRG_MODEL]
    assert not Tokenizer.load(toy.run_dir / "tokenizer").joint


@pytest.mark.parametrize("spoil", ["line_count", "utf8", "vocab_size", "all_filtered"])
def test_a_failing_prepare_leaves_a_prepared_run_as_it_was(toy, spoil):
    toy.prepare()
    before = snapshot(toy.run_dir)
    overrides = []
    if spoil == "line_count":
        write_lines(toy.train_trg, toy.train_trg.read_text().splitlines()[:-1])
    elif spoil == "utf8":
        toy.dev_src.write_bytes(toy.dev_src.read_bytes().replace("ü".encode(), b"\xfc", 1))
    elif spoil == "vocab_size":
        overrides = ["tokenizer.vocab_size=5000"]
    else:
        overrides = ["data.filter.max_words=1"]
    with pytest.raises(MtError):
        toy.prepare(*overrides)
    assert snapshot(toy.run_dir) == before


def test_run_dir_that_is_a_file_is_an_error(toy):
    toy.run_dir.write_text("not a folder")
    with pytest.raises(MtError, match="is a file, not a folder"):
        toy.prepare()


# ---------------------------------------------------------------------------------------------
# The real corpus
# ---------------------------------------------------------------------------------------------


def test_prepare_multi30k_from_a_local_copy(tmp_path, multi30k_dir):
    config = tmp_path / "multi30k.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\n"
                      "data: {corpus: multi30k, src_lang: de, trg_lang: en}\n"
                      "tokenizer: {vocab_size: 1000, max_sentences: 5000}\n")
    with socket.socket() as probe:  # a port where nothing listens: downloading would fail
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    env = {"MT_DATA": str(multi30k_dir), "MT_CACHE": str(tmp_path / "cache"), "MT_CORPUS_URL": nowhere}
    result = run_mt("prepare", "--config", str(config), check=False, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^train: 29000 pairs, \d+ kept", result.stderr, re.MULTILINE)
    assert "dev: 1014 pairs" in result.stderr
    for name, count in (("test_2016_flickr", 1000), ("test_2017_flickr", 1000), ("test_2017_mscoco", 461)):
        assert f"test {name}: {count} pairs" in result.stderr
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["counts"]["train"] == 29000
    assert set(manifest["files"]["test"]) == {"test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"}
    assert manifest["tokenizer"]["src_vocab_size"] == 1000
    assert not (tmp_path / "cache").exists()  # read in place, nothing downloaded or copied
