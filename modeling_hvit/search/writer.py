# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The embedding step of an index build or add: a chunk of items → table rows, embeddings, skips."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embedder import Embedder
from .sources import Item
from .store import json_or_none

logger = logging.getLogger(__name__)

__all__ = ["ChunkEmbedder", "IndexMismatchError"]


class IndexMismatchError(ValueError):
    """The index was built with another model, geometry, curvature or preprocessing."""


@dataclass
class ChunkEmbedder:
    """What every writer (one process, or one rank of several) does to a chunk of items: embed it
    batch by batch into table rows, listing the unreadable ones."""

    embedder: Embedder
    batch_size: int
    shard_size: int
    metadata: dict[str, dict] | None
    progress: bool
    index_dir: Path

    @contextmanager
    def bar(self, total: int, show: bool = True):
        bar = None
        if self.progress and show:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"indexing {self.index_dir.name}", unit="img")
        try:
            yield bar
        finally:
            if bar is not None:
                bar.close()

    def embed(self, chunk: list[Item], bar) -> tuple[dict[str, list], np.ndarray | None, list[dict]]:
        """(rows, embeddings or None when nothing was readable, skipped items) of one chunk."""
        rows = {"id": [], "path": [], "label": [], "metadata": []}
        embs, skipped = [], []
        for b0 in range(0, len(chunk), self.batch_size):
            batch = chunk[b0:b0 + self.batch_size]
            emb, ok, bad = self.embedder.embed_items(batch)
            for i in ok:
                it = batch[i]
                rows["id"].append(it.id)
                rows["path"].append(it.path)
                rows["label"].append(it.label)
                rows["metadata"].append(json_or_none({**it.metadata, **((self.metadata or {}).get(it.id) or {})}))
            if len(ok):
                embs.append(emb.numpy())
            skipped += [{"id": batch[i].id, "path": batch[i].path, "reason": why} for i, why in bad]
            for _, why in bad:
                logger.warning("skipped: %s", why)
            if bar is not None:
                bar.update(len(batch))
        if len({e.shape[1] for e in embs}) > 1:
            raise IndexMismatchError(f"{self.index_dir}: embed_fn returned rows of dims {sorted({e.shape[1] for e in embs})}")
        return rows, (np.concatenate(embs) if embs else None), skipped

    def array(self, emb: np.ndarray | None, manifest: dict) -> np.ndarray:
        """The shard's embedding array, checked against the index's dim (an empty one when none)."""
        dim = manifest.get("dim")
        if emb is None:
            return np.zeros((0, dim or 1), np.float32)
        if dim is not None and emb.shape[1] != dim:
            raise IndexMismatchError(f"{self.index_dir}: embeddings of dim {emb.shape[1]}, the index holds dim {dim}")
        return emb
