# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Blocked k-NN and the FAISS backend against a float64 brute force built from textbook formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_hvit.retrieval import iter_knn, iter_knn_first_hit, knn

GEOMETRIES = ("poincare", "sphere", "euclidean")


# ---------------------------------------------------------------- oracle (numpy, float64, loops)
def mobius_add(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    xy, x2, y2 = (x * y).sum(-1, keepdims=True), (x * x).sum(-1, keepdims=True), (y * y).sum(-1, keepdims=True)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def oracle_distance(q: np.ndarray, g: np.ndarray, geometry: str, c: float) -> np.ndarray:
    """(n, m) distance (smaller = closer): Möbius-addition form, 1 − cos, or L2."""
    q, g = q.astype(np.float64), g.astype(np.float64)
    if geometry == "poincare":
        out = np.empty((len(q), len(g)))
        for i in range(len(q)):
            m = np.linalg.norm(mobius_add(-q[i][None], g, c), axis=-1)
            out[i] = 2 / np.sqrt(c) * np.arctanh(np.minimum(np.sqrt(c) * m, 1 - 1e-15))
        return out
    if geometry == "sphere":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1 - qn @ gn.T
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


def oracle_knn(q, g, k, geometry, c, exclude_self, decimals=None):
    """Indices sorted by (distance, gallery index); ``decimals`` rounds distances to expose ties."""
    d = oracle_distance(q, g, geometry, c)
    if decimals is not None:
        d = np.round(d, decimals)
    if exclude_self:
        d[np.arange(len(q)), np.arange(len(q))] = np.inf
    idx = np.stack([np.lexsort((np.arange(d.shape[1]), row))[:k] for row in d])
    return idx, d


def ball_points(n: int, dim: int, c: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random points inside the ball at radius √c‖x‖ ≤ 0.62 (the clipped model's range)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=g, dtype=torch.float64)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.62 / np.sqrt(c)
    return (v / v.norm(dim=1, keepdim=True) * r).to(dtype)


# ---------------------------------------------------------------- exact agreement
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("blocks", [(1024, 65536), (7, 13), (16, 3)])
def test_self_retrieval_matches_brute_force(geometry, blocks):
    c = 0.1
    x = ball_points(120, 8, c, seed=1)
    sim, idx = knn(x, k=9, geometry=geometry, curvature=c, block_size=blocks[0],
                   gallery_block_size=blocks[1], exact=True)
    ref_idx, d = oracle_knn(x.numpy(), x.numpy(), 9, geometry, c, exclude_self=True)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    ref_d = np.take_along_axis(d, ref_idx, 1)
    expect = 1 - ref_d if geometry == "sphere" else -ref_d  # cosine / −distance
    np.testing.assert_allclose(sim.numpy(), expect, rtol=1e-5, atol=1e-5)
    assert not (idx == torch.arange(120)[:, None]).any()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_query_gallery_matches_brute_force(geometry):
    c = 0.3
    q, g = ball_points(37, 6, c, seed=2), ball_points(101, 6, c, seed=3)
    _, idx = knn(q, g, k=15, geometry=geometry, curvature=c, block_size=10, gallery_block_size=21,
                 exact=True)
    ref_idx, _ = oracle_knn(q.numpy(), g.numpy(), 15, geometry, c, exclude_self=False)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_float32_default_returns_true_nearest_distances(geometry):
    c = 0.1
    x = ball_points(300, 32, c, seed=4, dtype=torch.float32)
    _, idx = knn(x, k=20, geometry=geometry, curvature=c, block_size=64, gallery_block_size=100)
    ref_idx, d = oracle_knn(x.numpy(), x.numpy(), 20, geometry, c, exclude_self=True)
    got = np.take_along_axis(d, idx.numpy(), 1)
    np.testing.assert_allclose(got, np.take_along_axis(d, ref_idx, 1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- ties (exactly representable data)
def tie_data(geometry: str) -> tuple[torch.Tensor, float]:
    """Points with many exact ties: dyadic coordinates, permutations, sign flips, duplicates."""
    if geometry == "sphere":  # ± axis vectors, each three times: cosines in {−1, 0, 1} exactly
        eye = torch.eye(4, dtype=torch.float64)
        base = torch.cat([eye, -eye])
        return base.repeat(3, 1)[torch.randperm(24, generator=torch.Generator().manual_seed(0))], 1.0
    grid = torch.tensor([[a, b] for a in (-0.5, -0.25, 0.0, 0.25, 0.5) for b in (-0.5, 0.0, 0.5)],
                        dtype=torch.float64)
    pts = torch.cat([grid, grid[:6], torch.zeros(2, 2)])  # duplicates, the origin twice more
    return pts, 0.25  # dyadic c: all of 1 − c‖p‖², x₀, x_s exact enough to tie bit for bit


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("blocks", [(1024, 65536), (5, 4), (3, 1)])
def test_ties_lower_gallery_index_first(geometry, blocks):
    x, c = tie_data(geometry)
    n = len(x)
    for k in (1, 3, 7, n - 1):
        _, idx = knn(x, k=k, geometry=geometry, curvature=c, block_size=blocks[0],
                     gallery_block_size=blocks[1], exact=True)
        ref_idx, _ = oracle_knn(x.numpy(), x.numpy(), k, geometry, c, exclude_self=True, decimals=9)
        np.testing.assert_array_equal(idx.numpy(), ref_idx, err_msg=f"k={k}")


def test_self_excluded_by_index_not_by_distance():
    x = torch.tensor([[0.1, 0.2], [0.1, 0.2], [0.5, -0.3], [0.1, 0.2]], dtype=torch.float64)
    sim, idx = knn(x, k=2, geometry="poincare", curvature=1.0, exact=True)
    np.testing.assert_array_equal(idx[:, 0].numpy(), [1, 0, 0, 0])  # a duplicate, never itself
    np.testing.assert_array_equal(idx[0].numpy(), [1, 3])
    assert abs(sim[0, 0]) < 1e-6 and abs(sim[0, 1]) < 1e-6  # acosh near 1: ~√ε accuracy


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("gallery_block_size", [65536, 11])
@pytest.mark.parametrize("self_mode", [True, False])
def test_first_hit_rank_at_any_depth(geometry, gallery_block_size, self_mode):
    """Rank of the closest same-class item, counted beyond the top-k, equals the brute-force rank."""
    c = 0.1
    x = ball_points(90, 4, c, seed=13)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 30, 90))
    q, ql = (x, labels) if self_mode else (x[:30], labels[:30])
    g, gl = (None, None) if self_mode else (x[30:], labels[30:])
    firsts = [f for *_, f in iter_knn_first_hit(q, ql, g, gl, k=2, geometry=geometry, curvature=c,
                                                exact=True, block_size=16,
                                                gallery_block_size=gallery_block_size)]
    first = torch.cat(firsts).numpy()
    gx, gy = (x, labels) if self_mode else (g, gl)
    order, _ = oracle_knn(q.numpy(), gx.numpy(), len(gx) - int(self_mode), geometry, c, self_mode)
    for i in range(len(q)):
        hits = np.nonzero(gy.numpy()[order[i]] == ql[i].item())[0]
        assert first[i] == (hits[0] if len(hits) else len(gx)), i
    assert (first >= 2).sum() > 10  # most ranks come from the count, not the top-k


@pytest.mark.parametrize("gallery_block_size", [65536, 5, 3])
def test_first_hit_rank_with_tied_positives_across_blocks(gallery_block_size):
    # query 0 at the origin; five closer negatives; a negative (5) and two positives (7, 13) tied at
    # distance 2: the first hit is 7, ranked after the lower-index tie 5
    xs = [0, 1, -1, 1, -1, 1, -1, 2, 3, 3, 3, 3, 3, -2]
    pts = torch.tensor([[v, 0.0] for v in xs], dtype=torch.float64)
    pts[5] = torch.tensor([0.0, 2.0])
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 0])
    *_, first = next(iter_knn_first_hit(pts[:1], labels[:1], pts, labels, k=1, geometry="euclidean",
                                        exclude_self=True, gallery_block_size=gallery_block_size))
    assert first.tolist() == [6]  # 1, 2, 3, 4, 6 closer, 5 tied with a lower index, then 7
    for *_, first in iter_knn_first_hit(pts, labels, k=1, geometry="euclidean", block_size=4,
                                        gallery_block_size=gallery_block_size, exact=True):
        pass
    order, _ = oracle_knn(pts.numpy(), pts.numpy(), 13, "euclidean", 1.0, True, decimals=9)
    i = 13  # the query at −2: positives 0 (distance 2) and 7 (distance 4)
    assert first[-1].item() == np.nonzero(labels.numpy()[order[i]] == 0)[0][0]


def test_iter_knn_streams_blocks_in_order():
    x = ball_points(50, 4, 0.1, seed=5)
    starts = [s for s, v, i in iter_knn(x, k=3, block_size=16)]
    assert starts == [0, 16, 32, 48]


# ---------------------------------------------------------------- input checks
def test_bad_inputs_are_named():
    x = ball_points(10, 4, 0.1, seed=6)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"query embeddings.*rows \[3\]"):
        knn(bad, k=2)
    with pytest.raises(ValueError, match="k=10 exceeds the 9"):
        knn(x, k=10)
    with pytest.raises(ValueError, match="geometry"):
        knn(x, k=2, geometry="hyperbolic")
    with pytest.raises(ValueError, match="backend"):
        knn(x, k=2, backend="annoy")
    with pytest.raises(ValueError, match="dim"):
        knn(x, x[:, :3], k=2)
    with pytest.raises(ValueError, match="curvature"):
        knn(x, k=2, curvature=0.0)


def test_half_precision_input_is_promoted():
    x = ball_points(64, 8, 0.1, seed=7, dtype=torch.float32)
    _, i32 = knn(x, k=5)
    sim, i16 = knn(x.half(), k=5)
    assert sim.dtype == torch.float32 and torch.isfinite(sim).all()
    assert (i16[:, 0] == i32[:, 0]).float().mean() > 0.9  # rounding to fp16 moves a few points


# ---------------------------------------------------------------- FAISS
@pytest.fixture
def need_faiss():
    return pytest.importorskip("faiss")


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("self_mode", [True, False])
def test_faiss_flat_equals_blocked(need_faiss, geometry, self_mode):
    c = 0.1
    q = ball_points(200, 16, c, seed=8, dtype=torch.float32)
    g = None if self_mode else ball_points(333, 16, c, seed=9, dtype=torch.float32)
    sb, ib = knn(q, g, k=25, geometry=geometry, curvature=c, block_size=64)
    sf, i_f = knn(q, g, k=25, geometry=geometry, curvature=c, backend="faiss", block_size=50)
    np.testing.assert_allclose(sf.numpy(), sb.numpy(), rtol=1e-4, atol=1e-4)
    # Same neighbours; two float32 matrix products may only swap items whose true distances tie to
    # float32 resolution (Lorentz form: ≈ 5e-6 / d absolute): check each disagreement in float64.
    _, d = oracle_knn(q.numpy(), (q if self_mode else g).numpy(), 1, geometry, c, exclude_self=self_mode)
    diff = i_f.numpy() != ib.numpy()
    assert diff.mean() < 0.01
    rows, cols = np.nonzero(diff)
    np.testing.assert_allclose(d[rows, i_f.numpy()[rows, cols]], d[rows, ib.numpy()[rows, cols]],
                               rtol=2e-3, atol=1e-5)
    for a, b in zip(i_f.tolist(), ib.tolist()):
        assert set(a[:-1]) <= set(b)  # sets agree up to a near-tie at the k-th place


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_faiss_approximate_indexes_mostly_agree(need_faiss, index):
    c = 0.1
    centers = ball_points(20, 16, c, seed=10)
    g = torch.Generator().manual_seed(11)
    x = (centers.repeat_interleave(40, 0) * 0.9 + 0.05 * torch.randn(800, 16, generator=g, dtype=torch.float64))
    x = x.float()
    _, exact = knn(x, k=10, curvature=c)
    sim, approx = knn(x, k=10, curvature=c, backend="faiss", faiss_index=index, nprobe=8)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.tolist(), approx.tolist())])
    assert overlap > 0.9
    assert (sim[:, :-1] >= sim[:, 1:]).all()
    assert not (approx == torch.arange(800)[:, None]).any()


# ---------------------------------------------------------------- GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cuda_matches_cpu(geometry):
    x = ball_points(500, 16, 0.1, seed=12)
    _, i_cpu = knn(x, k=10, geometry=geometry, exact=True)
    _, i_gpu = knn(x.cuda(), k=10, geometry=geometry, exact=True, block_size=100, gallery_block_size=77)
    assert i_gpu.is_cuda
    np.testing.assert_array_equal(i_gpu.cpu().numpy(), i_cpu.numpy())


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_float32_duplicates_tie_by_index_whatever_the_blocks(geometry):
    """Bit-identical rows must tie exactly (lower index first) even though a float32 matrix product
    may round equal rows differently depending on their position in the block (issue 12.5)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50, 12, generator=g) * 0.5
    x[torch.randint(0, 50, (20,), generator=g)] = x[torch.randint(0, 50, (20,), generator=g)]
    q = torch.randn(9, 12, generator=g) * 0.5
    for query, gallery in ((x, None), (q, x)):
        runs = [knn(query, gallery, k=12, geometry=geometry, curvature=0.1, block_size=b, gallery_block_size=gb)
                for b, gb in ((1024, 65536), (1, 65536), (3, 5), (1, 1))]
        for sim, idx in runs[1:]:
            np.testing.assert_array_equal(idx.numpy(), runs[0][1].numpy())
            np.testing.assert_allclose(sim.numpy(), runs[0][0].numpy(), atol=5e-3)  # acosh near 0: ~√ε
        sim, idx = runs[0]
        tied = sim[:, 1:] == sim[:, :-1]
        dup = (x[idx[:, 1:]] == x[idx[:, :-1]]).all(-1)
        assert (idx[:, 1:] > idx[:, :-1])[dup].all() and (tied | ~dup).all()  # duplicates adjacent, ascending
