# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Retrieval metrics against a loop-based brute force and pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_hvit.metrics import (DEFAULT_RECALL_KS, RECALL_KS, metrics_from_matches, nmi,
                                   recall_ks_for, retrieval_metrics)

GEOMETRIES = ("poincare", "sphere", "euclidean")
METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "hvit_retrieval"


# ---------------------------------------------------------------- oracle (float64 textbook, loops)
def mobius_add(x, y, c):
    xy, x2, y2 = (x * y).sum(-1, keepdims=True), (x * x).sum(-1, keepdims=True), (y * y).sum(-1, keepdims=True)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def oracle_distance(q, g, geometry, c):
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    if geometry == "poincare":
        return np.stack([2 / np.sqrt(c) * np.arctanh(np.sqrt(c) * np.linalg.norm(mobius_add(-row[None], g, c), axis=-1))
                         for row in q])
    if geometry == "sphere":
        qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1 - qn @ gn.T
    return np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))


def oracle_metrics(q, ql, g, gl, geometry, c, ks, self_mode):
    """Textbook definitions, one query at a time; lone queries skipped."""
    d = oracle_distance(q, g, geometry, c)
    out = {f"recall@{k}": [] for k in ks} | {"precision@1": [], "r_precision": [], "map@r": []}
    for i in range(len(q)):
        cand = [j for j in range(len(g)) if not (self_mode and j == i)]
        order = sorted(cand, key=lambda j: (d[i, j], j))
        rel = [gl[j] == ql[i] for j in order]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        out["precision@1"].append(float(rel[0]))
        out["r_precision"].append(sum(rel[:r]) / r)
        hits, ap = 0, 0.0
        for j in range(r):
            if rel[j]:
                hits += 1
                ap += hits / (j + 1)
        out["map@r"].append(ap / r)
    return {k: float(np.mean(v)) for k, v in out.items()}


def clustered(n_classes, sizes, dim, c, seed, spread=0.6):
    """Ball points around random class centres (so metrics are neither 0 nor 1)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), sizes)
    centres = rng.normal(size=(n_classes, dim))
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(0.1, 0.62, (len(x), 1)) / np.sqrt(c)
    perm = rng.permutation(len(labels))
    return x[perm], labels[perm]


# ---------------------------------------------------------------- brute force
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_self_retrieval_matches_brute_force(geometry):
    c = 0.1
    sizes = np.random.default_rng(0).integers(1, 7, size=30)  # includes lone (size-1) classes
    x, y = clustered(30, sizes, 8, c, seed=1)
    ks = (1, 2, 4, 8)
    with pytest.warns(UserWarning, match="no same-class gallery item"):
        got = retrieval_metrics(torch.from_numpy(x), y, geometry, c, ks, block_size=17,
                                gallery_block_size=23, exact=True)
    want = oracle_metrics(x, y, x, y, geometry, c, ks, self_mode=True)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["recall@1"] < 1


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_query_gallery_matches_brute_force(geometry):
    c = 0.3
    x, y = clustered(12, 6, 5, c, seed=2)
    q, ql, g, gl = x[:25], y[:25], x[25:], y[25:]
    ks = (1, 10, 20)
    got = retrieval_metrics(q, ql, geometry, c, ks, gallery=g, gallery_labels=gl, exact=True,
                            block_size=8)
    want = oracle_metrics(q, ql, g, gl, geometry, c, ks, self_mode=False)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("gallery_block_size", [65536, 5])
def test_ties_follow_lower_gallery_index(gallery_block_size):
    # integer grid with duplicate points and three classes interleaved: ranks hinge on tie-breaking
    pts = np.array([[a, b] for a in range(4) for b in range(3)] * 2, dtype=np.float64)
    labels = np.arange(len(pts)) % 3
    ks = (1, 2, 3, 5, 9)
    got = retrieval_metrics(pts, labels, "euclidean", ks=ks, exact=True, block_size=7,
                            gallery_block_size=gallery_block_size)
    want = oracle_metrics(pts, labels, pts, labels, "euclidean", 1.0, ks, self_mode=True)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_metrics_from_matches_by_hand():
    # query 0: hits at ranks 2 and 3, R = 2  -> R-Prec 1/2, MAP@R (0 + 1/2)/2, recall@1 0, @2 1
    # query 1: hit at rank 1, R = 1          -> everything 1
    m = torch.tensor([[False, True, True], [True, False, False]])
    got = metrics_from_matches(m, torch.tensor([2, 1]), ks=(1, 2))
    assert got == pytest.approx({"recall@1": 0.5, "recall@2": 1.0, "precision@1": 0.5,
                                 "r_precision": 0.75, "map@r": 0.625})


def test_string_labels():
    x, y = clustered(3, 3, 4, 0.1, seed=3)
    names = np.array(["bird", "car", "shoe"])[y]
    assert retrieval_metrics(x, names, ks=(1, 2)) == retrieval_metrics(x, y, ks=(1, 2))


# ---------------------------------------------------------------- pytorch-metric-learning
def _pml_knn(geometry, c):
    def knn_func(query, k, reference, ref_includes_query):
        d = torch.from_numpy(oracle_distance(query.cpu().numpy(), reference.cpu().numpy(), geometry, c))
        if ref_includes_query:  # PML drops column 0; put self there by index
            d[torch.arange(len(query)), torch.arange(len(query))] = -1.0
            k = k + 1
        idx = torch.from_numpy(np.stack([np.lexsort((np.arange(d.shape[1]), row))[:k] for row in d.numpy()]))
        dist = d.gather(1, idx)
        return (dist[:, 1:], idx[:, 1:]) if ref_includes_query else (dist, idx)
    return knn_func


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("self_mode", [True, False])
def test_against_pytorch_metric_learning(geometry, self_mode):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    c = 0.1
    sizes = np.random.default_rng(4).integers(1, 8, size=25)
    x, y = clustered(25, sizes, 8, c, seed=5)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"),
                              knn_func=_pml_knn(geometry, c))
    if self_mode:
        pml = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
        with pytest.warns(UserWarning):
            ours = retrieval_metrics(x, y, geometry, c, (1,), exact=True)
    else:
        q, ql, g, gl = x[:40], y[:40], x[40:], y[40:]
        pml = calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(g),
                                torch.from_numpy(gl), ref_includes_query=False)
        with pytest.warns(UserWarning):
            ours = retrieval_metrics(q, ql, geometry, c, (1,), gallery=g, gallery_labels=gl, exact=True)
    assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)


def test_nmi_against_pml_with_sklearn_kmeans():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from sklearn.cluster import KMeans

    x, y = clustered(6, 10, 8, 0.1, seed=6, spread=0.3)

    def kmeans(emb, n):
        return torch.from_numpy(KMeans(n_clusters=n, n_init=1, random_state=0).fit_predict(emb.numpy()))

    calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"), kmeans_func=kmeans)
    pml = calc.get_accuracy(torch.from_numpy(x).float(), torch.from_numpy(y))["NMI"]
    ours = retrieval_metrics(x.astype(np.float32), y, "euclidean", include=("nmi",))["nmi"]
    assert ours == pytest.approx(pml, abs=1e-9)
    # well-separated classes cluster perfectly
    sep = np.repeat(np.eye(4) * 100, 5, 0) + np.random.default_rng(0).normal(size=(20, 4))
    assert nmi(sep, np.repeat(np.arange(4), 5), "euclidean") == pytest.approx(1.0)


# ---------------------------------------------------------------- tables and errors
def test_recall_ks_table():
    assert RECALL_KS["cub"] == RECALL_KS["cars"] == (1, 2, 4, 8, 16, 32)
    assert RECALL_KS["sop"] == (1, 10, 100, 1000)
    assert RECALL_KS["inshop"] == (1, 10, 20, 30, 40, 50)
    assert recall_ks_for("CUB-200-2011") == RECALL_KS["cub"]
    assert recall_ks_for("In-Shop") == RECALL_KS["inshop"]
    assert recall_ks_for("demo") == recall_ks_for(None) == DEFAULT_RECALL_KS


def test_errors_are_clear():
    x, y = clustered(3, 3, 4, 0.1, seed=7)
    with pytest.raises(ValueError, match="9 query embeddings but 8 labels"):
        retrieval_metrics(x, y[:8])
    with pytest.raises(ValueError, match="unknown metrics"):
        retrieval_metrics(x, y, include=("recall", "auc"))
    with pytest.raises(ValueError, match="no query has a same-class"):
        retrieval_metrics(x[:3], np.arange(3))
    with pytest.raises(ValueError, match="gallery_labels"):
        retrieval_metrics(x, y, gallery=x)


@pytest.mark.parametrize("backend", ["blocked", "faiss"])
def test_backends_agree_on_metrics(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    x, y = clustered(40, 5, 16, 0.1, seed=8)
    base = retrieval_metrics(x, y, ks=(1, 4, 16), exact=True)
    got = retrieval_metrics(x.astype(np.float32), y, ks=(1, 4, 16), backend=backend)
    for key in base:
        assert got[key] == pytest.approx(base[key], abs=1e-9), key


# ---------------------------------------------------------------- evaluate module
def test_evaluate_module_loads_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(METRIC_DIR))
    x, y = clustered(8, 4, 6, 0.1, seed=9)
    got = metric.compute(predictions=x.astype(np.float32), references=y, geometry="poincare",
                         curvature=0.1, ks=[1, 2])
    want = retrieval_metrics(x.astype(np.float32), y, "poincare", 0.1, (1, 2))
    assert got == pytest.approx(want, abs=1e-6)
    for i in range(0, len(x), 10):  # batched accumulation gives the same result
        metric.add_batch(predictions=x[i:i + 10].astype(np.float32), references=y[i:i + 10])
    assert metric.compute(ks=[1, 2]) == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------- block-size independence (issue 12.5)
def duplicated_set(seed: int, n: int = 60, dim: int = 12):
    """float32 points with many exact duplicates (a third of the rows copied over others)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, dim)) * 0.5).astype(np.float32)
    x[rng.integers(0, n, n // 3)] = x[rng.integers(0, n, n // 3)]
    return torch.from_numpy(x), rng.integers(0, 8, n)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_metrics_do_not_depend_on_block_sizes(geometry):
    blocks = [(1024, 65536), (1, 65536), (7, 65536), (1024, 1), (5, 3), (1, 7)]
    for seed in range(3):
        x, y = duplicated_set(seed)
        runs = [retrieval_metrics(x, y, geometry, 0.1, (1, 2, 4), block_size=b, gallery_block_size=gb)
                for b, gb in blocks]
        for (b, gb), got in zip(blocks, runs):
            assert got == runs[0], (seed, b, gb)  # bit for bit, every metric
            assert got["recall@1"] == got["precision@1"]
        # and the float32 ranking is the float64 one (duplicates tie, lower index first)
        assert runs[0] == pytest.approx(oracle_metrics(x, y, x, y, geometry, 0.1, (1, 2, 4), True), abs=1e-12)


def test_recall_k_at_or_beyond_gallery_is_dropped_with_a_warning():
    from modeling_hvit.metrics import usable_recall_ks

    assert usable_recall_ks((8, 1, 4, 9), 8) == ((1, 4), (8, 9))
    x, y = clustered(3, 3, 4, 0.1, seed=3)  # 9 items: 8 others per query
    with pytest.warns(UserWarning, match=r"Recall@K dropped for K = 8, 1000: K ≥ the 8 gallery items"):
        got = retrieval_metrics(x, y, ks=(1, 8, 1000))
    assert "recall@1" in got and "recall@8" not in got and "recall@1000" not in got
    q, g = x[:4], x[4:]
    with pytest.warns(UserWarning, match="K = 5: K ≥ the 5 gallery items"):
        got = retrieval_metrics(q, y[:4], ks=(1, 4, 5), gallery=g, gallery_labels=y[4:])
    assert {k for k in got if k.startswith("recall")} == {"recall@1", "recall@4"}
