# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Near-duplicate mining over a whole index (the ``paraphrase_mining`` of sentence-transformers).

One blocked pass over the upper triangle of the all-pairs score matrix (each unordered pair once,
float32 inner products on symmetric lifted features) collects (a) every pair within
``max_distance`` (candidates within the float32 error bound, then confirmed by float64 distance,
so the pair list is exact) and (b) every item's nearest neighbour, whose distance is then
recomputed in float64 (for the histogram that helps choose the threshold).

Groups are the **connected components** of the graph whose edges are the pairs within the
threshold (not cliques): A~B and B~C put A, B, C in one group even if d(A, C) > threshold.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .scoring import distance, dot_error_factor, features, one_torch_thread

__all__ = ["DuplicateReport", "distance_histogram", "duplicate_groups", "duplicate_mining", "format_histogram",
           "write_groups_csv"]


def _symmetric_features(x: torch.Tensor, geometry: str, curvature: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with ⟨A(x), B(y)⟩ = ⟨A(y), B(x)⟩ a decreasing function of d(x, y)."""
    if geometry == "euclidean":  # ⟨x,y⟩ − ‖x‖²/2 − ‖y‖²/2 = −‖x − y‖²/2
        x = x.double()
        h = -0.5 * x.pow(2).sum(1, keepdim=True)
        one = torch.ones_like(h)
        return torch.cat([x, one, h], 1).float(), torch.cat([x, h, one], 1).float()
    return (features(x, geometry, curvature, "query").float(), features(x, geometry, curvature, "gallery").float())


def _min_score(d: float, geometry: str, curvature: float | None) -> float:
    if geometry == "poincare":
        return -math.cosh(math.sqrt(curvature) * d) / curvature
    if geometry == "sphere":
        return 1 - d
    return -d * d / 2


@dataclass
class DuplicateReport:
    """``pairs``: [(distance, i, j)] with i < j, sorted by distance; ``groups``: connected components
    (lists of row indices, largest first); ``nn_distance``/``nn_index``: each row's nearest other row."""

    pairs: list[tuple[float, int, int]]
    groups: list[list[int]]
    nn_distance: np.ndarray
    nn_index: np.ndarray
    max_distance: float


def _embeddings_and_geometry(corpus: Any, geometry: str | None, curvature: float | None):
    from .index import HViTIndex

    if isinstance(corpus, HViTIndex):
        if len(corpus) == 0:
            raise ValueError(f"{corpus.dir}: the index is empty (0 images); nothing to deduplicate")
        return corpus.embeddings, corpus.geometry, corpus.curvature
    if geometry is None:
        raise ValueError("geometry= is required when the corpus is a tensor")
    emb = torch.as_tensor(corpus).float()
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"corpus embeddings must be a non-empty (n, dim) array, got shape {tuple(emb.shape)}")
    return emb, geometry, curvature if geometry == "poincare" else None


def duplicate_mining(corpus: Any, max_distance: float, *, geometry: str | None = None,
                     curvature: float | None = None, row_block: int = 2048, col_block: int = 8192,
                     progress: bool = False) -> DuplicateReport:
    """All pairs within ``max_distance`` (exact), their connected components, and nearest-neighbour
    distances. ``corpus``: an ``HViTIndex`` or an (n, dim) tensor with ``geometry``/``curvature``.
    Memory O(row_block · col_block) besides the features; time O(n² · dim / 2)."""
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be ≥ 0, got {max_distance}")
    emb, geometry, curvature = _embeddings_and_geometry(corpus, geometry, curvature)
    n = emb.shape[0]
    A, B = _symmetric_features(emb, geometry, curvature)
    # one bound for all pairs (scoring.dot_error_factor · max Σ|a_i||b_i|)
    tol = dot_error_factor(A.shape[1]) * float((A.double().abs() @ B.double().abs().amax(0)).max())
    thr = _min_score(max_distance, geometry, curvature) - tol
    nn_val = torch.full((n,), -torch.inf)
    nn_idx = torch.full((n,), -1, dtype=torch.int64)
    cand_i, cand_j = [], []
    starts = range(0, n, row_block)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc="dedup", unit="block")
    # One score buffer, reused: a fresh (row_block, col_block) matrix per block costs page faults
    # (measured 97 → 63 CPU-ms per 2048 × 8192 product); the masks of the diagonal blocks, made once.
    buf = torch.empty(min(row_block, n) * min(col_block, n))
    lower = torch.ones(min(row_block, n), min(row_block, n), dtype=torch.bool).tril()
    for a in starts:
        b = min(a + row_block, n)
        m = b - a
        for c in range(a, n, col_block):
            d = min(c + col_block, n)
            s = torch.mm(A[a:b], B[c:d].T, out=buf[: m * (d - c)].view(m, d - c))
            with one_torch_thread():  # memory-bound passes: a second thread mostly spins on a busy CPU
                if c == a:  # the block on the diagonal: keep only column > row
                    s[:, :m].masked_fill_(lower[:m, :m], -torch.inf)
                # nearest neighbours: max values in one pass each way; a row's argmax only where its best
                # improves (all rows at first, few later on)
                row_max = s.amax(1)
                rows = torch.nonzero(row_max > nn_val[a:b]).flatten()
                if len(rows):
                    nn_val[a + rows] = row_max[rows]
                    nn_idx[a + rows] = (s.argmax(1)[rows] if 4 * len(rows) > m else s[rows].argmax(1)) + c
                v = s.amax(0)
                cols = torch.nonzero(v > nn_val[c:d]).flatten()
                if len(cols):  # a column-wise argmax is a strided pass: only note the row block (resolved below)
                    nn_val[c + cols] = v[cols]
                    nn_idx[c + cols] = -2 - a
                rows = torch.nonzero(row_max >= thr).flatten()  # pairs are rare: look only at rows that have one
                if len(rows):
                    qi, gj = torch.nonzero(s[rows] >= thr, as_tuple=True)
                    cand_i.append(rows[qi] + a)
                    cand_j.append(gj + c)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    _resolve_column_neighbours(A, B, nn_idx, row_block)
    pairs: list[tuple[float, int, int]] = []
    if cand_i:
        ci, cj = torch.cat(cand_i), torch.cat(cand_j)
        dist = distance(emb[ci], emb[cj], geometry, curvature)
        keep = dist <= max_distance
        pairs = sorted(zip(dist[keep].tolist(), ci[keep].tolist(), cj[keep].tolist()))
    nn_d = torch.full((n,), torch.inf, dtype=torch.float64)
    has = nn_idx >= 0
    nn_d[has] = distance(emb[has], emb[nn_idx[has]], geometry, curvature)
    return DuplicateReport(pairs, duplicate_groups(pairs, n), nn_d.numpy(), nn_idx.numpy(), float(max_distance))


def _resolve_column_neighbours(A: torch.Tensor, B: torch.Tensor, nn_idx: torch.Tensor, row_block: int) -> None:
    """Items whose best score came from a column (``nn_idx = −2 − a``: the row block starting at a; −1
    is "none yet"):
    recompute their scores against that block's rows (one small product per block, ≈ n · row_block
    · dim in all) and take the best row other than the item itself."""
    for a in torch.unique(nn_idx[nn_idx < -1]).tolist():
        items = torch.nonzero(nn_idx == a).flatten()
        start = -2 - a
        s = A[start:start + row_block] @ B[items].T
        own = items - start
        inside = own < s.shape[0]
        s[own[inside], torch.nonzero(inside).flatten()] = -torch.inf  # not the item itself
        nn_idx[items] = s.argmax(0) + start


def duplicate_groups(pairs: list[tuple[float, int, int]], n: int) -> list[list[int]]:
    """Connected components (size ≥ 2) of the pair graph, by union-find; largest first, then by first member."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in {x for _, a, b in pairs for x in (a, b)}:
        members.setdefault(find(i), []).append(i)
    return sorted((sorted(m) for m in members.values()), key=lambda m: (-len(m), m[0]))


def distance_histogram(distances: np.ndarray, bins: int = 20, max_distance: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of finite distances (e.g. ``DuplicateReport.nn_distance``)."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    top = max_distance if max_distance is not None else (float(d.max()) if len(d) else 1.0)
    return np.histogram(d, bins=bins, range=(0.0, top if top > 0 else 1.0))


def format_histogram(counts: np.ndarray, edges: np.ndarray, width: int = 40, threshold: float | None = None) -> str:
    """A text histogram; the bin holding ``threshold`` is marked."""
    peak = max(int(counts.max()), 1) if len(counts) else 1
    lines = []
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        mark = "  <- threshold" if threshold is not None and lo <= threshold < hi else ""
        lines.append(f"{lo:9.4f} – {hi:9.4f} {int(c):8d} {'#' * round(width * int(c) / peak)}{mark}")
    return "\n".join(lines)


def write_groups_csv(report: DuplicateReport, path: str, index: Any = None) -> int:
    """One row per group member: group, size, corpus_id, (id, path, label), distance to the group's
    first member, nearest-neighbour distance. Returns the number of groups."""
    cols = ["group", "size", "corpus_id", "id", "path", "label", "distance_to_first", "nn_distance"]
    emb = geometry = curvature = None
    if index is not None:
        emb, geometry, curvature = index.embeddings, index.geometry, index.curvature
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for g, members in enumerate(report.groups):
            first = members[0]
            for m in members:
                d0 = "" if emb is None else f"{float(distance(emb[first], emb[m], geometry, curvature)):.6g}"
                names = [index.ids[m], index.paths[m], index.labels[m]] if index is not None else ["", "", ""]
                w.writerow([g, len(members), m, *["" if x is None else x for x in names], d0,
                            f"{report.nn_distance[m]:.6g}"])
    return len(report.groups)
