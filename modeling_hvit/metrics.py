# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Retrieval metrics from one neighbour search: Recall@K, Precision@1, R-Precision, MAP@R, NMI.

- Recall@K ("hit@K", SPEC §7): fraction of queries with at least one same-class item among the K
  nearest gallery items (the query itself excluded in self-retrieval).
- Precision@1, R-Precision and MAP@R as in Musgrave et al. (ECCV 2020) and pytorch-metric-learning's
  ``AccuracyCalculator``: R is the number of same-class gallery items of the query.
- NMI: k-means (scikit-learn, as many clusters as classes) on the query embeddings (L2-normalised
  for ``sphere``, the raw ball/space coordinates otherwise), scored against the labels.

Queries with no same-class gallery item ("lone" queries, R = 0) have no defined R-Precision/MAP@R
and cannot hit; like PML they are left out of every retrieval metric, with a warning giving the count.
Recall@K with K ≥ the gallery items a query can retrieve would be 100% by construction: such K are
dropped with a warning (``usable_recall_ks``, the rule shared by ``eval_hvit.py`` and the Trainer).
Means are exactly rounded sums of per-query values, so no metric depends on the block sizes.
The search streams per query block (``retrieval.iter_knn``), so memory stays O(block · k) even for
SOP (k = 1000 neighbours of 60,502 queries would otherwise be 0.5 GB of indices).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .data.names import canonical_dataset_name
from .retrieval import iter_knn_first_hit

RECALL_KS: dict[str, tuple[int, ...]] = {
    "cub": (1, 2, 4, 8, 16, 32),
    "cars": (1, 2, 4, 8, 16, 32),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
}
DEFAULT_RECALL_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
METRICS = ("recall", "precision@1", "r_precision", "map@r", "nmi")
DEFAULT_METRICS = ("recall", "precision@1", "r_precision", "map@r")

__all__ = ["RECALL_KS", "DEFAULT_RECALL_KS", "METRICS", "DEFAULT_METRICS", "recall_ks_for",
           "encode_labels", "metrics_from_matches", "nmi", "retrieval_metrics", "retrieval_metrics_with_nearest",
           "usable_recall_ks"]


def recall_ks_for(dataset: str | None) -> tuple[int, ...]:
    """The paper's K list for a dataset name (``cub``, ``cars``, ``sop``, ``inshop`` and spellings
    like ``CUB-200-2011``, ``In-Shop``); ``DEFAULT_RECALL_KS`` for any other name or None."""
    if not dataset:
        return DEFAULT_RECALL_KS
    return RECALL_KS.get(canonical_dataset_name(dataset), DEFAULT_RECALL_KS)


def encode_labels(*label_sets: Any) -> list[torch.Tensor]:
    """Map one or more 1-d label arrays (ints, strings, …) jointly to int64 class ids."""
    arrays = []
    for i, lab in enumerate(label_sets):
        a = lab.detach().cpu().numpy() if torch.is_tensor(lab) else np.asarray(lab)
        if a.ndim != 1:
            raise ValueError(f"labels #{i} must be 1-d (one class per row), got shape {a.shape}")
        arrays.append(a)
    _, inverse = np.unique(np.concatenate(arrays), return_inverse=True)
    out, start = [], 0
    for a in arrays:
        out.append(torch.from_numpy(inverse[start:start + len(a)].astype(np.int64)))
        start += len(a)
    return out


def usable_recall_ks(ks: Iterable[int], n_available: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kept, dropped) Recall@K values: K ≥ ``n_available`` (the gallery items a query can retrieve,
    itself excluded) is 1 by construction for every scored query, so it is dropped, never reported.
    The one rule for ``eval_hvit.py`` and the Trainer's evaluation (both go through ``retrieval_metrics``)."""
    ks = _check_ks(ks)
    return tuple(k for k in ks if k < n_available), tuple(k for k in ks if k >= n_available)


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"recall K values must be positive integers, got {ks}")
    return ks


def metrics_from_matches(matches: torch.Tensor, n_relevant: torch.Tensor,
                         ks: Sequence[int] = DEFAULT_RECALL_KS,
                         include: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Metrics from a ranked same-class table.

    ``matches`` (n, k) bool: whether the j-th neighbour of query i has its class, nearest first;
    ``n_relevant`` (n,): R_i, its number of same-class gallery items (k must be ≥ max R_i for
    R-Precision/MAP@R). Rows with R_i = 0 must be removed by the caller.
    """
    if matches.shape[0] == 0:
        return {}
    per_query = _per_query(matches, n_relevant, _check_ks(ks), include)
    return {name: _mean(v) for name, v in per_query.items()}


def _mean(values: Sequence[torch.Tensor] | torch.Tensor) -> float:
    """Exactly rounded mean (``math.fsum``): the same whatever the blocks the values came in."""
    v = torch.cat(list(values)) if isinstance(values, (list, tuple)) else values
    return math.fsum(v.double().cpu().tolist()) / v.shape[0]


def _per_query(matches: torch.Tensor, n_rel: torch.Tensor, ks: tuple[int, ...],
               include: Sequence[str], first: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each query's metric values (float64, 0/1 for Recall@K and P@1); ``first`` (rank of the first
    same-class item) defaults to the first match in ``matches`` (≥ k when there is none)."""
    n, k = matches.shape
    out: dict[str, torch.Tensor] = {}
    if "recall" in include:
        if first is None:
            first = torch.where(matches.any(1), matches.to(torch.uint8).argmax(1), torch.full_like(n_rel, k))
        for kk in ks:
            out[f"recall@{kk}"] = (first < kk).to(torch.float64)
    if "precision@1" in include:
        out["precision@1"] = matches[:, 0].to(torch.float64)
    if ("r_precision" in include or "map@r" in include) and n:
        if int(n_rel.max()) > k:
            raise ValueError(f"R-Precision/MAP@R need k ≥ max R = {int(n_rel.max())}, got k = {k}")
        within = torch.arange(k, device=matches.device)[None, :] < n_rel[:, None]
        rel = matches & within
        r = n_rel.to(torch.float64)
        if "r_precision" in include:
            out["r_precision"] = rel.sum(1) / r
        if "map@r" in include:
            prec = rel.cumsum(1).to(torch.float64) / torch.arange(1, k + 1, device=matches.device)
            out["map@r"] = (prec * rel).sum(1) / r
    return out


def nmi(embeddings: Any, labels: Any, geometry: str = "poincare", seed: int = 0) -> float:
    """Normalised mutual information of k-means clusters (k = number of classes) with the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x = embeddings.detach().float().cpu().numpy() if torch.is_tensor(embeddings) else np.asarray(embeddings, np.float32)
    (y,) = encode_labels(labels)
    if geometry == "sphere":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n_classes = int(y.max()) + 1
    clusters = KMeans(n_clusters=n_classes, n_init=1, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(y.numpy(), clusters))


def retrieval_metrics(embeddings: Any, labels: Any, geometry: str = "poincare", curvature: float = 0.1,
                      ks: Sequence[int] | None = None, **kwargs: Any) -> dict[str, float]:
    """All requested metrics from one blocked search (top-k of k = max R, plus each query's first-hit
    rank at any depth; FAISS: a k-NN search with k = max(max K, max R)).

    ``embeddings``/``labels`` are the queries; without ``gallery`` they are searched against
    themselves (self excluded by index), with it against the gallery (In-Shop). Keys:
    ``recall@K`` for each K, ``precision@1``, ``r_precision``, ``map@r``, ``nmi`` (only when in
    ``include``); values are fractions in [0, 1]. The search runs on ``device`` (default: where
    ``embeddings`` are), in blocks of ``block_size`` queries × ``gallery_block_size`` items, and so
    do the per-query metrics; only the means come back to the CPU. Other keyword arguments go to the
    search (FAISS ``nprobe``, ``ef_search``, ``refine``, …; see ``retrieval.iter_knn``).
    """
    return retrieval_metrics_with_nearest(embeddings, labels, geometry, curvature, ks, **kwargs)[0]


def retrieval_metrics_with_nearest(
        embeddings: Any, labels: Any, geometry: str = "poincare", curvature: float = 0.1,
        ks: Sequence[int] | None = None, *, gallery: Any | None = None, gallery_labels: Any | None = None,
        include: Sequence[str] = DEFAULT_METRICS, backend: str = "blocked", block_size: int = 1024,
        gallery_block_size: int = 65536, exact: bool = False, faiss_index: str = "flat",
        device: torch.device | str | None = None, progress: bool = False, seed: int = 0,
        **search_kwargs: Any) -> tuple[dict[str, float], torch.Tensor | None]:
    """``retrieval_metrics`` and, from the same search, each query's nearest gallery item (n,) int64 on
    the CPU (itself excluded in self-retrieval; the first column of the top-k), or None when no search
    ran (only ``nmi`` asked for). The hierarchy and radius metrics need that top-1: no second search."""
    unknown = set(include) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    ks = _check_ks(DEFAULT_RECALL_KS if ks is None else ks)
    self_mode = gallery is None
    if self_mode and gallery_labels is not None:
        raise ValueError("gallery_labels given without gallery")
    if not self_mode and gallery_labels is None:
        raise ValueError("gallery given without gallery_labels")
    n_q = len(embeddings)
    if len(labels) != n_q:
        raise ValueError(f"{n_q} query embeddings but {len(labels)} labels")
    if not self_mode and len(gallery_labels) != len(gallery):
        raise ValueError(f"{len(gallery)} gallery embeddings but {len(gallery_labels)} gallery labels")
    q_ids, g_ids = encode_labels(labels, labels if self_mode else gallery_labels)
    n_classes = int(torch.cat([q_ids, g_ids]).max()) + 1
    n_rel = torch.bincount(g_ids, minlength=n_classes)[q_ids] - int(self_mode)
    lone = n_rel == 0
    if lone.all():
        raise ValueError("no query has a same-class item in the gallery: retrieval metrics undefined")
    if lone.any():
        warnings.warn(f"{int(lone.sum())} of {n_q} queries have no same-class gallery item; they are "
                      "left out of the retrieval metrics", stacklevel=3)
    out: dict[str, float] = {}
    nearest = None
    available = len(g_ids) - int(self_mode)
    ks, dropped = usable_recall_ks(ks, available)
    if dropped and "recall" in include:
        warnings.warn(f"Recall@K dropped for K = {', '.join(map(str, dropped))}: K ≥ the {available} gallery "
                      "items a query can retrieve, so it would be 100% by construction", stacklevel=3)
    retrieval = [m for m in include if m != "nmi" and (m != "recall" or ks)]
    if retrieval:
        # The blocked search counts the first hit's rank at any depth, so it needs a top-k of max R
        # only (12 for SOP instead of 1000); FAISS only knows its top-k, so it needs max K too.
        k = int(n_rel.max()) if backend == "blocked" or not ks else max(ks[-1], int(n_rel.max()))
        k = min(max(k, 1), available)
        parts: dict[str, list[torch.Tensor]] = {}
        top1: list[torch.Tensor] = []
        for q0, _, idx, first in iter_knn_first_hit(
                embeddings, q_ids, gallery, None if self_mode else g_ids, k, geometry, curvature,
                exclude_self=self_mode, block_size=block_size, gallery_block_size=gallery_block_size,
                exact=exact, backend=backend, faiss_index=faiss_index, device=device, progress=progress,
                **search_kwargs):
            b = idx.shape[0]
            top1.append(idx[:, 0])
            keep = ~lone[q0:q0 + b].to(idx.device)
            matches = (g_ids.to(idx.device)[idx] == q_ids[q0:q0 + b].to(idx.device)[:, None])[keep]
            for key, val in _per_query(matches, n_rel[q0:q0 + b].to(idx.device)[keep], ks, retrieval,
                                       first[keep]).items():
                parts.setdefault(key, []).append(val)
        out.update({key: _mean(val) for key, val in parts.items()})
        nearest = torch.cat(top1).cpu()
    if "nmi" in include:
        out["nmi"] = nmi(embeddings, labels, geometry, seed)
    return out, nearest
