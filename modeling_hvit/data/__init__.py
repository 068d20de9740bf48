# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Datasets: class-disjoint builders for the retrieval benchmarks, their image transforms and caches.

``build_dataset`` and ``DATASETS`` (``builders``), ``DataArguments`` and ``dataset_labels``
(``arguments``) and ``DataError`` (``sources``) are re-exported here. The rest is imported from its
module: ``materialise`` (layouts to Arrow), ``sources`` (folders and archives), ``names`` (aliases),
``splits`` (split summary), ``demo`` (the synthetic dataset), ``transforms`` (PIL/torch transforms),
``batched_transforms`` (the train augmentation on the device) and ``cache`` (the decode-once image cache,
``python -m modeling_hvit.data.cache``).

The builders are imported on first use (PEP 562), so the light modules (``names``, ``splits``,
``transforms``; what metrics, hub cards and DataLoader workers import) do not pull in ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .sources import DataError

if TYPE_CHECKING:
    from .arguments import DataArguments, dataset_labels
    from .builders import DATASETS, build_dataset

_LAZY = {"DATASETS": "builders", "build_dataset": "builders", "DataArguments": "arguments", "dataset_labels": "arguments"}

__all__ = ["DATASETS", "DataArguments", "DataError", "build_dataset", "dataset_labels"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
