"""Soak check (not CI): kill `mt train` with SIGKILL at random moments, resume, compare.

Trains the toy config once without interruption, then again in a second run dir that is
killed with SIGKILL `--kills` times at random moments (during steps, validations and
checkpoint writes alike) and resumed each time with the same command. At the end the final
parameters of both runs must be identical (resume is exact and no kill corrupts a checkpoint).

    python scripts/make_toy_task.py --out data/toy
    python scripts/soak_kill.py [--kills 20] [--steps 800] [--out runs/soak]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mt.checkpoint import load_checkpoint
from mt.rundir import metrics_file, step_checkpoint, step_checkpoints


def train(run_dir: Path, args, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mt", "train", "--config", args.config, "--set", f"run_dir={run_dir}",
               "--set", f"training.max_steps={args.steps}", "--set", "training.save_every=25",
               "--set", "training.log_every=5", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    straight, killed = args.out / "straight", args.out / "killed"

    if train(straight, args, []).wait() != 0:
        sys.exit("the uninterrupted run failed")

    kills = 0
    while kills < args.kills:
        metrics = metrics_file(killed)
        before = metrics.stat().st_mtime if metrics.exists() else 0.0
        process = train(killed, args, [])
        # kill while training: after this attempt has logged once, at a random moment
        while process.poll() is None and (metrics.stat().st_mtime if metrics.exists() else 0.0) == before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        if process.poll() is not None:
            break  # finished before the kill: no more to do
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        newest = step_checkpoints(killed)[-1].name if step_checkpoints(killed) else "none"
        print(f"kill {kills}: newest checkpoint {newest}", flush=True)
    if train(killed, args, []).wait() != 0:
        sys.exit("the final resume failed")

    a = load_checkpoint(step_checkpoint(straight, args.steps))["model"]
    b = load_checkpoint(step_checkpoint(killed, args.steps))["model"]
    difference = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    result = {"kills": kills, "steps": args.steps, "max_abs_difference": difference,
              "identical": all(torch.equal(a[k], b[k]) for k in a)}
    print(json.dumps(result))
    sys.exit(0 if result["identical"] else 1)


if __name__ == "__main__":
    main()
