# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Pairwise loss, forward + backward: ours vs the original's formulation, measured in the same run.

    .venv/bin/python bench/loss.py [--batch 900] [--dim 128] [--m 2 9] [--geometry poincare sphere] [--reps 3]

Reference ("original-style"): for each of the m(m − 1) slot pairs, two N×N distance matrices via
the Möbius-addition broadcast (an N×N×d tensor each, hyptorch's ``dist_matrix``), artanh clamped at
1 − 1e-5, logits concatenated with the self-diagonal pushed down by 1e9, max subtracted, CE; summed.
For "sphere" the reference is ``x @ y.T`` per pair on normalised inputs. Ours:
``PairwiseCrossEntropyLoss(samples_per_class=m)`` as the Trainer builds it (one (Nm × Nm) closed-form
similarity matrix, float64 Gram for poincare). "similarity" is that matrix alone (forward + backward of
its sum): ours − similarity is the loss's overhead outside the similarity matrix.

Each (geometry, m, variant) runs in a fresh subprocess; time = the fastest of ``--reps`` forward+backward
passes after one warm-up (the least disturbed by other load on a shared machine); memory = the child's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) minus
that of a baseline child that only imports torch and builds the inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_hvit.hyperbolic import clip_features, expmap0  # noqa: E402
from modeling_hvit.distances import pairwise_similarity  # noqa: E402
from modeling_hvit.losses import PairwiseCrossEntropyLoss  # noqa: E402

CURVATURE = 0.1
TAU = {"poincare": 0.2, "sphere": 0.1}


def _mobius_dist_matrix(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """d(x_a, y_b) for all pairs through an explicit (−x_a) ⊕ y_b tensor of shape (n, m, d)."""
    x = -x
    xy = x @ y.T
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2.T).unsqueeze(2) * x.unsqueeze(1) + (1 - c * x2).unsqueeze(2) * y
    den = 1 + 2 * c * xy + c**2 * x2 * y2.T
    madd = num / (den.unsqueeze(2) + 1e-5)
    u = (c**0.5 * madd.norm(dim=-1)).clamp(-1 + 1e-5, 1 - 1e-5)
    return 2 / c**0.5 * 0.5 * (torch.log1p(u) - torch.log1p(-u))


def reference_loss(z: torch.Tensor, geometry: str, m: int) -> torch.Tensor:
    """The original's loop; z is class-major (N·m, d)."""
    z = z.view(-1, m, z.shape[-1])
    n, tau = z.shape[0], TAU[geometry]
    if geometry == "sphere":
        z = F.normalize(z, dim=-1)
        sim = lambda a, b: a @ b.T  # noqa: E731
    else:
        sim = lambda a, b: -_mobius_dist_matrix(a, b, CURVATURE)  # noqa: E731
    target = torch.arange(n)
    eye = torch.eye(n) * 1e9
    loss = z.new_zeros(())
    for i in range(m):
        for j in range(m):
            if i != j:
                logits = torch.cat([sim(z[:, i], z[:, j]) / tau, sim(z[:, i], z[:, i]) / tau - eye], 1)
                logits = logits - logits.max(1, keepdim=True)[0].detach()
                loss = loss + F.cross_entropy(logits, target)
    return loss


def child(variant: str, geometry: str, m: int, batch: int, dim: int, reps: int) -> dict:
    torch.manual_seed(0)
    z = expmap0(clip_features(torch.randn(batch, dim) * 2), CURVATURE).detach().requires_grad_(True)
    labels = torch.arange(batch // m).repeat_interleave(m)
    ours = PairwiseCrossEntropyLoss(geometry, curvature=CURVATURE, samples_per_class=m)
    fn = {"ours": lambda: ours(z, labels).loss, "reference": lambda: reference_loss(z, geometry, m),
          "similarity": lambda: pairwise_similarity(z, z, geometry, CURVATURE).sum(),
          "baseline": lambda: z.sum()}[variant]
    times, value = [], None
    for rep in range(reps + 1):
        z.grad = None
        t0 = time.perf_counter()
        loss = fn()
        loss.backward()
        if rep:
            times.append(time.perf_counter() - t0)
        value = loss.item()
    return {"time_ms": 1e3 * min(times), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loss": value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=900)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--m", type=int, nargs="+", default=[2, 9])
    ap.add_argument("--geometry", nargs="+", default=["poincare", "sphere"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.geometry[0], args.m[0], args.batch, args.dim, args.reps)))
        return

    def run(variant: str, geometry: str, m: int) -> dict:
        cmd = [sys.executable, __file__, "--child", variant, "--geometry", geometry, "--m", str(m),
               "--batch", str(args.batch), "--dim", str(args.dim), "--reps", str(args.reps)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    print(f"batch {args.batch} × {args.dim}-d, CPU threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"fastest of {args.reps} fwd+bwd; memory = peak RSS above an inputs-only child")
    print(f"{'geometry':9} {'m':>2} {'N':>4} | {'reference ms':>12} {'ours ms':>8} {'speed-up':>8} | "
          f"{'sim ms':>6} {'overhead ms':>11} | {'ref MB':>7} {'ours MB':>7} {'mem ratio':>9} | {'|Δloss|/loss':>12}")
    for geometry in args.geometry:
        for m in args.m:
            base, ref, ours, sim = (run(v, geometry, m) for v in ("baseline", "reference", "ours", "similarity"))
            ref_mb, ours_mb = ref["rss_mb"] - base["rss_mb"], ours["rss_mb"] - base["rss_mb"]
            rel = abs(ref["loss"] - ours["loss"]) / abs(ref["loss"])
            print(f"{geometry:9} {m:>2} {args.batch // m:>4} | {ref['time_ms']:12.1f} {ours['time_ms']:8.1f} "
                  f"{ref['time_ms'] / ours['time_ms']:7.1f}× | {sim['time_ms']:6.1f} "
                  f"{ours['time_ms'] - sim['time_ms']:11.1f} | {ref_mb:7.0f} {ours_mb:7.0f} "
                  f"{ref_mb / max(ours_mb, 1):8.1f}× | {rel:12.1e}")


if __name__ == "__main__":
    main()
