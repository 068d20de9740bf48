# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""δ-hyperbolicity: blocked max-min product against the reference's naive n³ broadcast.

    python bench/delta.py [--n 2000] [--naive-n 1000] [--dim 384] [--repeats 3]

Each variant runs in its own subprocess, on the same features (a seeded mixture of 20 Gaussian
clusters in 384-d). Time: best of ``--repeats`` wall-clock runs of the variant. Memory: the child's
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and that peak minus the RSS just before the
timed section ("extra"), i.e. what the computation itself allocated. "CPU s" is the process CPU time
of the best run (user + system, all threads): on a shared machine it moves less than wall time. Variants:

- ``naive``: ``(torch.minimum(A[:, :, None], A[None]).amax(1) − A).max()`` at ``--naive-n`` (n³ floats:
  4 GB at n = 1,000), the reference's algorithm;
- ``blocked``: ``delta_hyperbolicity`` (max-min part only, same A) at ``--naive-n``;
- ``draw``: one full draw of ``estimate_delta`` (sampling, float64 distances, Gromov products,
  max-min) at ``--n``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from modeling_hvit.delta import _max_gain, estimate_delta, gromov_products, pairwise_euclidean  # noqa: E402


def features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=g)
    return centres[torch.randint(0, 20, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(variant: str, n: int, dim: int, repeats: int) -> None:
    feats = features(n, dim)
    A = gromov_products(pairwise_euclidean(feats), 0).float()
    if variant == "naive":
        def fn() -> float:
            return float((torch.minimum(A[:, :, None], A[None, :, :]).amax(1) - A).max())
    elif variant == "blocked":
        def fn() -> float:
            return _max_gain(A, None, None)
    else:
        def fn() -> float:
            return estimate_delta(feats, n=n, draws=1).delta_w_mean
    before = rss_mb()
    times, cpu, value = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = times.index(min(times))
    print(json.dumps({"variant": variant, "n": n, "seconds": times[best], "all": times, "cpu_s": cpu[best],
                      "delta_w": value, "peak_mb": peak, "extra_mb": peak - before}))


def run(variant: str, n: int, dim: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(n), "--dim", str(dim),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--naive-n", type=int, default=1000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=["naive", "blocked", "draw"])
    args = p.parse_args()
    if args.child:
        child(args.child, args.n, args.dim, args.repeats)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    rows = [run("naive", args.naive_n, args.dim, 1), run("blocked", args.naive_n, args.dim, args.repeats),
            run("draw", args.n, args.dim, args.repeats)]
    base = rows[0]["seconds"]
    print(f"{'variant':<10}{'n':>6}{'seconds':>10}{'CPU s':>8}{'× naive':>10}{'peak MB':>10}{'extra MB':>10}  δ_w")
    for r in rows:
        print(f"{r['variant']:<10}{r['n']:>6}{r['seconds']:>10.3f}{r['cpu_s']:>8.2f}{base / r['seconds']:>10.1f}"
              f"{r['peak_mb']:>10.0f}{r['extra_mb']:>10.0f}  {r['delta_w']:.6f}")
    same = rows[0]["delta_w"] == rows[1]["delta_w"]
    print(f"naive and blocked δ_w at n = {args.naive_n} identical: {same}")
    print("× naive: naive seconds / variant seconds (the draw row compares different n)")


if __name__ == "__main__":
    main()
