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


# -- the hand-written backward of pairwise_distance --------------------------------------------------------------

def textbook_pairwise(x_s, y_s, c, same=False):
    """(1/√c)·arcosh(−c⟨x, y⟩_L) with x₀ = √(1/c + ‖x_s‖²), plain autograd (the diagonal of x vs x held at 0)."""
    x0, y0 = (1 / c + x_s.pow(2).sum(-1)).sqrt(), (1 / c + y_s.pow(2).sum(-1)).sqrt()
    z = c * (x0[:, None] * y0 - x_s @ y_s.T)
    if same:
        eye = torch.eye(len(x_s), dtype=torch.bool)
        return torch.where(eye, 0, torch.acosh(torch.where(eye, 2, z))) / c**0.5
    return torch.acosh(z) / c**0.5


def _separated_points(n, d=5, seed=11, near=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    x = L.expmap0(v * 4.6 * torch.rand(n, 1, generator=g, dtype=torch.float64), C)  # up to the clip radius's reach
    if near:
        x[:near] = x[near: 2 * near] + 1e-2 * torch.randn(near, d, generator=g, dtype=torch.float64)
    return x


@pytest.mark.parametrize("same", [False, True], ids=["x_vs_y", "x_vs_x"])
def test_pairwise_backward_equals_autograd_of_the_textbook_formula_float64(same):
    x = _separated_points(14, near=3)
    y = x if same else _separated_points(9, seed=12)
    w = torch.randn(len(x), len(y), dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    grads = []
    for fn in (lambda a, b, c: L.pairwise_distance(a, a if same else b, c),
               lambda a, b, c: textbook_pairwise(a, a if same else b, c, same)):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        c = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        (fn(a, b, c) * w).sum().backward()
        grads.append((a.grad, None if same else b.grad, c.grad))
    for got, want in zip(*grads):
        if want is not None:
            assert want.abs().max() > 1e-2
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    # and against finite differences, in x, y and c; a Python c gives the same x, y gradients
    c = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    if same:
        assert torch.autograd.gradcheck(lambda a, c: L.pairwise_distance(a, a, c), (a, c))
    else:
        assert torch.autograd.gradcheck(lambda a, b, c: L.pairwise_distance(a, b, c), (a, b, c))
    (L.pairwise_distance(a, a if same else b, 0.3) * w).sum().backward()
    torch.testing.assert_close(a.grad, grads[0][0], rtol=1e-12, atol=1e-14)


def test_pairwise_float32_gradients_match_the_float64_oracle_at_near_pairs():
    """float32 points, pairs from 1e-4 apart to the far end: the hand-written backward accumulates the cancelling
    terms in float64, so each point's gradient is within float32 rounding of the float64 textbook one."""
    n = 240
    x = _separated_points(n, d=64, seed=14)
    y = _separated_points(n, d=64, seed=15)
    scale = 10 ** torch.linspace(-4, -1, n // 3, dtype=torch.float64)[:, None]
    g = torch.Generator().manual_seed(16)
    y[: n // 3] = x[: n // 3] + scale * torch.randn(n // 3, 64, dtype=torch.float64, generator=g) / 8
    x32, y32 = x.float(), y.float()
    w = torch.randn(n, n, dtype=torch.float64, generator=g)
    a, b = x32.double().requires_grad_(), y32.double().requires_grad_()
    cref = torch.tensor(C, dtype=torch.float64, requires_grad=True)
    (textbook_pairwise(a, b, cref) * w).sum().backward()
    a32, b32 = x32.clone().requires_grad_(), y32.clone().requires_grad_()
    c32 = torch.tensor(C, requires_grad=True)
    (L.pairwise_distance(a32, b32, c32) * w.float()).sum().backward()
    for got, want in ((a32.grad, a.grad), (b32.grad, b.grad)):
        assert float(((got.double() - want).norm(dim=-1) / want.norm(dim=-1)).max()) <= 2e-6
    assert float(c32.grad) == pytest.approx(float(cref.grad), rel=1e-5)
