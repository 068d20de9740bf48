# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Top-k search (``semantic_search``, as in sentence-transformers) and range search.

Both return, per query, a list of hits ``{"corpus_id", "distance", "id", "path", "label"}`` sorted
by increasing distance (ties: lower ``corpus_id``). Distances are the geometry's own, computed in
float64: hyperbolic distance (poincare), ``1 − cos`` (sphere), L2 (euclidean).

Exactness. A flat index ranks ``max(2k + 8, 64)`` candidates by float32 inner products on the lifted
features; the candidates are re-ranked by float64 distance, and a query whose k-th float64 hit is
not separated from the best non-candidate by more than the float32 error bound
(``scoring.score_tolerance``) is redone by float64 brute force. So the result equals a float64
brute-force ranking. Approximate kinds (hnsw/ivf/ivfpq) re-rank ``refine · k`` candidates exactly
but may miss neighbours (see bench/RESULTS.md for recall). Range search is always exact.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from typing import Any

import torch

from .scoring import distance, distance_to_raw, features, one_torch_thread, range_candidates, score_tolerance
from .vectors import VectorIndex

FLOAT64_EPS = float(torch.finfo(torch.float64).eps)

__all__ = ["format_hits", "range_search", "semantic_search"]


class _Corpus:
    """What a search needs: embeddings, a vector index, the geometry, and optional row names.
    Build it once to search a tensor corpus repeatedly (``semantic_search`` accepts it as corpus)."""

    def __init__(self, corpus: Any, geometry: str | None, curvature: float | None):
        from .index import HViTIndex

        if isinstance(corpus, HViTIndex):
            self.emb, self.vectors, self.index = corpus.embeddings, corpus.vectors, corpus
            self.geometry, self.curvature = corpus.geometry, corpus.curvature
            if len(corpus) == 0:
                raise ValueError(f"{corpus.dir}: the index is empty (0 images); add images with `hvit index add`")
        else:
            if geometry is None:
                raise ValueError("geometry= is required when the corpus is a tensor")
            self.emb = torch.as_tensor(corpus).float()
            if self.emb.ndim != 2 or self.emb.shape[0] == 0:
                raise ValueError(f"corpus embeddings must be a non-empty (n, dim) array, got shape {tuple(self.emb.shape)}")
            self.geometry, self.curvature = geometry, (curvature if geometry == "poincare" else None)
            self.vectors = VectorIndex(self.geometry, self.curvature, self.emb.shape[1], "flat")
            self.vectors.add(self.emb)
            self.index = None
        self._gf = self._absmax = None

    def gallery_absmax(self) -> torch.Tensor:
        """Per-column max |feature| over the gallery (for the float32 error bound), computed once."""
        if self._absmax is None:
            owner = self.index if self.index is not None else self
            if getattr(owner, "_gallery_absmax", None) is None:
                # a flat index stores exactly the float32 gallery features: no second copy for the bound
                rows = self.vectors.torch_matrix() if self.vectors.exact else self.gallery_features()
                owner._gallery_absmax = rows.abs().amax(0)
            self._absmax = owner._gallery_absmax
        return self._absmax

    def gallery_features64(self) -> torch.Tensor:
        """Float64 features (allocated only when a query needs the brute-force path)."""
        owner = self.index if self.index is not None else self
        if getattr(owner, "_gallery_features64", None) is None:
            owner._gallery_features64 = features(self.emb.double(), self.geometry, self.curvature, "gallery")
        return owner._gallery_features64

    def gallery_features(self) -> torch.Tensor:
        if self._gf is None:
            self._gf = self.index.gallery_features() if self.index is not None else \
                features(self.emb, self.geometry, self.curvature, "gallery").float()
        return self._gf

    def hit(self, i: int, d: float) -> dict:
        out = {"corpus_id": int(i), "distance": float(d)}
        if self.index is not None:
            out.update(id=self.index.ids[i], path=self.index.paths[i], label=self.index.labels[i])
        return out


def _check_queries(q: Any, dim: int) -> torch.Tensor:
    q = torch.as_tensor(q).float()
    q = q[None] if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query embeddings must be (n, {dim}), got shape {tuple(q.shape)}")
    if not torch.isfinite(q).all():
        raise ValueError("query embeddings contain NaN/inf")
    return q


def _clamp_k(k: int, n: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be a positive integer, got {k!r}")
    if k > n:
        warnings.warn(f"top_k={k} is larger than the index ({n} images): returning all {n}", stacklevel=3)
        return n
    return k


def _sort_by_distance(d: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.argsort(idx, dim=-1, stable=True)
    d, idx = d.gather(-1, o), idx.gather(-1, o)
    o = torch.argsort(d, dim=-1, stable=True)
    return d.gather(-1, o), idx.gather(-1, o)


def _float64_topk(q: torch.Tensor, c: "_Corpus", k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force top-k for queries the float32 pass could not decide: float64 inner products over
    the whole gallery keep every item within their (float64) error bound of the k-th, and those few
    are ranked by float64 distance."""
    gf64 = c.gallery_features64()
    qf = features(q.double(), c.geometry, c.curvature, "query")
    s = qf @ gf64.T
    kth = torch.topk(s, k, dim=1).values[:, -1]
    tol = 4 * qf.shape[1] * FLOAT64_EPS * (qf.abs() @ gf64.abs().amax(0))
    out_d, out_i = [], []
    for r in range(len(q)):
        idx = torch.nonzero(s[r] >= kth[r] - 2 * tol[r]).flatten()
        dr, ir = _sort_by_distance(distance(q[r][None], c.emb[idx], c.geometry, c.curvature)[None], idx[None])
        out_d.append(dr[0, :k])
        out_i.append(ir[0, :k])
    return torch.stack(out_d), torch.stack(out_i)


def semantic_search(query_embeddings: Any, corpus: Any, top_k: int = 10, *, geometry: str | None = None,
                    curvature: float | None = None, refine: int = 4, query_chunk_size: int = 256
                    ) -> list[list[dict]]:
    """Top-k nearest corpus items of each query, like ``sentence_transformers.util.semantic_search``
    but with distances (lower = closer) in the corpus's geometry.

    ``corpus``: an ``HViTIndex`` or an (n, dim) tensor (then give ``geometry``/``curvature``).
    ``top_k`` larger than the corpus is clamped to its size with a warning.
    """
    c = corpus if isinstance(corpus, _Corpus) else _Corpus(corpus, geometry, curvature)
    q = _check_queries(query_embeddings, c.emb.shape[1])
    k = _clamp_k(top_k, c.emb.shape[0])
    with one_torch_thread(q.shape[0] <= 16):
        return _semantic_search(q, c, k, refine, query_chunk_size)


def _rerank(qb: torch.Tensor, scores32: torch.Tensor, cand: torch.Tensor, c: "_Corpus", k: int,
            gf_absmax: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 distances of the candidates, the k best, and the queries the exactness check cannot
    decide (module docstring): (distances, indices, unsure query rows)."""
    valid = cand >= 0
    d = distance(qb[:, None, :], c.emb[cand.clamp_min(0)], c.geometry, c.curvature)
    d = d.masked_fill(~valid, float("inf"))
    d, cand = _sort_by_distance(d, cand)
    d, cand = d[:, :k], cand[:, :k]
    if gf_absmax is None:
        return d, cand, torch.empty(0, dtype=torch.int64)
    qf = features(qb.double(), c.geometry, c.curvature, "query")
    gk = features(c.emb[cand[:, -1]].double(), c.geometry, c.curvature, "gallery")
    kth = (qf * gk).sum(1)
    tol = score_tolerance(qf, gf_absmax)
    return d, cand, torch.nonzero(scores32[:, -1].double() + 2 * tol >= kth).flatten()


def _semantic_search(q: torch.Tensor, c: "_Corpus", k: int, refine: int, query_chunk_size: int) -> list[list[dict]]:
    n = c.emb.shape[0]
    exact = c.vectors.exact
    n_cand = min(n, 2 * k + 8 if exact else max(refine * k, k))
    gf_absmax = c.gallery_absmax() if exact and n_cand < n else None
    results = []
    for a in range(0, q.shape[0], query_chunk_size):
        qb = q[a:a + query_chunk_size]
        scores32, cand = c.vectors.candidates(qb, n_cand)
        with one_torch_thread():  # small elementwise work (see one_torch_thread)
            d, cand, unsure = _rerank(qb, scores32, cand, c, k, gf_absmax)
        for u0 in range(0, len(unsure), 64):  # exactness check failed: float64 brute force
            rows = unsure[u0:u0 + 64]
            d[rows], cand[rows] = _float64_topk(qb[rows], c, k)
        for r in range(qb.shape[0]):
            results.append([c.hit(i, dist) for i, dist in zip(cand[r].tolist(), d[r].tolist()) if dist != float("inf")])
    return results


def range_search(query_embeddings: Any, corpus: Any, max_distance: float, *, geometry: str | None = None,
                 curvature: float | None = None) -> list[list[dict]]:
    """Every corpus item within ``max_distance`` of each query (inclusive), sorted; exact."""
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be ≥ 0, got {max_distance}")
    c = corpus if isinstance(corpus, _Corpus) else _Corpus(corpus, geometry, curvature)
    q = _check_queries(query_embeddings, c.emb.shape[1])
    gf = c.gallery_features()
    qf = features(q, c.geometry, c.curvature, "query").float()
    q_sq = q.double().pow(2).sum(1) if c.geometry == "euclidean" else None
    thr = torch.as_tensor(distance_to_raw(max_distance, q_sq, c.geometry, c.curvature), dtype=torch.float64)
    thr = thr.expand(q.shape[0]) - score_tolerance(qf, c.gallery_absmax())
    per_query: list[list[tuple[float, int]]] = [[] for _ in range(q.shape[0])]
    for qi, gi in range_candidates(qf, gf, thr):
        d = distance(q[qi], c.emb[gi], c.geometry, c.curvature)
        keep = d <= max_distance
        for a, b, dist in zip(qi[keep].tolist(), gi[keep].tolist(), d[keep].tolist()):
            per_query[a].append((dist, b))
    return [[c.hit(i, dist) for dist, i in sorted(hits)] for hits in per_query]


def format_hits(results: list[list[dict]], fmt: str = "table", query_names: list[str] | None = None) -> str:
    """Results as ``table`` (aligned text), ``json`` or ``csv`` (one row per (query, rank))."""
    names = query_names or [f"query {i}" for i in range(len(results))]
    rows = [{"query": names[qi], "rank": r + 1, **h} for qi, hits in enumerate(results) for r, h in enumerate(hits)]
    if fmt == "json":
        return json.dumps([{"query": names[qi], "hits": hits} for qi, hits in enumerate(results)], indent=2)
    cols = ["query", "rank", "distance", "corpus_id"] + [k for k in ("id", "path", "label") if rows and k in rows[0]]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be table, json or csv, got {fmt!r}")
    cols = [col for col in cols if col != "id" or not rows or any(r.get("path") is None for r in rows)]
    cells = [[f"{r[col]:.6f}" if col == "distance" else str(r.get(col)) for col in cols] for r in rows]
    widths = [max([len(col)] + [len(x[j]) for x in cells]) for j, col in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols)] + [line(x) for x in cells])
