# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Retrieval metrics one level up a label hierarchy (issue 15): Omniglot alphabet, SOP super-class,
In-Shop category, the demo's superclass.

- ``coarse_recall@K`` / ``coarse_map@r``: Recall@K and MAP@R where a neighbour counts when it shares
  the query's super-class (``metrics.retrieval_metrics`` on the super-class labels, so R is the
  number of other items in the super-class);
- ``mistake_severity@1``: of the queries whose nearest neighbour has the wrong class, the fraction
  whose nearest neighbour is still in the right super-class (higher = milder mistakes; absent when
  no query is wrong).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .metrics import encode_labels, retrieval_metrics
from .retrieval import knn

__all__ = ["hierarchy_metrics"]


def hierarchy_metrics(embeddings: Any, labels: Any, groups: Any, geometry: str = "poincare",
                      curvature: float = 0.1, ks: Sequence[int] = (1,), **search_kwargs: Any) -> dict[str, float]:
    """Coarse Recall@K, coarse MAP@R and mistake severity at rank 1 (self-retrieval, self excluded)."""
    y, g = encode_labels(labels, groups)
    if len(y) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(y)} labels / super-classes")
    coarse = retrieval_metrics(embeddings, g, geometry, curvature, ks, include=("recall", "map@r"),
                               **search_kwargs)
    out = {f"coarse_{k}": v for k, v in coarse.items()}
    _, idx = knn(embeddings, k=1, geometry=geometry, curvature=curvature, **search_kwargs)
    top = idx[:, 0].cpu()
    wrong = y[top] != y
    n_wrong = int(wrong.sum())
    if n_wrong:
        out["mistake_severity@1"] = math.fsum((g[top] == g)[wrong].double().tolist()) / n_wrong
    return out
