# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Pairwise loss, forward + backward: ours vs the original's formulation, measured in the same run.

    .venv/bin/python bench/loss.py [--batch 900] [--dim 128] [--m 2 9] [--geometry poincare sphere] [--reps 20]
                                   [--ref-reps 3] [--previous 3e2c606]

Reference ("original-style"): for each of the m(m − 1) slot pairs, two N×N distance matrices via
the Möbius-addition broadcast (an N×N×d tensor each, hyptorch's ``dist_matrix``), artanh clamped at
1 − 1e-5, logits concatenated with the self-diagonal pushed down by 1e9, max subtracted, CE; summed.
For "sphere" the reference is ``x @ y.T`` per pair on normalised inputs. Ours:
``PairwiseCrossEntropyLoss(samples_per_class=m)`` as the Trainer builds it (one (Nm × Nm) closed-form
similarity matrix, float64 Gram for poincare). "previous": ``losses.py`` as it was at git commit
``--previous`` (the loss head before issue 17's rework, on today's similarity functions). "sim" is the
similarity matrix alone (forward + backward of its sum): ours − sim is the loss's overhead outside the
similarity matrix, end to end (a difference of two timings: noisy on a loaded machine).

The overhead is also measured directly, on one thread in thread CPU time (insensitive to other load
except through shared caches): "head" = the loss's autograd Function, forward + backward, on a fixed similarity
matrix; "group" = the label grouping and slot-major gather, forward + backward; for ours and previous,
alternating in one process.

Each (geometry, m, variant) runs in a fresh subprocess; time = the fastest of ``--reps`` forward+backward
passes after one warm-up (the least disturbed by other load on a shared machine), with the median
beside it; memory = the child's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) minus that of a
baseline child that only imports torch and builds the inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_hvit.hyperbolic import clip_features, expmap0  # noqa: E402
from modeling_hvit.distances import pairwise_similarity  # noqa: E402
from modeling_hvit import losses  # noqa: E402
from modeling_hvit.losses import PairwiseCrossEntropyLoss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

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


def previous_losses(commit: str) -> types.ModuleType | None:
    """``modeling_hvit/losses.py`` at ``commit``, loaded as a module of today's package (None without git)."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:modeling_hvit/losses.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("modeling_hvit._previous_losses")
    module.__package__ = "modeling_hvit"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{commit}:modeling_hvit/losses.py", "exec"), module.__dict__)
    return module


def _timed(fns: dict, reps: int, clock=time.perf_counter) -> dict:
    """{name: (min, median) seconds} of each fn, one warm-up each, the fns alternating rep by rep."""
    times = {k: [] for k in fns}
    for rep in range(reps + 1):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            if rep:
                times[k].append(clock() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def child(variant: str, geometry: str, m: int, batch: int, dim: int, reps: int, previous: str) -> dict:
    torch.manual_seed(0)
    z = expmap0(clip_features(torch.randn(batch, dim) * 2), CURVATURE).detach().requires_grad_(True)
    labels = torch.arange(batch // m).repeat_interleave(m)
    if variant == "breakdown":
        return breakdown(z.detach(), labels, geometry, m, reps, previous_losses(previous))
    module = previous_losses(previous) if variant == "previous" else losses
    if module is None:
        return {}
    ours = module.PairwiseCrossEntropyLoss(geometry, curvature=CURVATURE, samples_per_class=m)
    fn = {"reference": lambda: reference_loss(z, geometry, m),
          "similarity": lambda: pairwise_similarity(z, z, geometry, CURVATURE).sum(),
          "baseline": lambda: z.sum()}.get(variant, lambda: ours(z, labels).loss)
    value = None

    def step():
        nonlocal value
        z.grad = None
        loss = fn()
        loss.backward()
        value = loss.item()

    best, median = _timed({"step": step}, reps)["step"]
    return {"time_ms": 1e3 * best, "median_ms": 1e3 * median, "loss": value,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def breakdown(z: torch.Tensor, labels: torch.Tensor, geometry: str, m: int, reps: int,
              previous: types.ModuleType | None) -> dict:
    """Thread CPU time of the loss head (its autograd Function on a fixed similarity matrix) and of the grouping,
    forward + backward, for ours and previous; plus both heads' loss and gradient, compared."""
    torch.set_num_threads(1)  # thread CPU time counts the calling thread only
    n = z.shape[0] // m
    views = z.view(n, m, -1).transpose(0, 1).reshape(m * n, -1)
    sim = pairwise_similarity(views, views, geometry, CURVATURE).detach()
    inv_tau, weight = 1 / TAU[geometry], 1 / n
    modules = {"ours": losses} | ({"previous": previous} if previous is not None else {})
    results = {}

    def head(module):
        s = sim.clone().requires_grad_(True)
        loss, *_ = module._PairwiseCE.apply(s, m, n, inv_tau, weight)
        loss.backward()
        results[module] = (loss.detach(), s.grad)

    def group(module):
        x = z.clone().requires_grad_(True)
        if hasattr(module, "_group_order"):
            order, _ = module._group_order(x, labels, m)
            v = x[order.T.flatten()]
        else:
            g, _ = module.group_by_label(x, labels, m)
            v = g.transpose(0, 1).reshape(m * n, -1)
        v.sum().backward()

    heads = {f"head_{k}": (lambda mod=mod: head(mod)) for k, mod in modules.items()}
    groups = {f"group_{k}": (lambda mod=mod: group(mod)) for k, mod in modules.items()}
    out = {k: (1e3 * v[0], 1e3 * v[1]) for fns in (heads, groups) for k, v in _timed(fns, reps, time.thread_time).items()}
    if previous is not None:
        (l0, g0), (l1, g1) = results[losses], results[previous]
        out["d_loss"] = abs(l0 - l1).item() / abs(l1).item()
        out["d_grad"] = ((g0 - g1).norm() / g1.norm()).item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=900)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--m", type=int, nargs="+", default=[2, 9])
    ap.add_argument("--geometry", nargs="+", default=["poincare", "sphere"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--ref-reps", type=int, default=3, help="reps of the (slow) original-style reference")
    ap.add_argument("--previous", default="3e2c606", help="git commit of the previous losses.py ('' to skip)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.geometry[0], args.m[0], args.batch, args.dim, args.reps,
                               args.previous)))
        return

    def run(variant: str, geometry: str, m: int) -> dict:
        reps = args.ref_reps if variant == "reference" else args.reps
        cmd = [sys.executable, __file__, "--child", variant, "--geometry", geometry, "--m", str(m),
               "--batch", str(args.batch), "--dim", str(args.dim), "--reps", str(reps), "--previous", args.previous]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    print(f"batch {args.batch} × {args.dim}-d, CPU threads {torch.get_num_threads()}, torch {torch.__version__}; "
          f"wall ms = fastest (median) of {args.reps} fwd+bwd, reference of {args.ref_reps}; memory = peak RSS above "
          f"an inputs-only child; previous = losses.py at {args.previous or '(skipped)'}")
    print(f"{'geometry':9} {'m':>2} {'N':>4} | {'reference ms':>12} {'ours ms':>14} {'speed-up':>8} | "
          f"{'previous ms':>14} | {'sim ms':>14} {'ours−sim':>8} {'prev−sim':>8} | {'ref MB':>6} {'ours MB':>7} | "
          f"{'|Δloss|/loss':>12}")
    rows = []
    for geometry in args.geometry:
        for m in args.m:
            base, ref, ours, prev, sim, parts = (run(v, geometry, m) for v in
                                                 ("baseline", "reference", "ours", "previous", "similarity", "breakdown"))
            rows.append((geometry, m, parts))
            ref_mb, ours_mb = ref["rss_mb"] - base["rss_mb"], ours["rss_mb"] - base["rss_mb"]
            rel = abs(ref["loss"] - ours["loss"]) / abs(ref["loss"])
            fmt = lambda r: f"{r['time_ms']:6.1f} ({r['median_ms']:5.1f})" if r else f"{'–':>14}"  # noqa: E731
            prev_over = f"{prev['time_ms'] - sim['time_ms']:8.1f}" if prev else f"{'–':>8}"
            print(f"{geometry:9} {m:>2} {args.batch // m:>4} | {ref['time_ms']:12.1f} {fmt(ours)} "
                  f"{ref['time_ms'] / ours['time_ms']:7.1f}× | {fmt(prev)} | {fmt(sim)} "
                  f"{ours['time_ms'] - sim['time_ms']:8.1f} {prev_over} | {ref_mb:6.0f} {ours_mb:7.0f} | {rel:12.1e}")
    print("\nDirect overhead, 1 thread, thread CPU ms, fastest (median) of", args.reps, "— head: the loss Function fwd+bwd on a "
          "fixed similarity matrix; group: grouping + slot-major gather fwd+bwd")
    print(f"{'geometry':9} {'m':>2} | {'head ours':>14} {'head prev':>14} | {'group ours':>14} {'group prev':>14} | "
          f"{'ours total':>10} {'prev total':>10} | {'Δloss rel':>9} {'Δgrad rel':>9}")
    for geometry, m, p in rows:
        f = lambda k: f"{p[k][0]:6.2f} ({p[k][1]:5.2f})" if k in p else f"{'–':>14}"  # noqa: E731
        tot = lambda k: f"{p['head_' + k][0] + p['group_' + k][0]:10.2f}" if "head_" + k in p else f"{'–':>10}"  # noqa: E731
        d = f"{p['d_loss']:9.1e} {p['d_grad']:9.1e}" if "d_loss" in p else ""
        print(f"{geometry:9} {m:>2} | {f('head_ours')} {f('head_previous')} | {f('group_ours')} {f('group_previous')} | "
              f"{tot('ours')} {tot('previous')} | {d}")


if __name__ == "__main__":
    main()
