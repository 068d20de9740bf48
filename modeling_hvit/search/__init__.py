# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Search your own images: a persistent hyperbolic index, top-k and range search, near-duplicates,
and pictures of the results.

>>> from modeling_hvit.search import HViTIndex
>>> index = HViTIndex.build("photos/", "photos-index", model)          # doctest: +SKIP
>>> index.search("query.jpg", k=5, model=model)                        # doctest: +SKIP
"""

from .calibrate import SYNTHETIC_EDITS, calibrate_from_edits, calibrate_from_pairs, threshold_for_recall
from .dedup import DuplicateReport, distance_histogram, duplicate_groups, duplicate_mining, write_groups_csv
from .embedder import Embedder, model_fingerprint
from .index import HViTIndex, IndexMismatchError
from .query import format_hits, range_search, semantic_search
from .sources import Item, UnreadableImage, items_from
from .store import IndexLockedError
from .vectors import IndexFileError

__all__ = ["SYNTHETIC_EDITS", "DuplicateReport", "Embedder", "HViTIndex", "IndexFileError", "IndexLockedError",
           "IndexMismatchError", "Item", "UnreadableImage", "calibrate_from_edits", "calibrate_from_pairs",
           "distance_histogram", "duplicate_groups", "duplicate_mining", "format_hits", "items_from",
           "model_fingerprint", "range_search", "semantic_search", "threshold_for_recall", "write_groups_csv"]
