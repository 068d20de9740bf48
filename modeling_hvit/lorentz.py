# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Lorentz (hyperboloid) model of curvature −c (c > 0) as small pure tensor functions.

A point is x = (x₀, x_s) with −x₀² + ‖x_s‖² = −1/c and x₀ > 0. As in MERU, only the space components
x_s (…, d) are stored; the time component x₀ = √(1/c + ‖x_s‖²) is recomputed wherever it is needed, so
every stored vector lies exactly on the manifold. The origin is x_s = 0.

The ball and the hyperboloid are isometric (SPEC §1): ``ball_to_hyperboloid`` / ``hyperboloid_to_ball``
convert, and ``distance`` here equals ``hyperbolic.distance`` of the converted points. One convention to
keep in mind: the ball's ``expmap0(v)`` lies at distance 2‖v‖ from the origin (conformal factor 2 there),
the hyperboloid's ``expmap0(v)`` at distance ‖v‖, so ``ball_to_hyperboloid(hyperbolic.expmap0(v)) ==
expmap0(2v)``.

Accuracy. ``arcosh(−c⟨x, y⟩_L)`` loses everything for nearby points (⟨x, y⟩_L ≈ −1/c). Instead the
distance is taken from the Lorentz norm of the difference, ‖x − y‖²_L = ‖x_s − y_s‖² − (x₀ − y₀)², with
x₀ − y₀ = (‖x_s‖² − ‖y_s‖²)/(x₀ + y₀) (no cancellation; ``pairwise_distance`` subtracts x₀ − y₀ directly, as
its rounding is far below that of the Gram form ‖x_s − y_s‖² it is combined with), through
d = (2/√c)·asinh(√c‖x − y‖_L / 2), the same identity as the ball's (slope 1 at 0: bounded gradients as d → 0).
Functions promote inputs to at least float32 and run with autocast disabled.
"""

from __future__ import annotations

import math

import torch

from .hyperbolic import GRAM_NOISE, MIN_NORM, MIN_SQDIST, _asinh, _fp32, _no_autocast, _norm

SINH_MAX = 15.0  # expmap0: √c‖v‖ clamp (sinh(15) ≈ 1.6e6, far beyond any clipped feature)

__all__ = [
    "ball_to_hyperboloid",
    "distance",
    "expmap0",
    "hyperboloid_to_ball",
    "inner",
    "logmap0",
    "pairwise_distance",
    "query_features",
    "gallery_features",
    "time_component",
]


def _check_c(c: float | torch.Tensor) -> float | torch.Tensor:
    """A Python c is checked on the host; a tensor c (a learnable curvature, ``HViTModel.curvature``) is used as
    given, differentiably (checking its value would sync the device)."""
    if torch.is_tensor(c):
        return c
    c = float(c)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"curvature c must be a finite number > 0 for the hyperboloid, got {c}")
    return c


def _sqrt_c(c: float | torch.Tensor) -> float | torch.Tensor:
    c = _check_c(c)
    return c.sqrt() if torch.is_tensor(c) else math.sqrt(c)


def time_component(x_s: torch.Tensor, c: float) -> torch.Tensor:
    """x₀ = √(1/c + ‖x_s‖²), shape ``x_s.shape[:-1]``."""
    (x_s,) = _fp32(x_s)
    with _no_autocast(x_s.device):
        return (1 / _check_c(c) + x_s.pow(2).sum(-1)).sqrt()


def expmap0(v: torch.Tensor, c: float) -> torch.Tensor:
    """Exponential map at the origin, space components: sinh(√c‖v‖)·v/(√c‖v‖); d(origin, ·) = ‖v‖."""
    (v,) = _fp32(v)
    sc = _sqrt_c(c)
    with _no_autocast(v.device):
        scn = sc * _norm(v)
        return torch.sinh(scn.clamp_max(SINH_MAX)) * v / scn


def logmap0(x_s: torch.Tensor, c: float) -> torch.Tensor:
    """Inverse of ``expmap0``: asinh(√c‖x_s‖)·x_s/(√c‖x_s‖)."""
    (x_s,) = _fp32(x_s)
    sc = _sqrt_c(c)
    with _no_autocast(x_s.device):
        scn = sc * _norm(x_s)
        return _asinh(scn) * x_s / scn


def inner(x_s: torch.Tensor, y_s: torch.Tensor, c: float) -> torch.Tensor:
    """Lorentz inner product ⟨x, y⟩_L = −x₀y₀ + x_s·y_s of matching rows (≤ −1/c)."""
    x_s, y_s = _fp32(x_s, y_s)
    with _no_autocast(x_s.device):
        return -time_component(x_s, c) * time_component(y_s, c) + (x_s * y_s).sum(-1)


def _from_lorentz_sq(sq: torch.Tensor, sc: float | torch.Tensor, floor: float = MIN_SQDIST) -> torch.Tensor:
    """(2/√c)·asinh(√c·‖x − y‖_L / 2); squared norms at or below ``floor`` count as 0 (zero gradient)."""
    r = sq.clamp_min(floor).sqrt() * (sq > floor)
    return 2 / sc * _asinh(sc * r / 2)


def distance(x_s: torch.Tensor, y_s: torch.Tensor, c: float) -> torch.Tensor:
    """Geodesic distance between matching rows (broadcasting); shape ``x_s.shape[:-1]``."""
    x_s, y_s = _fp32(x_s, y_s)
    sc = _sqrt_c(c)
    with _no_autocast(x_s.device):
        diff = x_s - y_s
        dt = (diff * (x_s + y_s)).sum(-1) / (time_component(x_s, c) + time_component(y_s, c))  # x₀ − y₀
        return _from_lorentz_sq(diff.pow(2).sum(-1) - dt.pow(2), sc)


class _PairwiseDistance(torch.autograd.Function):
    """All-pairs distance with a hand-written backward, differentiable in x, y and c; saves one (n, m) matrix (r).

    q = ‖x − y‖²_L = ‖x_s − y_s‖² − (x₀ − y₀)² (Gram form, in the work dtype), r = √q,
    d = (2/√c)·asinh(√c·r/2). With B = g·∂d/∂r = g/√(1 + c r²/4) and W = B/(2r) (0 where r = 0), and
    ∂q/∂x_s = 2(y₀/x₀·x_s − y_s):  ∂/∂x_i = 2(x_i·(W y₀)_i/x₀_i − (W y)_i), symmetrically for y; when x is y
    both are one product with W + Wᵀ. In c (k = 1/c, ∂q/∂k = (x₀ − y₀)²/(x₀y₀)):
    ∂/∂c = Σ(B r − g d)/(2c) − Σ W (x₀/y₀ + y₀/x₀ − 2)/c², mat-vec products with the W already formed. The W
    terms cancel for nearby points, so they are accumulated in the work dtype (float64 when exact), as
    ``hyperbolic._PairwiseDistance`` does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, work: torch.dtype) -> torch.Tensor:
        out = torch.promote_types(x.dtype, y.dtype)
        same = y is x
        xw = x.to(work)
        yw = xw if same else y.to(work)
        cw = c.to(work)
        x2 = xw.pow(2).sum(-1)
        y2 = x2 if same else yw.pow(2).sum(-1)
        x0 = (x2 + 1 / cw).sqrt()
        y0 = x0 if same else (y2 + 1 / cw).sqrt()
        sq = torch.addmm(x2[:, None], xw, yw.T, alpha=-2).add_(y2)  # ‖x_s − y_s‖²
        dt = x0[:, None] - y0  # x₀ − y₀: its rounding (≈ eps·x₀) is far below the Gram form's (≈ eps·‖x_s‖²)
        q = sq.addcmul_(dt, dt, value=-1).to(out)
        # below the Gram form's rounding noise (on the device: no host sync) the pair counts as coincident
        floor = ((x2.max() + y2.max()) * GRAM_NOISE[work] + MIN_SQDIST).to(out)
        r = q.masked_fill_(q <= floor, 0).sqrt_()
        sc = cw.sqrt().to(out)
        u = r * (sc / 2)
        u2 = u * u  # asinh(u) as in `hyperbolic._asinh`, in place
        d = u2.div_(u2.add(1).sqrt_().add_(1)).add_(u).log1p_().mul_(2 / sc)
        ctx.same, ctx.work = same, work
        ctx.save_for_backward(x, y, c, x0, y0, r, d if ctx.needs_input_grad[2] else None)
        return d

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, y, c, x0, y0, r, d = ctx.saved_tensors
        work = ctx.work
        cr = c.to(r.dtype)
        b = g * r.pow(2).mul_(cr / 4).add_(1).rsqrt_()  # g·∂d/∂r
        w = torch.where(r > 0, b / r, 0).to(work).mul_(0.5)  # g·∂d/∂q
        xw, yw = x.to(work), y.to(work)
        gx = gy = gc = None
        if ctx.same and ctx.needs_input_grad[0]:
            s = w + w.T
            gx = (2 * (xw * ((s @ x0) / x0)[:, None] - s @ xw)).to(x.dtype)
        else:
            if ctx.needs_input_grad[0]:
                gx = (2 * (xw * ((w @ y0) / x0)[:, None] - w @ yw)).to(x.dtype)
            if ctx.needs_input_grad[1]:
                gy = (2 * (yw * ((w.T @ x0) / y0)[:, None] - w.T @ xw)).to(y.dtype)
        if ctx.needs_input_grad[2]:
            cw = c.to(work)
            via_r = (b * r).sub_(g * d).sum(dtype=work) / (2 * cw)
            via_k = (x0 @ (w @ y0.reciprocal()) + x0.reciprocal() @ (w @ y0) - 2 * w.sum()) / cw**2
            gc = (via_r - via_k).to(c.dtype).reshape(c.shape)
        return gx, gy, gc, None


def pairwise_distance(x_s: torch.Tensor, y_s: torch.Tensor | None = None, c: float | torch.Tensor = 0.1,
                      exact: bool = True) -> torch.Tensor:
    """All-pairs distance matrix (n, m) from norms and one matrix product (never an n×m×d tensor).

    ``exact`` accumulates norms and the Gram matrix in float64, as ``hyperbolic.pairwise_distance``
    does (nearby pairs cancel in float32); the result has the inputs' float type (float32 at least).
    Differentiable in both arguments and in a tensor c (a hand-written backward, ``_PairwiseDistance``).
    """
    same = y_s is None or y_s is x_s
    x_s, y_s = _fp32(x_s, x_s if y_s is None else y_s)
    if same:
        y_s = x_s  # one tensor: the backward forms one product with W + Wᵀ instead of two
    c = _check_c(c)
    out = torch.promote_types(x_s.dtype, y_s.dtype)
    work = torch.float64 if exact else out
    c_t = c if torch.is_tensor(c) else x_s.new_full((), c, dtype=work)  # a fill kernel: no host→device copy
    with _no_autocast(x_s.device):
        return _PairwiseDistance.apply(x_s, y_s, c_t, work)


def ball_to_hyperboloid(p: torch.Tensor, c: float) -> torch.Tensor:
    """Poincaré-ball points → hyperboloid space components 2p/(1 − c‖p‖²) (the isometry of SPEC §1)."""
    (p,) = _fp32(p)
    c = _check_c(c)
    with _no_autocast(p.device):
        return 2 * p / (1 - c * p.pow(2).sum(-1, keepdim=True)).clamp_min(MIN_NORM)


def hyperboloid_to_ball(x_s: torch.Tensor, c: float) -> torch.Tensor:
    """Hyperboloid space components → Poincaré-ball points x_s/(1 + √c·x₀) (inverse of the above)."""
    (x_s,) = _fp32(x_s)
    sc = _sqrt_c(c)
    with _no_autocast(x_s.device):
        return x_s / (1 + sc * time_component(x_s, c)).unsqueeze(-1)


def gallery_features(x_s: torch.Tensor, c: float) -> torch.Tensor:
    """(x₀, x_s) rows: with ``query_features`` their inner product is ⟨x, y⟩_L (larger = closer), so exact
    nearest-neighbour search under d is maximum-inner-product search (e.g. a FAISS IP index)."""
    return torch.cat([time_component(x_s, c).unsqueeze(-1), x_s.float() if x_s.dtype in
                      (torch.float16, torch.bfloat16) else x_s], dim=-1)


def query_features(x_s: torch.Tensor, c: float) -> torch.Tensor:
    """(−x₀, x_s) rows, the query side of ``gallery_features``."""
    g = gallery_features(x_s, c)
    return torch.cat([-g[..., :1], g[..., 1:]], dim=-1)
