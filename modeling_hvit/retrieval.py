# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Exact k-nearest-neighbour search in blocks, plus an optional FAISS backend (SPEC §7).

The original evaluation builds a full N×N distance matrix (14.6 GB for SOP's 60,502 test images)
and fills it one query row at a time with a 1×N×D Möbius tensor. Here queries are processed in
blocks of ``block_size`` rows against gallery blocks of ``gallery_block_size`` columns, keeping a
running top-k, so memory is O(block_size · (gallery_block_size + k)) whatever N is.

Scores (higher = closer), each a monotone function of the geometry's distance, so rankings are exact:

- ``poincare``: the Lorentz inner product ``⟨lorentz_query(q), to_lorentz(g)⟩ = −⟨q, g⟩_L``, which
  equals ``cosh(√c·d(q, g)) / c`` up to sign (SPEC §1). One (d+1)-wide matrix product per block and no
  elementwise arcosh, so it is the cheapest exact ranking; it is also exactly what the FAISS
  inner-product index ranks, so both backends agree. Returned scores are converted to −d.
- ``sphere``: cosine similarity of the L2-normalised rows.
- ``euclidean``: −‖q − g‖² for ranking; returned scores are −‖q − g‖.

``exact=True`` runs the scoring in float64. In float32 the Lorentz form resolves distances to about
5e-6 / d (cancellation in x₀y₀ − x_s·y_s; the closed arcosh form is no better), so only near-duplicates
(d ≲ 0.1) may swap places; retrieval on real embeddings does not need float64. Ties are broken by the lower
gallery index; with ``exclude_self`` the query's own index (not every zero-distance item) is removed.
Bit-identical gallery rows are scored once per query and the score copied to each of them (all in one
gallery block), so they tie exactly: a float32 matrix product may round equal rows differently by
their position, which made rankings and metrics depend on the block sizes.
Works on any device the tensors live on (``device=`` moves them there: the evaluation searches on the
model's GPU); ``search_counts`` tells how many searches ran in this process, per device type.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .distances import check_geometry
from .hyperbolic import _no_autocast, lorentz_query, to_lorentz
from .lorentz import gallery_features, query_features

BACKENDS = ("blocked", "faiss")
FAISS_INDEXES = ("flat", "ivf", "hnsw")

__all__ = ["BACKENDS", "FAISS_INDEXES", "iter_knn", "iter_knn_first_hit", "knn", "search_counts"]

_SEARCHES: Counter[str] = Counter()


def search_counts() -> dict[str, int]:
    """Searches started in this process so far, by the device type they ran on (``cpu``, ``cuda``; the
    FAISS backend counts as ``cpu``). A diagnostic: under several processes the evaluation searches on
    the main process only, which this shows without timing anything."""
    return dict(_SEARCHES)


def _as_tensor(x: Any, name: str, device: torch.device | str | None) -> torch.Tensor:
    """2-d floating tensor (half/bfloat16 promoted to float32), checked finite."""
    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (n, dim) array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if device is not None:
        x = x.to(device)
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite values (NaN/inf) in rows {rows}"
                         f"{' ...' if int(bad.sum()) > 5 else ''}: fix the model output before retrieval")
    return x


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """Full float32 matrix products on CUDA even where TF32 is allowed globally (``--tf32``,
    ``torch.set_float32_matmul_precision("high")``): TF32 rounds scores to ~1e-3 and would reorder
    neighbours that the CPU ranks correctly."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _features(x: torch.Tensor, geometry: str, curvature: float, side: str) -> torch.Tensor:
    """Rows whose inner products (plus, for euclidean, a gallery bias) rank neighbours."""
    if geometry == "poincare":
        return lorentz_query(x, curvature) if side == "query" else to_lorentz(x, curvature)
    if geometry == "lorentz":  # x: hyperboloid space components; same ⟨q, g⟩_L score as poincare
        return query_features(x, curvature) if side == "query" else gallery_features(x, curvature)
    if geometry == "sphere":
        return F.normalize(x, dim=-1)
    return x


def _to_similarity(raw: torch.Tensor, q2: torch.Tensor | None, geometry: str,
                   curvature: float) -> torch.Tensor:
    """Ranking score → the returned similarity (−d for poincare/lorentz/euclidean, cosine for sphere)."""
    if geometry in ("poincare", "lorentz"):
        return -torch.acosh((-curvature * raw).clamp_min(1.0)) / math.sqrt(curvature)  # raw = −⟨q,g⟩_L
    if geometry == "euclidean":
        return -(q2[:, None] + raw).clamp_min(0).sqrt()
    return raw


def _rank(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidates by score descending, ties by lower gallery index; keep k."""
    order = torch.argsort(idx, dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, order), idx.gather(1, order)


def _sorted_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row, sorted by score descending then column ascending (deterministic ties)."""
    n = scores.shape[1]
    if k >= n:
        return torch.sort(scores, dim=1, descending=True, stable=True)
    # One extra element tells whether a tie straddles the k-th place (the (k+1)-th value equals it).
    vals, idx = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
    boundary = vals[:, k - 1] == vals[:, k]
    vals, idx = vals[:, :k], idx[:, :k]
    tied = (vals[:, 1:] == vals[:, :-1]).any(1)  # topk's order among equal values is unspecified
    if tied.any():
        rows = torch.nonzero(tied).flatten()
        vals[rows], idx[rows] = _rank(vals[rows], idx[rows], k)
    if boundary.any():  # a lower-index equal item may have been left out: redo those rows fully
        rows = torch.nonzero(boundary).flatten()
        v, i = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v[:, :k], i[:, :k]
    return vals, idx


def _merge(run_v: torch.Tensor | None, run_i: torch.Tensor | None, v: torch.Tensor, i: torch.Tensor,
           k: int, later: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a running top-k with another block's; ``later``: all its indices are larger (else ties
    are re-ranked by index)."""
    if run_v is None:
        return v, i
    vals, idx = torch.cat([run_v, v], 1), torch.cat([run_i, i], 1)
    if not later:
        return _rank(vals, idx, k)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, order), idx.gather(1, order)


def _check_k(k: int, n_gallery: int, exclude_self: bool) -> int:
    available = n_gallery - int(exclude_self)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"k={k} exceeds the {available} gallery items available"
                         f"{' (query itself excluded)' if exclude_self else ''}")
    return int(k)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="query")


@dataclass
class _GalleryBlock:
    """One gallery block: its items' indices ``cols`` (ascending), the feature rows it scores against
    (``feats``, ``bias``) and, when duplicates were merged, ``expand`` mapping each item to its row."""

    cols: torch.Tensor
    feats: torch.Tensor
    bias: torch.Tensor | None
    expand: torch.Tensor | None
    contiguous: bool  # cols is a range of consecutive indices (no duplicates merged)


def _duplicate_groups(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bit-identical rows as groups numbered by first occurrence: (group of each row, first row of
    each group), or None when all rows are distinct."""
    uniq, inv = torch.unique(g, dim=0, return_inverse=True)
    n, n_u = g.shape[0], uniq.shape[0]
    if n_u == n:
        return None
    rows = torch.arange(n, device=g.device)
    first = torch.full((n_u,), n, dtype=torch.int64, device=g.device).scatter_reduce(0, inv, rows, "amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_u, device=g.device)
    return rank[inv], first[order]


def _gallery_blocks(g: torch.Tensor, geometry: str, curvature: float, block: int) -> list[_GalleryBlock]:
    """Gallery blocks of about ``block`` items. Bit-identical rows are one feature row scored once and
    copied to all its items, and all copies sit in one block, so they tie exactly whatever the block
    shapes: a matrix product may round equal rows differently depending on their position."""

    def feats_bias(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = _features(x, geometry, curvature, "gallery").to(x.dtype)
        if geometry == "euclidean":  # ‖q−g‖² = ‖q‖² + (‖g‖² − 2⟨q,g⟩); rank by the bracket
            return f * -2, f.pow(2).sum(1)
        return f, None

    n = g.shape[0]
    groups = _duplicate_groups(g)
    if groups is None:
        f, b = feats_bias(g)
        return [_GalleryBlock(torch.arange(g0, min(g0 + block, n), device=g.device), f[g0:g0 + block],
                              None if b is None else b[g0:g0 + block], None, True) for g0 in range(0, n, block)]
    gid, first = groups
    f, b = feats_bias(g[first])
    counts = torch.bincount(gid, minlength=first.shape[0])
    block_of_group = (torch.cumsum(counts, 0) - counts) // block  # whole groups, in first-occurrence order
    block_of_item = block_of_group[gid]
    order = torch.argsort(block_of_item, stable=True)  # items by block, ascending within a block
    item_bounds = torch.cumsum(torch.bincount(block_of_item), 0).tolist()
    group_bounds = torch.cumsum(torch.bincount(block_of_group), 0).tolist()
    out, i0, u0 = [], 0, 0
    for i1, u1 in zip(item_bounds, group_bounds):
        if i1 > i0:
            cols = order[i0:i1]
            out.append(_GalleryBlock(cols, f[u0:u1], None if b is None else b[u0:u1], gid[cols] - u0, False))
        i0, u0 = i1, u1
    return out


def _block_scores(qf: torch.Tensor, q_index: torch.Tensor, blk: _GalleryBlock, exclude_self: bool) -> torch.Tensor:
    """Ranking scores (higher = closer) of query rows against a gallery block's items; the query's
    own item (query i is gallery item i) set to −inf."""
    s = qf @ blk.feats.T
    if blk.bias is not None:
        s = -(s + blk.bias)  # euclidean: −(‖g‖² − 2⟨q,g⟩)
    if blk.expand is not None:
        s = s[:, blk.expand]
    if exclude_self:
        rows, pos = _positions(blk, q_index)
        s[rows, pos] = -torch.inf
    return s


def _positions(blk: _GalleryBlock, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions in the block) of the entries of ``items`` that are in the block."""
    pos = torch.searchsorted(blk.cols, items).clamp_max(blk.cols.shape[0] - 1)
    rows = torch.nonzero(blk.cols[pos] == items).flatten()
    return rows, pos[rows]


def _best_positive(s: torch.Tensor, same: torch.Tensor, cols: torch.Tensor,
                   best: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Running (score, index) of each row's closest same-class item; ties → lower index.
    Works on the (few) same-class entries only, not on masked copies of the rows."""
    rr, cc = torch.nonzero(same, as_tuple=True)
    vals = s[rr, cc]
    t = torch.full((s.shape[0],), -torch.inf, dtype=s.dtype, device=s.device)
    t = t.scatter_reduce(0, rr, vals, "amax")
    at_max = vals == t[rr]
    big = torch.iinfo(torch.int64).max
    j = torch.full((s.shape[0],), big, dtype=torch.int64, device=s.device)
    j = j.scatter_reduce(0, rr[at_max], cols[cc[at_max]], "amin")
    if best is None:
        return t, j
    better = (t > best[0]) | ((t == best[0]) & (j < best[1]))
    return torch.where(better, t, best[0]), torch.where(better, j, best[1])


def _count_before(s: torch.Tensor, t: torch.Tensor, j: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Items ranked before item j of score t: higher score, or equal score and lower index.
    (Bool sums with an int32 accumulator: 4x faster than the default int64 on CPU.)"""
    count = (s > t[:, None]).sum(1, dtype=torch.int32).to(torch.int64)
    eq = s == t[:, None]
    j_here = torch.zeros_like(j, dtype=torch.int32)
    j_here[torch.isin(j, cols)] = 1
    tied = torch.nonzero(eq.sum(1, dtype=torch.int32) > j_here).flatten()
    if len(tied):  # rare: other items score exactly the same as the best positive
        count[tied] += (eq[tied] & (cols[None, :] < j[tied, None])).sum(1)
    return count


def _first_positive_rank(qf: torch.Tensor, q_index: torch.Tensor, q_lab: torch.Tensor,
                         blocks: list[_GalleryBlock], g_lab: torch.Tensor, exclude_self: bool,
                         s_full: torch.Tensor | None) -> torch.Tensor:
    """0-based rank of each row's closest same-class gallery item (n_gallery if it has none).
    ``s_full``: the rows' complete score rows when already in memory (one gallery block)."""

    def scores(blk):
        return s_full if s_full is not None else _block_scores(qf, q_index, blk, exclude_self)

    best = None
    for blk in blocks:
        best = _best_positive(scores(blk), g_lab[None, blk.cols] == q_lab[:, None], blk.cols, best)
    t, j = best
    rank = sum(_count_before(scores(blk), t, j, blk.cols) for blk in blocks)
    return torch.where(torch.isfinite(t), rank, torch.full_like(rank, g_lab.shape[0]))


def _blocked(query: torch.Tensor, gallery: torch.Tensor, k: int, geometry: str, curvature: float,
             exclude_self: bool, block_size: int, gallery_block_size: int, exact: bool, bar,
             labels: tuple[torch.Tensor, torch.Tensor] | None = None,
             ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    work = torch.float64 if exact else torch.promote_types(query.dtype, torch.float32)
    with torch.no_grad(), _no_autocast(query.device), _full_float32(query.device):
        blocks = _gallery_blocks(gallery.to(work), geometry, curvature, gallery_block_size)
        if labels is not None:
            q_lab_all, g_lab = labels[0].to(query.device), labels[1].to(query.device)
        for q0 in range(0, query.shape[0], block_size):
            qf = _features(query[q0:q0 + block_size].to(work), geometry, curvature, "query").to(work)
            q_index = torch.arange(q0, q0 + qf.shape[0], device=qf.device)
            run_v = run_i = s = None
            for blk in blocks:
                s = _block_scores(qf, q_index, blk, exclude_self)
                v, i = _sorted_topk(s, min(k, s.shape[1]))
                run_v, run_i = _merge(run_v, run_i, v, blk.cols[i], k, blk.contiguous)
            first = None
            if labels is not None:  # rank of the first same-class item, found in the top-k or counted
                q_lab = q_lab_all[q0:q0 + qf.shape[0]]
                match = g_lab[run_i] == q_lab[:, None]
                first = torch.where(match.any(1), match.to(torch.uint8).argmax(1),
                                    torch.full_like(q_lab, -1))
                rows = torch.nonzero(first < 0).flatten()
                if len(rows):
                    first[rows] = _first_positive_rank(
                        qf[rows], q_index[rows], q_lab[rows], blocks, g_lab, exclude_self,
                        s[rows] if len(blocks) == 1 else None)
            del s
            q2 = qf.pow(2).sum(1) if geometry == "euclidean" else None
            if geometry == "euclidean":
                run_v = -run_v
            sim = _to_similarity(run_v, q2, geometry, curvature).to(torch.float32)
            if bar is not None:
                bar.update(qf.shape[0])
            yield q0, sim, run_i, first


def _faiss_index(dim: int, metric: int, index: str, n_gallery: int, nlist: int | None, hnsw_m: int):
    import faiss

    flat = faiss.IndexFlatIP if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2
    if index == "flat":
        return flat(dim)
    if index == "ivf":  # faiss keeps a reference to the quantizer itself
        return faiss.IndexIVFFlat(flat(dim), dim, nlist or max(1, int(4 * math.sqrt(n_gallery))), metric)
    return faiss.IndexHNSWFlat(dim, hnsw_m, metric)


def _faiss(query: torch.Tensor, gallery: torch.Tensor, k: int, geometry: str, curvature: float,
           exclude_self: bool, block_size: int, index: str, nprobe: int | None, nlist: int | None,
           hnsw_m: int, ef_search: int, refine: int,
           bar) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """FAISS search. Exact (``flat``): an inner-product index on the Lorentz lift (L2 for euclidean,
    IP on unit vectors for sphere). Approximate poincare indexes (``ivf``/``hnsw``) cannot use that
    asymmetric inner product (their clustering/graph compares gallery items with each other under
    the index metric, where the lift's IP is not a proximity), so they search L2 between the
    gallery-side lifts of both sides, a proxy for hyperbolic proximity, for ``refine · k``
    candidates and re-rank those exactly by the Lorentz inner product."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("backend='faiss' needs the faiss extra: pip install 'hvit[faiss]'") from e
    if index not in FAISS_INDEXES:
        raise ValueError(f"faiss index must be one of {FAISS_INDEXES}, got {index!r}")
    proxy = geometry in ("poincare", "lorentz") and index != "flat"
    ip = geometry == "sphere" or (geometry in ("poincare", "lorentz") and not proxy)
    metric = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
    device, n_g = query.device, gallery.shape[0]
    extra = int(exclude_self)
    n_cand = min(n_g, refine * k + extra) if proxy else k + extra
    with torch.no_grad():
        gf = _features(gallery.float().cpu(), geometry, curvature, "gallery").contiguous()
        ix = _faiss_index(gf.shape[1], metric, index, n_g, nlist, hnsw_m)
        if index == "ivf":
            ix.train(gf.numpy())
            # default: enough lists to expect about twice the candidates needed (k = 1000 needs many)
            ix.nprobe = min(ix.nlist, nprobe or max(16, math.ceil(2 * n_cand * ix.nlist / n_g)))
        if index == "hnsw":
            ix.hnsw.efSearch = max(ef_search, n_cand)
        ix.add(gf.numpy())
        for q0 in range(0, query.shape[0], block_size):
            qb = query[q0:q0 + block_size].float().cpu()
            side = "gallery" if proxy else "query"
            d, i = ix.search(_features(qb, geometry, curvature, side).contiguous().numpy(), n_cand)
            vals, idx = torch.from_numpy(d), torch.from_numpy(i)
            if metric == faiss.METRIC_L2:
                vals = -vals  # squared distance → higher = closer
            if proxy:  # exact re-rank of the candidates (chunked: b × n_cand × (d+1) floats)
                qf = _features(qb, geometry, curvature, "query")
                for r0 in range(0, qb.shape[0], 64):
                    ci = idx[r0:r0 + 64].clamp_min(0)
                    vals[r0:r0 + 64] = torch.einsum("bd,bkd->bk", qf[r0:r0 + 64], gf[ci])
            missing = idx < 0
            if exclude_self:
                missing |= idx == torch.arange(q0, q0 + qb.shape[0])[:, None]
            vals = vals.masked_fill(missing, -torch.inf)
            vals, idx = _rank(vals, idx, k)
            if (vals == -torch.inf).any():
                raise RuntimeError(f"faiss '{index}' returned fewer than k={k} neighbours; raise "
                                   "nprobe / ef_search or use faiss_index='flat'")
            if geometry == "euclidean":
                sim = -(-vals).clamp_min(0).sqrt()
            else:
                sim = _to_similarity(vals, None, geometry, curvature)
            if bar is not None:
                bar.update(qb.shape[0])
            yield q0, sim.float().to(device), idx.to(device)


def _search(query: Any, gallery: Any | None, k: int, geometry: str, curvature: float, *,
            exclude_self: bool | None = None, block_size: int = 1024, gallery_block_size: int = 65536,
            exact: bool = False, backend: str = "blocked", faiss_index: str = "flat",
            nprobe: int | None = None,
            nlist: int | None = None, hnsw_m: int = 32, ef_search: int = 128, refine: int = 4,
            device: torch.device | str | None = None, progress: bool = False,
            labels: tuple[Any, Any] | None = None):
    """Validate, then yield ``(start, sim, idx, first_rank | None)`` from the chosen backend."""
    check_geometry(geometry)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if geometry in ("poincare", "lorentz") and not curvature > 0:
        raise ValueError(f"curvature must be > 0 for geometry {geometry!r}, got {curvature}")
    if refine < 1:
        raise ValueError(f"refine must be ≥ 1, got {refine}")
    if block_size < 1 or gallery_block_size < 1:
        raise ValueError(f"block sizes must be positive, got {block_size}, {gallery_block_size}")
    q = _as_tensor(query, "query embeddings", device)
    g = q if gallery is None else _as_tensor(gallery, "gallery embeddings", q.device)
    if exclude_self is None:
        exclude_self = gallery is None
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if exclude_self and g.shape[0] < q.shape[0]:
        raise ValueError("exclude_self needs query i to be gallery item i; gallery is smaller than query")
    k = _check_k(k, g.shape[0], exclude_self)
    if labels is not None:
        labels = tuple(torch.as_tensor(lab, dtype=torch.int64) for lab in labels)
        if labels[0].shape != (q.shape[0],) or labels[1].shape != (g.shape[0],):
            raise ValueError(f"labels must be 1-d with {q.shape[0]} query and {g.shape[0]} gallery entries")
    _SEARCHES["cpu" if backend == "faiss" else q.device.type] += 1
    bar = _progress(q.shape[0], progress, "k-NN search")
    if backend == "faiss":
        gen = _faiss(q, g, k, geometry, curvature, exclude_self, block_size, faiss_index, nprobe,
                     nlist, hnsw_m, ef_search, refine, bar)
    else:
        gen = _blocked(q, g, k, geometry, curvature, exclude_self, block_size, gallery_block_size,
                       exact, bar, labels)
    try:
        for q0, sim, idx, *rest in gen:
            first = rest[0] if rest else None
            if labels is not None and first is None:  # faiss: only the top-k is known
                match = labels[1].to(idx.device)[idx] == labels[0][q0:q0 + len(idx)].to(idx.device)[:, None]
                first = torch.where(match.any(1), match.to(torch.uint8).argmax(1),
                                    torch.full((len(idx),), k, device=idx.device))
            yield q0, sim, idx, first
    finally:
        if bar is not None:
            bar.close()


def iter_knn(query: Any, gallery: Any | None = None, k: int = 10, geometry: str = "poincare",
             curvature: float = 0.1, **kwargs: Any) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, similarities, indices)`` per block of ``block_size`` queries.

    ``similarities`` (b, k) float32 are sorted descending (−distance for poincare/euclidean, cosine
    for sphere) and ``indices`` (b, k) int64 point into the gallery. ``gallery=None`` searches the
    queries against themselves with ``exclude_self`` defaulting to True (query i is gallery item i).
    Keyword arguments: ``exclude_self``, ``block_size`` (queries per block, default 1024),
    ``gallery_block_size`` (65536), ``exact`` (float64 scores), ``device``, ``progress`` (tqdm), and
    ``backend="faiss"``: an inner-product index on the Lorentz lift (``faiss_index``: ``flat`` exact,
    ``ivf``/``hnsw`` approximate; ``nprobe`` (default: enough lists for about 2× the candidates) and
    ``nlist`` (default 4√n) for IVF, ``hnsw_m``/``ef_search`` for HNSW, and
    for poincare ``refine`` · k candidates re-ranked exactly).
    """
    for q0, sim, idx, _ in _search(query, gallery, k, geometry, curvature, **kwargs):
        yield q0, sim, idx


def iter_knn_first_hit(query: Any, query_labels: Any, gallery: Any | None = None,
                       gallery_labels: Any | None = None, k: int = 10, geometry: str = "poincare",
                       curvature: float = 0.1, **kwargs: Any
                       ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``iter_knn`` plus, per query, the 0-based rank of its closest same-class gallery item.

    Labels are int64 class ids. With the blocked backend the rank is exact at any depth (counted
    in the score block for queries with no hit in the top-k, so Recall@1000 needs only a top-k of
    max R, not 1000); it is ``n_gallery`` for a query without any same-class item. With FAISS only
    the top-k is known and the rank is ``k`` when there is no hit in it.
    """
    labels = (query_labels, query_labels if gallery is None else gallery_labels)
    if labels[1] is None:
        raise ValueError("gallery given without gallery_labels")
    yield from _search(query, gallery, k, geometry, curvature, labels=labels, **kwargs)


def knn(query: Any, gallery: Any | None = None, k: int = 10, geometry: str = "poincare",
        curvature: float = 0.1, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(similarities, indices)``, each (n_query, k); see ``iter_knn`` for the arguments."""
    parts = list(iter_knn(query, gallery, k, geometry, curvature, **kwargs))
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
