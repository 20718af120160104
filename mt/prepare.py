"""`mt prepare`: fetch and check the data, train SentencePiece, encode train/dev into the run's cache.

A prepared run directory (layout: rundir.py) holds the resolved config, the tokenizer, the id
caches of train and dev (folders of mapped arrays, idcache.py; dev BLEU must cover the whole dev
set, so dev is not filtered) and manifest.json: what was made from what (versions, SHA-256 sums,
counts, prepare_key).

Memory stays flat in the corpus size: the training files are read twice in blocks (blocks.py;
for a large corpus the per-line work runs in worker processes, workers.py), once to check and
filter them and draw SentencePiece's sample (`tokenizer.max_sentences`), once to encode the
kept pairs into the cache. Every input is checked and the tokenizer trained before the first
write, so a bad input leaves the run directory as it was. manifest.json is removed before and written after the other files:
a run directory without one is unprepared, whatever else is in it. Its `prepare_key` hashes the
inputs' sums and the settings that shape the outputs; while it matches, prepare does nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mt.blocks import Encode, Sample, aligned_blocks, scan
from mt.config import Config, FilePair, to_dict, to_yaml
from mt.data import PairFilter, ResolvedData, count_lines, input_sums, read_parallel, resolve_files, save_ids
from mt.errors import MtError
from mt import rundir
from mt.files import KnownSums, write_text
from mt.idcache import IdCacheWriter, load_ids
from mt.progress import Progress, Ticking
from mt.tokenizer import Tokenizer, save_models, train_models
from mt.workers import Workers, processes_for

log = logging.getLogger(__name__)

PREPARE_FORMAT = 1  # bump when the outputs change meaning, so older run dirs are redone


@dataclass(frozen=True)
class Prepared:
    """A prepared run directory: its paths, and the local train/dev/test text files it came from."""

    run_dir: Path
    files: ResolvedData

    @property
    def config_path(self) -> Path:
        return rundir.config_file(self.run_dir)

    @property
    def manifest_path(self) -> Path:
        return rundir.manifest_file(self.run_dir)

    @property
    def tokenizer_dir(self) -> Path:
        return rundir.tokenizer_dir(self.run_dir)

    @property
    def train_ids(self) -> Path:
        return rundir.ids_file(self.run_dir, "train")

    @property
    def dev_ids(self) -> Path:
        return rundir.ids_file(self.run_dir, "dev")


@dataclass
class _Outputs:
    """What prepare decides before it writes: the tokenizer, and which training pairs it keeps."""

    models: dict[str, bytes]
    tokenizer: Tokenizer
    train_keep: np.ndarray  # a bool per line of the training files
    dev: list[tuple[str, str]]
    counts: dict
    dropped: dict[str, int]


def prepare(cfg: Config, force: bool = False, processes: Optional[int] = None) -> Prepared:
    """Prepare cfg.run_dir for training, or do nothing if it already matches these inputs.
    `processes`: how many do the per-line work (blocks.py); by default one a core for a large
    corpus, else this one."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MtError(f"run_dir: {run_dir} is a file, not a folder")
    files = resolve_files(cfg.data)
    recorded = rundir.read_input_sums(run_dir)
    known = KnownSums({} if force else recorded)  # --force reads every file again
    sums = input_sums(cfg.data, known)
    key = prepare_key(cfg, sums)
    prepared = Prepared(run_dir, files)
    manifest = None if force else _current_manifest(cfg, prepared, key, sums)
    with Workers(processes_for(files.train.src, files.train.trg, requested=processes)) as workers:
        _make_or_refresh(cfg, prepared, manifest, sums, key, workers)
    if force or known.now != recorded:
        rundir.write_input_sums(run_dir, known.now)
    return prepared


def _make_or_refresh(cfg: Config, prepared: Prepared, manifest: Optional[dict], sums: dict[str, str], key: str,
                     workers: Workers) -> None:
    start, run_dir = time.monotonic(), prepared.run_dir
    if manifest is not None:
        _reencode_damaged_caches(cfg, prepared, workers)
        if _refresh_records(cfg, prepared, sums, key, manifest):
            log.info("%s: already prepared (data and tokenizer unchanged; updated %s and %s)",
                     run_dir, prepared.config_path.name, prepared.manifest_path.name)
        else:
            log.info("%s: already prepared (nothing changed)", run_dir)
    else:
        outputs = _make_outputs(cfg, prepared.files, workers)
        _write(cfg, prepared, outputs, sums, key, workers)
        log.info("prepared %s in %.1f s", run_dir, time.monotonic() - start)


def prepare_key(cfg: Config, sums: dict[str, str]) -> str:
    """A hash of everything that shapes the tokenizer and the id caches; a change in any of it
    means redo. Test sets shape neither: adding one, or moving a file, only updates the records."""
    data = cfg.data
    payload = {
        "format": PREPARE_FORMAT,
        "inputs": {role: digest for role, digest in sums.items() if not role.startswith("test.")},
        "data": {"corpus": data.corpus, "src_lang": data.src_lang, "trg_lang": data.trg_lang},
        "filter": dataclasses.asdict(data.filter),
        "tokenizer": dataclasses.asdict(cfg.tokenizer),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_prepared(run_dir: str | Path) -> Prepared:
    """The prepared run in `run_dir`; an error if it was never prepared."""
    return Prepared(Path(run_dir), rundir.recorded_files(run_dir))


# ---------------------------------------------------------------------------------------------
# Deciding whether there is work to do
# ---------------------------------------------------------------------------------------------


def _current_manifest(cfg: Config, prepared: Prepared, key: str, sums: dict[str, str]) -> Optional[dict]:
    """The manifest, while the outputs it records are those these inputs make; None: redo.
    Once the run dir holds trained weights their tokenizer must stay: a change that would make
    another one is refused, and a manifest of an older mt whose key was reckoned otherwise is kept
    when the data and settings it records are these."""
    run_dir = prepared.run_dir
    manifest = rundir.read_manifest(run_dir)
    # a damaged cache is encoded again and a lost config.yaml written again (_refresh_records)
    if manifest is None or not rundir.outputs_exist(run_dir, manifest, caches=False, config=False):
        if rundir.has_checkpoints(run_dir):
            lost = rundir.manifest_file(run_dir) if manifest is None else rundir.tokenizer_dir(run_dir)
            raise MtError(f"{run_dir} holds checkpoints, but {lost} is missing or incomplete, and a new tokenizer "
                          "would make them unusable: restore it, or train in a new run_dir")
        return None
    if manifest.get("prepare_key") == key:
        return manifest
    if not rundir.has_checkpoints(run_dir):
        return None
    changes = _tokenizer_changes(cfg, prepared.files, manifest, sums)
    if changes:
        raise MtError(f"{'; '.join(changes)} since the checkpoints in {run_dir} were trained, and their tokenizer "
                      "must stay theirs: set run_dir to a new folder, or run `mt train --restart` to start "
                      "this run over on the new data")
    return manifest


def _reencode_damaged_caches(cfg: Config, prepared: Prepared, workers: Workers) -> None:
    """An id cache that is missing or unreadable (the inputs and the tokenizer unchanged) is
    encoded again with the run's own tokenizer: its checkpoints stay usable."""
    damaged = []
    for split in ("train", "dev"):
        try:
            load_ids(rundir.ids_file(prepared.run_dir, split))
        except MtError:
            damaged.append(split)
    if not damaged:
        return
    log.info("note: %s: the id cache of %s is missing or unreadable; encoding it again with the run's "
             "tokenizer", prepared.run_dir, " and ".join(damaged))
    tokenizer = Tokenizer.load(prepared.tokenizer_dir)
    models = {name: (prepared.tokenizer_dir / name).read_bytes() for name in tokenizer.model_names()}
    if "train" in damaged:
        keep = _scan_train(cfg, prepared.files.train, workers, with_sample=False).keep
        _encode_train(prepared, _Outputs(models=models, tokenizer=tokenizer, train_keep=keep, dev=[], counts={},
                                         dropped={}), workers)
    if "dev" in damaged:
        dev = read_parallel(prepared.files.dev.src, prepared.files.dev.trg)
        save_ids(prepared.dev_ids, tokenizer.encode_src([src for src, _ in dev]),
                 tokenizer.encode_trg([trg for _, trg in dev]))


def _tokenizer_changes(cfg: Config, files: ResolvedData, manifest: dict, sums: dict[str, str]) -> list[str]:
    """What differs from the manifest's record among the things that shape the tokenizer and the
    id caches: the train and dev files' content, and the settings `prepare_key` hashes."""
    recorded, changes = _as_dict(manifest.get("files")), []
    for role in ("train", "dev"):
        for side in ("src", "trg"):
            entry = _as_dict(_as_dict(recorded.get(role)).get(side))
            if entry.get("sha256") != sums[f"{role}.{side}"]:
                changes.append(f"data.{role}.{side} ({getattr(getattr(files, role), side)}): content changed")
    old, new = _as_dict(manifest.get("config")), to_dict(cfg)
    for section, keys in (("data", ("corpus", "src_lang", "trg_lang", "filter")), ("tokenizer", tuple(new["tokenizer"]))):
        changes += [f"{section}.{k} changed" for k in keys if _as_dict(old.get(section)).get(k) != new[section][k]]
    return changes


def _as_dict(value: object) -> dict:
    """A record read from manifest.json as the mapping it should be: a hand-edited one of another
    shape is treated as missing (and rewritten by _refresh_records)."""
    return value if isinstance(value, dict) else {}


def _refresh_records(cfg: Config, prepared: Prepared, sums: dict[str, str], key: str, manifest: dict) -> bool:
    """Bring config.yaml and the manifest's file paths up to date when only they changed (say,
    model settings, the data found in another folder, a test set added): the tokenizer and the
    id caches stay as they are. A new test set is read first, so that a bad one fails now.
    Returns whether anything was written."""
    config, files = to_dict(cfg), _files_record(prepared.files, sums)
    if manifest.get("config") == config and manifest.get("files") == files and manifest.get("prepare_key") == key \
            and prepared.config_path.is_file():
        return False
    counts = dict(_as_dict(manifest.get("counts")))
    if _as_dict(manifest.get("files")).get("test") != files["test"]:
        counts["test"] = {name: len(read_parallel(pair.src, pair.trg)) for name, pair in prepared.files.tests.items()}
    write_text(prepared.config_path, to_yaml(cfg))
    rundir.write_manifest(prepared.run_dir, {**manifest, "prepare_key": key, "config": config, "files": files,
                                             "counts": counts})
    return True


# ---------------------------------------------------------------------------------------------
# Doing it: everything in memory first, then the writes
# ---------------------------------------------------------------------------------------------


def _make_outputs(cfg: Config, files: ResolvedData, workers: Workers) -> _Outputs:
    """Read and check every split, filter train, train the tokenizer; write nothing. Training
    pairs pass through in blocks: what stays is a bool per pair and SentencePiece's sample."""
    train = _scan_train(cfg, files.train, workers)
    kept = int(train.keep.sum())
    dropped_text = ", ".join(f"{name} {n}" for name, n in train.dropped.items() if n) or "none"
    log.info("train: %d pairs, %d kept (dropped: %s), read in %.1f s", len(train.keep), kept, dropped_text,
             train.seconds)
    dev = read_parallel(files.dev.src, files.dev.trg)
    log.info("dev: %d pairs (all kept)", len(dev))
    tests = {name: len(read_parallel(pair.src, pair.trg)) for name, pair in files.tests.items()}  # fail now, not after training
    for name, count in tests.items():
        log.info("test %s: %d pairs", name, count)

    sample_src, sample_trg = train.sample.pairs()
    settings = cfg.tokenizer
    sample_text = f"all {kept}" if len(sample_src) == kept else f"a sample of {len(sample_src)}"
    log.info("training SentencePiece (%s, vocab %d, %s) on %s kept pairs", settings.type, settings.vocab_size,
             "joint" if settings.joint else "separate src/trg", sample_text)
    with Ticking("training SentencePiece") as ticking:
        models = train_models(settings, sample_src, sample_trg)
    log.info("SentencePiece trained in %.1f s", ticking.close())
    tokenizer = Tokenizer(models)
    log.info("vocabulary: src %d, trg %d", tokenizer.src_vocab_size, tokenizer.trg_vocab_size)
    return _Outputs(models=models, tokenizer=tokenizer, train_keep=train.keep, dev=dev,
                    counts={"train": len(train.keep), "train_kept": kept, "dev": len(dev), "test": tests},
                    dropped=train.dropped)


@dataclass
class _Scan:
    keep: np.ndarray  # a bool per training pair
    dropped: dict[str, int]
    sample: Sample  # which kept pairs SentencePiece trains on
    seconds: float


def _scan_train(cfg: Config, train: FilePair, workers: Workers, with_sample: bool = True) -> _Scan:
    """One pass over the training files: check them, filter them, choose SentencePiece's sample
    (unless `sample` is false: the tokenizer is there)."""
    pair_filter = PairFilter(cfg.data.filter)
    # a joint model trains on both sides of each sampled pair: tokenizer.max_sentences in all
    sample = Sample(max(cfg.tokenizer.max_sentences // (2 if cfg.tokenizer.joint else 1), 1) if with_sample else 0)
    keeps = []
    with Progress("reading train", total=count_lines(train.src)) as progress:
        tasks = ((block, sample.bound()) for block in aligned_blocks(train.src, train.trg))
        for scanned in workers.map(scan, tasks):
            keep = pair_filter.keep_counted(scanned.src_words, scanned.trg_words, scanned.hashes)
            keeps.append(keep)
            sample.offer(scanned, keep)
            progress.update(len(keep))
        seconds = progress.close()
    pair_filter.check_some_kept()
    return _Scan(np.concatenate(keeps), pair_filter.dropped, sample, seconds)


def _write(cfg: Config, prepared: Prepared, outputs: _Outputs, sums: dict[str, str], key: str,
           workers: Workers) -> None:
    prepared.manifest_path.unlink(missing_ok=True)  # until the new one lands, the dir reads as unprepared
    save_models(outputs.models, prepared.tokenizer_dir)
    _encode_train(prepared, outputs, workers)
    tokenizer, dev = outputs.tokenizer, outputs.dev
    save_ids(prepared.dev_ids, tokenizer.encode_src([src for src, _ in dev]), tokenizer.encode_trg([trg for _, trg in dev]))
    write_text(prepared.config_path, to_yaml(cfg))
    manifest = {
        "format": PREPARE_FORMAT,
        "prepare_key": key,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "files": _files_record(prepared.files, sums),
        "tokenizer": outputs.tokenizer.identity(),
        "counts": outputs.counts,
        "filter_dropped": outputs.dropped,
        "config": to_dict(cfg),
    }
    rundir.write_manifest(prepared.run_dir, manifest)


def _encode_train(prepared: Prepared, outputs: _Outputs, workers: Workers) -> None:
    """Second pass over the training files: encode the kept pairs a block at a time, straight
    into the mapped cache (SentencePiece encodes on every core: here, or one thread a worker)."""
    keep, files = outputs.train_keep, prepared.files.train
    encode = Encode(outputs.models, threads=1 if workers.processes > 1 else None)
    with Progress("encoding train", total=int(keep.sum())) as progress, \
            IdCacheWriter(prepared.train_ids) as writer:
        tasks = ((block, keep[block.first_line: block.first_line + block.pairs])
                 for block in aligned_blocks(files.src, files.trg))
        for src, trg in workers.map(encode, tasks):
            writer.add_ragged(src, trg)
            progress.update(len(src))
        log.info("encoded %d training pairs in %.1f s", writer.pairs, progress.close())


def _versions() -> dict[str, Optional[str]]:
    """Versions of what shaped the outputs; importlib.metadata, so torch is never imported here."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in ("mt", "torch", "sentencepiece", "sacrebleu", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _files_record(files: ResolvedData, sums: dict[str, str]) -> dict:
    """Local path and SHA-256 of each file: {'train': {'src': {'path', 'sha256'}, ...}, 'test': {name: ...}}."""

    def pair(role: str, files_pair: FilePair) -> dict:
        return {side: {"path": getattr(files_pair, side), "sha256": sums[f"{role}.{side}"]} for side in ("src", "trg")}

    return {
        "train": pair("train", files.train),
        "dev": pair("dev", files.dev),
        "test": {name: pair(f"test.{name}", test) for name, test in files.tests.items()},
    }
