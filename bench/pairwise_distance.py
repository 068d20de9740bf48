"""Closed-form pairwise Poincaré distance vs the reference's Möbius-tensor formulation (SPEC §1).

900×900 points of dimension 128 (c = 0.1, clipped at r = 2.3 then expmap0), forward and
forward+backward: time (median of repeats) and peak memory, each variant and mode in its own
subprocess (peak RSS increment over the process after set-up, from /proc/self/status VmHWM, with
glibc's mmap threshold fixed so freed tensors leave the RSS); plus the accuracy against float64 on
random clipped points and on pairs at distance ≥ 1e-2.

    python bench/pairwise_distance.py [--n 900] [--dim 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

C = 0.1


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")


def points(n: int, dim: int, seed: int):
    import torch

    from modeling_hvit.hyperbolic import clip_features, expmap0

    g = torch.Generator().manual_seed(seed)
    return expmap0(clip_features(torch.randn(n, dim, generator=g) * 3, 2.3), C)


def mobius_pairwise(x, y):
    """The reference formulation: (−x) ⊕ y broadcast to an n×m×d tensor, then artanh of its norm."""
    import torch

    from modeling_hvit.hyperbolic import mobius_add

    sc = math.sqrt(C)
    return 2 / sc * torch.atanh((sc * mobius_add(-x[:, None], y[None], C).norm(dim=-1)).clamp_max(1 - 1e-5))


def run_variant(variant: str, mode: str, n: int, dim: int, repeats: int) -> dict:
    import torch

    from modeling_hvit.hyperbolic import pairwise_distance

    fn = {"closed": lambda a, b: pairwise_distance(a, b, C), "mobius": mobius_pairwise}[variant]
    x, y = points(n, dim, 0), points(n, dim, 1)
    times, peaks = [], []
    for _ in range(repeats + 1):
        a, b = x.clone().requires_grad_(mode != "forward"), y.clone().requires_grad_(mode != "forward")
        _reset_hwm()
        base = _vmhwm_mb()
        t = time.perf_counter()
        if mode == "forward":
            with torch.no_grad():
                fn(a, b)
        else:
            fn(a, b).sum().backward()
        times.append(time.perf_counter() - t)
        peaks.append(_vmhwm_mb() - base)
    return {"seconds": sorted(times[1:])[len(times[1:]) // 2], "peak_mb": max(peaks)}


def accuracy(n: int, dim: int) -> dict:
    import numpy as np
    import torch

    from modeling_hvit.hyperbolic import pairwise_distance

    def ref(x, y):  # float64 Möbius form
        x, y = x.double().numpy(), y.double().numpy()
        xy, x2, y2 = (x * y).sum(-1, keepdims=True), (x * x).sum(-1, keepdims=True), (y * y).sum(-1, keepdims=True)
        m = ((1 - 2 * C * xy + C * y2) * -x + (1 - C * x2) * y) / (1 - 2 * C * xy + C**2 * x2 * y2)
        return 2 / math.sqrt(C) * np.arctanh(math.sqrt(C) * np.linalg.norm(m, axis=-1))

    x, y = points(n, dim, 2), points(n, dim, 3)
    d = pairwise_distance(x, y, C).numpy()
    r = ref(x[:, None], y[None])
    random_err = float(np.max(np.abs(d - r) / r))
    g = torch.Generator().manual_seed(4)
    u = torch.randn(n, dim, generator=g, dtype=torch.float64)
    lam = 2 / (1 - C * x.double().pow(2).sum(-1, keepdim=True))
    target = torch.logspace(-2, 0, n, dtype=torch.float64)[:, None]
    near = (x.double() + u / u.norm(dim=-1, keepdim=True) * target / lam).float()
    dn, rn = pairwise_distance(x, near, C).diagonal().numpy(), ref(x, near)
    keep = rn >= 1e-2
    fp32 = pairwise_distance(x, near, C, exact=False).diagonal().numpy()
    return {"random_max_rel_err": random_err, "near_max_rel_err_d>=1e-2": float(np.max(np.abs(dn - rn)[keep] / rn[keep])),
            "near_max_rel_err_fp32_gram": float(np.max(np.abs(fp32 - rn)[keep] / rn[keep])), "near_pairs": int(keep.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=900)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.mode, args.n, args.dim, args.repeats)))
        return
    res = {"closed": {}, "mobius": {}}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for v in res:
        for mode in ("forward", "forward+backward"):
            cmd = [sys.executable, __file__, "--variant", v, "--mode", mode, "--n", str(args.n), "--dim",
                   str(args.dim), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            res[v][mode] = json.loads(out.strip().splitlines()[-1])
    import torch

    print(f"pairwise distance, {args.n}x{args.n}, d={args.dim}, c={C}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'mode':18} {'closed s':>10} {'mobius s':>10} {'speed-up':>9} {'closed MB':>10} {'mobius MB':>10} {'mem ratio':>9}")
    for mode in ("forward", "forward+backward"):
        a, b = res["closed"][mode], res["mobius"][mode]
        print(f"{mode:18} {a['seconds']:10.4f} {b['seconds']:10.4f} {b['seconds'] / a['seconds']:8.1f}x "
              f"{a['peak_mb']:10.1f} {b['peak_mb']:10.1f} {b['peak_mb'] / max(a['peak_mb'], 0.1):8.1f}x")
    for k, v in accuracy(args.n, args.dim).items():
        print(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
