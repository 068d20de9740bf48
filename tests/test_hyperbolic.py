"""Poincaré-ball functions against float64 textbook formulas, geoopt, and their stated guarantees."""

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_hvit import hyperbolic as H
from modeling_hvit.distances import pairwise_similarity

C = 0.1


# ---- independent float64 oracles (numpy, Möbius form of SPEC §1) --------------------------------
def np_mobius_add(x, y, c):
    xy, x2, y2 = (x * y).sum(-1, keepdims=True), (x * x).sum(-1, keepdims=True), (y * y).sum(-1, keepdims=True)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c**2 * x2 * y2)


def np_dist(x, y, c):
    return 2 / math.sqrt(c) * np.arctanh(math.sqrt(c) * np.linalg.norm(np_mobius_add(-x, y, c), axis=-1))


def np_expmap0(v, c):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.tanh(math.sqrt(c) * n) * v / (math.sqrt(c) * n)


def ball_points(n, d=128, seed=0, scale=3.0):
    """Random points as the model makes them: clipped at r = 2.3, then expmap0."""
    g = torch.Generator().manual_seed(seed)
    return H.expmap0(H.clip_features(torch.randn(n, d, generator=g) * scale, 2.3), C)


# ---- textbook formulas --------------------------------------------------------------------------
def test_mobius_add_matches_textbook():
    x, y = ball_points(50, 16, 1).double(), ball_points(50, 16, 2).double()
    np.testing.assert_allclose(H.mobius_add(x, y, C).numpy(), np_mobius_add(x.numpy(), y.numpy(), C), rtol=1e-12)


def test_expmap0_matches_textbook_and_distance_to_origin():
    v = torch.randn(40, 8, dtype=torch.float64)
    np.testing.assert_allclose(H.expmap0(v, C).numpy(), np_expmap0(v.numpy(), C), rtol=1e-12)
    d0 = H.distance(torch.zeros_like(v), H.expmap0(v, C), C)
    np.testing.assert_allclose(d0.numpy(), 2 * v.norm(dim=-1).numpy(), rtol=1e-9)  # d(0, expmap0(v)) = 2‖v‖


@pytest.mark.parametrize("exact,rtol", [(True, 1e-5), (False, 1e-5)])
def test_pairwise_distance_random_clipped_points(exact, rtol):
    x, y = ball_points(300, seed=3), ball_points(200, seed=4)
    ref = np_dist(x.double().numpy()[:, None], y.double().numpy()[None], C)
    got = H.pairwise_distance(x, y, C, exact=exact)
    assert got.dtype == torch.float32 and got.shape == (300, 200)
    assert np.max(np.abs(got.numpy() - ref) / ref) <= rtol


@pytest.mark.parametrize("target", [1e-2, 3e-2, 1e-1])
def test_pairwise_distance_small_distances(target):
    """Guarantee: relative error ≤ 1e-3 for pairs at distance ≥ 1e-2 (fp32 inputs, default exact=True)."""
    x = ball_points(256, seed=5)
    g = torch.Generator().manual_seed(6)
    u = torch.randn(256, 128, generator=g, dtype=torch.float64)
    lam = 2 / (1 - C * x.double().pow(2).sum(-1, keepdim=True))  # conformal factor: step ≈ d / λ
    y = (x.double() + u / u.norm(dim=-1, keepdim=True) * target / lam).float()
    ref = np_dist(x.double().numpy(), y.double().numpy(), C)
    assert ref.min() > 0.5 * target
    got = H.pairwise_distance(x, y, C).diagonal().numpy()
    assert np.max(np.abs(got - ref) / ref) <= 1e-3
    pair = H.distance(x, y, C).numpy()
    assert np.max(np.abs(pair - ref) / ref) <= 1e-3


def test_pairwise_is_distance_on_rows():
    x, y = ball_points(64, seed=7), ball_points(64, seed=8)
    torch.testing.assert_close(H.pairwise_distance(x, y, C).diagonal(), H.distance(x, y, C), rtol=1e-5, atol=1e-6)


def test_against_geoopt():
    ball = geoopt.PoincareBall(c=torch.tensor(C, dtype=torch.float64))  # a float32 c would cost 1e-7
    x, y = ball_points(100, 32, 9).double(), ball_points(100, 32, 10).double()
    torch.testing.assert_close(H.distance(x, y, C), ball.dist(x, y))
    torch.testing.assert_close(H.pairwise_distance(x, y, C), ball.dist(x[:, None], y[None]))
    v = torch.randn(100, 32, dtype=torch.float64)
    torch.testing.assert_close(H.expmap0(v, C), ball.expmap0(v))
    torch.testing.assert_close(H.logmap0(x, C), ball.logmap0(x))
    torch.testing.assert_close(H.mobius_add(x, y, C), ball.mobius_add(x, y))


def test_lorentz_lift_gives_distance_and_inner_product_ranking():
    x, y = ball_points(50, 16, 11).double(), ball_points(70, 16, 12).double()
    lx, ly = H.to_lorentz(x, C), H.to_lorentz(y, C)
    # points on the hyperboloid ⟨x, x⟩_L = −1/c
    torch.testing.assert_close(-lx[:, 0] ** 2 + (lx[:, 1:] ** 2).sum(-1), torch.full((50,), -1 / C, dtype=torch.float64))
    minkowski = lx[:, :1] * ly[:, 0] - lx[:, 1:] @ ly[:, 1:].T
    d = torch.acosh(C * minkowski) / math.sqrt(C)
    torch.testing.assert_close(d, torch.from_numpy(np_dist(x.numpy()[:, None], y.numpy()[None], C)))
    ip = H.lorentz_query(x, C) @ ly.T
    assert torch.equal(ip.argsort(dim=1, descending=True), d.argsort(dim=1))


def test_clip_features():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(H.clip_features(x, 2.3), torch.tensor([[3 * 0.46, 4 * 0.46], [0.3, 0.4], [0.0, 0.0]]))


def test_project_keeps_points_inside():
    x = torch.randn(10, 5) * 100
    p = H.project(x, C)
    assert (p.norm(dim=-1) * math.sqrt(C) < 1).all()
    inside = torch.randn(10, 5) * 0.1
    torch.testing.assert_close(H.project(inside, C), inside)


def test_sphere_and_euclidean_counterparts():
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randn(30, 8, dtype=torch.float64)
    cos = (x / x.norm(dim=1, keepdim=True)) @ (y / y.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(pairwise_similarity(x, y, "sphere"), cos)
    torch.testing.assert_close(pairwise_similarity(x, y, "euclidean"), -torch.cdist(x, y))
    torch.testing.assert_close(pairwise_similarity(x, y, "poincare", 0.1), -H.pairwise_distance(x, y, 0.1))
    with pytest.raises(ValueError, match="geometry"):
        pairwise_similarity(x, y, "hyperboloid")


BAD_NUMBERS = [0.0, -1.0, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("c", BAD_NUMBERS)
def test_invalid_curvature_named_in_every_entry_point(c):
    """Issue 12.9: NaN/inf passed silently (c = inf gives all-zero embeddings); pairwise_distance(c=-1)
    failed with 'math domain error'."""
    x = torch.full((2, 3), 0.1)
    calls = [lambda: H.expmap0(x, c), lambda: H.logmap0(x, c), lambda: H.project(x, c),
             lambda: H.mobius_add(x, x, c), lambda: H.distance(x, x, c), lambda: H.pairwise_distance(x, x, c),
             lambda: H.conformal_factor(x, c), lambda: H.to_lorentz(x, c),
             lambda: pairwise_similarity(x, x, "poincare", c)]
    for call in calls:
        with pytest.raises(ValueError, match="curvature c must be a finite number > 0"):
            call()


@pytest.mark.parametrize("r", BAD_NUMBERS)
def test_invalid_clip_radius(r):
    with pytest.raises(ValueError, match="clip radius r must be a finite number > 0"):
        H.clip_features(torch.ones(2, 3), r)


def test_invalid_projection_margin():
    for eps in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            H.project(torch.ones(2, 3), 0.1, eps=eps)


def test_no_host_device_transfer_in_the_hot_path():
    """Issue 17.3: the head (clip → expmap0 → project) and the loss's distances must not build a device tensor
    from host data (``lift_fresh``: an H2D copy on CUDA) nor read a value back (``_local_scalar_dense``: a
    sync), forward or backward. Checked on CPU by recording the aten ops that would be transfers on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.randn(12, 8, requires_grad=True)
    with Record() as rec:
        y = H.expmap0(H.clip_features(x, 2.3), C)
        loss = H.pairwise_distance(y, y, C).sum() + H.pairwise_distance(y, y, C, exact=False).sum()
        loss = loss + pairwise_similarity(y, y, "poincare", C).sum() + H.distance(y, y.flip(0), C).sum()
        loss.backward()
    assert len(rec.ops) > 50 and x.grad is not None  # the recorder saw the computation
    transfers = [op for op in rec.ops if op.split(".")[0] in ("lift_fresh", "_local_scalar_dense", "item")]
    assert not transfers, transfers


# ---- properties (hypothesis) -------------------------------------------------------------------
vectors = st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=4)


def _pt(v, c=C):
    return H.expmap0(H.clip_features(torch.tensor([v], dtype=torch.float64), 2.3), c)


@settings(max_examples=60, deadline=None)
@given(vectors, vectors, vectors)
def test_metric_properties(a, b, e):
    x, y, z = _pt(a), _pt(b), _pt(e)
    dxy, dyx = H.distance(x, y, C), H.distance(y, x, C)
    torch.testing.assert_close(dxy, dyx)
    assert H.distance(x, x, C).item() == 0.0
    assert H.pairwise_distance(x, x, C).item() == 0.0
    assert dxy <= H.distance(x, z, C) + H.distance(z, y, C) + 1e-9


@settings(max_examples=60, deadline=None)
@given(vectors)
def test_expmap_logmap_inverse(a):
    v = H.clip_features(torch.tensor([a], dtype=torch.float64), 2.3)
    torch.testing.assert_close(H.logmap0(H.expmap0(v, C), C), v, rtol=1e-7, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(vectors, vectors)
def test_small_curvature_limit(a, b):
    """As c → 0 the ball distance tends to 2‖x − y‖ (for fixed points x, y)."""
    x, y = torch.tensor([a], dtype=torch.float64) / 10, torch.tensor([b], dtype=torch.float64) / 10
    eucl = 2 * (x - y).norm()
    torch.testing.assert_close(H.distance(x, y, 1e-9), eucl.unsqueeze(0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(H.pairwise_distance(x, y, 1e-9)[0], eucl.unsqueeze(0), rtol=1e-5, atol=1e-9)


# ---- finiteness and precision -------------------------------------------------------------------
def _extreme_inputs(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 16, generator=g)
    rows = [
        torch.zeros(16),
        base[0] / base[0].norm() * 1e-8,
        base[1] / base[1].norm() * 1e4,
        base[2] / base[2].norm() * (1 / math.sqrt(C)) * (1 - 1e-7),  # at the boundary
        base[3] / base[3].norm() * (1 / math.sqrt(C)) * 2,  # outside the ball
        base[4] * 0.1,
        base[4] * 0.1 + 1e-7,  # nearly coincident with the previous row
        base[4] * 0.1,  # coincident
    ]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_values_and_gradients_at_extremes(dtype):
    x0 = _extreme_inputs(dtype)
    fns = {
        "expmap0": lambda x: H.expmap0(x, C).sum(),
        "logmap0": lambda x: H.logmap0(x, C).sum(),
        "clip+expmap0": lambda x: H.expmap0(H.clip_features(x, 2.3), C).sum(),
        "project": lambda x: H.project(x, C).sum(),
        "mobius_add": lambda x: H.mobius_add(x, x.flip(0), C).sum(),
        "distance": lambda x: H.distance(x, x.flip(0), C).sum() + H.distance(x, x, C).sum(),
        "pairwise": lambda x: H.pairwise_distance(x, x, C).sum(),
        "pairwise_fp32": lambda x: H.pairwise_distance(x, x, C, exact=False).sum(),
        "lorentz": lambda x: H.to_lorentz(x, C).sum(),
        "model_path": lambda x: H.pairwise_distance(*(2 * [H.expmap0(H.clip_features(x, 2.3), C)]), C).sum(),
    }
    for name, fn in fns.items():
        x = x0.clone().requires_grad_(True)
        out = fn(x)
        assert out.dtype in (torch.float32, torch.float64), name  # math runs in fp32 at least
        assert torch.isfinite(out), name
        out.backward()
        assert torch.isfinite(x.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_runs_in_fp32_under_autocast(dtype):
    x, y = ball_points(8, 16, 13), ball_points(8, 16, 14)
    with torch.autocast("cpu", dtype=dtype):
        d = H.pairwise_distance(x.to(dtype), y.to(dtype), C)
        e = H.expmap0(x.to(dtype), C)
    assert d.dtype == torch.float32 and e.dtype == torch.float32
    torch.testing.assert_close(d, H.pairwise_distance(x.to(dtype).float(), y.to(dtype).float(), C))


def test_gradient_bounded_as_distance_goes_to_zero():
    """‖∂d/∂x‖ → λ_x (the conformal factor) as y → x, never above √2·λ_x: no blow-up at arcosh's slope."""
    x = ball_points(1, 32, 15)
    u = torch.randn(1, 32, generator=torch.Generator().manual_seed(16))
    u = u / u.norm()
    lam = 2 / (1 - C * x.pow(2).sum())
    for eps in [1e-1, 1e-3, 1e-5, 1e-6, 3e-7, 1e-7, 1e-8, 0.0]:
        for fn in (lambda a, b: H.distance(a, b, C).sum(), lambda a, b: H.pairwise_distance(a, b, C).sum()):
            xr = x.clone().requires_grad_(True)
            fn(xr, x + eps * u).backward()
            g = xr.grad.norm().item()
            assert math.isfinite(g) and g <= 1.42 * lam.item(), (eps, g)
            if 1e-5 <= eps <= 1e-3:
                assert abs(g / lam.item() - 1) < 1e-3, (eps, g)


def test_pairwise_gradient_matches_finite_differences_and_textbook():
    """The hand-written backward against gradcheck and against autograd through the Möbius form."""
    x = ball_points(5, 6, 17).double()
    y = torch.cat([ball_points(4, 6, 18).double(), x[:2] + 1e-3])  # include two nearby pairs
    torch.autograd.gradcheck(lambda a, b: H.pairwise_distance(a, b, C), (x.clone().requires_grad_(),
                                                                        y.clone().requires_grad_()))
    g = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(19))
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    (H.pairwise_distance(a, b, C) * g).sum().backward()
    a2, b2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    sc = math.sqrt(C)
    textbook = 2 / sc * torch.atanh(sc * H.mobius_add(-a2[:, None], b2[None], C).norm(dim=-1))
    (textbook * g).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
    # float32 inputs: the float64-accumulated backward stays close to the float64 gradient
    a3, b3 = x.float().requires_grad_(), y.float().requires_grad_()
    (H.pairwise_distance(a3, b3, C) * g.float()).sum().backward()
    torch.testing.assert_close(a3.grad.double(), a2.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pairwise_gradient_of_a_batch_against_itself(dtype):
    """x against itself (the loss's case): the backward's single product with W + Wᵀ equals the two products
    of two separate tensors, and gradcheck holds; a non-symmetric upstream gradient, nearby and coincident pairs."""
    x = torch.cat([ball_points(6, 5, 21), ball_points(2, 5, 21)[:1] + 1e-3, ball_points(1, 5, 22)]).double()
    x = torch.cat([x, x[-1:]])  # a duplicated point: d = 0 with zero gradient
    g = torch.randn(len(x), len(x), dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    torch.autograd.gradcheck(lambda a: (H.pairwise_distance(a, a, C) * g).sum(), (x.clone().requires_grad_(),))
    one = x.to(dtype).clone().requires_grad_()
    (H.pairwise_distance(one, one, C) * g.to(dtype)).sum().backward()
    a, b = x.to(dtype).clone().requires_grad_(), x.to(dtype).clone().requires_grad_()  # two tensors: two products
    (H.pairwise_distance(a, b, C) * g.to(dtype)).sum().backward()
    torch.testing.assert_close(one.grad, a.grad + b.grad, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-12)
    none = x.to(dtype).clone().requires_grad_()  # y=None means x
    (H.pairwise_distance(none, c=C) * g.to(dtype)).sum().backward()
    torch.testing.assert_close(none.grad, one.grad, rtol=0, atol=0)
