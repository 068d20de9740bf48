# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Few-shot evaluation time: 1,000 episodes per setting on Omniglot-evaluation-sized embeddings.

    .venv/bin/python bench/fewshot.py [--episodes 1000] [--geometry poincare sphere]

13,180 random 64-d ball points in 659 classes × 20 (the Omniglot evaluation alphabets' size),
20 alphabets as super-classes; times ``fewshot.fewshot_accuracy`` (sampling + prototypes +
nearest-prototype, after embedding) for 5/20-way × 1/5-shot with 15 queries, and one within-alphabet
20-way 1-shot run. Target (issue 15): ≤ 30 s per 1,000 episodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_hvit.fewshot import fewshot_accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--geometry", nargs="+", default=["poincare", "sphere"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(659), 20)
    groups = labels * 20 // 659  # 20 alphabets of ~33 characters
    v = rng.normal(size=(len(labels), 64))
    x = v / np.linalg.norm(v, axis=1, keepdims=True) * rng.uniform(0, 0.9, (len(v), 1)) / np.sqrt(0.1)
    print(f"{len(labels)} × 64 embeddings, {args.episodes} episodes, 15 queries per class, "
          f"CPU threads {torch.get_num_threads()}")
    print(f"{'geometry':9} {'setting':26} {'seconds':>8} {'accuracy':>9}")
    for geometry in args.geometry:
        for n_way, k_shot, within in ((5, 1, False), (5, 5, False), (20, 1, False), (20, 5, False), (20, 1, True)):
            t0 = time.perf_counter()
            out = fewshot_accuracy(x, labels, geometry, 0.1, n_way, k_shot, 15, args.episodes, seed=0,
                                   groups=groups if within else None)
            name = f"{n_way}-way {k_shot}-shot{' within alphabet' if within else ''}"
            print(f"{geometry:9} {name:26} {time.perf_counter() - t0:8.2f} {out['accuracy']:9.3f}")


if __name__ == "__main__":
    main()
