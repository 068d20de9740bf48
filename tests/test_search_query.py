"""Search: exact top-k and range search equal a float64 brute-force ranking (textbook formulas)."""

import numpy as np
import pytest
import torch

from modeling_hvit.search import HViTIndex, range_search, semantic_search
from modeling_hvit.search.embedder import Embedder
from modeling_hvit.search.vectors import faiss_available

C = 0.1


def brute_distances(q: np.ndarray, g: np.ndarray, geometry: str) -> np.ndarray:
    """Float64 textbook distances (numpy only): arcosh form for the ball, 1 − cos, L2."""
    q, g = q.astype(np.float64), g.astype(np.float64)
    if geometry == "poincare":
        sq = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
        den = (1 - C * (q**2).sum(1))[:, None] * (1 - C * (g**2).sum(1))[None, :]
        return np.arccosh(1 + 2 * C * sq / den) / np.sqrt(C)
    if geometry == "sphere":
        qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1 - qn @ gn.T
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


def random_points(n: int, dim: int, geometry: str, seed: int) -> torch.Tensor:
    """Random points with planted near-duplicates (tiny offsets: the float32 stress case) and, for
    the ball, points close to the boundary (large Lorentz coordinates)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    if geometry == "poincare":
        r = torch.rand(n, 1, generator=g, dtype=torch.float64) ** 0.5 * 0.995 / np.sqrt(C)
        x = x / x.norm(dim=1, keepdim=True) * r
    m = min(40, n // 4)
    x[n // 2: n // 2 + m] = x[:m] + 1e-4 * torch.randn(m, dim, generator=g, dtype=torch.float64)
    return x.float()


@pytest.mark.parametrize("use_faiss", [True, False] if faiss_available() else [False])
@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_exact_topk_equals_float64_brute_force(geometry, use_faiss, tmp_path):
    gallery = random_points(600, 16, geometry, seed=1)
    queries = torch.cat([random_points(30, 16, geometry, seed=2), gallery[:20]])  # incl. exact/near matches
    emb_by_id = {f"g{i}": gallery[i] for i in range(len(gallery))}
    from modeling_hvit.search.sources import Item

    items = [Item(id=f"g{i}", loader=lambda: None) for i in range(len(gallery))]
    embedder = Embedder(lambda ims: None, geometry=geometry, curvature=C if geometry == "poincare" else None)
    embedder.embed_items = lambda batch: (torch.stack([emb_by_id[it.id] for it in batch]), list(range(len(batch))), [])
    index = HViTIndex.build(items, tmp_path / "ix", embedder=embedder, shard_size=250, use_faiss=use_faiss)
    assert index.manifest["index"]["backend"] == ("faiss" if use_faiss else "torch")
    index = HViTIndex.load(tmp_path / "ix", use_faiss=use_faiss)
    k = 10
    results = index.search(queries, k)
    ref = brute_distances(queries.numpy(), gallery.numpy(), geometry)
    for r, hits in enumerate(results):
        order = np.lexsort((np.arange(len(gallery)), ref[r]))[:k]
        assert [h["corpus_id"] for h in hits] == order.tolist()
        np.testing.assert_allclose([h["distance"] for h in hits], ref[r, order], rtol=1e-6, atol=1e-9)
        assert hits[0]["id"] == f"g{order[0]}"


@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_range_search_equals_brute_force(geometry):
    gallery = random_points(500, 8, geometry, seed=3)
    queries = gallery[:25] + 1e-3
    ref = brute_distances(queries.numpy(), gallery.numpy(), geometry)
    radius = float(np.quantile(ref, 0.02))
    out = range_search(queries, gallery, radius, geometry=geometry, curvature=C)
    for r, hits in enumerate(out):
        want = np.nonzero(ref[r] <= radius)[0]
        want = want[np.lexsort((want, ref[r, want]))]
        assert [h["corpus_id"] for h in hits] == want.tolist()
        np.testing.assert_allclose([h["distance"] for h in hits], ref[r, want], rtol=1e-6, atol=1e-9)


def test_tensor_corpus_topk_and_k_clamp():
    gallery = random_points(50, 8, "poincare", seed=4)
    ref = brute_distances(gallery[:3].numpy(), gallery.numpy(), "poincare")
    out = semantic_search(gallery[:3], gallery, top_k=5, geometry="poincare", curvature=C)
    assert [[h["corpus_id"] for h in hits] for hits in out] == np.argsort(ref, 1)[:, :5].tolist()
    with pytest.warns(UserWarning, match="larger than the index"):
        out = semantic_search(gallery[:1], gallery, top_k=80, geometry="poincare", curvature=C)
    assert len(out[0]) == 50
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        semantic_search(gallery[:1], gallery, top_k=0, geometry="poincare", curvature=C)
    with pytest.raises(ValueError, match=r"query embeddings must be \(n, 8\)"):
        semantic_search(torch.zeros(1, 5), gallery, geometry="poincare", curvature=C)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_kinds_recall(kind, tmp_path):
    # ball points as a model makes them (clip → expmap0), in clusters; saved and reloaded
    from modeling_hvit.hyperbolic import clip_features, expmap0
    from modeling_hvit.search.vectors import VectorIndex

    g = torch.Generator().manual_seed(5)
    centers = torch.randn(50, 16, generator=g)
    z = centers[torch.randint(0, 50, (2000,), generator=g)] + 0.5 * torch.randn(2000, 16, generator=g)
    gallery = expmap0(clip_features(z, 2.3), C)

    vec = VectorIndex("poincare", C, 16, kind, nlist=16, nprobe=16, pq_m=4)
    vec.add(gallery)
    path = tmp_path / "v.faiss"
    record = vec.save(path)
    again = VectorIndex("poincare", C, 16, kind, nlist=16, nprobe=16, pq_m=4)
    again.load_faiss(path, record)
    q = gallery[:50] + 1e-3
    ref = np.argsort(brute_distances(q.numpy(), gallery.numpy(), "poincare"), 1)[:, :10]
    _, cand = again.candidates(q, 40)
    recall = np.mean([len(set(ref[i]) & set(cand[i].tolist())) / 10 for i in range(len(q))])
    assert recall >= (0.9 if kind != "ivfpq" else 0.6), recall


@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_exact_topk_below_float32_resolution(geometry):
    """A tight cluster (offsets ~1e-6 around a point near the ball's edge): float32 inner products
    cannot order it, the result must still be the float64 ranking."""
    g = torch.Generator().manual_seed(7)
    center = torch.randn(1, 8, generator=g, dtype=torch.float64)
    center = center / center.norm() * 0.9 / np.sqrt(C) if geometry == "poincare" else center * 3
    # 1 − cos of 1e-6 offsets is below float64's own resolution, so the sphere cluster is wider (still
    # far below float32's ~1e-7 on cos)
    spread = 3e-4 if geometry == "sphere" else 1e-6
    cluster = center + spread * torch.randn(150, 8, generator=g, dtype=torch.float64)  # > the 64 candidates
    far = random_points(200, 8, geometry, seed=8).double()
    gallery = torch.cat([far[:100], cluster, far[100:]]).float()
    q = (center + 1e-7).float()
    ref = brute_distances(q.numpy(), gallery.numpy(), geometry)[0]
    hits = semantic_search(q, gallery, top_k=10, geometry=geometry, curvature=C)[0]
    assert [h["corpus_id"] for h in hits] == np.lexsort((np.arange(len(gallery)), ref))[:10].tolist()


@pytest.mark.skipif(not faiss_available(), reason="needs faiss")
def test_many_queries_split_over_threads_equal_brute_force():
    """Batches go to FAISS's matrix-product path, split over Python threads: same result as brute force."""
    from modeling_hvit.search.vectors import VectorIndex

    gallery = random_points(3000, 16, "poincare", seed=5)
    queries = torch.cat([random_points(190, 16, "poincare", seed=6), gallery[:10]])
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 3 workers of 66-67 queries each (even on a 1-thread test run)
    try:
        vec = VectorIndex("poincare", C, 16, "flat", use_faiss=True)
        vec.add(gallery)
        _, got = vec.candidates(queries, 28)
        hits = semantic_search(queries, gallery, top_k=10, geometry="poincare", curvature=C)
    finally:
        torch.set_num_threads(threads)
    ref = brute_distances(queries.numpy(), gallery.numpy(), "poincare")
    order = np.lexsort((np.broadcast_to(np.arange(len(gallery)), ref.shape), ref), axis=1)
    assert [[h["corpus_id"] for h in r] for r in hits] == order[:, :10].tolist()
    # the float32 candidates hold every true top-10 item
    assert all(set(order[r, :10]) <= set(got[r].tolist()) for r in range(len(queries)))


@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_features_in_blocks_equal_one_block(geometry, monkeypatch):
    from modeling_hvit.search import scoring

    x = random_points(50, 6, geometry, seed=9)
    whole = {side: scoring.features(x, geometry, C, side) for side in ("gallery", "query")}
    monkeypatch.setattr(scoring, "FEATURE_BLOCK", 7)  # 8 blocks, the last one short
    for side, want in whole.items():
        torch.testing.assert_close(scoring.features(x, geometry, C, side), want, rtol=0, atol=0)
