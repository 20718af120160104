"""Decoding speed of a trained run: greedy and beam search over a file, side by side.

Times `mt.translate.translate_lines` (encode, batched search, detokenize) after the model is
loaded and warmed up; prints sentences/s, target tokens/s and wall seconds per setting, and
BLEU when a reference is given. With --unbatched it also searches every sentence alone (a
batch of one) and reports how many output lines differ from the batched search, and that
search's BLEU. The last line printed is one JSON object.

    python scripts/bench_decode.py --run-dir runs/multi30k_de_en --src test.de [--ref test.en] [--beams 1 5] [--unbatched]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mt.checkpoint import load_for_inference
from mt.evaluate import score
from mt.files import read_lines
from mt.translate import translate_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--ref")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting; the fastest counts")
    parser.add_argument("--unbatched", action="store_true", help="also search each sentence alone and compare")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one pass: operator calls, scalar reads from the device, top operators")
    args = parser.parse_args()
    loaded = load_for_inference(args.run_dir, args.checkpoint, args.device)
    sources = read_lines(args.src)
    refs = read_lines(args.ref) if args.ref else None
    batch_tokens = args.batch_tokens or loaded.cfg.decoding.batch_tokens
    result = {"device": torch.cuda.get_device_name() if loaded.device.type == "cuda" else
              f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__, "sentences": len(sources),
              "batch_tokens": batch_tokens, "checkpoint": str(loaded.path), "runs": []}
    for beam in args.beams:
        translate_lines(loaded, sources[:100], beam=beam, batch_tokens=batch_tokens)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            hyps = translate_lines(loaded, sources, beam=beam, batch_tokens=batch_tokens)
            best = min(best, time.perf_counter() - start)
        tokens = sum(len(ids) + 1 for ids in loaded.tokenizer.encode_trg(hyps))
        run = {"beam": beam, "seconds": round(best, 3), "sentences_per_s": round(len(sources) / best, 1),
               "trg_tokens_per_s": round(tokens / best), "bleu": score(hyps, refs, "bench")["bleu"] if refs else None}
        print(f"beam {beam}: {run['seconds']:.3f} s, {run['sentences_per_s']:,.1f} sentences/s, "
              f"{run['trg_tokens_per_s']:,} target tokens/s" + (f", BLEU {run['bleu']:.2f}" if refs else ""))
        if args.unbatched:  # batch_tokens 1: every sentence is a batch of its own
            start = time.perf_counter()
            alone = translate_lines(loaded, sources, beam=beam, batch_tokens=1)
            run["unbatched_seconds"] = round(time.perf_counter() - start, 3)
            run["lines_differing_from_unbatched"] = sum(a != b for a, b in zip(alone, hyps))
            run["unbatched_bleu"] = score(alone, refs, "bench")["bleu"] if refs else None
            print(f"  alone, one sentence per batch: {run['unbatched_seconds']:.3f} s, "
                  f"{run['lines_differing_from_unbatched']} of {len(sources)} lines differ"
                  + (f", BLEU {run['unbatched_bleu']:.2f}" if refs else ""))
        if args.profile:
            run.update(profile_pass(loaded, sources, beam, batch_tokens))
        result["runs"].append(run)
    print(json.dumps(result))


def profile_pass(loaded, sources: list[str], beam: int, batch_tokens: int) -> dict:
    """One pass under torch.profiler. On a GPU the search is host-bound: what costs is the
    number of operator calls, and every read that waits for the device. Counted here: operator
    calls, `.item()`-style scalar reads, and `nonzero` calls (both wait for the device; so do
    `.tolist()` transfers, which the CPU profiler cannot see)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loaded.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        translate_lines(loaded, sources, beam=beam, batch_tokens=batch_tokens)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    counts = {e.key: e.count for e in events}
    return {"operator_calls": sum(n for key, n in counts.items() if key.startswith("aten::")),
            "scalar_reads": counts.get("aten::_local_scalar_dense", 0), "nonzero_calls": counts.get("aten::nonzero", 0)}


if __name__ == "__main__":
    main()
