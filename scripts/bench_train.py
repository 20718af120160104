"""Training speed of `mt train`'s step on a config's real batches, and of a torch.nn.Transformer
reference loop of the same shape on the same batches (with --reference), side by side.

Both get the same embeddings scale, tied output layer, label-smoothed loss, AdamW (fused on
CUDA), gradient clipping and precision (bf16 autocast on CUDA, fp32 on CPU). They are timed in
alternating rounds so that a noisy machine slows both alike; no host sync inside a timed step.

MFU = model FLOPs per second / the card's dense bf16 peak, where model FLOPs per batch are
6 x parameters used per real token + the attention matmuls (mt.meter.model_flops).

    python scripts/bench_train.py --config configs/multi30k_de_en.yaml [--set k=v] [--steps 20] [--reference]

The last line printed is one JSON object (tokens_per_s, reference_tokens_per_s, ratio, mfu, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
from torch import nn

from mt.batching import BatchStream, Position
from mt.checkpoint import build_model
from mt.config import load_config
from mt.idcache import load_ids
from mt.model import attention_backends, sinusoidal_positions
from mt.prepare import prepare
from mt.rundir import tokenizer_dir
from mt.tokenizer import PAD_ID as PAD, Tokenizer
from mt.loss import token_loss
from mt.meter import PEAK_BF16_FLOPS, model_flops


class TorchReference(nn.Module):
    """torch.nn.Transformer with the embeddings and output layer mt uses (pre-norm, GELU/ReLU)."""

    def __init__(self, vocab: int, m) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, m.d_model, padding_idx=PAD)
        self.register_buffer("positions", sinusoidal_positions(m.max_len, m.d_model), persistent=False)
        self.scale = math.sqrt(m.d_model)
        self.core = nn.Transformer(m.d_model, m.heads, m.encoder_layers, m.decoder_layers, m.ff_dim,
                                   m.dropout, activation=m.activation, batch_first=True,
                                   norm_first=m.norm == "pre")
        self.output = nn.Linear(m.d_model, vocab, bias=False)
        self.output.weight = self.embed.weight

    def forward(self, src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
        emb = lambda x: self.embed(x) * self.scale + self.positions[: x.size(1)]  # noqa: E731
        causal = nn.Transformer.generate_square_subsequent_mask(trg.size(1), device=trg.device, dtype=torch.bool)
        out = self.core(emb(src), emb(trg), tgt_mask=causal, src_key_padding_mask=src == PAD,
                        tgt_key_padding_mask=trg == PAD, memory_key_padding_mask=src == PAD,
                        tgt_is_causal=True)
        return self.output(out)


def real_batches(cfg, count: int, device: torch.device) -> list:
    """The first `count` training batches of the config's prepared data, on the device."""
    prepared = prepare(cfg)
    ids = load_ids(prepared.train_ids)
    stream = BatchStream(ids.src, ids.trg, cfg.training.batch_tokens, cfg.training.seed, cfg.model.max_len)
    batches = []
    for _, batch in stream(Position()):
        batches.append(batch.to(device))
        if len(batches) == count:
            return batches


def time_steps(model: nn.Module, optimizer, batches, device: torch.device, smoothing: float) -> float:
    """Seconds for one training step per batch (forward, backward, clip, AdamW)."""
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), attention_backends():
            loss = token_loss(model, batch, smoothing)
        (loss / batch.trg_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/multi30k_de_en.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time torch.nn.Transformer")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--profile", action="store_true", help="print where mt's step spends host and GPU time")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    m = cfg.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.training.seed)
    batches = real_batches(cfg, args.steps, device)
    tokenizer = Tokenizer.load(tokenizer_dir(cfg.run_dir))
    models = {"mt": build_model(cfg, tokenizer)}
    if args.reference:
        models["reference"] = TorchReference(tokenizer.src_vocab_size, m)
    runners = {}
    for name, model in models.items():
        model.to(device).train()
        fused = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
        runners[name] = (torch.compile(model) if args.compile else model, optimizer)
        time_steps(*runners[name], batches[:5], device, cfg.training.label_smoothing)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = {name: 0.0 for name in models}
    for _ in range(args.rounds):
        for name, (model, optimizer) in runners.items():
            seconds[name] += time_steps(model, optimizer, batches, device, cfg.training.label_smoothing)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            time_steps(*runners["mt"], batches, device, cfg.training.label_smoothing)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    trg = sum(b.trg_tokens for b in batches) * args.rounds
    src = sum(b.src_tokens for b in batches) * args.rounds
    padded = sum(b.padded_tokens for b in batches) * args.rounds
    flops = sum(model_flops(models["mt"], b) for b in batches) * args.rounds
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name()), None) \
        if device.type == "cuda" else None
    steps = len(batches) * args.rounds
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "python": platform.python_version(), "config": args.config,
        "overrides": args.overrides, "compile": args.compile, "batch_tokens": cfg.training.batch_tokens,
        "params": sum(p.numel() for p in models["mt"].parameters()),
        "tokens_per_s": round(trg / seconds["mt"]), "src_trg_tokens_per_s": round((src + trg) / seconds["mt"]),
        "padding": round(1 - (src + trg) / padded, 4), "ms_per_step": round(1000 * seconds["mt"] / steps, 2),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "mfu": round(flops / seconds["mt"] / peak, 4) if peak else None,
        "reference_tokens_per_s": round(trg / seconds["reference"]) if args.reference else None,
        "ratio": round(seconds["reference"] / seconds["mt"], 3) if args.reference else None,
    }
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
