# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`evaluate` metric module: Recall@K, Precision@1, R-Precision, MAP@R (and NMI) for embeddings.

Shipped inside the installed package; load it offline by path:
``evaluate.load(modeling_hvit.metric_path())`` (in a checkout also ``evaluate.load("metrics/hvit_retrieval")``).
It is a thin wrapper over ``modeling_hvit.metrics.retrieval_metrics`` (one blocked k-NN search for all
metrics), so hvit must be installed (``pip install hvit``).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Image-retrieval metrics for metric-learning embeddings: every embedding is a query
against all the others (itself excluded). Recall@K (hit@K), Precision@1, R-Precision and MAP@R
(Musgrave et al., ECCV 2020), optionally NMI; distances in the Poincaré ball (HViT), on the sphere
(cosine) or Euclidean."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of embeddings (one float vector per image).
    references: list of integer class labels.
    geometry: "poincare" (default), "sphere" or "euclidean".
    curvature: ball curvature c (default 0.1), used for "poincare".
    ks: Recall@K values (default 1, 2, 4, 8, 16, 32); or pass dataset="sop" etc. for the paper's list.
    include: metrics to compute, from "recall", "precision@1", "r_precision", "map@r", "nmi".
Returns:
    dict: "recall@K" per K, "precision@1", "r_precision", "map@r" (and "nmi"), fractions in [0, 1].
Examples:
    >>> metric = evaluate.load(modeling_hvit.metric_path())
    >>> metric.compute(predictions=[[0.0, 0.1], [0.0, 0.2], [0.3, 0.0], [0.4, 0.0]],
    ...                references=[0, 0, 1, 1], ks=[1])["recall@1"]
    1.0
"""

_CITATION = """@inproceedings{ermolov2022hyperbolic,
  title={Hyperbolic Vision Transformers: Combining Improvements in Metric Learning},
  author={Ermolov, Aleksandr and Mirvakhabova, Leyla and Khrulkov, Valentin and Sebe, Nicu and Oseledets, Ivan},
  booktitle={CVPR}, year={2022}}
"""


class HvitRetrieval(evaluate.Metric):
    """Retrieval metrics over a set of embeddings with class labels."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, geometry: str = "poincare", curvature: float = 0.1,
                 ks=None, dataset: str | None = None, include=None) -> dict:
        from modeling_hvit.metrics import DEFAULT_METRICS, recall_ks_for, retrieval_metrics

        emb = np.asarray(predictions, dtype=np.float32)
        if ks is None:
            ks = recall_ks_for(dataset)
        return retrieval_metrics(emb, np.asarray(references), geometry, curvature, ks,
                                 include=tuple(include) if include else DEFAULT_METRICS)
