# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Retrieval metrics one level up a label hierarchy (issue 15): Omniglot alphabet, SOP super-class,
In-Shop category, the demo's superclass.

- ``coarse_recall@K`` / ``coarse_map@r``: Recall@K and MAP@R where a neighbour counts when it shares
  the query's super-class (``metrics.retrieval_metrics`` on the super-class labels, so R is the
  number of other items in the super-class);
- ``mistake_severity@1``: of the queries whose nearest neighbour has the wrong class, the fraction
  whose nearest neighbour is still in the right super-class (higher = milder mistakes; absent when
  no query is wrong).

And the paper's observation as a number (no hierarchy column needed), ``radius_correct_correlation``:
the Pearson (point-biserial) correlation between an image's radius and whether its nearest
neighbour (self excluded) has its class. The radius (``embedding_radius``): Poincaré and Lorentz,
the hyperbolic distance to the origin at the head's curvature; sphere and Euclidean, the norm of the
head's linear output before normalisation (every sphere embedding has norm 1), so Hyp- and Sph-
models can be compared. A positive value: images far from the origin are retrieved correctly more
often (the paper: the origin holds the ambiguous images). Features clipped to norm r all sit at
radius 2r (4.6 with the default r = 2.3), so heavy clipping flattens the hyperbolic radius.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .distances import check_geometry
from .metrics import encode_labels, retrieval_metrics
from .retrieval import knn

__all__ = ["embedding_radius", "hierarchy_metrics", "nearest_other", "radius_correct_correlation", "radius_metrics"]


def nearest_other(embeddings: Any, geometry: str = "poincare", curvature: float = 0.1, gallery: Any | None = None,
                  **search_kwargs: Any) -> torch.Tensor:
    """Index (n,) of each item's nearest other item (or nearest ``gallery`` item), on the CPU."""
    search_kwargs.pop("seed", None)  # a k-means seed of retrieval_metrics, not a search argument
    _, idx = knn(embeddings, gallery, k=1, geometry=geometry, curvature=curvature, **search_kwargs)
    return idx[:, 0].cpu()


def hierarchy_metrics(embeddings: Any, labels: Any, groups: Any, geometry: str = "poincare",
                      curvature: float = 0.1, ks: Sequence[int] = (1,), *, top1: torch.Tensor | None = None,
                      **search_kwargs: Any) -> dict[str, float]:
    """Coarse Recall@K, coarse MAP@R and mistake severity at rank 1 (self-retrieval, self excluded).
    ``top1``: each item's nearest other item, when already searched (``nearest_other``)."""
    y, g = encode_labels(labels, groups)
    if len(y) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(y)} labels / super-classes")
    coarse = retrieval_metrics(embeddings, g, geometry, curvature, ks, include=("recall", "map@r"),
                               **search_kwargs)
    out = {f"coarse_{k}": v for k, v in coarse.items()}
    top = nearest_other(embeddings, geometry, curvature, **search_kwargs) if top1 is None else top1.cpu()
    wrong = y[top] != y
    n_wrong = int(wrong.sum())
    if n_wrong:
        out["mistake_severity@1"] = math.fsum((g[top] == g)[wrong].double().tolist()) / n_wrong
    return out


def embedding_radius(embeddings: Any, geometry: str = "poincare", curvature: float = 0.1,
                     head_output: Any | None = None) -> torch.Tensor:
    """Each embedding's radius (n,), float64: ``poincare`` 2/√c · artanh(√c‖x‖) and ``lorentz`` (space
    components) 1/√c · arsinh(√c‖x_s‖), the hyperbolic distance to the origin; ``euclidean`` ‖x‖;
    ``sphere`` the norm of ``head_output`` (the head's linear output before normalisation, required)."""
    check_geometry(geometry)
    if geometry == "sphere":
        if head_output is None:
            raise ValueError("the sphere's radius is the norm of the head's linear output before normalisation: "
                             "pass head_output (model.head(encoder_embeddings))")
        embeddings = head_output
    x = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings).double()
    norm = x.norm(dim=-1)
    if geometry == "poincare":
        sc = math.sqrt(curvature)
        return 2 / sc * torch.atanh((sc * norm).clamp_max(1 - 1e-15))
    if geometry == "lorentz":
        sc = math.sqrt(curvature)
        return torch.asinh(sc * norm) / sc
    return norm


RADIUS_NOISE = 1e-4  # relative spread under which a radius counts as constant (float32 rounding at the clip)


def radius_correct_correlation(radius: Any, correct: Any) -> float:
    """Pearson correlation of a radius per item with a 0/1 "top-1 neighbour is right" per item (the
    point-biserial correlation), in float64; NaN when either is constant (no correlation defined). A radius
    whose spread is below ``RADIUS_NOISE`` of its largest value counts as constant: with the paper's clip
    radius every embedding of a trained model can sit at the clip (radius 2r), and the float32 rounding left
    is not a signal to correlate."""
    r = np.asarray(radius, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if r.shape != y.shape or r.ndim != 1:
        raise ValueError(f"radius and correct must be 1-d of equal length, got {r.shape} and {y.shape}")
    if r.size and r.std() <= RADIUS_NOISE * np.abs(r).max():
        return float("nan")
    r, y = r - r.mean(), y - y.mean()
    denom = math.sqrt(math.fsum(r * r) * math.fsum(y * y))
    return math.fsum(r * y) / denom if denom > 0 else float("nan")


def radius_metrics(embeddings: Any, labels: Any, geometry: str = "poincare", curvature: float = 0.1, *,
                   head_output: Any | None = None, gallery: Any | None = None, gallery_labels: Any | None = None,
                   top1: torch.Tensor | None = None, **search_kwargs: Any) -> dict[str, float]:
    """``{"radius_correct_correlation": r}`` of the queries (``embedding_radius``; top-1 among the
    others, or in ``gallery``; ``top1`` when already searched); empty when r is undefined (every
    top-1 right, or every one wrong)."""
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("pass gallery and gallery_labels together")
    y, gy = encode_labels(labels, labels if gallery is None else gallery_labels)
    if len(y) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(y)} labels")
    radius = embedding_radius(embeddings, geometry, curvature, head_output)
    if top1 is None:
        top1 = nearest_other(embeddings, geometry, curvature, gallery, **search_kwargs)
    correct = gy[top1.cpu()] == y
    r = radius_correct_correlation(radius.numpy(), correct.numpy())
    return {"radius_correct_correlation": r} if math.isfinite(r) else {}
