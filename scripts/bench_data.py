"""How the cost of data grows with the corpus: `mt prepare` and `mt train`'s start-up on synthetic
corpora of growing size, beside SentencePiece's own training and encoding of the same files
(the floor prepare cannot go below), all measured in one run.

Each corpus pair joins two random Multi30k de-en pairs (so pairs are distinct, ~25 words a
side); the files are written into a temporary folder that is removed at the end. Every
measurement runs in its own child process: wall time, and peak resident memory from wait4.

    MT_DATA=../shared/data/multi30k python scripts/bench_data.py [--sizes 100000 1000000 5000000]

SentencePiece alone: `spm.SentencePieceTrainer.train` on both files with
input_sentence_size=tokenizer.max_sentences and shuffle_input_sentence (its own sampling), then
its multi-threaded encode of every line in chunks. Train start-up: from loading the config to
the end of the first training step of a tiny model, as `mt train` does it (the prepare check
included: "of which prepare check" is its part up to the data found unchanged, the input sums
read from cache/input_sums.json); "above baseline" subtracts the same on a 10,000-pair corpus:
torch and the model's own. Train start-up is measured twice: the first start after prepare makes
the batches and saves them in cache/plan/ ("first train start s"); the next maps them, as every
start after it does (the "train start" columns and the targets). After the table, issue 17's
targets and whether each is met.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = 8000
BASELINE_PAIRS = 10_000
CONFIG = """\
run_dir: {run_dir}
data:
  train: {{src: {src}, trg: {trg}}}
  dev: {{src: {dev_src}, trg: {dev_trg}}}
tokenizer: {{vocab_size: {vocab}, max_sentences: {max_sentences}}}
model: {{d_model: 64, heads: 2, encoder_layers: 1, decoder_layers: 1, ff_dim: 128, max_len: 128}}
training: {{batch_tokens: 4096, max_steps: 1}}
"""


def make_corpus(folder: Path, pairs: int, multi30k: Path) -> tuple[Path, Path]:
    rng = random.Random(pairs)
    read = lambda lang: gzip.decompress((multi30k / f"train.{lang}.gz").read_bytes()).decode().splitlines()  # noqa: E731
    de, en = read("de"), read("en")
    src, trg = folder / f"train{pairs}.de", folder / f"train{pairs}.en"
    with open(src, "w", encoding="utf-8") as s, open(trg, "w", encoding="utf-8") as t:
        for _ in range(pairs):
            a, b = rng.randrange(len(de)), rng.randrange(len(de))
            s.write(f"{de[a]} {de[b]}\n")
            t.write(f"{en[a]} {en[b]}\n")
    return src, trg


def measure(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB and stdout of a child process (waited for with wait4,
    whose resource usage is that child's alone)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"failed: {' '.join(args)}\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def run_child(kind: str, *args: str) -> tuple[float, float, dict]:
    wall, peak, out = measure([sys.executable, __file__, "--child", kind, *args])
    return wall, peak, json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ child processes


def child_spm_train(src: str, trg: str, model: str, max_sentences: str) -> dict:
    import sentencepiece as spm

    start = time.perf_counter()
    spm.SentencePieceTrainer.train(input=[src, trg], model_prefix=model, vocab_size=VOCAB,
                                   input_sentence_size=int(max_sentences), shuffle_input_sentence=True,
                                   character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   num_threads=len(os.sched_getaffinity(0)), minloglevel=2)
    return {"seconds": time.perf_counter() - start}


def child_spm_encode(model: str, *paths: str) -> dict:
    import itertools

    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=model)
    start, tokens = time.perf_counter(), 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            while chunk := list(itertools.islice(f, 50_000)):
                ids = processor.encode([line.rstrip("\n") for line in chunk], num_threads=len(os.sched_getaffinity(0)))
                tokens += sum(map(len, ids))
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def child_train_start(config: str) -> dict:
    """`mt train` up to the end of its first step, as train() runs it (one process, CPU)."""
    import resource

    import torch

    import torch._dynamo  # noqa: F401  (AdamW imports it on first use: seconds of imports, not data)

    from mt import distributed, rundir
    from mt.batch_plan import load_or_make_plan
    from mt.batching import BatchStream, Position
    from mt.config import load_config
    from mt.idcache import load_ids
    from mt.prepare import prepare
    from mt.run import State, check_run_dir, make_run
    from mt.train import train_step

    start = time.perf_counter()
    cfg = load_config(config)
    check_run_dir(cfg, Path(cfg.run_dir), restart=False)
    prepare(cfg)  # finds the run prepared: the input files' sums come from cache/input_sums.json
    check_seconds = time.perf_counter() - start
    run = make_run(cfg, Path(cfg.run_dir), torch.device("cpu"), distributed.init("cpu"))
    state = State()
    batches = run.stream(state.position)
    group = [next(batches)]
    train_step(run, state, [batch for _, batch in group])
    seconds = time.perf_counter() - start
    batches.close()  # joins the batch thread, as mt train does: a live one aborts the exit
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data_start = time.perf_counter()  # the data's part alone: map the cache and the batches (saved above), pad one
    ids = load_ids(rundir.ids_file(cfg.run_dir, "train"))
    batches = load_or_make_plan(cfg.run_dir, ids, cfg.training.batch_tokens, cfg.model.max_len)
    stream = BatchStream(ids.src, ids.trg, cfg.training.batch_tokens, cfg.training.seed, cfg.model.max_len,
                         batches=batches)
    more = stream(Position())
    next(more)
    more.close()
    return {"seconds": seconds, "peak_mb": peak_mb, "data_seconds": time.perf_counter() - data_start,
            "check_seconds": check_seconds, "batches_per_epoch": run.stream.batches_per_epoch()}


# ------------------------------------------------------------------------------ the table


def bench_size(folder: Path, pairs: int, multi30k: Path, max_sentences: int, keep: bool = False) -> dict:
    src, trg = make_corpus(folder, pairs, multi30k)
    run_dir = folder / f"run{pairs}"
    config = folder / f"bench{pairs}.yaml"
    config.write_text(CONFIG.format(run_dir=run_dir, src=src, trg=trg, dev_src=multi30k / "val.de.gz",
                                    dev_trg=multi30k / "val.en.gz", vocab=VOCAB, max_sentences=max_sentences))
    row = {"pairs": pairs, "text_mb": (src.stat().st_size + trg.stat().st_size) / 1e6}
    row["prepare_s"], row["prepare_mb"], _ = measure([sys.executable, "-m", "mt", "prepare", "--config", str(config)])
    model = folder / f"spm{pairs}"
    row["spm_train_s"], row["spm_train_mb"], _ = run_child("spm_train", str(src), str(trg), str(model), str(max_sentences))
    row["spm_encode_s"], row["spm_encode_mb"], _ = run_child("spm_encode", f"{model}.model", str(src), str(trg))
    _, _, first = run_child("train_start", str(config))  # makes the batches and saves them
    row["train_first_s"] = first["seconds"]
    _, _, start = run_child("train_start", str(config))  # maps them, as every later start does
    row["train_start_s"], row["train_start_mb"] = start["seconds"], start["peak_mb"]
    row["train_data_s"], row["train_check_s"] = start["data_seconds"], start["check_seconds"]
    for path in () if keep else (src, trg):
        path.unlink()  # keep the disk use to one corpus at a time (the cache stays for the start-up)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--max-sentences", type=int, default=1_000_000, help="tokenizer.max_sentences")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the corpora and run dirs "
                        "(to measure `mt train` start-up again later); default: a temporary folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        print(json.dumps(globals()[f"child_{args.child}"](*rest)))
        return
    multi30k = Path(os.environ.get("MT_DATA", "../shared/data/multi30k"))
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        baseline = bench_size(Path(tmp), BASELINE_PAIRS, multi30k, args.max_sentences, bool(args.keep))
        print(json.dumps(baseline), flush=True)
        rows = []
        for pairs in args.sizes:
            row = bench_size(Path(tmp), pairs, multi30k, args.max_sentences, bool(args.keep))
            row["train_above_baseline_mb"] = row["train_start_mb"] - baseline["train_start_mb"]
            row["prepare_vs_spm"] = row["prepare_s"] / (row["spm_train_s"] + row["spm_encode_s"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| pairs | text MB | prepare s | prepare MB | spm train s | spm train MB | spm encode s "
          "| prepare / (spm train + encode) | first train start s | train start s | of which prepare check s | of which data s | train start MB "
          "| above 10k-pair run MB |")
    print("|" + " --- |" * 14)
    for r in rows:
        print(f"| {r['pairs']:,} | {r['text_mb']:.0f} | {r['prepare_s']:.1f} | {r['prepare_mb']:.0f} | "
              f"{r['spm_train_s']:.1f} | {r['spm_train_mb']:.0f} | {r['spm_encode_s']:.1f} | "
              f"{r['prepare_vs_spm']:.2f} | {r['train_first_s']:.2f} | {r['train_start_s']:.2f} | {r['train_check_s']:.2f} | "
              f"{r['train_data_s']:.2f} | {r['train_start_mb']:.0f} | {r['train_above_baseline_mb']:.0f} |")
    print_targets(rows)


def print_targets(rows: list[dict]) -> None:
    """Issue 17's targets, checked at the largest size measured (the issue's: 5M pairs), and
    flatness between the two largest sizes (the issue's: 1M to 5M)."""
    top = rows[-1]
    n = f"{top['pairs']:,} pairs"
    checks = [
        (f"prepare within 1.3x of SentencePiece train + encode at {n}", f"{top['prepare_vs_spm']:.2f}x",
         top["prepare_vs_spm"] <= 1.3),
        (f"prepare memory within SentencePiece training's + 1 GB at {n}",
         f"{top['prepare_mb']:.0f} MB vs {top['spm_train_mb']:.0f} + 1024 MB", top["prepare_mb"] <= top["spm_train_mb"] + 1024),
        (f"train start-up under 3 s at {n}", f"{top['train_start_s']:.2f} s", top["train_start_s"] < 3),
        (f"train start-up under 500 MB above the {BASELINE_PAIRS:,}-pair run's at {n}",
         f"{top['train_above_baseline_mb']:.0f} MB", top["train_above_baseline_mb"] < 500),
    ]
    if len(rows) > 1:
        low = rows[-2]
        span = f"from {low['pairs']:,} to {top['pairs']:,} pairs"
        for key, what in (("prepare_mb", "prepare memory"), ("train_start_s", "train start-up time"),
                          ("train_start_mb", "train start-up memory")):
            ratio = top[key] / low[key]
            checks.append((f"{what} flat (within 20%) {span}", f"{ratio:.2f}x", ratio <= 1.2))
    for target, got, met in checks:
        print(f"target: {target}: {got}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
