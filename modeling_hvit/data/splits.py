# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Which split a run actually used: classes and images per split, and whether it is the benchmark's.

The published numbers of each benchmark are on one class-disjoint split (SPEC §6). A run on a
folder that merely looks like CUB (say 100 species split 50/50) must not be reported as
"CUB-200-2011, test": :func:`split_summary` compares the built splits with the standard ones, and
training's and `eval_hvit.py`'s `metrics.json` and the model card record it.
"""

from __future__ import annotations

from typing import Any

from .names import canonical_dataset_name

# (classes, images) per split of the standard class-disjoint splits (SPEC §6).
STANDARD_SPLITS: dict[str, dict[str, tuple[int, int]]] = {
    "cub": {"train": (100, 5864), "test": (100, 5924)},
    "cars": {"train": (98, 8054), "test": (98, 8131)},
    "sop": {"train": (11318, 59551), "test": (11316, 60502)},
    "inshop": {"train": (3997, 25882), "query": (3985, 14218), "gallery": (3985, 12612)},
    "omniglot": {"train": (964, 19280), "test": (659, 13180)},
}

__all__ = ["STANDARD_SPLITS", "describe_splits", "split_summary"]


def split_summary(dsd, dataset: str) -> dict[str, Any]:
    """``{"dataset", "splits": {name: {"classes", "images"}}, "standard_split"}`` of a built DatasetDict.

    ``standard_split`` is True when every split has the standard number of classes and images of
    that benchmark, False when it differs, None for datasets without a standard split (folder,
    hub, demo, Caltech-101).
    """
    splits = {}
    for name, ds in dsd.items():
        labels = ds.with_format(None)["label"]
        splits[name] = {"classes": len(set(labels)), "images": len(labels)}
    key = dataset if dataset.lower().startswith("hub:") else canonical_dataset_name(dataset)
    standard = STANDARD_SPLITS.get(key)
    is_standard = None if standard is None else (
        set(splits) == set(standard)
        and all((s["classes"], s["images"]) == standard[n] for n, s in splits.items()))
    return {"dataset": key, "splits": splits, "standard_split": is_standard}


def describe_splits(summary: dict[str, Any]) -> str:
    """One line: ``train 100 classes / 5,864 images; test ...: the standard split of cub``."""
    parts = "; ".join(f"{name} {s['classes']:,} classes / {s['images']:,} images"
                      for name, s in summary.get("splits", {}).items())
    key = summary.get("dataset")
    standard = "; ".join(f"{n} {c:,} / {i:,}" for n, (c, i) in STANDARD_SPLITS.get(key, {}).items())
    verdict = {True: f"the standard {key} split",
               False: f"NOT the standard {key} split, which has {standard}",
               None: "no standard split for this dataset"}[summary.get("standard_split")]
    return f"{parts} ({verdict})"
