#!/usr/bin/env python3
"""Write a small synthetic translation task that a tiny model learns in about a minute on CPU.

Source sentences are random sequences over a few dozen made-up words; the target is each word
mapped through a fixed dictionary (`map`, monotone), the mapped words in reverse order
(`reverse`), or the words unchanged (`copy`). The true word alignment is therefore known,
which the attention tests use.

    python scripts/make_toy_task.py --out data/toy            # then: mt train --config configs/toy.yaml
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "fe", "du"]


def vocabulary(size: int, rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """`size` distinct two-syllable source words and a one-to-one upper-case target word each."""
    words = sorted({a + b for a in SYLLABLES for b in SYLLABLES})
    source = rng.sample(words, size)
    targets = rng.sample(words, size)
    return source, {s: t.upper() for s, t in zip(source, targets)}


def make_pair(task: str, words: list[str], mapping: dict[str, str], rng: random.Random,
              min_len: int, max_len: int) -> tuple[str, str]:
    src = [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]
    trg = list(src) if task == "copy" else [mapping[w] for w in src]
    if task == "reverse":
        trg.reverse()
    return " ".join(src), " ".join(trg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/toy"))
    parser.add_argument("--task", choices=["map", "reverse", "copy"], default="map")
    parser.add_argument("--words", type=int, default=24, help="source vocabulary size (<= 100)")
    parser.add_argument("--train", type=int, default=6000, help="training pairs")
    parser.add_argument("--dev", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--min-len", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    words, mapping = vocabulary(args.words, rng)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("dev", args.dev), ("test", args.test)):
        pairs = [make_pair(args.task, words, mapping, rng, args.min_len, args.max_len) for _ in range(count)]
        for side, index in (("src", 0), ("trg", 1)):
            (args.out / f"{split}.{side}").write_text("".join(p[index] + "\n" for p in pairs), encoding="utf-8")
    print(f"wrote {args.task} task to {args.out}: {args.train}/{args.dev}/{args.test} pairs")


if __name__ == "__main__":
    main()
