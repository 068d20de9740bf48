# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Geometry by name: one pairwise *similarity* (higher = closer) per embedding space.

Losses use ``similarity / temperature`` as logits and retrieval takes the top-k of it, so both
switch geometry with a string:

- ``"poincare"``: −d_hyp (Poincaré ball, curvature c), the Hyp- models;
- ``"lorentz"``: −d_hyp on the hyperboloid of curvature −c (inputs: space components, ``lorentz.py``);
- ``"sphere"``: cosine similarity, the Sph- models (the original's ``+cos/τ`` logits);
- ``"euclidean"``: −‖x − y‖.

Computed in float32 (or float64 for float64 inputs) with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration_hvit import GEOMETRIES
from .hyperbolic import _fp32, _no_autocast, pairwise_distance
from .lorentz import ball_to_hyperboloid
from .lorentz import pairwise_distance as lorentz_pairwise_distance


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return geometry


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity (n, m); zero vectors give 0."""
    x, y = _fp32(x, y)
    with _no_autocast(x.device):
        return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All-pairs L2 distance (n, m), from the difference where it is small enough to matter."""
    x, y = _fp32(x, y)
    with _no_autocast(x.device):
        xw, yw = x.double(), y.double()
        sq = xw.pow(2).sum(-1)[:, None] + yw.pow(2).sum(-1)[None, :] - 2 * xw @ yw.T
        return sq.clamp_min(1e-30).sqrt().to(x.dtype)


def pairwise_similarity(x: torch.Tensor, y: torch.Tensor | None = None, geometry: str = "poincare",
                        curvature: float | torch.Tensor = 0.1, exact: bool = True) -> torch.Tensor:
    """(n, m) similarity between rows of x and y (y defaults to x) in the named geometry; differentiable in a
    tensor ``curvature`` (a learnt c)."""
    y = x if y is None else y
    check_geometry(geometry)
    if geometry == "poincare" and torch.is_tensor(curvature) and curvature.requires_grad:
        # a learnt c: hyperbolic.pairwise_distance's hand-written backward treats c as a constant, so go through
        # the isometric hyperboloid, whose distance's backward is differentiable in c too
        xs = ball_to_hyperboloid(x, curvature)
        return -lorentz_pairwise_distance(xs, xs if y is x else ball_to_hyperboloid(y, curvature), curvature, exact=exact)
    if geometry == "poincare":
        return -pairwise_distance(x, y, curvature, exact=exact)
    if geometry == "lorentz":
        return -lorentz_pairwise_distance(x, y, curvature, exact=exact)
    if geometry == "sphere":
        return cosine_similarity(x, y)
    return -euclidean_distance(x, y)
