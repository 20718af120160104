"""`mt prepare`: fetch and check the data, train SentencePiece, encode train/dev into the run's cache.

A prepared run directory (layout: rundir.py) holds the resolved config, the tokenizer, the id
caches of train and dev (dev BLEU must cover the whole dev set, so dev is not filtered) and
manifest.json: what was made from what (versions, SHA-256 sums, counts, prepare_key).

Everything is read, filtered and trained in memory before the first write, so a bad input leaves
the run directory as it was. manifest.json is removed before and written after the other files:
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

from mt.config import Config, FilePair, to_dict, to_yaml
from mt.data import ResolvedData, filter_pairs, input_sums, read_parallel, resolve_files, save_ids
from mt.errors import MtError
from mt import rundir
from mt.files import write_text
from mt.tokenizer import Tokenizer, save_models, train_models

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
    """Everything prepare writes, made in memory first."""

    models: dict[str, bytes]
    tokenizer: Tokenizer
    train_ids: tuple[list[list[int]], list[list[int]]]
    dev_ids: tuple[list[list[int]], list[list[int]]]
    counts: dict
    dropped: dict[str, int]


def prepare(cfg: Config, force: bool = False) -> Prepared:
    """Prepare cfg.run_dir for training, or do nothing if it already matches these inputs."""
    start = time.monotonic()
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MtError(f"run_dir: {run_dir} is a file, not a folder")
    files = resolve_files(cfg.data)
    sums = input_sums(cfg.data)
    key = prepare_key(cfg, sums)
    prepared = Prepared(run_dir, files)
    manifest = None if force else _current_manifest(run_dir, key)
    if manifest is not None:
        if _refresh_records(cfg, prepared, sums, manifest):
            log.info("%s: already prepared (data and tokenizer unchanged; updated %s and %s)",
                     run_dir, prepared.config_path.name, prepared.manifest_path.name)
        else:
            log.info("%s: already prepared (nothing changed)", run_dir)
        return prepared
    outputs = _make_outputs(cfg, files)
    _write(cfg, prepared, outputs, sums, key)
    log.info("prepared %s in %.1f s", run_dir, time.monotonic() - start)
    return prepared


def prepare_key(cfg: Config, sums: dict[str, str]) -> str:
    """A hash of everything that shapes the outputs; a change in any of it means redo."""
    data = cfg.data
    payload = {
        "format": PREPARE_FORMAT,
        "inputs": sums,
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


def _current_manifest(run_dir: Path, key: str) -> Optional[dict]:
    manifest = rundir.read_manifest(run_dir)
    if manifest is None or manifest.get("prepare_key") != key or not rundir.outputs_exist(run_dir, manifest):
        return None
    return manifest


def _refresh_records(cfg: Config, prepared: Prepared, sums: dict[str, str], manifest: dict) -> bool:
    """Bring config.yaml and the manifest's file paths up to date when only they changed (say,
    model settings, or the data found in another folder): the outputs stay valid as they are.
    Returns whether anything was written."""
    config, files = to_dict(cfg), _files_record(prepared.files, sums)
    if manifest.get("config") == config and manifest.get("files") == files:
        return False
    write_text(prepared.config_path, to_yaml(cfg))
    rundir.write_manifest(prepared.run_dir, {**manifest, "config": config, "files": files})
    return True


# ---------------------------------------------------------------------------------------------
# Doing it: everything in memory first, then the writes
# ---------------------------------------------------------------------------------------------


def _make_outputs(cfg: Config, files: ResolvedData) -> _Outputs:
    """Read and check every split, filter train, train and apply the tokenizer; write nothing."""
    train = read_parallel(files.train.src, files.train.trg)
    kept, dropped = filter_pairs(train, cfg.data.filter)
    dropped_text = ", ".join(f"{name} {n}" for name, n in dropped.items() if n) or "none"
    log.info("train: %d pairs, %d kept (dropped: %s)", len(train), len(kept), dropped_text)
    dev = read_parallel(files.dev.src, files.dev.trg)
    log.info("dev: %d pairs (all kept)", len(dev))
    tests = {name: len(read_parallel(pair.src, pair.trg)) for name, pair in files.tests.items()}  # fail now, not after training
    for name, count in tests.items():
        log.info("test %s: %d pairs", name, count)

    settings = cfg.tokenizer
    log.info("training SentencePiece (%s, vocab %d, %s)", settings.type, settings.vocab_size,
             "joint" if settings.joint else "separate src/trg")
    train_src, train_trg = [src for src, _ in kept], [trg for _, trg in kept]
    models = train_models(settings, train_src, train_trg)
    tokenizer = Tokenizer(models)
    log.info("vocabulary: src %d, trg %d", tokenizer.src_vocab_size, tokenizer.trg_vocab_size)
    dev_src, dev_trg = [src for src, _ in dev], [trg for _, trg in dev]
    return _Outputs(
        models=models,
        tokenizer=tokenizer,
        train_ids=(tokenizer.encode_src(train_src), tokenizer.encode_trg(train_trg)),
        dev_ids=(tokenizer.encode_src(dev_src), tokenizer.encode_trg(dev_trg)),
        counts={"train": len(train), "train_kept": len(kept), "dev": len(dev), "test": tests},
        dropped=dropped,
    )


def _write(cfg: Config, prepared: Prepared, outputs: _Outputs, sums: dict[str, str], key: str) -> None:
    prepared.manifest_path.unlink(missing_ok=True)  # until the new one lands, the dir reads as unprepared
    save_models(outputs.models, prepared.tokenizer_dir)
    save_ids(prepared.train_ids, *outputs.train_ids)
    save_ids(prepared.dev_ids, *outputs.dev_ids)
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
