"""scripts/reproduce_multi30k.sh end to end on CPU, on a sliver of Multi30k, so it cannot silently break."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

TESTS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")


def sliver(src: Path, dest: Path, lines: int) -> Path:
    with gzip.open(src, "rt", encoding="utf-8") as f:
        dest.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
    return dest


def test_reproduce_script_writes_results_for_every_test_set(multi30k_dir, tmp_path):
    sets = {"train": ("train", 300), "dev": ("val", 40)} | {name: (name, 20) for name in TESTS}
    overrides = []
    for key, (name, lines) in sets.items():
        for side, lang in (("src", "de"), ("trg", "en")):
            path = sliver(multi30k_dir / f"{name}.{lang}.gz", tmp_path / f"{name}.{lang}", lines)
            prefix = "data" if key in ("train", "dev") else "data.test"
            overrides += ["--set", f"{prefix}.{key}.{side}={path}"]
    tiny = {"model.d_model": 32, "model.heads": 2, "model.encoder_layers": 1, "model.decoder_layers": 1,
            "model.ff_dim": 64, "tokenizer.vocab_size": 300, "training.max_steps": 6, "training.save_every": 2,
            "training.validate_every": 3, "decoding.max_len_a": 0.5}
    for key, value in tiny.items():
        overrides += ["--set", f"{key}={value}"]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "MT_DATA": str(multi30k_dir)}
    result = subprocess.run(["bash", str(ROOT / "scripts/reproduce_multi30k.sh"), "de-en", str(run_dir), *overrides],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "results.json").read_text().splitlines()]
    assert [(r["name"], r["beam"]) for r in rows] == [(t, 5) for t in TESTS] + [(t, 1) for t in TESTS]
    assert all(r["lines"] == 20 and "bleu_signature" in r and "chrf" in r for r in rows)
    assert "dev BLEU: best" in result.stdout
