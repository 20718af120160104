"""mt translate against its CTranslate2 export, side by side in one run: wall time, BLEU, and
how many lines are identical to mt's own output at the same beam.

Exports the run twice (float32 and int8 weights) into a temporary folder, then translates the
source file with mt (`translate_lines`, what `mt translate` runs) and with the export's
translate.py (`ExportedModel`), greedy and beam 5 by default, on CPU with the same number of
threads. Each setting is timed after a warm-up on the first 100 lines; the fastest of --repeats
passes counts. The last line printed is one JSON object.

    python scripts/bench_export.py --run-dir runs/multi30k_de_en --src test_2016_flickr.de --ref test_2016_flickr.en
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import ctranslate2
import torch

from mt.checkpoint import load_for_inference
from mt.evaluate import score
from mt.export import export_run
from mt.exported_translate import ExportedModel
from mt.files import read_lines
from mt.translate import translate_lines


def timed(translate, sources: list[str], repeats: int) -> tuple[float, list[str]]:
    translate(sources[:100])  # warm-up
    best, out = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        out = translate(sources)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per setting; the fastest counts")
    args = parser.parse_args()
    loaded = load_for_inference(args.run_dir, args.checkpoint, "cpu")
    sources, refs = read_lines(args.src), read_lines(args.ref)
    threads = torch.get_num_threads()
    result = {"device": f"cpu ({threads} threads)", "torch": torch.__version__, "ctranslate2": ctranslate2.__version__,
              "date": datetime.date.today().isoformat(), "load_average_start": os.getloadavg()[0],
              "sentences": len(sources), "checkpoint": str(loaded.path), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"mt translate": None}
        for quantization in ("none", "int8"):
            folder = export_run(args.run_dir, Path(tmp) / quantization, args.checkpoint, quantization=quantization)
            engines[f"ctranslate2 {'float32' if quantization == 'none' else quantization}"] = ExportedModel(
                folder, "cpu", "float32" if quantization == "none" else "int8", threads=threads)
        for beam in args.beams:
            mine = None
            for name, engine in engines.items():
                if engine is None:
                    run = lambda lines: translate_lines(loaded, lines, beam=beam)  # noqa: E731
                else:
                    run = lambda lines, e=engine: [r.text for r in e.translate(lines, beam=beam)]  # noqa: E731
                seconds, out = timed(run, sources, args.repeats)
                mine = out if engine is None else mine
                row = {"engine": name, "beam": beam, "seconds": round(seconds, 2),
                       "sentences_per_s": round(len(sources) / seconds, 1), "bleu": round(score(out, refs, "bench")["bleu"], 2),
                       "identical_to_mt": sum(a == b for a, b in zip(out, mine))}
                result["runs"].append(row)
                print(f"{name:20s} beam {beam}: {row['seconds']:8.2f} s {row['sentences_per_s']:8.1f} sent/s  "
                      f"BLEU {row['bleu']:6.2f}  identical to mt: {row['identical_to_mt']}/{len(sources)}")
    result["load_average_end"] = os.getloadavg()[0]  # a busy machine makes the times, not the ratios, noisy
    print(json.dumps(result))


if __name__ == "__main__":
    main()
