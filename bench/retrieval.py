# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Benchmark: SOP-scale retrieval metrics, blocked search vs the reference row loop (and FAISS).

Data: N points in the Poincaré ball (c = 0.1, 128-d), clustered per class with SOP-like class sizes
(11,316 classes for 60,502 points, sizes 2–12); metrics Recall@{1,10,100,1000} + MAP@R.

The reference formulation (the original evaluation code): for each query row, the Möbius distance to
every gallery item through a 1×N×D tensor, written into a full N×N matrix, then
``topk(1 + max K)`` dropping the first column (self, by distance) → Recall@K only.

Each variant runs in its own subprocess; peak memory is that child's ``ru_maxrss`` (RSS), reported
as an increment over an ``idle`` child that imports the same modules and builds the same data.
Usage: ``python bench/retrieval.py [--n 60502] [--ref-n 5000] [--faiss]`` (or ``--variant X`` to
run one variant in this process).

``--evaluation``: the evaluation of those head embeddings as ``hvit eval``/the Trainer score them
(metrics + radius–correct correlation), ``eval`` (``evaluation.evaluate_embeddings``: the top-1 taken
from the metric search) against ``eval-two-searches`` (the same numbers with a second, top-1 search, as
before issue 17), at ``--threads`` threads (default 1: one rank under the launcher) on ``--device``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hvit.hyperbolic import clip_features, expmap0  # noqa: E402
from modeling_hvit.evaluation import evaluate_embeddings  # noqa: E402
from modeling_hvit.hierarchy_metrics import radius_metrics  # noqa: E402
from modeling_hvit.metrics import retrieval_metrics  # noqa: E402

C, DIM, KS = 0.1, 128, (1, 10, 100, 1000)
SOP_N, SOP_CLASSES = 60_502, 11_316


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """SOP-like sizes (2–12, 11,316 classes for 60,502 points, scaled for other n), clustered points."""
    rng = np.random.default_rng(seed)
    n_classes = max(1, round(n * SOP_CLASSES / SOP_N))
    sizes = rng.integers(2, 13, n_classes)
    while sizes.sum() > n:  # trim random classes (never below 2) to hit n exactly
        i = rng.integers(n_classes)
        if sizes[i] > 2:
            sizes[i] -= 1
    sizes[-1] += n - sizes.sum()
    labels = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, DIM, generator=g)
    v = centres[torch.from_numpy(labels)] + 1.5 * torch.randn(n, DIM, generator=g)
    return expmap0(clip_features(v * 0.4), C), labels


def reference_distance_rows(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """The original's distance: Möbius addition −x ⊕ y as a B×C×D tensor, then 2/√c·artanh(√c‖·‖)."""
    x = -x
    xy = x @ y.T  # B × C
    x2, y2 = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2.T).unsqueeze(2) * x.unsqueeze(1)
    num = num + (1 - c * x2).unsqueeze(2) * y  # B × C × D
    den = 1 + 2 * c * xy + c**2 * x2 * y2.T
    res = num / (den.unsqueeze(2) + 1e-5)
    sc = math.sqrt(c)
    return 2 / sc * torch.atanh((sc * res.norm(dim=-1)).clamp(-1 + 1e-5, 1 - 1e-5))


def reference_recall(x: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Reference row loop: one query row at a time into a full N×N matrix, topk by distance."""
    n = len(x)
    dist = torch.empty(n, n)
    for i in range(n):
        dist[i:i + 1] = reference_distance_rows(x[i:i + 1], x, C)
    idx = dist.topk(1 + max(KS), largest=False).indices[:, 1:]  # self dropped by distance
    y = torch.from_numpy(labels)
    hit = y[idx] == y[:, None]
    return {f"recall@{k}": hit[:, :k].any(1).float().mean().item() for k in KS}


def run_variant(variant: str, n: int, device: str = "cpu") -> dict:
    x, labels = make_data(n)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t0 = time.perf_counter()
    if variant == "idle":
        out = {}
    elif variant == "reference":
        out = reference_recall(x, labels)
    elif variant == "blocked":
        out = retrieval_metrics(x, labels, "poincare", C, KS, include=("recall", "map@r"))
    elif variant == "eval-two-searches":
        out = retrieval_metrics(x, labels, "poincare", C, KS, include=("recall", "map@r"), device=device)
        out |= radius_metrics(x, labels, "poincare", C, device=device)  # its own top-1 search
    elif variant == "eval":
        out = evaluate_embeddings(x, None, labels, "poincare", C, KS, include=("recall", "map@r"), device=device)
    elif variant.startswith("faiss-"):
        out = retrieval_metrics(x, labels, "poincare", C, KS, include=("recall", "map@r"),
                                backend="faiss", faiss_index=variant.split("-", 1)[1])
    else:
        raise ValueError(f"unknown variant {variant!r}")
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"variant": variant, "n": n, "wall_s": round(wall, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime - cpu0, 1),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metrics": {k: round(v, 4) for k, v in out.items()}}


def spawn(variant: str, n: int, timeout: float, extra: tuple[str, ...] = ()) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--n", str(n), *extra],
                              capture_output=True, text=True, check=True, timeout=timeout)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as err:
        note = (f"timed out after {timeout:.0f} s" if isinstance(err, subprocess.TimeoutExpired)
                else "failed: " + (err.stderr or "").strip().splitlines()[-1])
        return {"variant": variant, "n": n, "wall_s": float("inf"), "cpu_s": float("nan"),
                "maxrss_mb": float("nan"), "metrics": {}, "note": note}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=SOP_N)
    ap.add_argument("--ref-n", type=int, default=5000)
    ap.add_argument("--faiss", action="store_true", help="also time the FAISS flat/ivf/hnsw backends")
    ap.add_argument("--timeout", type=float, default=900, help="per-variant limit in seconds")
    ap.add_argument("--evaluation", action="store_true",
                    help="time the evaluation (metrics + radius) with one search against two, at N only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per variant (--evaluation: default 1)")
    ap.add_argument("--device", default="cpu", help="where the search runs (--evaluation)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.n, args.device)))
        return
    if args.evaluation:
        evaluation(args)
        return
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load:.1f} at start; c={C}, dim={DIM}, K={KS}")
    rows = []
    for n, variants in [(args.ref_n, ["idle", "reference", "blocked"]),
                        (args.n, ["idle", "blocked"] + (["faiss-flat", "faiss-ivf", "faiss-hnsw"] if args.faiss else []))]:
        base = None
        for v in variants:
            r = spawn(v, n, args.timeout)
            if v == "idle":
                base = r["maxrss_mb"]
            r["peak_increment_mb"] = round(r["maxrss_mb"] - base, 1)
            rows.append(r)
            print(f"N={n:>6} {v:<11} {r['wall_s']:>8.2f} s wall {r['cpu_s']:>7} s CPU  peak RSS {r['maxrss_mb']:>7.0f} MB "
                  f"(+{r['peak_increment_mb']:.0f} MB over idle)  {r['metrics']} {r.get('note', '')}", flush=True)
    ref = next(r for r in rows if r["variant"] == "reference")
    ours_small = next(r for r in rows if r["variant"] == "blocked" and r["n"] == args.ref_n)
    ours_full = next(r for r in rows if r["variant"] == "blocked" and r["n"] == args.n)
    scale = (args.n / args.ref_n) ** 2
    print(f"\nspeed-up at N={args.ref_n}: {ref['wall_s'] / ours_small['wall_s']:.1f}x "
          f"(reference also computes only Recall@K; ours adds MAP@R)")
    print(f"reference extrapolated to N={args.n} (N² time and matrix): "
          f"{ref['wall_s'] * scale / 60:.1f} min, N×N float32 matrix {args.n ** 2 * 4 / 1e9:.1f} GB; "
          f"ours measured: {ours_full['wall_s']:.1f} s, +{ours_full['peak_increment_mb']:.0f} MB")
    agree = all(abs(ref["metrics"][k] - ours_small["metrics"][k]) < 1e-3 for k in ref["metrics"])
    print(f"Recall@K agree between reference and blocked at N={args.ref_n}: {agree}")


def evaluation(args: argparse.Namespace) -> None:
    """One search (metrics + top-1) vs two, same process settings, same data."""
    extra = ("--threads", str(args.threads or 1), "--device", args.device)
    print(f"torch {torch.__version__}, {args.threads or 1} thread(s) per variant, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; N={args.n}, dim={DIM}, c={C}, K={KS}, device {args.device}")
    rows = {}
    for v in ("idle", "eval-two-searches", "eval"):
        r = rows[v] = spawn(v, args.n, args.timeout, extra)
        print(f"{v:<18} {r['wall_s']:>8.2f} s wall {r['cpu_s']:>7} s CPU  peak RSS {r['maxrss_mb']:>7.0f} MB  "
              f"{r['metrics']} {r.get('note', '')}", flush=True)
    two, one = rows["eval-two-searches"], rows["eval"]
    print(f"\none search / two searches: {one['wall_s'] / two['wall_s']:.2f}x wall, "
          f"{one['cpu_s'] / two['cpu_s']:.2f}x CPU; same numbers: {one['metrics'] == two['metrics']}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
