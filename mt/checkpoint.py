"""What a checkpoint holds, writing it safely, loading it without unpickling code, averaging.

A checkpoint is one `torch.save` dict of tensors and plain data only:
  model, optimizer, scheduler, scaler  state dicts
  rng                                  Python and torch (CPU, CUDA) generator states
  step, position                       updates done; (epoch, batches done) in the data
  best, bad_validations                best validation score so far, early-stopping counter
  config                               the resolved config as plain data
  tokenizer                            the tokenizer's identity (file hashes, vocab sizes)
It is loaded with `torch.load(weights_only=True)`, which refuses anything that would run code.

Files in RUN_DIR/checkpoints: step_<N>.pt (the newest `keep_checkpoints` are kept; the
newest is "last"), best.pt (best validation score), averaged.pt (`mt average`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from mt.config import Config, from_dict
from mt.errors import MtError
from mt.files import atomic_write, not_a_file
from mt.model import Transformer
from mt.tokenizer import PAD_ID, Tokenizer

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
STEP_FILE = re.compile(r"step_(\d+)\.pt$")


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise MtError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MtError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """step_<N>.pt files, oldest first."""
    found = [(int(m.group(1)), p) for p in checkpoint_dir(run_dir).glob("step_*.pt")
             if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


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
        steps = step_checkpoints(run_dir)
        if not steps:
            raise MtError(f"{run_dir}: no checkpoints yet (train first: mt train --config C)")
        return steps[-1]
    if name in ("best", "averaged"):
        path = checkpoint_dir(run_dir) / f"{name}.pt"
        if name == "best" and not path.is_file():
            return resolve_checkpoint(run_dir, "last")  # a run stopped before its first validation
        if not path.is_file():
            raise MtError(f"{path}: no such checkpoint (make it with: mt average --run-dir {run_dir})")
        return path
    return Path(name)


def check_identity(state: dict, tokenizer: Tokenizer, path: Path) -> None:
    """A checkpoint only fits the tokenizer it was trained with: refuse any other."""
    mine, theirs = tokenizer.identity(), state.get("tokenizer")
    if theirs != mine:
        raise MtError(f"{path}: this checkpoint was trained with another tokenizer/vocabulary "
                      f"(checkpoint: {theirs}, run dir: {mine}); use the run dir it came from")


@dataclass
class Loaded:
    """A model ready to translate, with what it needs around it."""

    model: Transformer
    cfg: Config
    tokenizer: Tokenizer
    path: Optional[Path]
    device: torch.device


def load_for_inference(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> Loaded:
    run_dir = Path(run_dir)
    if not (run_dir / "tokenizer").is_dir():
        raise MtError(f"{run_dir}: not an mt run directory (no tokenizer/ in it; run mt train first)")
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    cfg = from_dict(state["config"], source=str(path))
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    check_identity(state, tokenizer, path)
    model = build_model(cfg, tokenizer)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # names or shapes differ from the model its own config describes
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise MtError(f"{path}: its weights do not fit the model its config describes ({first})") from None
    torch_device = resolve_device(device)
    model.to(torch_device).eval()
    log.info("loaded %s (step %s) on %s", path, state.get("step", "?"), torch_device)
    return Loaded(model, cfg, tokenizer, path, torch_device)


def average_checkpoints(run_dir: str | Path, last: int = 5, output: Optional[Path] = None) -> Path:
    """Mean of the parameters of the newest `last` step checkpoints, saved as a checkpoint."""
    paths = step_checkpoints(run_dir)[-last:]
    if not paths:
        raise MtError(f"{run_dir}: no step checkpoints to average")
    states = [load_checkpoint(p) for p in paths]
    average = {}
    for key, tensor in states[0]["model"].items():
        if tensor.is_floating_point():
            average[key] = sum(s["model"][key].double() for s in states).div(len(states)).to(tensor.dtype)
        else:
            average[key] = tensor
    newest = states[-1]
    result = {"model": average, "config": newest["config"], "tokenizer": newest["tokenizer"],
              "step": newest["step"], "averaged_from": [p.name for p in paths]}
    output = Path(output) if output else checkpoint_dir(run_dir) / "averaged.pt"
    save_checkpoint(output, result)
    log.info("averaged %d checkpoints (%s) into %s", len(paths), ", ".join(p.name for p in paths), output)
    return output
