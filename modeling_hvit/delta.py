# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Gromov δ-hyperbolicity of a feature set, and the curvature it suggests (SPEC §8).

With base point w and Gromov products ``A_ij = (x_i|x_j)_w = ½(d(x_i,w) + d(x_j,w) − d(x_i,x_j))``,
``δ_w = max_ij ((A ⊗ A) − A)_ij`` where ``(A ⊗ A)_ij = max_k min(A_ik, A_kj)`` is the max-min matrix
product. Equivalently ``δ_w = max_{x,y,z} ½[d(x,y) + d(z,w) − max(d(x,z) + d(y,w), d(y,z) + d(x,w))]``,
so the maximum of δ_w over all base points is the four-point δ; δ_w ≤ δ ≤ 2δ_w.
Relative δ = 2δ_w / diam; suggested curvature c = (0.144 / δ_rel)² (Khrulkov et al., 2020).

Protocol of the reference (kept as the default): Euclidean distances between raw encoder features,
subsets of n points, base point = the first point of the subset, diam = its largest distance, the
mean over the draws. Unlike the reference (``np.random.choice``, with replacement) subsets are drawn
*without* replacement, so a subset never holds the same image twice.

Memory. The reference broadcasts an n×n×n tensor (32 GB at n = 2,000). Here the product is computed
in row blocks and k-chunks: memory is O(n²) plus a ``block × k_chunk × n`` temporary. ``δ_w`` only
needs the upper block triangle (A is symmetric), which halves the work, and never stores A ⊗ A.
min/max are exact operations, so the blocked product equals the naive one bit for bit.

Speed. On CPU the row blocks are spread over ``torch.get_num_threads()`` Python threads running
single-threaded torch ops (see ``_for_blocks``; the intra-op thread count is set to 1 meanwhile and
restored after). One draw at n = 2,000 costs ≈ 1.8 CPU-seconds (bench/delta.py).
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = [
    "DeltaEstimate",
    "CURVATURE_CONSTANT",
    "gromov_products",
    "max_min_product",
    "delta_hyperbolicity",
    "estimate_delta",
    "suggest_curvature",
    "pairwise_euclidean",
]

CURVATURE_CONSTANT = 0.144  # c = (0.144 / δ_rel)², Khrulkov et al. (2020), SPEC §8
CPU_BLOCK = 128  # rows per block on CPU (two block × n buffers fit in L2 at n ≈ 2,000)
ACCEL_BUDGET = 1 << 26  # elements of the block × k_chunk × n temporary on accelerators (256 MB fp32)
# Tolerance, relative to max |D|, for an asymmetric / non-zero-diagonal / triangle-violating distance
# matrix: float32 Gram-form distances (torch.cdist) have diagonals up to ≈ 6e-3·max |D|.
DIST_RTOL = 1e-2


def _check_square(mat: torch.Tensor, name: str) -> None:
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) matrix, got shape {tuple(mat.shape)}")
    if mat.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least one point")
    if not torch.is_floating_point(mat):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {mat.dtype}")
    bad = ~torch.isfinite(mat)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name} has a non-finite entry at [{i}, {j}] ({mat[i, j].item()}); "
                         "expected finite values")


def _check_distance_matrix(dist: torch.Tensor) -> None:
    """Raise ValueError unless ``dist`` is a finite, symmetric, non-negative, zero-diagonal matrix."""
    _check_square(dist, "distance matrix")
    scale = dist.abs().max().item()
    neg = dist < 0
    if neg.any():
        i, j = (int(v) for v in neg.nonzero()[0])
        raise ValueError(f"distance matrix has a negative entry at [{i}, {j}] ({dist[i, j].item()}); "
                         "expected distances ≥ 0")
    diag = dist.diagonal().abs()
    if (diag > DIST_RTOL * scale).any():
        i = int(diag.argmax())
        raise ValueError(f"distance matrix has a non-zero diagonal entry at [{i}, {i}] "
                         f"({dist[i, i].item()}); expected d(x, x) = 0")
    asym = (dist - dist.T).abs()
    if (asym > DIST_RTOL * scale).any():
        i, j = (int(v) for v in (asym == asym.max()).nonzero()[0])
        raise ValueError(f"distance matrix is not symmetric: [{i}, {j}] = {dist[i, j].item()} but "
                         f"[{j}, {i}] = {dist[j, i].item()}; expected d(x, y) = d(y, x)")


def _check_triangle(dist: torch.Tensor, base: int, diam: float) -> None:
    """The triangle inequality through the base point, ``d(j, w) ≤ d(i, w) + d(i, j)``: a cheap O(n²)
    test that catches non-metrics such as squared distances, for which δ means nothing."""
    row = dist[base]
    excess = row[None, :] - row[:, None] - dist  # [i, j]: d(j, w) − d(i, w) − d(i, j)
    worst = float(excess.max())
    if worst > DIST_RTOL * diam:
        i, j = (int(v) for v in (excess == worst).nonzero()[0])
        raise ValueError(f"distance matrix violates the triangle inequality: d({j}, {base}) > "
                         f"d({i}, {base}) + d({i}, {j}) by {worst:.4g} (expected a metric; "
                         "squared distances are not one)")


def _count_duplicates(dist: torch.Tensor) -> int:
    """Number of pairs i < j at distance exactly 0."""
    n = dist.shape[0]
    return int(((dist == 0).sum().item() - n) // 2)


def _warn_duplicates(what: str) -> None:
    warnings.warn(
        f"{what} (duplicate points, e.g. the same image twice). δ is unaffected (it equals δ of the "
        "de-duplicated set), but a subset holds fewer distinct points than requested.",
        RuntimeWarning, stacklevel=3)


@torch.no_grad()
def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(n, n) Euclidean distances in float64 from the Gram matrix (in place: few n² passes); squared
    distances below its rounding noise (2e-13·max ‖x‖², i.e. d ≲ 5e-7·max ‖x‖) are 0, so identical
    rows are at distance exactly 0. Symmetric up to rounding."""
    x = features.double()
    sq = x.pow(2).sum(-1)
    d2 = (x @ x.T).mul_(-2).add_(sq[:, None]).add_(sq[None, :])
    d2.masked_fill_(d2 <= 2e-13 * float(sq.max()), 0.0)
    d2.fill_diagonal_(0)
    return d2.sqrt_()


@torch.no_grad()
def gromov_products(dist: torch.Tensor, base: int = 0) -> torch.Tensor:
    """Gromov products ``A_ij = ½(d(i,w) + d(j,w) − d(i,j))`` at the base point ``w = base``."""
    _check_square(dist, "distance matrix")
    n = dist.shape[0]
    if not -n <= base < n:
        raise ValueError(f"base point {base} is out of range for {n} points")
    return _gromov(dist, base, dist.dtype)


def _gromov(dist: torch.Tensor, base: int, dtype: torch.dtype) -> torch.Tensor:
    row = dist[base]
    return torch.add(row[:, None], row[None, :]).sub_(dist).mul_(0.5).to(dtype)


def _plan(device: torch.device, n: int, block_size: int | None, k_chunk: int | None) -> tuple[int, int]:
    """Rows per block and k-chunk: k one at a time on CPU (in-place ops on a cache-sized block),
    chunks bounded by ``ACCEL_BUDGET`` elsewhere (fewer, larger kernels)."""
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    if k_chunk is not None and k_chunk < 1:
        raise ValueError(f"k_chunk must be ≥ 1, got {k_chunk}")
    if device.type == "cpu":
        b = block_size or CPU_BLOCK
        kc = k_chunk or 1
    else:
        b = block_size or 1024
        kc = k_chunk or max(1, ACCEL_BUDGET // (min(b, n) * n))
    return min(b, n), min(kc, n)


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """torch intra-op threads = 1 for the duration (a process-wide setting, restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _for_blocks(fn: Callable[[int], object], starts: range, device: torch.device) -> list:
    """``[fn(i) for i in starts]``; on CPU spread over ``torch.get_num_threads()`` Python threads,
    each running single-threaded torch ops. The per-block loop issues thousands of small ops; with
    intra-op (OpenMP) threads every op is a barrier, which on a busy machine made one draw at
    n = 2,000 take 40–60 s instead of ≈ 1 s. Independent threads degrade only with their CPU share."""
    workers = min(torch.get_num_threads(), len(starts))
    if device.type != "cpu" or workers <= 1:
        return [fn(i) for i in starts]
    with _single_threaded_ops(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, starts))


def _block_max_min(rows: torch.Tensor, cols: torch.Tensor, k_chunk: int) -> torch.Tensor:
    """``out[i, j] = max_k min(rows[i, k], cols[k, j])`` for rows (b, n) and cols (n, m)."""
    n = rows.shape[1]
    if k_chunk == 1:  # in place, two b×m buffers: the fastest form on CPU
        out = torch.minimum(rows[:, :1], cols[:1])
        tmp = torch.empty_like(out)
        for k in range(1, n):
            torch.minimum(rows[:, k:k + 1], cols[k:k + 1], out=tmp)
            torch.maximum(out, tmp, out=out)
        return out
    rows_t = rows.T  # (n, b): reduce over the leading dim of a (kc, b, m) temporary
    out = None
    for k in range(0, n, k_chunk):
        part = torch.minimum(rows_t[k:k + k_chunk, :, None], cols[k:k + k_chunk, None, :]).amax(0)
        out = part if out is None else torch.maximum(out, part, out=out)
    return out


@torch.no_grad()
def max_min_product(A: torch.Tensor, block_size: int | None = None,
                    k_chunk: int | None = None) -> torch.Tensor:
    """Max-min matrix product ``(A ⊗ A)_ij = max_k min(A_ik, A_kj)`` of a square matrix, in blocks.

    Memory O(n²) + a ``block_size × k_chunk × n`` temporary; equal bit for bit to the naive
    ``torch.minimum(A[:, :, None], A[None]).amax(1)``, which needs n³ elements.
    """
    _check_square(A, "A")
    n = A.shape[0]
    b, kc = _plan(A.device, n, block_size, k_chunk)
    out = torch.empty_like(A)

    def run(i: int) -> None:
        out[i:i + b] = _block_max_min(A[i:i + b], A, kc)

    _for_blocks(run, range(0, n, b), A.device)
    return out


def _max_gain(A: torch.Tensor, block_size: int | None, k_chunk: int | None) -> float:
    """``max_ij ((A ⊗ A) − A)_ij`` for a symmetric A, over the upper block triangle only."""
    n = A.shape[0]
    b, kc = _plan(A.device, n, block_size, k_chunk)

    def run(i: int) -> torch.Tensor:
        cols = A[:, i:]  # pairs (i', j) with j < i are covered by the block holding j, by symmetry
        return _block_max_min(A[i:i + b], cols, kc).sub_(cols[i:i + b]).max()

    gains = _for_blocks(run, range(0, n, b), A.device)
    return max(0.0, float(torch.stack(gains).max()))  # k = i gives (A ⊗ A)_ij ≥ A_ij: δ_w ≥ 0


def _as_bases(base: int | Sequence[int], n: int) -> list[int]:
    if isinstance(base, torch.Tensor):
        base = base.tolist()
    bases = [operator.index(base)] if isinstance(base, numbers.Integral) else [operator.index(w) for w in base]
    if not bases:
        raise ValueError("base must be an int or a non-empty sequence of point indices")
    for w in bases:
        if not -n <= w < n:
            raise ValueError(f"base point {w} is out of range for {n} points")
    return bases


@torch.no_grad()
def delta_hyperbolicity(dist: torch.Tensor, base: int | Sequence[int] = 0, block_size: int | None = None,
                        k_chunk: int | None = None, dtype: torch.dtype | None = None
                        ) -> tuple[float, float, float]:
    """``(δ_w, δ_rel, diam)`` of a distance matrix; with several base points, δ_w is their maximum.

    ``δ_rel = 2·δ_w / diam`` with ``diam = max(dist)``. The default base (the first point) is the
    reference protocol; ``base=range(n)`` gives the exact four-point δ (n times the work).
    Gromov products are formed in ``dist``'s precision (at least float32) and the max-min product
    runs in ``dtype`` (default: that precision). Distinct points at distance 0 give a warning.
    """
    _check_distance_matrix(dist)
    n = dist.shape[0]
    bases = _as_bases(base, n)
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    dist = 0.5 * (dist + dist.T)  # within DIST_RTOL of symmetric/zero-diagonal: make it exactly so
    dist.fill_diagonal_(0)
    diam = float(dist.max())
    if diam == 0:
        raise ValueError(f"all {n} points coincide (diameter 0): δ_rel = 2δ/diam is undefined")
    dup = _count_duplicates(dist)
    if dup:
        _warn_duplicates(f"distance matrix: {dup} pair(s) of distinct points at distance 0")
    for w in bases:
        _check_triangle(dist, w, diam)
    delta_w = _delta_w(dist, bases, block_size, k_chunk, dtype or dist.dtype)
    return delta_w, 2 * delta_w / diam, diam


def _delta_w(dist: torch.Tensor, bases: list[int], block_size: int | None, k_chunk: int | None,
             dtype: torch.dtype) -> float:
    """max over ``bases`` of δ_w, for a symmetric distance matrix (no checks)."""
    return max(_max_gain(_gromov(dist, w, dtype), block_size, k_chunk) for w in bases)


def suggest_curvature(delta_rel: float) -> float:
    """Curvature c = (0.144 / δ_rel)² (Khrulkov et al.); ``inf`` for δ_rel = 0 (tree-like data)."""
    if not math.isfinite(delta_rel) or delta_rel < 0:
        raise ValueError(f"delta_rel must be a finite number ≥ 0, got {delta_rel}")
    if delta_rel == 0:
        return math.inf
    return (CURVATURE_CONSTANT / delta_rel) ** 2


@dataclass(frozen=True)
class DeltaEstimate:
    """δ-hyperbolicity over ``draws`` random subsets of ``n`` points (mean and sample std)."""

    delta_rel_mean: float
    delta_rel_std: float
    delta_w_mean: float
    diam_mean: float
    n: int
    draws: int
    curvature: float  # suggest_curvature(delta_rel_mean); inf for tree-like data
    delta_rel_values: tuple[float, ...] = ()

    def __str__(self) -> str:
        return (f"δ_rel = {self.delta_rel_mean:.4f} ± {self.delta_rel_std:.4f} "
                f"(δ = {self.delta_w_mean:.4g}, diam = {self.diam_mean:.4g}; {self.draws} draws of "
                f"{self.n} points) → suggested curvature c = {self.curvature:.4g}")


def _check_features(features: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D (num_points, dim) tensor, got shape {tuple(features.shape)}")
    if features.is_complex() or features.dtype == torch.bool:
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    if torch.is_floating_point(features):
        bad = ~torch.isfinite(features).all(dim=1)
        if bad.any():
            rows = bad.nonzero().flatten()
            raise ValueError(f"features has {len(rows)} row(s) with NaN/inf values (first: row "
                             f"{int(rows[0])}); expected finite features")


@torch.no_grad()
def estimate_delta(features: torch.Tensor, n: int = 2000, draws: int = 100, seed: int = 0,
                   device: torch.device | str | None = None, progress: bool = False,
                   base_points: int = 1, block_size: int | None = None) -> DeltaEstimate:
    """δ_rel of ``features`` by the reference protocol: ``draws`` random subsets of ``n`` points.

    Draw r uses ``torch.randperm(N, generator=g)[:n]`` with ``g = torch.Generator().manual_seed(seed)``
    (draws in sequence), so results are reproducible and independent of the device. Each subset's
    Euclidean distances are computed in float64 and its max-min product in float32. The base point
    is the subset's first point; ``base_points = m`` takes the maximum of δ_w over its first m points.
    """
    _check_features(features)
    total = features.shape[0]
    if n < 2:
        raise ValueError(f"n must be ≥ 2 points per subset, got {n}")
    if total < n:
        raise ValueError(f"features has {total} points, fewer than n = {n}; pass n ≤ {total}")
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}")
    if not 1 <= base_points <= n:
        raise ValueError(f"base_points must be in [1, n = {n}], got {base_points}")
    device = torch.device(device) if device is not None else features.device
    feats = features.to(device)
    dup = total - torch.unique(feats, dim=0).shape[0]
    if dup:
        _warn_duplicates(f"features: {dup} of {total} rows repeat an earlier row")
    gen = torch.Generator().manual_seed(seed)
    rel, dws, diams = [], [], []
    for _ in tqdm(range(draws), desc="δ-hyperbolicity", unit="draw", disable=not progress):
        idx = torch.randperm(total, generator=gen)[:n].to(device)
        dist = pairwise_euclidean(feats[idx])  # a metric by construction: no checks needed
        diam = float(dist.max())
        if diam == 0:
            raise ValueError(f"all {n} points of draw {len(rel)} coincide (diameter 0): δ_rel is undefined")
        dw = _delta_w(dist, list(range(base_points)), block_size, None, torch.float32)
        dws.append(dw)
        rel.append(2 * dw / diam)
        diams.append(diam)
    mean = sum(rel) / draws
    std = math.sqrt(sum((r - mean) ** 2 for r in rel) / (draws - 1)) if draws > 1 else 0.0
    return DeltaEstimate(delta_rel_mean=mean, delta_rel_std=std, delta_w_mean=sum(dws) / draws,
                         diam_mean=sum(diams) / draws, n=n, draws=draws,
                         curvature=suggest_curvature(mean), delta_rel_values=tuple(rel))


if __name__ == "__main__":  # python -m modeling_hvit.delta: the command lives in delta_cli.py
    from .delta_cli import main

    main()
