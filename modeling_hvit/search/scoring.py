# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Distances of each geometry, the inner-product features that rank them, and exact torch search.

The index stores ``features(g, side="gallery")`` and ranks by the inner product with
``features(q, side="query")`` (higher = closer), a monotone function of the distance:

- ``poincare``: the Lorentz lift, ``⟨lorentz_query(q), to_lorentz(g)⟩ = −cosh(√c·d)/c``;
- ``sphere``: unit vectors, inner product = cos, distance reported as ``1 − cos`` (cosine distance);
- ``euclidean``: raw vectors; ranked by ``2⟨q, g⟩ − ‖g‖²`` (the gallery side carries −‖g‖²/2 in an
  extra coordinate, the query side a 1), distance ``‖q − g‖``.

So one inner-product search (FAISS ``IndexFlatIP`` or a matrix product) serves all three. Float32
products resolve the score only to ``score_tolerance``; the search treats everything within it of
the boundary as a candidate and decides with float64 distances (``distance``), so results equal a
float64 brute-force ranking.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from ..hyperbolic import distance as poincare_distance
from ..hyperbolic import lorentz_query, to_lorentz

__all__ = ["distance", "features", "distance_to_raw", "dot_error_factor", "score_tolerance", "exact_topk",
           "one_torch_thread", "range_candidates"]

FLOAT32_EPS = float(np.finfo(np.float32).eps)
FEATURE_BLOCK = 65536  # rows per block of ``features`` (its float64 work copy: ≤ 65536 · (dim + 1) · 8 bytes)


def features(x: torch.Tensor, geometry: str, curvature: float | None, side: str) -> torch.Tensor:
    """Rows whose inner products rank neighbours (see the module docstring). Computed in float64 and
    returned in x's dtype (≥ float32), so float32 features are correctly rounded (the error bound of
    ``dot_error_factor`` counts on it); the ball margin of the lift is float64's 1e-5, not 4e-3."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.shape[0] > FEATURE_BLOCK:  # large galleries in blocks: the float64 work copy stays small
        return torch.cat([features(x[a:a + FEATURE_BLOCK], geometry, curvature, side)
                          for a in range(0, x.shape[0], FEATURE_BLOCK)])
    x = x.double()
    if geometry == "poincare":
        out = lorentz_query(x, curvature) if side == "query" else to_lorentz(x, curvature)
    elif geometry == "sphere":
        out = F.normalize(x, dim=-1)
    else:
        extra = torch.ones_like(x[:, :1]) if side == "query" else -0.5 * x.pow(2).sum(1, keepdim=True)
        out = torch.cat([x, extra], dim=1)
    return out.to(dtype)


def distance(q: torch.Tensor, g: torch.Tensor, geometry: str, curvature: float | None) -> torch.Tensor:
    """Distance between matching rows (broadcasting), in float64: the reference for every result."""
    q, g = q.double(), g.double()
    if geometry == "poincare":
        return poincare_distance(q, g, curvature)
    if geometry == "sphere":
        return 1 - (F.normalize(q, dim=-1) * F.normalize(g, dim=-1)).sum(-1)
    return (q - g).pow(2).sum(-1).sqrt()


def distance_to_raw(d: float, q_sq: torch.Tensor | None, geometry: str, curvature: float | None):
    """Smallest inner-product score of an item at distance ≤ d (per query row for euclidean)."""
    if geometry == "poincare":
        return -math.cosh(math.sqrt(curvature) * d) / curvature
    if geometry == "sphere":
        return 1 - d
    return (q_sq - d * d) / 2


def dot_error_factor(dim: int) -> float:
    """Rigorous bound, relative to Σ|q_i·g_i|, on the error of a float32 dot product of features that
    were rounded from float64: γ_dim = dim·u/(1 − dim·u) for the sum (any order, with or without FMA)
    plus 2u for rounding both inputs (u = 2⁻²⁴, the float32 unit roundoff); 1% slack."""
    u = FLOAT32_EPS / 2
    return 1.01 * (dim * u / (1 - dim * u) + 2 * u)


def score_tolerance(qf: torch.Tensor, gf_absmax: torch.Tensor) -> torch.Tensor:
    """Per query row, a bound on the float32 error of ⟨qf, g⟩ for every gallery row g, from the
    per-column max |g_i| of the gallery."""
    return dot_error_factor(qf.shape[1]) * (qf.double().abs() @ gf_absmax.double()) + 1e-30


def _blocks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(s + size, n)


def exact_topk(qf: torch.Tensor, gf: torch.Tensor, k: int, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 top-k inner products (scores, indices), queries in blocks (torch backend)."""
    vals, idxs = [], []
    for a, b in _blocks(qf.shape[0], block):
        s = qf[a:b] @ gf.T
        v, i = torch.topk(s, k, dim=1)
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals), torch.cat(idxs)


def range_candidates(qf: torch.Tensor, gf: torch.Tensor, min_score: torch.Tensor, *, q_block: int = 1024,
                     g_block: int = 16384):
    """Pairs (query row, gallery row) whose float32 score ≥ ``min_score`` (per query row), in blocks of
    memory O(q_block · g_block); yields ``(q_index, g_index)`` int64 tensors."""
    for a, b in _blocks(qf.shape[0], q_block):
        thr = min_score[a:b, None].to(qf.dtype)
        for c, d in _blocks(gf.shape[0], g_block):
            qi, gi = torch.nonzero(qf[a:b] @ gf[c:d].T >= thr, as_tuple=True)
            if len(qi):
                yield qi + a, gi + c


@contextmanager
def one_torch_thread(condition: bool = True):
    """Run small tensor work on one torch thread: on a busy CPU, waking a second intra-op thread costs
    more than the work (measured: re-ranking 256 queries × 28 candidates, 17 CPU-ms on one thread, 70–90
    on two; single-query latency 3x)."""
    threads = torch.get_num_threads()
    if condition and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
