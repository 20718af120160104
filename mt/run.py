"""What a training run is made of: `Run`, built once (model, optimizer, schedule, data), and
`State`, what changes as it trains (step, position, best score, flags); building the one and
resuming the other from the newest step checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mt import distributed, rundir
from mt.batch_plan import load_or_make_plan
from mt.batching import BatchStream, Position, plan_batches, resplit
from mt.checkpoint import build_model, check_identity, load_checkpoint, restore, saved_world
from mt.config import Config, to_dict
from mt.device import autocast, autocast_dtype
from mt.errors import MtError
from mt.files import read_lines
from mt.idcache import EncodedSplit, check_ids, load_ids
from mt.model import Transformer
from mt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# data settings that only say where files are: a file moved, or a test set added, is the same run
# (prepare checks the train and dev files' content against what the run was prepared from)
DATA_RECORDS = ("data_dir", "train", "dev", "test")


@dataclass
class State:
    """What changes as training goes. The fields down to `validation_due` are saved in every
    checkpoint (see `saved`; an older checkpoint without one gets its default); the rest belong
    to this process only."""

    step: int = 0
    position: Position = field(default_factory=Position)
    best: Optional[float] = None  # best validation metric so far
    best_metric: Optional[str] = None  # which one (training.early_stopping.metric) `best` is
    bad_validations: int = 0  # validations in a row without improvement
    bad_steps: int = 0  # consecutive non-finite losses
    memory_skips: int = 0  # consecutive updates whose batch did not fit in memory
    skipped_steps: int = 0  # non-finite or out-of-memory updates skipped in total
    validation_due: bool = False  # a stop request abandoned this step's validation
    metrics: list[dict] = field(default_factory=list)  # the rows of metrics.jsonl
    stop_requested: Optional[str] = None  # the signal's name, once one arrived
    failed: Optional[str] = None  # why training cannot go on (memory); raised once the step is saved
    saved_step: int = -1  # the step of the newest step checkpoint
    validating: bool = False  # a validation is running

    SAVED = ("step", "position", "best", "best_metric", "bad_validations", "bad_steps", "memory_skips",
             "skipped_steps", "validation_due")

    def saved(self) -> dict:
        """The checkpoint's `state` entry, as plain data."""
        return {name: dataclasses.asdict(self.position) if name == "position" else getattr(self, name)
                for name in self.SAVED}

    @classmethod
    def from_saved(cls, saved: dict) -> State:
        return cls(**{**saved, "position": Position(**saved["position"])})


@dataclass
class Dev:
    """The dev set: ids and batches for the loss, raw text for BLEU."""

    ids: EncodedSplit
    batches: list[list[int]]
    src_lines: list[str]
    trg_lines: list[str]


@dataclass
class Run:
    """Everything made once at the start of training."""

    cfg: Config
    run_dir: Path
    device: torch.device
    model: torch.nn.Module  # what is called: maybe compiled, maybe DistributedDataParallel
    raw_model: Transformer  # what is saved and decoded with
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: Optional[torch.dtype]
    stream: BatchStream
    dist: distributed.Context

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    @cached_property
    def dev(self) -> Dev:
        """Read at the first validation, then kept."""
        files = rundir.recorded_files(self.run_dir).dev
        ids = load_ids(rundir.ids_file(self.run_dir, "dev"))
        batches = plan_batches(ids.src, ids.trg, self.cfg.training.batch_tokens, self.cfg.model.max_len)
        return Dev(ids, batches, read_lines(files.src), read_lines(files.trg))

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)


# ----------------------------------------------------------------------------- building and resuming


def check_run_dir(cfg: Config, run_dir: Path, restart: bool,
                  way_out: str = "; or pass --restart to start over in this folder") -> None:
    """Refuse to mix two different runs in one directory (unless told to start over); `way_out`
    ends the refusal with what the calling command offers."""
    if restart:
        rundir.clear_training(run_dir)
        return
    steps = rundir.step_checkpoints(run_dir)
    if not steps:
        return
    old = load_checkpoint(steps[-1])["config"]
    new = to_dict(cfg)
    for section in ("data", "tokenizer", "model"):
        keys = [k for k in new[section] if section != "data" or k not in DATA_RECORDS]
        diff = [k for k in keys if (old.get(section) or {}).get(k) != new[section][k]]
        if diff:
            raise MtError(f"{run_dir} holds a run with another {section} config ({', '.join(f'{section}.{k}' for k in diff)} "
                          f"differ{'s' if len(diff) == 1 else ''}): set run_dir to a new folder, or use the original config to continue"
                          + way_out)


def make_run(cfg: Config, run_dir: Path, device: torch.device, dist: distributed.Context) -> Run:
    seed_everything(cfg.training.seed)
    tokenizer = Tokenizer.load(rundir.tokenizer_dir(run_dir))
    raw_model = build_model(cfg, tokenizer).to(device)
    dtype = autocast_dtype(cfg.training.precision, device)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=cfg.training.lr, betas=tuple(cfg.training.betas),
                                  weight_decay=cfg.training.weight_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model = dist.wrap(raw_model)
    if cfg.training.compile:
        model = torch.compile(model, dynamic=False)
    stream = make_stream(cfg, run_dir, tokenizer, dist)
    check_dev_ids(run_dir, tokenizer)
    return Run(cfg, run_dir, device, model, raw_model, tokenizer, optimizer, scheduler, scaler, dtype, stream, dist)


def make_stream(cfg: Config, run_dir: Path, tokenizer: Tokenizer, dist: distributed.Context) -> BatchStream:
    """This process's share of the training batches; an error on every rank when there are
    fewer batches than processes (each rank would wait forever for a batch of its own)."""
    train_ids = load_ids(rundir.ids_file(run_dir, "train"))
    batches = load_or_make_plan(run_dir, train_ids, cfg.training.batch_tokens, cfg.model.max_len,
                                save=dist.rank == 0)  # the other ranks map it from the next start on
    stream = BatchStream(train_ids.src, train_ids.trg, cfg.training.batch_tokens, cfg.training.seed,
                         cfg.model.max_len, rank=dist.rank, world=dist.world,
                         vocab_sizes=(tokenizer.src_vocab_size, tokenizer.trg_vocab_size), batches=batches)
    if stream.batches_per_epoch() == 0:
        dist.barrier()  # every rank gets here: none is stopped by the launcher before it says why
        dist.close()
        raise MtError(f"the training data makes {len(stream.batches)} batch(es) of training.batch_tokens "
                      f"{cfg.training.batch_tokens}, fewer than the {dist.world} processes that each need one: "
                      "run fewer processes, or set a smaller training.batch_tokens")
    return stream


def check_dev_ids(run_dir: Path, tokenizer: Tokenizer) -> None:
    """Refuse a dev cache with ids beyond the vocabulary now, not at the first validation: it
    is small enough to read whole (the training cache is checked batch by batch instead)."""
    dev = load_ids(rundir.ids_file(run_dir, "dev"))
    for side, vocab_size in ((dev.src, tokenizer.src_vocab_size), (dev.trg, tokenizer.trg_vocab_size)):
        check_ids(np.asarray(side.tokens), vocab_size, side.source)


def seed_everything(seed: int) -> None:
    """Torch's generators (weights, dropout) and Python's; batching shuffles with its own Random."""
    random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg: Config):
    """Learning-rate multiplier per update: linear warmup, then inverse sqrt, cosine or flat."""
    t = cfg.training
    warmup = max(t.warmup_steps, 1)

    def multiplier(step: int) -> float:
        step = step + 1  # LambdaLR counts from 0; the first update is step 1
        if step < warmup:
            return step / warmup
        if t.schedule == "inverse_sqrt":
            return math.sqrt(warmup / step)
        if t.schedule == "cosine" and t.max_steps:
            progress = min((step - warmup) / max(t.max_steps - warmup, 1), 1.0)
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return multiplier


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resume(run: Run) -> State:
    """Continue from the newest step checkpoint, if there is one."""
    steps = rundir.step_checkpoints(run.run_dir)
    metrics = rundir.read_metrics(run.run_dir, repair=True) if run.is_main else []
    if not steps:
        return State(metrics=metrics)
    ckpt = load_checkpoint(steps[-1], map_location=run.device)
    check_identity(ckpt, run.tokenizer, steps[-1], way_out="its weights mean nothing with another vocabulary: "
                   "set run_dir to a new folder, or pass --restart to start over in this folder")
    saved = restore(ckpt, run.raw_model, run.optimizer, run.scheduler, run.scaler, run.dist.rank)
    state = State.from_saved(saved)
    if saved_world(ckpt) != run.dist.world:
        state.position = resplit(state.position, saved_world(ckpt), run.dist.world)
        if run.is_main:
            log.info("note: %s was trained by %d process(es), now %d: the data position is re-split "
                     "(%d batches of epoch %d done)", steps[-1].name, saved_world(ckpt), run.dist.world,
                     state.position.batches_done * run.dist.world, state.position.epoch)
    if state.memory_skips >= run.cfg.training.max_bad_steps:
        # saved when training stopped for them: a run with a smaller batch gets a fresh count
        state.memory_skips = 0
    state.saved_step = state.step
    # rows of later steps go, and a validation row of this step when resuming validates it again
    state.metrics = [m for m in metrics if m.get("step", 0) < state.step or (
        m.get("step", 0) == state.step and not (state.validation_due and "dev_loss" in m))]
    forget_best_of_another_metric(run, state, ckpt["config"])
    if run.is_main:
        log.info("resuming %s from %s (step %d, epoch %d)", run.run_dir, steps[-1].name,
                 state.step, state.position.epoch)
    return state


def forget_best_of_another_metric(run: Run, state: State, saved_config: dict) -> None:
    """A best BLEU means nothing to a loss (nor the other way round): when
    training.early_stopping.metric changed since the checkpoint, the comparison starts afresh.
    A checkpoint from before `best_metric` was kept has it in its config."""
    now = run.cfg.training.early_stopping.metric
    was = state.best_metric or saved_config.get("training", {}).get("early_stopping", {}).get("metric")
    if state.best is None or was in (None, now):
        return
    if run.is_main:
        log.warning("training.early_stopping.metric changed from %s to %s: the best so far and the patience "
                    "count start afresh (best.pt is replaced at the next validation)", was, now)
    state.best, state.best_metric, state.bad_validations = None, None, 0
