# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""δ-hyperbolicity against independent oracles: brute-force four-point formulas written directly on
distances (not Gromov products), closed forms for trees, cycles and grids, and the naive n³ broadcast."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import shortest_path

from modeling_hvit.delta import (
    DeltaEstimate,
    delta_hyperbolicity,
    estimate_delta,
    gromov_products,
    max_min_product,
    pairwise_euclidean,
    suggest_curvature,
)


# ---------------------------------------------------------------- oracles (float64, plain Python)

def four_point_delta_w(d: np.ndarray, w: int) -> float:
    """max over x, y, z of ½[d(x,y) + d(z,w) − max(d(x,z) + d(y,w), d(y,z) + d(x,w))]."""
    n = len(d)
    best = -math.inf
    for x, y, z in itertools.product(range(n), repeat=3):
        v = 0.5 * (d[x, y] + d[z, w] - max(d[x, z] + d[y, w], d[y, z] + d[x, w]))
        best = max(best, v)
    return best


def four_point_delta(d: np.ndarray) -> float:
    """Gromov's four-point δ: max over quadruples of ½(largest − second largest pair sum)."""
    n = len(d)
    best = 0.0
    for x, y, z, w in itertools.combinations(range(n), 4):
        s = sorted([d[x, y] + d[z, w], d[x, z] + d[y, w], d[x, w] + d[y, z]])
        best = max(best, 0.5 * (s[2] - s[1]))
    return best


def graph_metric(n: int, edges: list[tuple[int, int, float]]) -> np.ndarray:
    g = np.zeros((n, n))
    for i, j, wgt in edges:
        g[i, j] = g[j, i] = wgt
    return shortest_path(g, directed=False)


def cycle_metric(k: int) -> np.ndarray:
    return graph_metric(k, [(i, (i + 1) % k, 1.0) for i in range(k)])


def grid_metric(m: int) -> np.ndarray:
    """Vertices of the (m+1) × (m+1) grid graph: the L1 metric on {0..m}²."""
    pts = np.array([(a, b) for a in range(m + 1) for b in range(m + 1)], dtype=float)
    return np.abs(pts[:, None, :] - pts[None, :, :]).sum(-1)


def random_tree_metric(n: int, rng: np.random.Generator) -> np.ndarray:
    edges = [(i, int(rng.integers(0, i)), float(rng.uniform(0.1, 3.0))) for i in range(1, n)]
    return graph_metric(n, edges)


def t64(d: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(d)).double()


# ---------------------------------------------------------------- the max-min product

@pytest.mark.parametrize("block_size,k_chunk", [(None, None), (1, 1), (7, 1), (16, 5), (64, 64), (13, 100)])
def test_max_min_product_equals_naive_broadcast(block_size, k_chunk):
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 37, 64):
        A = torch.randn(n, n, generator=g)  # not symmetric: the product is general
        naive = torch.minimum(A[:, :, None], A[None, :, :]).amax(1)
        assert torch.equal(max_min_product(A, block_size, k_chunk), naive)


def test_max_min_product_matches_python_loops():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(9, 9))
    ref = np.array([[max(min(a[i, k], a[k, j]) for k in range(9)) for j in range(9)] for i in range(9)])
    assert np.array_equal(max_min_product(t64(a)).numpy(), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_delta_equals_naive_gain_on_random_features(dtype):
    x = torch.randn(150, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    d = pairwise_euclidean(x)
    A = gromov_products(d, 5).to(dtype)
    naive = float((torch.minimum(A[:, :, None], A[None]).amax(1) - A).max())
    for bs in (None, 1, 17, 150):
        dw, drel, diam = delta_hyperbolicity(d, base=5, block_size=bs, dtype=dtype)
        assert dw == pytest.approx(naive, abs=1e-6 if dtype == torch.float32 else 1e-12)
        assert diam == pytest.approx(float(d.max()))
        assert drel == pytest.approx(2 * dw / diam)


# ---------------------------------------------------------------- exact δ of known metrics

def test_tree_metrics_have_zero_delta():
    rng = np.random.default_rng(4)
    for n in (2, 5, 40):
        d = random_tree_metric(n, rng)
        dw, drel, _ = delta_hyperbolicity(t64(d), base=range(n))
        assert abs(dw) < 1e-12 and abs(drel) < 1e-12


def test_collinear_points_are_a_tree():
    x = torch.linspace(-3, 5, 50, dtype=torch.float64)[:, None] * torch.randn(1, 8, dtype=torch.float64)
    assert delta_hyperbolicity(pairwise_euclidean(x), base=[0, 10, 49])[0] < 1e-9


@pytest.mark.parametrize("k", [4, 8, 12, 16, 20])
def test_cycle_closed_form(k):
    """C_{4m}: the equally spaced quadruple has pair sums 2m, 2m, 4m, so δ ≥ m; and any quadruple has
    ½(S1 − max(S2, S3)) ≤ S1/4 ≤ diam/2 = m (S2 + S3 ≥ S1 by the triangle inequality). So δ = k/4,
    and since C_k is vertex-transitive, δ_w = δ at every base point."""
    d = cycle_metric(k)
    for w in (0, k // 3):
        assert delta_hyperbolicity(t64(d), base=w)[0] == k / 4


@pytest.mark.parametrize("k", [3, 5, 6, 7, 9, 10, 11])
def test_cycle_against_four_point_brute_force(k):
    d = cycle_metric(k)
    expected = four_point_delta(d)
    assert four_point_delta_w(d, 0) == pytest.approx(expected)  # vertex-transitive: δ_0 = δ
    assert delta_hyperbolicity(t64(d), base=0)[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_grid_closed_form_and_brute_force(m):
    """{0..m}² with L1: the four corners give pair sums 4m, 2m, 2m, so δ ≥ m = diam/2 ≥ δ."""
    d = grid_metric(m)
    n = len(d)
    assert delta_hyperbolicity(t64(d), base=range(n))[0] == pytest.approx(m, abs=1e-12)
    assert four_point_delta(d) == pytest.approx(m)
    for w in (0, n // 2, n - 1):
        assert delta_hyperbolicity(t64(d), base=w)[0] == pytest.approx(four_point_delta_w(d, w), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_metrics_against_four_point_brute_force(seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(9, 3))
    euclid = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    edges = [(i, j, float(rng.uniform(0.5, 2))) for i in range(9) for j in range(i) if rng.random() < 0.4]
    edges += [(i, i - 1, 3.0) for i in range(1, 9)]  # connected
    for d in (euclid, graph_metric(9, edges)):
        for w in (0, 4, 8):
            assert delta_hyperbolicity(t64(d), base=w)[0] == pytest.approx(four_point_delta_w(d, w), abs=1e-12)
        dw, drel, diam = delta_hyperbolicity(t64(d), base=range(9))
        assert dw == pytest.approx(four_point_delta(d), abs=1e-12)
        assert diam == d.max() and drel == pytest.approx(2 * dw / d.max())
        # a single base point is within a factor 2 of the four-point δ
        single = delta_hyperbolicity(t64(d), base=0)[0]
        assert single <= dw + 1e-12 and dw <= 2 * single + 1e-12


def test_float32_and_float16_distance_matrices():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d = pairwise_euclidean(x)
    exact = four_point_delta_w(d.numpy(), 0)
    assert delta_hyperbolicity(d.float())[0] == pytest.approx(exact, rel=1e-5)
    assert delta_hyperbolicity(torch.cdist(x.float(), x.float()))[0] == pytest.approx(exact, rel=1e-3)
    assert delta_hyperbolicity(d.half())[0] == pytest.approx(exact, rel=2e-2)


# ---------------------------------------------------------------- curvature

def test_suggest_curvature():
    assert suggest_curvature(0.144) == pytest.approx(1.0)
    assert suggest_curvature(0.288) == pytest.approx(0.25)
    assert suggest_curvature(0.3) == pytest.approx((0.144 / 0.3) ** 2)
    assert suggest_curvature(0.0) == math.inf
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="delta_rel"):
            suggest_curvature(bad)


# ---------------------------------------------------------------- the sampling protocol

def test_estimate_delta_follows_the_documented_protocol():
    feats = torch.randn(14, 5, generator=torch.Generator().manual_seed(6))
    est = estimate_delta(feats, n=8, draws=4, seed=11)
    g = torch.Generator().manual_seed(11)
    expected = []
    for _ in range(4):
        idx = torch.randperm(14, generator=g)[:8]
        x = feats[idx].double().numpy()
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        expected.append(2 * four_point_delta_w(d, 0) / d.max())
    assert est.delta_rel_values == pytest.approx(expected, abs=1e-5)
    assert est.delta_rel_mean == pytest.approx(np.mean(expected), abs=1e-5)
    assert est.delta_rel_std == pytest.approx(np.std(expected, ddof=1), abs=1e-5)
    assert est.curvature == pytest.approx((0.144 / est.delta_rel_mean) ** 2)
    assert (est.n, est.draws) == (8, 4)
    assert isinstance(est, DeltaEstimate) and "suggested curvature" in str(est)


def test_estimate_delta_seed_and_base_points():
    feats = torch.randn(12, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a = estimate_delta(feats, n=10, draws=3, seed=0)
    assert a == estimate_delta(feats, n=10, draws=3, seed=0)
    assert a.delta_rel_values != estimate_delta(feats, n=10, draws=3, seed=1).delta_rel_values
    # every base point of the whole set: the four-point δ, identical for every draw
    full = estimate_delta(feats, n=12, draws=2, base_points=12)
    d = pairwise_euclidean(feats).numpy()
    assert full.delta_rel_values == pytest.approx([2 * four_point_delta(d) / d.max()] * 2, abs=1e-5)
    assert full.delta_rel_std == pytest.approx(0.0, abs=1e-6)


def test_features_with_gradients_are_accepted():
    feats = torch.randn(20, 4, requires_grad=True)
    assert estimate_delta(feats * 2, n=10, draws=2).delta_rel_mean > 0


def test_estimate_delta_on_collinear_features_is_tree_like():
    feats = torch.rand(30, 1, dtype=torch.float64) * torch.randn(1, 16, dtype=torch.float64)
    est = estimate_delta(feats, n=20, draws=3)
    assert est.delta_rel_mean < 1e-5 and est.curvature > 1e6


# ---------------------------------------------------------------- bad input

def test_errors_for_bad_distance_matrices():
    d = pairwise_euclidean(torch.randn(6, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        delta_hyperbolicity(d[:, :5])
    with pytest.raises(ValueError, match="square"):
        delta_hyperbolicity(d[0])
    asym = d.clone()
    asym[1, 2] += 1.0
    with pytest.raises(ValueError, match=r"not symmetric: \[1, 2\]"):
        delta_hyperbolicity(asym)
    nan = d.clone()
    nan[3, 4] = nan[4, 3] = math.nan
    with pytest.raises(ValueError, match=r"non-finite entry at \[3, 4\]"):
        delta_hyperbolicity(nan)
    neg = d.clone()
    neg[0, 5] = neg[5, 0] = -1.0
    with pytest.raises(ValueError, match="negative entry"):
        delta_hyperbolicity(neg)
    diag = d + torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="diagonal"):
        delta_hyperbolicity(diag)
    x = torch.arange(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="triangle inequality"):
        delta_hyperbolicity((x[:, None] - x[None]) ** 2)  # squared distances are not a metric
    with pytest.raises(ValueError, match="diameter 0"):
        delta_hyperbolicity(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="out of range"):
        delta_hyperbolicity(d, base=6)
    with pytest.raises(ValueError, match="non-empty"):
        delta_hyperbolicity(d, base=[])
    ref = delta_hyperbolicity(d, base=[1, 3])
    assert delta_hyperbolicity(d, base=np.array([1, 3])) == ref == delta_hyperbolicity(d, base=torch.tensor([1, 3]))
    assert delta_hyperbolicity(d, base=np.int64(2)) == delta_hyperbolicity(d, base=2)
    with pytest.raises(ValueError, match="block_size"):
        delta_hyperbolicity(d, block_size=0)
    with pytest.raises(ValueError, match="floating-point"):
        delta_hyperbolicity(d.long())


def test_duplicate_points_warn_and_match_the_deduplicated_set():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    dup = torch.cat([x, x[[2, 7]]])
    with pytest.warns(RuntimeWarning, match="2 pair"):
        dw, drel, _ = delta_hyperbolicity(pairwise_euclidean(dup), base=range(12))
    ref = delta_hyperbolicity(pairwise_euclidean(x), base=range(10))
    assert (dw, drel) == pytest.approx(ref[:2], abs=1e-12)
    with pytest.warns(RuntimeWarning, match="features: 2 of 12 rows"):
        estimate_delta(dup, n=12, draws=1)


def test_errors_for_bad_features():
    feats = torch.randn(20, 4)
    with pytest.raises(ValueError, match="20 points, fewer than n = 21"):
        estimate_delta(feats, n=21)
    bad = feats.clone()
    bad[13, 2] = math.inf
    bad[17, 0] = math.nan
    with pytest.raises(ValueError, match="2 row.*first: row 13"):
        estimate_delta(bad, n=10)
    with pytest.raises(ValueError, match="2-D"):
        estimate_delta(feats[None], n=10)
    with pytest.raises(ValueError, match="draws"):
        estimate_delta(feats, n=10, draws=0)
    with pytest.raises(ValueError, match="base_points"):
        estimate_delta(feats, n=10, base_points=11)
    with pytest.warns(RuntimeWarning, match="9 of 10 rows"), pytest.raises(ValueError, match="diameter 0"):
        estimate_delta(torch.ones(10, 3), n=5)


def test_no_warning_on_clean_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate_delta(torch.randn(30, 4), n=20, draws=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    feats = torch.randn(300, 32, generator=torch.Generator().manual_seed(9))
    cpu = estimate_delta(feats, n=200, draws=3)
    gpu = estimate_delta(feats, n=200, draws=3, device="cuda")
    assert gpu.delta_rel_values == pytest.approx(cpu.delta_rel_values, abs=1e-5)
    A = torch.randn(70, 70, device="cuda")
    assert torch.equal(max_min_product(A).cpu(), max_min_product(A.cpu()))
