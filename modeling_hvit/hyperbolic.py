# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Poincaré-ball geometry (curvature -c, c > 0) as small pure tensor functions.

Every function promotes its inputs to at least float32 and runs with autocast disabled, so fp16/bf16
activations never reach artanh/arcosh (SPEC §1). The stability constants sit together below; with
them every function returns finite values and finite gradients for any finite input.

Accuracy at small distances. Distances are evaluated through the identity
``arcosh(1 + 2u²) = 2·asinh(u)``, i.e. ``d(x, y) = (2/√c)·asinh(√c‖x−y‖ / √((1−c‖x‖²)(1−c‖y‖²)))``,
which has slope 1 at 0 where arcosh has an infinite one, so gradients stay bounded as d → 0.
``pairwise_distance`` forms ‖x−y‖² = ‖x‖² + ‖y‖² − 2⟨x,y⟩ from one matrix product; in float32 that
cancels catastrophically for nearby points, so by default (``exact=True``) the norms and the Gram
matrix are accumulated in float64 (cheap: one (n×d)·(d×m) product). Guarantee, tested in
``tests/test_hyperbolic.py``: relative error ≤ 1e-5 on random clipped points and ≤ 1e-3 for pairs at
distance ≥ 1e-2 (measured ≈ 3e-7); distances below ≈ 1e-6·λ (the float64 noise floor) are returned
as 0, and gradient norms stay below ≈ √2·λ_x as d → 0 (λ_x = 2/(1 − c‖x‖²), the conformal factor).
``exact=False`` keeps everything in float32: same guarantee for far-apart points, but pairs closer
than ≈ 3e-3·λ collapse to 0 (fine for ranking, e.g. retrieval; not for losses).
"""

from __future__ import annotations

import math

import torch

# Stability constants, in one place (compare hyptorch: 1e-5 / ±15 / 1e-3; geoopt: 4e-3 for fp32).
MIN_NORM = 1e-15  # floor for vector norms (avoids 0/0 in v/‖v‖)
BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}  # projection margin: ‖x‖ ≤ (1 − eps)/√c
ARTANH_MAX = 1 - 1e-5  # artanh input clamp (logmap0)
TANH_MAX = 15.0  # tanh input clamp (expmap0)
MIN_CONFORMAL = 1e-6  # floor for 1 − c‖x‖² (points given on or outside the boundary)
MIN_SQDIST = 1e-30  # ‖x−y‖² at or below this is 0 (d(x, x) = 0 with zero gradient)
GRAM_NOISE = {torch.float64: 1e-13, torch.float32: 1e-6}  # relative noise floor of ‖x‖² + ‖y‖² − 2⟨x,y⟩

__all__ = [
    "mobius_add",
    "expmap0",
    "logmap0",
    "project",
    "clip_features",
    "distance",
    "pairwise_distance",
    "to_lorentz",
    "lorentz_query",
    "conformal_factor",
]


def _fp32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Promote half/bfloat16 tensors to float32; float64 stays float64."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _norm(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    """‖x‖ over the last dim with a floor, so that its gradient is finite at 0."""
    return x.pow(2).sum(-1, keepdim=keepdim).clamp_min(MIN_NORM**2).sqrt()


def _check_positive(value: float, name: str) -> float:
    """A finite number > 0, or a ValueError naming it (NaN and inf fail here, not as NaN embeddings later)."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _sqrt_c(c: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """√c as a 0-d tensor of ``like``'s dtype and device. A Python c is checked on the host and written by
    a fill kernel (``new_full``), not copied from host memory: no host↔device sync in the forward. A tensor
    c is used as given (checking its value would sync)."""
    if not torch.is_tensor(c):
        return like.new_full((), math.sqrt(_check_positive(c, "curvature c")))
    return c.to(like).sqrt()


def conformal_factor(x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """1 − c‖x‖² (floored at ``MIN_CONFORMAL``); λ_x = 2 / this."""
    (x,) = _fp32(x)
    sc = _sqrt_c(c, x)
    return (1 - (sc * x).pow(2).sum(-1)).clamp_min(MIN_CONFORMAL)


def project(x: torch.Tensor, c: float | torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Pull points back inside the ball to radius (1 − eps)/√c; points inside are unchanged."""
    (x,) = _fp32(x)
    with _no_autocast(x.device):
        sc = _sqrt_c(c, x)
        eps = BALL_EPS.get(x.dtype, 4e-3) if eps is None else eps
        if not 0 <= eps < 1:
            raise ValueError(f"projection margin eps must be in [0, 1), got {eps}")
        maxnorm = (1 - eps) / sc
        norm = _norm(x)
        return torch.where(norm > maxnorm, x / norm * maxnorm, x)


def clip_features(x: torch.Tensor, r: float = 2.3) -> torch.Tensor:
    """Feature clipping (Guo et al., CVPR 2022): x ← min(1, r/‖x‖)·x, applied before ``expmap0``."""
    if not torch.is_tensor(r):
        _check_positive(r, "clip radius r")
    (x,) = _fp32(x)
    with _no_autocast(x.device):
        return x * (r / _norm(x)).clamp_max(1.0)


def expmap0(v: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Exponential map at the origin: tanh(√c‖v‖)·v/(√c‖v‖), projected inside the ball."""
    (v,) = _fp32(v)
    with _no_autocast(v.device):
        sc = _sqrt_c(c, v)
        scn = sc * _norm(v)
        return project(torch.tanh(scn.clamp_max(TANH_MAX)) * v / scn, c)


def logmap0(y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin (inverse of ``expmap0``): artanh(√c‖y‖)·y/(√c‖y‖)."""
    (y,) = _fp32(y)
    with _no_autocast(y.device):
        sc = _sqrt_c(c, y)
        scn = sc * _norm(y)
        return torch.atanh(scn.clamp_max(ARTANH_MAX)) * y / scn


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Möbius addition x ⊕ y (SPEC §1), broadcasting over leading dims."""
    x, y = _fp32(x, y)
    with _no_autocast(x.device):
        c = _sqrt_c(c, x).pow(2)
        xy = (x * y).sum(-1, keepdim=True)
        x2 = x.pow(2).sum(-1, keepdim=True)
        y2 = y.pow(2).sum(-1, keepdim=True)
        num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
        den = 1 + 2 * c * xy + c.pow(2) * x2 * y2
        return num / den.clamp_min(MIN_NORM)


def _asinh(u: torch.Tensor) -> torch.Tensor:
    """asinh(u) for u ≥ 0 as log1p(u + u²/(1 + √(1 + u²))): exact identity, no cancellation at small u,
    and ~5× faster than torch.asinh on CPU (which is not vectorised)."""
    u2 = u * u
    return torch.log1p(u + u2 / (1 + torch.sqrt(1 + u2)))


def _distance_from_sq(sq: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, sc: torch.Tensor,
                      floor: float | torch.Tensor = MIN_SQDIST) -> torch.Tensor:
    """(2/√c)·asinh(√c‖x−y‖/√(cx·cy)) from ‖x−y‖² and the two conformal terms 1 − c‖·‖².

    ‖x−y‖² at or below ``floor`` (the rounding noise of how it was computed) counts as 0, with zero
    gradient: d(x, x) = 0 exactly, and ∂d/∂x stays below ≈ √2·λ_x instead of growing like 1/noise.
    """
    r = sq.clamp_min(floor).sqrt() * (sq > floor)
    return 2 / sc * _asinh(sc * r / (cx * cy).sqrt())


def distance(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Geodesic distance between matching rows of x and y (broadcasting); shape ``x.shape[:-1]``.

    ‖x−y‖² comes from the difference itself, so it is accurate at any distance.
    """
    x, y = _fp32(x, y)
    with _no_autocast(x.device):
        sc = _sqrt_c(c, x)
        sq = (x - y).pow(2).sum(-1)
        return _distance_from_sq(sq, conformal_factor(x, c), conformal_factor(y, c), sc)


class _PairwiseDistance(torch.autograd.Function):
    """All-pairs distance with a hand-written backward: saves one (n, m) float32 matrix (u below).

    d_ij = (2/√c)·asinh(u_ij), u_ij = √c·r_ij·s_i·t_j, r = ‖x_i − y_j‖, s = (1 − c‖x‖²)^-½,
    t = (1 − c‖y‖²)^-½. With W = g·2√c·s²t²/(u√(1+u²)) and V = g·2√c·u/√(1+u²):
    ∂/∂x_i = x_i·(Σ_j W_ij + s_i²·Σ_j V_ij) − (W y)_i, and symmetrically for y; when x is y (a batch
    against itself, as in the loss) both are one product with W + Wᵀ. The W terms cancel for nearby
    points, so they are accumulated in the Gram work dtype (float64 when exact).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, sc: float, work: torch.dtype) -> torch.Tensor:
        out = torch.promote_types(x.dtype, y.dtype)
        ctx.same = y is x
        xw = x.to(work)
        yw = xw if ctx.same else y.to(work)
        x2 = xw.pow(2).sum(-1)
        y2 = x2 if ctx.same else yw.pow(2).sum(-1)
        sq = torch.addmm(x2[:, None], xw, yw.T, alpha=-2).add_(y2).to(out)
        # The Gram form resolves ‖x−y‖² only down to its rounding noise, ~GRAM_NOISE·(‖x‖² + ‖y‖²):
        # below that the pair counts as coincident (distance 0, zero gradient). Kept on the device
        # (float64, then rounded like a Python float would be) so that no value is read back to the host.
        floor = ((x2.max() + y2.max()).double() * GRAM_NOISE[work] + MIN_SQDIST).to(out)
        cx = (1 - sc**2 * x2.to(out)).clamp_min(MIN_CONFORMAL)
        cy = (1 - sc**2 * y2.to(out)).clamp_min(MIN_CONFORMAL)
        s, t = cx.rsqrt(), cy.rsqrt()
        coincident = sq <= floor
        u = sq.sqrt_().masked_fill_(coincident, 0).mul_((sc * s)[:, None]).mul_(t[None, :])
        ctx.save_for_backward(x, y, u, s, t, cx > MIN_CONFORMAL, cy > MIN_CONFORMAL)
        ctx.sc, ctx.work = sc, work
        u2 = u * u  # asinh(u) as in `_asinh`, in place to keep two (n, m) temporaries
        return u2.div_(u2.add(1).sqrt_().add_(1)).add_(u).log1p_().mul_(2 / sc)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, y, u, s, t, x_in, y_in = ctx.saved_tensors
        sc, work = ctx.sc, ctx.work
        gq = g * (1 + u.pow(2)).rsqrt() * (2 * sc)  # g · ∂d/∂u · √c
        gu = gq * u
        v_rows, v_cols = gu.sum(1), gu.sum(0)
        w = torch.where(u > 0, gq / u, 0).to(work).mul_((s.to(work) ** 2)[:, None]).mul_((t.to(work) ** 2)[None, :])
        xw = x.to(work)
        if ctx.same:  # x's gradient in both roles: one product instead of two
            row = w.sum(1) + w.sum(0) + (s**2 * (v_rows + v_cols) * x_in).to(work)
            return (xw * row[:, None] - (w + w.T) @ xw).to(x.dtype), None, None, None
        yw = y.to(work)
        gx = gy = None
        if ctx.needs_input_grad[0]:
            row = w.sum(1) + (s**2 * v_rows * x_in).to(work)
            gx = (xw * row[:, None] - w @ yw).to(x.dtype)
        if ctx.needs_input_grad[1]:
            col = w.sum(0) + (t**2 * v_cols * y_in).to(work)
            gy = (yw * col[:, None] - w.T @ xw).to(y.dtype)
        return gx, gy, None, None


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, c: float | torch.Tensor = 0.1,
                      exact: bool = True) -> torch.Tensor:
    """All-pairs distance matrix (n, m) between x (n, d) and y (m, d) (y defaults to x).

    Closed arcosh form from norms and one matrix product: memory O(nm), never an n×m×d tensor.
    ``exact`` accumulates the Gram matrix and norms in float64 (see the module docstring); the
    result is float32 for float32/half inputs either way. Differentiable in x and y (not in c).
    """
    same = y is None or y is x
    (x,) = _fp32(x)
    y = x if same else _fp32(y)[0]  # one tensor: the backward forms one product with W + Wᵀ instead of two
    sc = math.sqrt(_check_positive(c, "curvature c"))
    work = torch.float64 if exact else torch.promote_types(x.dtype, y.dtype)
    with _no_autocast(x.device):
        return _PairwiseDistance.apply(x, y, sc, work)


def to_lorentz(p: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Lift ball points p (…, d) to the hyperboloid (…, d+1): [x₀, x_s] (SPEC §1).

    ``d(p, q) = (1/√c)·arcosh(c·(x₀y₀ − x_s·y_s))``, so nearest neighbours under d are the maxima of
    the inner product ⟨lorentz_query(q), to_lorentz(p)⟩ (exact MIPS, e.g. a FAISS IP index).
    Points are projected into the ball first: x₀ grows like 1/(1 − c‖p‖²) at the boundary.
    """
    p = project(p, c)
    with _no_autocast(p.device):
        sc = _sqrt_c(c, p)
        cp = conformal_factor(p, c).unsqueeze(-1)
        x0 = (2 - cp) / (sc * cp)  # (1 + c‖p‖²) / (√c (1 − c‖p‖²))
        return torch.cat([x0, 2 * p / cp], dim=-1)


def lorentz_query(p: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Query-side lift (−x₀, x_s): its inner product with ``to_lorentz`` is −⟨x, y⟩_L (larger = closer)."""
    q = to_lorentz(p, c)
    return torch.cat([-q[..., :1], q[..., 1:]], dim=-1)
