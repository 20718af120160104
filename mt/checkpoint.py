"""What a checkpoint holds, building and writing it safely, loading it without unpickling code, averaging.

A checkpoint is one `torch.save` dict of tensors and plain data only:

  model        the model's state dict
  config       the resolved config as plain data (`config.to_dict`)
  tokenizer    the tokenizer's identity (model file hashes, vocab sizes): refused with any other
  step         updates done
  state        the training state: step, position {epoch, batches_done}, best, best_metric,
               bad_validations, bad_steps, memory_skips, skipped_steps, validation_due
               (run.State; an older checkpoint may lack best_metric and validation_due)
and, in step_<N>.pt only (what resuming needs):
  optimizer, scheduler, scaler   their state dicts
  rng          Python and torch (CPU, CUDA) generator states; under torchrun a list, one per rank
best.pt leaves those out; averaged.pt (`mt average`) holds model, config, tokenizer, step and
averaged_from (the step files it averaged) instead of state.

It is loaded with `torch.load(weights_only=True)`, which refuses anything that would run code.
Where the files lie in a run dir (step_<N>.pt, best.pt, averaged.pt) is rundir.py's business.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from mt import rundir
from mt.config import Config, from_dict, to_dict
from mt.device import autocast_dtype, resolve_device
from mt.errors import MtError
from mt.files import atomic_write, not_a_file
from mt.model import Transformer
from mt.tokenizer import PAD_ID, Tokenizer

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def build_model(cfg: Config, tokenizer: Tokenizer) -> Transformer:
    """The model the config describes, for this tokenizer's vocabularies."""
    m = cfg.model
    return Transformer(
        tokenizer.src_vocab_size, tokenizer.trg_vocab_size, d_model=m.d_model, heads=m.heads,
        encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers, ff_dim=m.ff_dim,
        dropout=m.dropout, attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout,
        activation=m.activation, norm=m.norm, positions=m.positions, max_len=m.max_len,
        share_embeddings=m.share_embeddings, tie_output=m.tie_output, pad_id=PAD_ID,
    )


def make_checkpoint(model: Transformer, cfg: Config, tokenizer: Tokenizer, state: dict,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, rng: Optional[dict | list] = None) -> dict:
    """The checkpoint dict (see the top of this module); with an optimizer, everything resuming needs."""
    out = {"model": model.state_dict(), "config": to_dict(cfg), "tokenizer": tokenizer.identity(),
           "step": state["step"], "state": state}
    if optimizer is not None:
        out.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                   scaler=scaler.state_dict(), rng=rng)
    return out


def restore(ckpt: dict, model: Transformer, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, rank: int = 0) -> dict:
    """Load a step checkpoint's weights, optimizer, schedule and this rank's RNG states; returns its state."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    # resumed by more processes than saved it: the ones beyond start from a saved rank's states
    set_rng_states(rng[rank % len(rng)] if isinstance(rng, list) else rng)
    return ckpt["state"]


def saved_world(ckpt: dict) -> int:
    """How many processes trained the step checkpoint: under torchrun it holds one RNG state per rank."""
    return len(ckpt["rng"]) if isinstance(ckpt["rng"], list) else 1


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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Temporary file, fsync, rename: a crash mid-write leaves the previous file intact."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights-only semantics; a corrupt, truncated or code-carrying file is an MtError."""
    path = Path(path)
    if not path.is_file():
        reason = not_a_file(path)
        raise MtError(f"{path}: {'no such checkpoint' if reason == 'no such file' else reason}")
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:  # checked first: torch would call any other file "unsafe to load"
            raise MtError(f"{path}: not a checkpoint (not a file written by torch.save)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated zips and refused globals
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds objects other than tensors and plain data (refused: loading it could run code)"
        raise MtError(f"{path}: not a loadable mt checkpoint: {reason}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MtError(f"{path}: not an mt checkpoint (no model weights and config in it)")
    return state


def resolve_checkpoint(run_dir: str | Path, name: str) -> Path:
    """best | last | averaged | a file path -> the checkpoint file."""
    if name == "last":
        steps = rundir.step_checkpoints(run_dir)
        if not steps:
            raise MtError(f"{run_dir}: no checkpoints yet (train first: mt train --config C)")
        return steps[-1]
    if name in ("best", "averaged"):
        path = rundir.named_checkpoint(run_dir, name)
        if name == "best" and not path.is_file():  # a run stopped before its first validation
            newest = resolve_checkpoint(run_dir, "last")
            log.info("%s: no best checkpoint yet (no validation so far); using the newest, %s",
                     run_dir, newest.name)
            return newest
        if not path.is_file():
            raise MtError(f"{path}: no such checkpoint (make it with: mt average --run-dir {run_dir})")
        return path
    return Path(name)


def check_identity(state: dict, tokenizer: Tokenizer, path: Path,
                   way_out: str = "use the run dir it came from") -> None:
    """A checkpoint only fits the tokenizer it was trained with: refuse any other."""
    mine, theirs = tokenizer.identity(), state.get("tokenizer")
    if theirs != mine:
        raise MtError(f"{path}: this checkpoint was trained with another tokenizer/vocabulary "
                      f"(checkpoint: {theirs}, run dir: {mine}); {way_out}")


@dataclass
class Loaded:
    """A model ready to translate, with what it needs around it."""

    model: Transformer
    cfg: Config
    tokenizer: Tokenizer
    path: Optional[Path]
    device: torch.device
    autocast_dtype: Optional[torch.dtype] = None  # None: full precision


def load_for_inference(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
                       precision: Optional[str] = None) -> Loaded:
    """The checkpoint's model on `device`, decoding in `precision` (default: the one it was trained in)."""
    run_dir = Path(run_dir)
    if not rundir.tokenizer_dir(run_dir).is_dir():
        raise MtError(f"{run_dir}: not an mt run directory (no tokenizer/ in it; run mt train first)")
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    cfg = from_dict(state["config"], source=str(path))
    tokenizer = Tokenizer.load(rundir.tokenizer_dir(run_dir))
    check_identity(state, tokenizer, path)
    model = build_model(cfg, tokenizer)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # names or shapes differ from the model its own config describes
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise MtError(f"{path}: its weights do not fit the model its config describes ({first})") from None
    torch_device = resolve_device(device)
    model.to(torch_device).eval()
    dtype = autocast_dtype(precision or cfg.training.precision, torch_device)
    log.info("loaded %s (step %s) on %s", path, state.get("step", "?"), torch_device)
    return Loaded(model, cfg, tokenizer, path, torch_device, dtype)


def _check_same_tokenizer(run_dir: str | Path, paths: list[Path], states: list[dict]) -> None:
    """Parameters trained on other vocabularies mean nothing averaged: every one must fit the
    run's tokenizer (or, in a folder of bare checkpoints without one, the newest checkpoint's)."""
    has_tokenizer = rundir.tokenizer_dir(run_dir).is_dir()
    identity = Tokenizer.load(rundir.tokenizer_dir(run_dir)).identity() if has_tokenizer else states[-1].get("tokenizer")
    others = [path.name for path, state in zip(paths, states) if state.get("tokenizer") != identity]
    if others:
        raise MtError(f"{rundir.checkpoint_dir(run_dir)}: {', '.join(others)} were trained with another "
                      "tokenizer/vocabulary than this run dir's; average only checkpoints of this run (nothing written)")


def average_checkpoints(run_dir: str | Path, last: int = 5, output: Optional[Path] = None) -> Path:
    """Mean of the parameters of the newest `last` step checkpoints, saved as a checkpoint."""
    paths = rundir.step_checkpoints(run_dir)[-last:]
    if not paths:
        raise MtError(f"{run_dir}: no step checkpoints to average")
    states = [load_checkpoint(p) for p in paths]
    _check_same_tokenizer(run_dir, paths, states)
    average = {}
    for key, tensor in states[0]["model"].items():
        if tensor.is_floating_point():
            average[key] = sum(s["model"][key].double() for s in states).div(len(states)).to(tensor.dtype)
        else:
            average[key] = tensor
    newest = states[-1]
    result = {"model": average, "config": newest["config"], "tokenizer": newest["tokenizer"],
              "step": newest["step"], "averaged_from": [p.name for p in paths]}
    output = Path(output) if output else rundir.named_checkpoint(run_dir, "averaged")
    save_checkpoint(output, result)
    fewer = f" (asked for {last}; the run dir holds only {len(paths)})" if len(paths) < last else ""
    log.info("averaged %d checkpoint%s (%s) into %s%s", len(paths), "" if len(paths) == 1 else "s",
             ", ".join(p.name for p in paths), output, fewer)
    return output
