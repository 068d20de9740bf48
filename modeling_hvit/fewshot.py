# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Few-shot episodes on a class-disjoint split: N-way K-shot, prototypes in the model's geometry,
queries labelled by the nearest prototype (issue 15; Snell et al. 2017, Khrulkov et al. 2020).

Prototypes: ``poincare`` → the Einstein midpoint (the gyromidpoint of the Poincaré ball, computed in
the Klein model: weights γ_i = 1/√(1 − c‖k_i‖²)), ``sphere`` → the L2-normalised mean, ``euclidean``
→ the mean. Episodes are seeded and balanced (every class gives K support and Q query items, drawn
without replacement); with ``groups`` (a super-class per item, e.g. Omniglot's alphabet) all N
classes of an episode come from one super-class, the harder within-alphabet task of Lake et al.
Accuracy is the mean over episodes, with a 95% normal confidence interval (1.96 · std / √episodes).
All episodes are scored in a few batched tensor operations, in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .distances import check_geometry

__all__ = ["einstein_midpoint", "fewshot_accuracy", "nearest_prototype", "prototypes", "sample_episodes"]


def einstein_midpoint(x: torch.Tensor, c: float, dim: int = -2) -> torch.Tensor:
    """Gyromidpoint of Poincaré-ball points along ``dim``: to Klein (k = 2x/(1 + c‖x‖²)), the
    γ-weighted mean there, back to Poincaré (x = k/(1 + √(1 − c‖k‖²)))."""
    k = 2 * x / (1 + c * x.pow(2).sum(-1, keepdim=True))
    gamma = 1 / (1 - c * k.pow(2).sum(-1, keepdim=True)).clamp_min(1e-15).sqrt()
    mid = (gamma * k).sum(dim, keepdim=True) / gamma.sum(dim, keepdim=True)
    mid = mid.squeeze(dim)
    return mid / (1 + (1 - c * mid.pow(2).sum(-1, keepdim=True)).clamp_min(0).sqrt())


def prototypes(support: torch.Tensor, geometry: str, curvature: float = 0.1) -> torch.Tensor:
    """Class prototypes (…, N, d) from support embeddings (…, N, K, d) in the named geometry."""
    check_geometry(geometry)
    if geometry == "poincare":
        return einstein_midpoint(support, curvature, dim=-2)
    mean = support.mean(-2)
    return torch.nn.functional.normalize(mean, dim=-1) if geometry == "sphere" else mean


def _scores(q: torch.Tensor, p: torch.Tensor, geometry: str, c: float) -> torch.Tensor:
    """(…, Q, N) ranking scores (higher = closer), batched over leading dims."""
    if geometry == "sphere":
        return torch.nn.functional.normalize(q, dim=-1) @ p.transpose(-1, -2)
    q2, p2 = q.pow(2).sum(-1, keepdim=True), p.pow(2).sum(-1, keepdim=True).transpose(-1, -2)
    sq = (q2 + p2 - 2 * q @ p.transpose(-1, -2)).clamp_min(0)
    if geometry == "euclidean":
        return -sq
    return -sq / ((1 - c * q2) * (1 - c * p2))  # d = arcosh(1 + 2c·this ratio)/√c is monotone in it


def nearest_prototype(queries: torch.Tensor, protos: torch.Tensor, geometry: str,
                      curvature: float = 0.1) -> torch.Tensor:
    """Index of the nearest prototype (…, Q) for queries (…, Q, d) and prototypes (…, N, d)."""
    check_geometry(geometry)
    return _scores(queries, protos, geometry, curvature).argmax(-1)


def sample_episodes(labels: Any, n_way: int, k_shot: int, n_query: int = 15, episodes: int = 1000,
                    seed: int = 0, groups: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, balanced episodes: ``(support, query)`` item indices of shapes (E, N, K) and (E, N, Q);
    row n of an episode is one class. Only classes with ≥ K + Q items take part; with ``groups``, the
    N classes of each episode share one super-class (drawn among those with ≥ N eligible classes)."""
    labels = np.asarray(labels)
    if min(n_way, k_shot, n_query, episodes) < 1:
        raise ValueError("n_way, k_shot, n_query and episodes must be ≥ 1")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    eligible = np.flatnonzero(counts >= k_shot + n_query)
    if groups is None:
        pools = [eligible]
    else:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"groups must give one super-class per item ({labels.shape}), got {groups.shape}")
        first = np.array([by_class[k][0] for k in range(len(classes))])
        pools = [eligible[groups[first[eligible]] == g] for g in np.unique(groups[first[eligible]])]
        for k in eligible:
            if len(np.unique(groups[by_class[k]])) != 1:
                raise ValueError(f"class {classes[k]!r} spans several super-classes: not a hierarchy")
    pools = [p for p in pools if len(p) >= n_way]
    if not pools:
        raise ValueError(f"no {'super-class has' if groups is not None else 'split has'} {n_way} classes "
                         f"with ≥ {k_shot + n_query} items ({k_shot}-shot + {n_query} queries)")
    rng = np.random.default_rng(seed)
    support = np.empty((episodes, n_way, k_shot), np.int64)
    query = np.empty((episodes, n_way, n_query), np.int64)
    for e in range(episodes):
        pool = pools[rng.integers(len(pools))]
        for row, k in enumerate(rng.choice(pool, n_way, replace=False)):
            items = rng.choice(by_class[k], k_shot + n_query, replace=False)
            support[e, row], query[e, row] = items[:k_shot], items[k_shot:]
    return support, query


def fewshot_accuracy(embeddings: Any, labels: Any, geometry: str = "poincare", curvature: float = 0.1,
                     n_way: int = 5, k_shot: int = 1, n_query: int = 15, episodes: int = 1000, seed: int = 0,
                     groups: Any | None = None, chunk: int = 250) -> dict[str, float]:
    """Nearest-prototype accuracy over seeded episodes: ``{"accuracy", "ci95", "episodes"}``."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    support, query = sample_episodes(labels, n_way, k_shot, n_query, episodes, seed, groups)
    correct = []
    for e0 in range(0, episodes, chunk):
        s, q = torch.from_numpy(support[e0:e0 + chunk]), torch.from_numpy(query[e0:e0 + chunk])
        protos = prototypes(x[s], geometry, curvature)  # (E, N, d)
        pred = nearest_prototype(x[q].flatten(1, 2), protos, geometry, curvature)  # (E, N·Q)
        truth = torch.arange(n_way).repeat_interleave(n_query)
        correct.append((pred == truth).double().mean(1))
    acc = torch.cat(correct)
    std = float(acc.std()) if episodes > 1 else 0.0
    return {"accuracy": float(acc.mean()), "ci95": 1.96 * std / math.sqrt(episodes), "episodes": episodes}
