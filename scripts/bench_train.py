"""Training speed of mt's Transformer against torch.nn.Transformer of the same shape, side by side.

Both models get the same embeddings, output layer, loss, optimizer (AdamW, fused on CUDA) and
precision (bf16 autocast on CUDA, fp32 on CPU), and the same batches of random token ids
shaped like Multi30k batches; they are timed in alternating rounds so that a noisy machine
slows both alike. The last line printed is a JSON object with both speeds and their ratio.

    python scripts/bench_train.py --config configs/multi30k_de_en.yaml [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from mt.config import load_config
from mt.model import Transformer, attention_backends, sinusoidal_positions

PAD = 0


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


def make_batches(vocab: int, batch_tokens: int, count: int, device: torch.device, seed: int = 0):
    """Random (src, trg_in, trg_out) batches of Multi30k-like lengths (~12-20 pieces, padded to 8)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        length = int(torch.randint(12, 33, (1,), generator=g)) // 8 * 8 + 8
        rows = batch_tokens // length
        src = torch.randint(4, vocab, (rows, length), generator=g)
        trg = torch.randint(4, vocab, (rows, length + 1), generator=g)
        for t in (src, trg):  # some padding, as real batches have
            cut = torch.randint(length // 2, length, (rows,), generator=g)
            t[torch.arange(t.size(1))[None, :] >= cut[:, None] + 1] = PAD
        batches.append(tuple(x.to(device) for x in (src, trg[:, :-1], trg[:, 1:])))
    return batches


def time_steps(model: nn.Module, optimizer, batches, device: torch.device, steps: int) -> tuple[float, int]:
    """Seconds and target tokens for `steps` training steps."""
    dtype = torch.bfloat16 if device.type == "cuda" else None
    tokens = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        src, trg_in, trg_out = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), attention_backends():
            logits = model(src, trg_in)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), trg_out.flatten(), ignore_index=PAD,
                               label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int((trg_out != PAD).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/multi30k_de_en.yaml")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model per round")
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()
    cfg = load_config(args.config)
    m = cfg.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    batch_tokens = args.batch_tokens or cfg.training.batch_tokens
    batches = make_batches(args.vocab, batch_tokens, 16, device)
    models = {
        "mt": Transformer(args.vocab, args.vocab, d_model=m.d_model, heads=m.heads, encoder_layers=m.encoder_layers,
                          decoder_layers=m.decoder_layers, ff_dim=m.ff_dim, dropout=m.dropout,
                          attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout,
                          activation=m.activation, norm=m.norm, positions=m.positions, max_len=m.max_len,
                          share_embeddings=True, tie_output=True, pad_id=PAD),
        "torch.nn.Transformer": TorchReference(args.vocab, m),
    }
    runners = {}
    for name, model in models.items():
        model.to(device).train()
        fused = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
        runners[name] = (torch.compile(model) if args.compile else model, optimizer)
        time_steps(*runners[name], batches, device, 5)  # warm-up: kernels, allocator, compile
    totals = {name: [0.0, 0] for name in models}
    for _ in range(args.rounds):
        for name, (model, optimizer) in runners.items():
            seconds, tokens = time_steps(model, optimizer, batches, device, args.steps)
            totals[name][0] += seconds
            totals[name][1] += tokens
    speed = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    for name, value in speed.items():
        print(f"{name:<22} {value:>12,.0f} target tokens/s")
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "python": platform.python_version(), "config": args.config,
        "batch_tokens": batch_tokens, "compile": args.compile,
        "params_mt": sum(p.numel() for p in models["mt"].parameters()),
        "params_reference": sum(p.numel() for p in models["torch.nn.Transformer"].parameters()),
        "mt_tokens_per_s": round(speed["mt"]), "reference_tokens_per_s": round(speed["torch.nn.Transformer"]),
        "ratio_mt_over_reference": round(speed["mt"] / speed["torch.nn.Transformer"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
