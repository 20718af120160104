"""Throughput of training: tokens per second, padding, model FLOPs utilisation (MFU), peak memory;
and, from the first steps' speed, a warning when a CPU run is hours from its stop."""

from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from mt.batching import Batch
from mt.config import Config
from mt.model import Transformer

log = logging.getLogger(__name__)

# bf16 dense peak of the card, for model FLOPs utilisation (MFU)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


class Meter:
    """Loss and throughput since the last reading; the loss stays on the device until then."""

    def __init__(self, model: Transformer, device: torch.device, world: int = 1):
        self.model, self.device, self.world = model, device, world
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.trg_tokens = self.src_tokens = self.padded = self.flops = 0
        self.since = time.monotonic()

    def add(self, loss: Optional[torch.Tensor], batches: list[Batch]) -> None:
        """Count one update's batches (nothing when the update was skipped: loss None)."""
        if loss is None:
            return
        self.loss += loss
        for b in batches:
            self.trg_tokens += b.trg_tokens
            self.src_tokens += b.src_tokens
            self.padded += b.padded_tokens
            self.flops += model_flops(self.model, b)

    def read(self) -> dict:
        """loss per target token, target tokens/s over all processes, padding share; on CUDA, MFU and memory."""
        seconds = max(time.monotonic() - self.since, 1e-9)
        out = {"loss": self.loss.item() / max(self.trg_tokens, 1),
               "trg_tokens_per_s": self.trg_tokens * self.world / seconds,
               "padding": 1 - (self.trg_tokens + self.src_tokens) / max(self.padded, 1)}
        if self.device.type == "cuda":
            peak = peak_flops(self.device)
            out["mfu"] = self.flops / seconds / peak if peak else None
            out["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
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


SLOW_CHECK_STEPS = 10  # steps timed before predicting how long a CPU run will take
SLOW_SECONDS = 3600  # more than this to the stop is worth a word: README's one command took days


def warn_if_slow(cfg: Config, device: torch.device, planned_steps: Optional[int], step: int,
                 seconds_per_step: float) -> None:
    """On a CPU, say once when the configured stop (max_steps or max_epochs, capped by max_minutes)
    is more than an hour away at the first steps' speed, and which config to use instead."""
    if device.type != "cpu" or planned_steps is None:
        return  # with only max_minutes (or early stopping) the user chose the duration
    seconds = (planned_steps - step) * seconds_per_step
    if cfg.training.max_minutes:
        seconds = min(seconds, cfg.training.max_minutes * 60 - SLOW_CHECK_STEPS * seconds_per_step)
    if seconds > SLOW_SECONDS:
        log.warning("on this CPU the configured stop is about %.1f hours away (%.1f s per step, %d steps to go); %s",
                    seconds / 3600, seconds_per_step, planned_steps - step, _instead(cfg))


def _instead(cfg: Config) -> str:
    """What to train on a CPU instead of this config."""
    cpu_config = "configs/multi30k_de_en_cpu.yaml"
    if cfg.data.corpus == "multi30k" and (cfg.data.src_lang, cfg.data.trg_lang) == ("de", "en"):
        return f"{cpu_config} is sized for a CPU (about 15 minutes on 2 cores)"
    if cfg.data.corpus == "multi30k":
        return (f"{cpu_config} is sized for a CPU: copy it and set data.src_lang, data.trg_lang and run_dir "
                f"to {cfg.data.src_lang}, {cfg.data.trg_lang} and a new folder")
    return (f"for a CPU, lower training.max_steps, make the model smaller (as {cpu_config} does), or cap "
            "the run's time with --set training.max_minutes=60")
