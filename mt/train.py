"""`mt train`: the loop, optimizer, schedule, validation, checkpoints, early stopping.

The loop reads as: next update's batches -> `train_step` -> `maybe_log` -> `maybe_validate`
-> `maybe_save` -> stop? Everything that decides the result (weights, optimizer, schedule,
RNG states, data position) is in the checkpoint, so a resumed run continues exactly.

Under `torchrun`, each process trains on its share of the batches with DistributedDataParallel
(see distributed.py); only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mt import distributed
from mt.batching import Batch, BatchStream, Position, collate, make_batches
from mt.checkpoint import (Loaded, build_model, checkpoint_dir, load_checkpoint, resolve_device,
                           save_checkpoint, step_checkpoints)
from mt.config import Config, to_dict
from mt.data import load_ids
from mt.errors import MtError
from mt.evaluate import score
from mt.files import read_lines, write_text
from mt.model import Transformer, attention_backends
from mt.prepare import prepare
from mt.tokenizer import PAD_ID, Tokenizer
from mt.translate import translate_lines

log = logging.getLogger(__name__)

# bf16 dense peak of the card, for model FLOPs utilisation (MFU)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


@dataclass
class State:
    """What changes as training goes; saved in every checkpoint."""

    step: int = 0
    position: Position = field(default_factory=Position)
    best: Optional[float] = None  # best validation metric so far
    bad_validations: int = 0  # validations in a row without improvement
    bad_steps: int = 0  # consecutive non-finite losses
    memory_skips: int = 0  # consecutive updates whose batch did not fit in memory
    skipped_steps: int = 0  # non-finite or out-of-memory updates skipped in total


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
    metrics: list[dict] = field(default_factory=list)
    stop_requested: Optional[str] = None  # the signal's name, once one arrived
    failed: Optional[str] = None  # why training cannot go on (memory); raised once the step is saved
    saved_step: int = -1  # the step of the newest step checkpoint
    dev: Optional[dict] = None  # the dev set, read at the first validation

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0


# ----------------------------------------------------------------------------- set-up


def train(cfg: Config, device: str = "auto", restart: bool = False) -> Path:
    """Train per the config (preparing data first when needed) and score the best checkpoint."""
    dist = distributed.init(device)
    run_dir = Path(cfg.run_dir)
    if dist.rank == 0:
        check_run_dir(cfg, run_dir, restart)
        prepare(cfg)
    dist.barrier()
    run = make_run(cfg, run_dir, resolve_device(device) if dist.world == 1 else dist.device, dist)
    state = resume(run) if not restart else State()
    if run.is_main:
        add_log_file(run_dir)
        log.info("training on %s (%s), %d parameters, %d batches per epoch%s",
                 run.device, run.autocast_dtype or torch.float32, count_parameters(run.raw_model),
                 run.stream.batches_per_epoch(), f", {dist.world} processes" if dist.world > 1 else "")
    with stop_signals(run):
        state = loop(run, state)
    if run.is_main:
        finish(run)
    dist.close()
    if run.stop_requested:  # saved, but not finished: exit as a signal-stopped program does (130, 143)
        raise SystemExit(128 + signal.Signals[run.stop_requested].value)
    return run_dir


def check_run_dir(cfg: Config, run_dir: Path, restart: bool) -> None:
    """Refuse to mix two different runs in one directory (unless told to start over)."""
    steps = step_checkpoints(run_dir)
    if restart:
        for path in (checkpoint_dir(run_dir), run_dir / "metrics.jsonl"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return
    if not steps:
        return
    old = load_checkpoint(steps[-1])["config"]
    new = to_dict(cfg)
    for section in ("data", "tokenizer", "model"):
        if old.get(section) != new[section]:
            diff = [k for k in new[section] if old.get(section, {}).get(k) != new[section][k]]
            raise MtError(f"{run_dir} holds a run with another {section} config ({', '.join(f'{section}.{k}' for k in diff)} "
                          "differ): set run_dir to a new folder, use the original config to continue, "
                          "or pass --restart to start over in this folder")


def make_run(cfg: Config, run_dir: Path, device: torch.device, dist: distributed.Context) -> Run:
    seed_everything(cfg.training.seed)
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    raw_model = build_model(cfg, tokenizer).to(device)
    autocast_dtype = choose_precision(cfg.training.precision, device)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=cfg.training.lr, betas=tuple(cfg.training.betas),
                                  weight_decay=cfg.training.weight_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    model = dist.wrap(raw_model)
    if cfg.training.compile:
        model = torch.compile(model, dynamic=False)
    train_ids = load_ids(run_dir / "cache" / "train")
    stream = BatchStream(train_ids.src, train_ids.trg, cfg.training.batch_tokens, cfg.training.seed,
                         cfg.model.max_len, rank=dist.rank, world=dist.world)
    return Run(cfg, run_dir, device, model, raw_model, tokenizer, optimizer, scheduler, scaler,
               autocast_dtype, stream, dist, metrics=read_metrics(run_dir))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: bf16 on CUDA unless told otherwise; CPU trains in fp32."""
    if device.type != "cuda":
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


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


def add_log_file(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("mt").addHandler(handler)
    logging.getLogger("mt").setLevel(logging.INFO)


# ----------------------------------------------------------------------------- resume


def rng_states() -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def resume(run: Run) -> State:
    """Continue from the newest step checkpoint, if there is one."""
    steps = step_checkpoints(run.run_dir)
    if not steps:
        return State()
    ckpt = load_checkpoint(steps[-1], map_location=run.device)
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_states(ckpt["rng"][run.dist.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
    state = State(**{**ckpt["state"], "position": Position(**ckpt["state"]["position"])})
    t = run.cfg.training
    if state.memory_skips >= t.max_bad_steps:
        # saved when training stopped for them: a run with a smaller batch gets a fresh count
        state.memory_skips = 0
    run.saved_step = state.step
    run.metrics = [m for m in run.metrics if m.get("step", 0) <= state.step]
    if run.is_main:
        log.info("resuming %s from %s (step %d, epoch %d)", run.run_dir, steps[-1].name,
                 state.step, state.position.epoch)
    return state


# ----------------------------------------------------------------------------- the loop


def loop(run: Run, state: State) -> State:
    t = run.cfg.training
    batches = run.stream(state.position)
    bar = tqdm(total=planned_steps(run), initial=state.step, disable=not run.is_main,
               dynamic_ncols=True, unit="step", desc="train")
    meter = Meter(run)
    start = time.monotonic()
    run.model.train()
    while not should_stop(run, state, start):
        group = [next(batches) for _ in range(t.update_freq)]
        state.position = group[-1][0]
        loss = train_step(run, state, [batch for _, batch in group])
        meter.add(loss, group)
        bar.update(1)
        # with update_freq > 1 an epoch can end inside the group
        epoch_ended = any(p.batches_done == run.stream.batches_per_epoch() for p, _ in group)
        maybe_log(run, state, meter, bar)
        maybe_validate(run, state, epoch_ended)
        maybe_save(run, state)
    bar.close()
    if state.step and run.saved_step != state.step:
        save(run, state)  # after out-of-memory skips too: they left the parameters as they were
    if run.failed:
        raise MtError(run.failed)
    if run.stop_requested and run.is_main:
        log.info("%s: saved step %d; run `mt train` again to continue", run.stop_requested, state.step)
    return state


def planned_steps(run: Run) -> Optional[int]:
    """The step that training.max_steps or training.max_epochs stops at, whichever comes first:
    the progress bar's total, so its ETA is to the configured stop (None: only max_minutes or
    early stopping will end the run)."""
    t = run.cfg.training
    stops = [t.max_steps] if t.max_steps else []
    if t.max_epochs:
        stops.append(math.ceil(t.max_epochs * run.stream.batches_per_epoch() / t.update_freq))
    return min(stops, default=None)


def should_stop(run: Run, state: State, start: float) -> bool:
    t = run.cfg.training
    reason = None
    if run.stop_requested or run.failed:
        reason = run.stop_requested or run.failed
    elif t.max_steps and state.step >= t.max_steps:
        reason = f"reached training.max_steps ({t.max_steps})"
    elif t.max_epochs and state.position.epoch > t.max_epochs:
        reason = f"reached training.max_epochs ({t.max_epochs})"
    elif t.max_epochs and state.position.epoch == t.max_epochs and \
            state.position.batches_done >= run.stream.batches_per_epoch():
        reason = f"reached training.max_epochs ({t.max_epochs})"
    elif t.max_minutes and time.monotonic() - start >= 60 * t.max_minutes:
        reason = f"reached training.max_minutes ({t.max_minutes})"
    elif t.early_stopping.patience and state.bad_validations >= t.early_stopping.patience:
        reason = f"early stopping: no better dev {t.early_stopping.metric} in {state.bad_validations} validations"
    elif state.bad_steps >= t.max_bad_steps:
        # not saved: the updates before the blow-up may already have spoilt the weights, and a
        # new checkpoint would push out an older, good one
        raise MtError(f"training stopped: the loss was NaN or inf in {state.bad_steps} updates in a row "
                      f"(training.max_bad_steps); the last good checkpoint is kept. Try a lower training.lr")
    if reason and run.is_main and not run.stop_requested and not run.failed:
        log.info("stopping: %s", reason)
    return reason is not None


def token_loss(model: torch.nn.Module, batch: Batch, label_smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy summed over the batch's real target tokens."""
    logits = model(batch.src_ids, batch.trg_in)  # (batch, trg_len, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.trg_out.flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing, reduction="sum")


def train_step(run: Run, state: State, batches: list[Batch]) -> Optional[torch.Tensor]:
    """One optimizer update over `update_freq` batches; returns the summed loss (on device)."""
    t = run.cfg.training
    try:
        loss_sum = accumulate_gradients(run, batches)
        out_of_memory = None
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        out_of_memory = str(error).splitlines()[0]
    if out_of_memory:  # after `except`: its traceback no longer holds the batch's activations
        skip_out_of_memory_update(run, state, out_of_memory)
        return None
    state.memory_skips = 0
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), t.clip_norm or float("inf"))
    if not torch.isfinite(norm).item():  # the one host sync of the step
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.update()
        state.bad_steps += 1
        state.skipped_steps += 1
        log.warning("step %d: loss or gradient is not finite; update skipped (%d in a row)",
                    state.step + 1, state.bad_steps)
        return None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.bad_steps = 0
    return loss_sum


def accumulate_gradients(run: Run, batches: list[Batch]) -> torch.Tensor:
    """Forward and backward over the update's batches; returns their summed loss (on device)."""
    # normalise by the target tokens of the whole update, summed over processes, so the
    # gradient is the same whether the batches ran here one after another or on other ranks
    total_tokens = run.dist.sum(sum(b.trg_tokens for b in batches))
    loss_sum = torch.zeros((), device=run.device)
    for i, batch in enumerate(batches):
        batch = batch.to(run.device)
        sync = run.dist.no_sync(run.model) if i < len(batches) - 1 else nullcontext()
        with sync, autocast(run), attention_backends():
            loss = token_loss(run.model, batch, run.cfg.training.label_smoothing)
        run.scaler.scale(loss * (run.dist.world / total_tokens)).backward()
        loss_sum += loss.detach()
    return loss_sum


def skip_out_of_memory_update(run: Run, state: State, message: str) -> None:
    """Drop the update whose batch did not fit; stop after training.max_bad_steps in a row."""
    where = f"step {state.step + 1}: a batch did not fit in {run.device.type} memory"
    if run.dist.world > 1:  # the other ranks already wait in the all-reduce: skipping alone would hang
        raise MtError(f"{where} on rank {run.dist.rank} ({message}); lower training.batch_tokens and "
                      f"run again to resume")
    run.optimizer.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    state.skipped_steps += 1
    state.memory_skips += 1
    if state.memory_skips >= run.cfg.training.max_bad_steps:
        saved = f"step {state.step} is saved" if state.step else "no step was done"
        run.failed = (f"training stopped: {state.memory_skips} updates in a row did not fit in "
                      f"{run.device.type} memory (training.max_bad_steps); {saved}. "
                      f"Lower training.batch_tokens and run again to continue")
        return
    log.warning("%s; skipped it (lower training.batch_tokens if this repeats): %s", where, message)


def is_out_of_memory(error: RuntimeError) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's (a plain RuntimeError)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(error)


def autocast(run: Run):
    if run.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(run.device.type, dtype=run.autocast_dtype)


class Meter:
    """Loss and throughput since the last log line; the loss stays on the device until then."""

    def __init__(self, run: Run):
        self.run = run
        self.reset()
        self.flops_per_token = None

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.run.device)
        self.trg_tokens = self.src_tokens = self.padded = self.flops = 0
        self.since = time.monotonic()

    def add(self, loss: Optional[torch.Tensor], group: list) -> None:
        if loss is None:
            return
        self.loss += loss
        for _, b in group:
            self.trg_tokens += b.trg_tokens
            self.src_tokens += b.src_tokens
            self.padded += b.padded_tokens
            self.flops += model_flops(self.run.raw_model, b)

    def read(self) -> dict:
        seconds = max(time.monotonic() - self.since, 1e-9)
        world = self.run.dist.world
        out = {"loss": self.loss.item() / max(self.trg_tokens, 1),
               "trg_tokens_per_s": self.trg_tokens * world / seconds,
               "padding": 1 - (self.trg_tokens + self.src_tokens) / max(self.padded, 1)}
        if self.run.device.type == "cuda":
            peak = peak_flops(self.run.device)
            out["mfu"] = self.flops / seconds / peak if peak else None
            out["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.run.device) / 2**30
        return out


def model_flops(model: Transformer, batch: Batch) -> float:
    """Training FLOPs of one batch: 6 x parameters used per real token (forward + backward)
    plus the attention score and mixing matmuls, 6 x 2 x query x key x d_model per layer.

    Lengths are the padded ones for attention (what the GPU computes), real tokens otherwise.
    """
    d = model.output.in_features
    enc = sum(p.numel() for p in model.encoder_layers.parameters())
    dec = sum(p.numel() for p in model.decoder_layers.parameters()) + model.output.weight.numel()
    src_len, trg_len = batch.src_ids.shape[1], batch.trg_in.shape[1]
    dense = 6 * (enc * batch.src_tokens + dec * batch.trg_tokens)
    attn = 12 * d * (len(model.encoder_layers) * src_len * batch.src_tokens
                     + len(model.decoder_layers) * (trg_len / 2 + src_len) * batch.trg_tokens)
    return dense + attn


def peak_flops(device: torch.device) -> Optional[float]:
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def maybe_log(run: Run, state: State, meter: Meter, bar: tqdm) -> None:
    t = run.cfg.training
    if state.step % t.log_every and not run.stop_requested:
        return
    if meter.trg_tokens == 0:
        return
    reading = meter.read()
    meter.reset()
    lr = run.optimizer.param_groups[0]["lr"]
    shown = {"loss": f"{reading['loss']:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{reading['trg_tokens_per_s']:,.0f}"}
    if reading.get("mfu") is not None:
        shown["mfu"] = f"{reading['mfu']:.1%}"
    if "peak_mem_gb" in reading:
        shown["mem"] = f"{reading['peak_mem_gb']:.1f}G"
    bar.set_postfix(shown, refresh=False)
    record(run, {"step": state.step, "epoch": state.position.epoch, "lr": lr, **reading})


def record(run: Run, entry: dict) -> None:
    """Append one line to metrics.jsonl (rewritten atomically, so it is never half a line)."""
    if not run.is_main:
        return
    run.metrics.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()})
    write_text(run.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.metrics))


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in read_lines(path) if line.strip()] if path.is_file() else []


# ----------------------------------------------------------------------------- validation


def maybe_validate(run: Run, state: State, epoch_ended: bool) -> None:
    t = run.cfg.training
    if state.step == 0 or not (state.step % t.validate_every == 0 or epoch_ended):
        return
    result = validate(run)
    metric = result["dev_bleu"] if t.early_stopping.metric == "bleu" else -result["dev_loss"]
    improved = state.best is None or metric > state.best
    state.bad_validations = 0 if improved else state.bad_validations + 1
    if improved:
        state.best = metric
        if run.is_main:
            save_checkpoint(checkpoint_dir(run.run_dir) / "best.pt", checkpoint_state(run, state, full=False))
    if run.is_main:
        tqdm.write(f"step {state.step}: dev loss {result['dev_loss']:.3f}, ppl {result['dev_ppl']:.2f}, "
                   f"BLEU {result['dev_bleu']:.2f}{' (best)' if improved else ''}")
        log.debug("validation at step %d: %s", state.step, result)
        record(run, {"step": state.step, "epoch": state.position.epoch, **result})


def validate(run: Run) -> dict:
    """Dev loss and perplexity (teacher forcing) and dev BLEU (greedy), same on every rank."""
    run.model.eval()
    dev = dev_data(run)
    nll, tokens = 0.0, 0
    with torch.inference_mode(), attention_backends():
        for indices in dev["batches"]:
            batch = collate(dev["ids"].src, dev["ids"].trg, indices, max_len=run.cfg.model.max_len).to(run.device)
            with autocast(run):
                nll += token_loss(run.raw_model, batch, 0.0).item()
            tokens += batch.trg_tokens
    loaded = Loaded(run.raw_model, run.cfg, run.tokenizer, None, run.device)
    hyps = translate_lines(loaded, dev["src_lines"], beam=1, batch_tokens=run.cfg.decoding.batch_tokens)
    bleu = score(hyps, dev["trg_lines"], "dev")["bleu"]
    run.model.train()
    return {"dev_loss": nll / tokens, "dev_ppl": math.exp(min(nll / tokens, 50)), "dev_bleu": bleu}


def dev_data(run: Run) -> dict:
    """The dev set, read once: ids for the loss, raw text for BLEU."""
    if run.dev is None:
        from mt.prepare import load_prepared

        files = load_prepared(run.run_dir).files.dev
        ids = load_ids(run.run_dir / "cache" / "dev")
        lengths = lambda side: [min(len(x), run.cfg.model.max_len - 1) for x in side]  # noqa: E731
        run.dev = {"ids": ids, "batches": make_batches(lengths(ids.src), lengths(ids.trg), run.cfg.training.batch_tokens),
                    "src_lines": read_lines(files.src), "trg_lines": read_lines(files.trg)}
    return run.dev


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(run: Run, state: State) -> Path:
    return checkpoint_dir(run.run_dir) / f"step_{state.step:07d}.pt"


def checkpoint_state(run: Run, state: State, full: bool = True) -> dict:
    """The checkpoint dict (see checkpoint.py). `full=False` keeps only what translation needs."""
    out = {"model": run.raw_model.state_dict(), "config": to_dict(run.cfg),
           "tokenizer": run.tokenizer.identity(), "step": state.step,
           "state": {**asdict(state), "position": asdict(state.position)}}
    if full:
        out.update(optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                   scaler=run.scaler.state_dict(), rng=run.dist.gather_rng(rng_states()))
    return out


def maybe_save(run: Run, state: State) -> None:
    if state.step and state.step % run.cfg.training.save_every == 0:
        save(run, state)


def save(run: Run, state: State) -> None:
    """Write step_<N>.pt and drop the oldest beyond training.keep_checkpoints."""
    ckpt = checkpoint_state(run, state)  # every rank takes part: RNG states are gathered
    run.saved_step = state.step
    if not run.is_main:
        return
    save_checkpoint(checkpoint_path(run, state), ckpt)
    for old in step_checkpoints(run.run_dir)[: -run.cfg.training.keep_checkpoints]:
        old.unlink(missing_ok=True)


class stop_signals:
    """Ctrl-C and SIGTERM ask the loop to stop after the current update and save there."""

    def __init__(self, run: Run):
        self.run, self.previous = run, {}

    def __enter__(self):
        def handler(signum, frame):
            if self.run.stop_requested:  # a second Ctrl-C: stop right now
                raise KeyboardInterrupt
            self.run.stop_requested = signal.Signals(signum).name
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


# ----------------------------------------------------------------------------- the end


def finish(run: Run) -> None:
    """Score the best checkpoint on the config's test sets and print one row each."""
    if run.stop_requested:
        return
    from mt.evaluate import evaluate_command
    from mt.prepare import load_prepared

    if not load_prepared(run.run_dir).files.tests:
        log.info("no test sets in the config (data.test): nothing to score")
        return

    for line in evaluate_command(run_dir=run.run_dir, src=None, ref=None, hyps=[], output=None,
                                 checkpoint="best", beam=None, batch_tokens=None,
                                 device=str(run.device.type), as_json=False):
        print(line, flush=True)
