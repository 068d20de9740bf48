# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Cost of the Lorentz and learnable-c heads relative to the fixed Poincaré head, in the same run (issue 16).

    .venv/bin/python bench/geometry_heads.py [--batch 900] [--dim 128] [--reps 5] [--device cpu] [--threads N]

One training-shaped step of the head and loss: head features (batch × 384) → Linear → clip(2.3) →
expmap0 (ball, or hyperboloid of 2z) → ``PairwiseCrossEntropyLoss`` (m = 2, τ = 0.2, c = 0.1), forward +
backward; median and minimum of ``--reps`` after one warm-up, geometries interleaved so load drift hits all
of them (on a loaded machine the minimum is the steadier figure, and ``--threads 1`` avoids stalls of a thread
waiting for a busy core). Also reports the loss of every head on the same weights (equal up to float rounding:
the heads are isometric).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_hvit import HViTConfig, HViTModel  # noqa: E402
from modeling_hvit.losses import PairwiseCrossEntropyLoss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=900)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    bb = {"model_type": "vit", "hidden_size": 384, "num_hidden_layers": 1, "num_attention_heads": 6,
          "intermediate_size": 64, "image_size": 32, "patch_size": 16}
    heads, losses = {}, {}
    torch.manual_seed(0)
    variants = {"poincare": ("poincare", False), "lorentz": ("lorentz", False),
                "poincare, learnt c": ("poincare", True), "lorentz, learnt c": ("lorentz", True)}
    for name, (g, learn) in variants.items():
        heads[name] = HViTModel(HViTConfig(backbone_config=bb, embedding_dim=a.dim, geometry=g,
                                           learn_curvature=learn)).to(a.device).train()
        heads[name].load_state_dict(heads["poincare"].state_dict(), strict=False)
        losses[name] = PairwiseCrossEntropyLoss(g, curvature=0.1)
    feats = torch.randn(a.batch, 384, device=a.device) * 3
    labels = torch.arange(a.batch // 2, device=a.device).repeat(2)

    def step(g: str) -> float:
        f = feats.clone().requires_grad_()
        c = heads[g].curvature
        out = losses[g](heads[g].project(f, c), labels, **({"curvature": c} if torch.is_tensor(c) else {})).loss
        out.backward()
        if a.device != "cpu":
            torch.cuda.synchronize()
        return float(out.detach())

    times = {g: [] for g in heads}
    value = {g: step(g) for g in heads}  # warm-up
    for _ in range(a.reps):
        for g in heads:
            t = time.perf_counter()
            step(g)
            times[g].append(time.perf_counter() - t)
    med = {g: statistics.median(v) * 1e3 for g, v in times.items()}
    low = {g: min(v) * 1e3 for g, v in times.items()}
    print(f"batch {a.batch} × {a.dim}, device {a.device}, {torch.get_num_threads()} threads, median and minimum of "
          f"{a.reps} (fwd + bwd of head + loss)")
    print("| head | median ms | relative | min ms | relative | loss |\n|---|---|---|---|---|---|")
    for g in heads:
        print(f"| {g} | {med[g]:.1f} | {med[g] / med['poincare']:.2f}× | {low[g]:.1f} | {low[g] / low['poincare']:.2f}× "
              f"| {value[g]:.6f} |")


if __name__ == "__main__":
    main()
