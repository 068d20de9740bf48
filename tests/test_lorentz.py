"""Hyperboloid functions against float64 oracles: the ball's textbook distance through the isometry,
geoopt's Lorentz manifold, and their stated accuracy and gradient guarantees."""

import math

import geoopt
import numpy as np
import pytest
import torch

from modeling_hvit import hyperbolic as H
from modeling_hvit import lorentz as L

C = 0.1


def np_ball_dist(x, y, c):
    """Textbook Möbius-form ball distance in float64 (SPEC §1)."""
    xy, x2, y2 = (-x * y).sum(-1, keepdims=True), (x * x).sum(-1, keepdims=True), (y * y).sum(-1, keepdims=True)
    m = ((1 + 2 * c * xy + c * y2) * -x + (1 - c * x2) * y) / (1 + 2 * c * xy + c**2 * x2 * y2)
    return 2 / math.sqrt(c) * np.arctanh(math.sqrt(c) * np.linalg.norm(m, axis=-1))


def ball_points(n, d=64, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return H.expmap0(H.clip_features(torch.randn(n, d, generator=g, dtype=dtype) * scale, 2.3), C)


def test_points_lie_on_the_hyperboloid():
    xs = L.expmap0(torch.randn(50, 16, dtype=torch.float64) * 2, C)
    x0 = L.time_component(xs, C)
    torch.testing.assert_close(-x0**2 + xs.pow(2).sum(-1), torch.full((50,), -1 / C, dtype=torch.float64))
    torch.testing.assert_close(L.inner(xs, xs, C), torch.full((50,), -1 / C, dtype=torch.float64))


def test_conversions_are_inverse_and_match_the_ball_lift():
    p = ball_points(100)
    xs = L.ball_to_hyperboloid(p, C)
    torch.testing.assert_close(L.hyperboloid_to_ball(xs, C), p, rtol=1e-12, atol=1e-12)
    lifted = H.to_lorentz(p, C)  # [x₀, x_s] of the existing ball → hyperboloid lift
    torch.testing.assert_close(xs, lifted[:, 1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(L.time_component(xs, C), lifted[:, 0], rtol=1e-10, atol=1e-10)


def test_expmap_conventions_and_logmap():
    v = torch.randn(40, 8, dtype=torch.float64)
    torch.testing.assert_close(L.ball_to_hyperboloid(H.expmap0(v, C), C), L.expmap0(2 * v, C), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(L.logmap0(L.expmap0(v, C), C), v, rtol=1e-9, atol=1e-9)
    origin = torch.zeros(1, 8, dtype=torch.float64)
    torch.testing.assert_close(L.distance(origin, L.expmap0(v, C), C), v.norm(dim=-1), rtol=1e-9, atol=1e-9)


def test_distance_equals_ball_distance_through_the_isometry_float32():
    p, q = ball_points(400, seed=1), ball_points(400, seed=2)
    scale = 10 ** torch.linspace(-6, -1, 100, dtype=torch.float64)[:, None]
    q[:100] = p[:100] + scale * torch.randn(100, 64, dtype=torch.float64) / 8  # near pairs at every scale
    q = H.project(q, C)
    ref = np_ball_dist(p.numpy(), q.numpy(), C)
    xs, ys = L.ball_to_hyperboloid(p, C).float(), L.ball_to_hyperboloid(q, C).float()
    got = L.distance(xs, ys, C).double().numpy()
    far = ref >= 1e-2
    assert far.sum() >= 300 and (~far).sum() >= 50
    assert np.max(np.abs(got[far] - ref[far]) / ref[far]) <= 1e-5
    # near pairs: no worse than the Poincaré closed form on the same float32 ball points
    ball = H.distance(p.float(), q.float(), C).double().numpy()
    near = ~far
    if near.any():
        assert np.max(np.abs(got[near] - ref[near])) <= max(1e-6, 1.5 * np.max(np.abs(ball[near] - ref[near])))


def test_pairwise_distance_matches_elementwise_and_geoopt():
    p, q = ball_points(30, d=16, seed=3), ball_points(20, d=16, seed=4)
    xs, ys = L.ball_to_hyperboloid(p, C), L.ball_to_hyperboloid(q, C)
    mat = L.pairwise_distance(xs.float(), ys.float(), C).double()
    ref = np_ball_dist(p.numpy()[:, None], q.numpy()[None], C)
    np.testing.assert_allclose(mat.numpy(), ref, rtol=1e-5, atol=1e-6)
    manifold = geoopt.manifolds.Lorentz(k=1 / C)  # −x₀² + ‖x‖² = −k
    full = lambda z: torch.cat([L.time_component(z, C)[:, None], z], -1)  # noqa: E731
    np.testing.assert_allclose(manifold.dist(full(xs)[:, None], full(ys)[None]).numpy(), ref, rtol=1e-6)
    self_d = L.pairwise_distance(xs.float(), c=C)
    assert torch.all(self_d.diagonal() == 0)


def test_inner_product_search_is_exact_nearest_neighbour():
    g = L.ball_to_hyperboloid(ball_points(500, d=16, seed=5), C)
    q = L.ball_to_hyperboloid(ball_points(20, d=16, seed=6), C)
    by_ip = (L.query_features(q, C) @ L.gallery_features(g, C).T).argmax(1)
    by_d = L.pairwise_distance(q, g, C).argmin(1)
    assert torch.equal(by_ip, by_d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_finite_at_origin_large_norms_and_coincident_points(dtype):
    v = torch.cat([torch.zeros(2, 8), torch.randn(4, 8) * 1e3, torch.randn(4, 8)]).to(dtype).requires_grad_()
    xs = L.expmap0(v, C)
    d = L.pairwise_distance(xs, c=C) + L.distance(xs, xs.detach().flip(0), C).sum()
    d.sum().backward()
    assert xs.dtype == torch.float32 and torch.isfinite(d).all() and torch.isfinite(v.grad).all()


def test_invalid_curvature_is_rejected():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="curvature"):
            L.expmap0(torch.ones(1, 2), bad)


# -- the Lorentz head (geometry="lorentz") through the model, loss and retrieval ------------------------------

def _heads(n=200, seed=7):
    """A Poincaré and a Lorentz HViT head with the same weights, features that reach the clip radius, and the
    float64 textbook oracle of the Poincaré head (Linear → clip(2.3) → tanh expmap0)."""
    from modeling_hvit import HViTConfig, HViTModel

    bb = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
          "intermediate_size": 37, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    ball = HViTModel(HViTConfig(backbone_config=bb, embedding_dim=16)).eval()
    hyp = HViTModel(HViTConfig(backbone_config=bb, embedding_dim=16, geometry="lorentz")).eval()
    hyp.load_state_dict(ball.state_dict())
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, 32, generator=g) * torch.logspace(-2, 0.5, n)[:, None]  # inside and beyond r
    f[: n // 4] = f[n // 4: n // 2] + 1e-3 * torch.randn(n // 4, 32, generator=g)  # near pairs
    z = f.double() @ ball.head.weight.double().T + ball.head.bias.double()
    z = z * torch.clamp(2.3 / z.norm(dim=-1, keepdim=True), max=1.0)
    n_ = z.norm(dim=-1, keepdim=True)
    p64 = torch.tanh(C**0.5 * n_) * z / (C**0.5 * n_)
    return ball, hyp, f, p64.detach()


def test_lorentz_head_equals_poincare_head_through_the_isometry():
    ball, hyp, f, p64 = _heads()
    with torch.no_grad():
        p, xs = ball.project(f), hyp.project(f)
    assert xs.dtype == torch.float32
    # same point: the hyperboloid's space components are the ball point's image (2v convention)
    torch.testing.assert_close(L.hyperboloid_to_ball(xs.double(), C), p64, rtol=1e-5, atol=1e-6)
    ref = np_ball_dist(p64.numpy()[:, None], p64.numpy()[None], C)
    # and the same distances, from the float32 embeddings of either head (loss/similarity path)
    from modeling_hvit.distances import pairwise_similarity

    d_hyp = -pairwise_similarity(xs, geometry="lorentz", curvature=C).double().numpy()
    d_ball = -pairwise_similarity(p, geometry="poincare", curvature=C).double().numpy()
    far = ref >= 1e-2
    assert far.sum() > 1000 and (~far & (ref > 0)).sum() > 0 and ref.max() > 6  # both regimes, up to the clip radius
    assert np.max(np.abs(d_hyp[far] - ref[far]) / ref[far]) <= 1e-5
    near = ~far
    assert np.max(np.abs(d_hyp[near] - ref[near])) <= max(1e-6, 1.5 * np.max(np.abs(d_ball[near] - ref[near])))
    # the distance range of the two heads is the same (c = 0.1, r = 2.3 → at most 2·2.3 from the origin)
    origin = torch.zeros(1, 16)
    assert L.distance(origin, xs, C).max() <= 4.6 + 1e-4


def test_lorentz_retrieval_equals_brute_force_float64_ranking():
    from modeling_hvit.retrieval import knn

    _, hyp, f, p64 = _heads(n=300, seed=8)
    with torch.no_grad():
        xs = hyp.project(f)
    ref = torch.from_numpy(np_ball_dist(p64.numpy()[:, None], p64.numpy()[None], C))
    ref.fill_diagonal_(float("inf"))
    ref_d, ref_i = torch.sort(ref, dim=1, stable=True)
    backends = [dict(exact=True), dict(exact=False)]
    try:
        import faiss  # noqa: F401

        backends.append(dict(backend="faiss"))
    except ImportError:
        pass
    for kw in backends:
        sim, idx = knn(xs, k=10, geometry="lorentz", curvature=C, **kw)
        # returned as −d; float32 scoring resolves d to ≈ 5e-6/d (retrieval.py), float64 to the embeddings' rounding
        ok = ref_d[:, :10] >= (1e-2 if kw.get("exact") else 0.1)
        assert ok.float().mean() > 0.9
        torch.testing.assert_close(-sim.double()[ok], ref_d[:, :10][ok], rtol=1e-5 if kw.get("exact") else 1e-4,
                                   atol=1e-6)
        far = ref_d[:, 1:11] - ref_d[:, :10] > 1e-4  # ranks that float32 must resolve
        assert (idx == ref_i[:, :10])[far[:, :10] | (torch.arange(10) == 0)].float().mean() > 0.999, kw
        assert torch.equal(idx[:, 0], ref_i[:, 0]), kw
    # a query/gallery split gives the same answers
    sim2, idx2 = knn(xs[:50], xs[50:], k=5, geometry="lorentz", curvature=C, exact=True)
    ref2 = torch.from_numpy(np_ball_dist(p64[:50].numpy()[:, None], p64[50:].numpy()[None], C))
    torch.testing.assert_close(-sim2.double(), ref2.sort(1).values[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lorentz_loss_gradients_finite_at_origin_large_norms_and_clip_radius(dtype):
    from modeling_hvit.losses import PairwiseCrossEntropyLoss

    _, hyp, _, _ = _heads(n=8)
    w = hyp.head.weight.detach()
    pinv = torch.linalg.pinv(w)  # features whose head output z is chosen
    bias = hyp.head.bias.detach()
    z = torch.cat([torch.zeros(4, 16),  # the origin (two coincident classes)
                   torch.randn(4, 16) * 1e4,  # far beyond the clip radius
                   torch.nn.functional.normalize(torch.randn(4, 16), dim=-1) * 2.3 * (1 - 1e-6)])  # at r
    f = ((z - bias) @ pinv.T).to(dtype).requires_grad_()
    labels = torch.arange(6).repeat_interleave(2)
    loss_fn = PairwiseCrossEntropyLoss("lorentz", curvature=C)
    assert loss_fn.temperature == 0.2
    out = loss_fn(hyp.train().project(f), labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(f.grad).all()
    assert torch.isfinite(hyp.head.weight.grad).all() and hyp.head.weight.grad.abs().sum() > 0


def test_lorentz_card_code_and_disk_plot_coordinates():
    from modeling_hvit.hub_card import _geometry
    from modeling_hvit.visualize import disk_coordinates

    text = _geometry({"geometry": "lorentz", "curvature": C, "clip_radius": 2.3})
    assert "hyperboloid" in text["geometry_text"] and "Lorentz" in text["geometry_short"]
    scope = {"torch": torch}
    exec(text["distance_code"], scope)  # the snippet a card reader copies
    p = ball_points(20, d=8, seed=9)
    xs = L.ball_to_hyperboloid(p, C)
    np.testing.assert_allclose(scope["lorentz_distance"](xs, xs, C).numpy(),
                               np_ball_dist(p.numpy()[:, None], p.numpy()[None], C), rtol=1e-6, atol=1e-6)
    p2 = ball_points(10, d=2, seed=10)  # 2-d points are drawn directly: the ball point scaled onto the unit disk
    np.testing.assert_allclose(disk_coordinates(L.ball_to_hyperboloid(p2, C).numpy(), "lorentz", C),
                               p2.numpy() * C**0.5, rtol=1e-9, atol=1e-12)
