# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""One spelling per dataset: builders, Recall@K lists, eval resizing and model cards all key on it."""

from __future__ import annotations

# Alternative spellings, keyed by their lower-case alphanumeric form.
DATASET_ALIASES = {
    "cub200": "cub", "cub2002011": "cub", "cars196": "cars", "stanfordcars": "cars",
    "stanfordonlineproducts": "sop", "inshopclothes": "inshop", "deepfashion": "inshop",
    "caltech": "caltech101", "imagefolder": "folder",
}


def canonical_dataset_name(name: str) -> str:
    """`CUB-200-2011`, `cub200`, `In-Shop`, `caltech-101`, … → `cub`, `inshop`, `caltech101`;
    other names come back lower-case alphanumeric (`hub:` names are not for this function)."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return DATASET_ALIASES.get(key, key)
