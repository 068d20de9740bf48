# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""``HViTIndex``: build, extend, open and query a persistent image index (layout in ``store.py``).

``HViTIndex.build(source, dir, model)`` embeds a folder / file list / HF dataset batch by batch and
commits a shard every ``shard_size`` items, then (re)builds the vector index; ``add`` does the same
on an existing index. Both resume: rerun after an interruption and every image ends up in the
table exactly once (items are keyed by id; ids already present are never embedded again).
Unreadable images are skipped, counted and listed (``skipped``), and retried by the next run.
An index only accepts additions and image queries from the model it was built with: the
manifest's fingerprint (weights, config, preprocessing), geometry and curvature must match.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embedder import Embedder
from .sources import IMAGE_EXTENSIONS, Item, items_from
from .store import FORMAT, FORMAT_VERSION, Manifest, ShardTable, embeddings_of, json_or_none, writer_lock
from .vectors import IndexFileError, VectorIndex, faiss_available

logger = logging.getLogger(__name__)

VECTOR_FILE = "vectors.faiss"

__all__ = ["HViTIndex", "IndexMismatchError"]


class IndexMismatchError(ValueError):
    """The index was built with another model, geometry, curvature or preprocessing."""


def _version() -> str:
    from .. import __version__

    return __version__


def _as_embedder(model: Any = None, embedder: Embedder | None = None, embed_fn: Callable | None = None,
                 **embed_kw: Any) -> Embedder:
    given = [x is not None for x in (model, embedder, embed_fn)]
    if sum(given) != 1:
        raise ValueError("give exactly one of model=, embedder= or embed_fn=")
    if embedder is not None:
        return embedder
    if model is not None:
        return Embedder.from_model(model, **embed_kw)
    return Embedder(embed_fn, **embed_kw)


def check_compatible(manifest: dict, embedder: Embedder, where: str) -> None:
    """Raise ``IndexMismatchError`` naming the first thing that differs."""
    got = embedder.describe()
    for key in ("geometry", "curvature"):
        if manifest.get(key) != got[key]:
            raise IndexMismatchError(f"{where}: the index was built with {key}={manifest.get(key)!r}, this model "
                                     f"has {key}={got[key]!r}; use the index's own model or build a new index")
    want, have = manifest.get("fingerprint", {}), got["fingerprint"]
    for part in sorted(set(want) | set(have)):
        if want.get(part) != have.get(part):
            what = {"weights": "different weights", "config": "a different config", "processor":
                    "a different image preprocessing", "embed_fn": "a different embed_fn"}.get(part, part)
            raise IndexMismatchError(f"{where}: the index was built by model {manifest.get('model_id')!r}; this "
                                     f"one has {what} (fingerprint mismatch); use the index's own model or "
                                     "build a new index")


class HViTIndex:
    """An opened index: rows (``table``, a ``datasets.Dataset``), embeddings, and the vector index."""

    def __init__(self, index_dir: str | os.PathLike, manifest: Manifest, table, embeddings: np.ndarray,
                 vectors: VectorIndex | None):
        self.dir, self.manifest, self.table, self.vectors = Path(index_dir), manifest, table, vectors
        self.embeddings = torch.from_numpy(embeddings)
        self._ids = self._paths = self._labels = None
        self._gallery_features = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def geometry(self) -> str:
        return self.manifest["geometry"]

    @property
    def curvature(self) -> float | None:
        return self.manifest.get("curvature")

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def _column(self, name: str) -> list:
        return [] if self.table is None else self.table.data.column(name).to_pylist()

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self._column("id")
        return self._ids

    @property
    def paths(self) -> list[str | None]:
        if self._paths is None:
            self._paths = self._column("path")
        return self._paths

    @property
    def labels(self) -> list[str | None]:
        if self._labels is None:
            self._labels = self._column("label")
        return self._labels

    @property
    def skipped(self) -> list[dict]:
        return self.manifest.get("skipped_items", [])

    def gallery_features(self) -> torch.Tensor:
        """Float32 inner-product features of every row (for exact range search and dedup)."""
        if self._gallery_features is None:
            from .scoring import features

            self._gallery_features = features(self.embeddings, self.geometry, self.curvature, "gallery").float()
        return self._gallery_features

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def load(cls, index_dir: str | os.PathLike, *, embedder: Embedder | None = None,
             use_faiss: bool | None = None) -> "HViTIndex":
        """Open an index; with ``embedder``, refuse it unless it is the model the index was built with."""
        manifest = Manifest.read(index_dir)
        if embedder is not None:
            check_compatible(manifest, embedder, str(index_dir))
        if not manifest.get("complete", False):
            raise RuntimeError(f"{index_dir}: the last build/add did not finish; rerun it (`hvit index add "
                               f"{index_dir} <images>` or the same `hvit index build`) to complete the index")
        table = ShardTable(index_dir).load()
        emb = embeddings_of(table, manifest.get("dim"))
        if len(emb) != manifest.get("count", 0):
            raise IndexFileError(f"{index_dir}: the table holds {len(emb)} rows, the manifest says "
                                 f"{manifest.get('count')}; rerun `hvit index add` to repair it")
        vectors = None
        if len(emb):
            vectors = _vector_index(manifest, use_faiss)
            record = manifest.get("vector_file") or {}
            if vectors.use_faiss and record:
                vectors.load_faiss(Path(index_dir) / record["file"], record)
                if vectors.ntotal != len(emb):
                    raise IndexFileError(f"{index_dir}/{record['file']}: {vectors.ntotal} vectors for {len(emb)} rows; "
                                         "delete it and run `hvit index add` to rebuild it")
            else:
                if vectors.kind != "flat":
                    raise ImportError(f"{index_dir}: a {vectors.kind!r} index needs FAISS: pip install 'hvit[faiss]'")
                vectors.use_faiss = False
                vectors.add(torch.from_numpy(emb))
        return cls(index_dir, manifest, table, emb, vectors)

    # -- writing -------------------------------------------------------------------------------
    @classmethod
    def build(cls, source: Any, index_dir: str | os.PathLike, model: Any = None, *,
              embedder: Embedder | None = None, embed_fn: Callable | None = None,
              kind: str = "flat", index_options: dict | None = None, **kwargs: Any) -> "HViTIndex":
        """Embed ``source`` (folder, ``.txt`` list, paths, ``hub:org/name`` / saved dataset) into a new
        index at ``index_dir``; an existing index there (same model) is resumed/extended.

        ``kind``: ``flat`` (exact), ``hnsw``, ``ivf`` or ``ivfpq``; ``index_options``: ``nlist``,
        ``pq_m``, ``hnsw_m``, ``ef_search``, ``nprobe``. Other keywords: see ``add``; ``geometry`` /
        ``curvature`` go with ``embed_fn``, ``device`` with ``model``.
        """
        embed_kw = {k: kwargs.pop(k) for k in ("geometry", "curvature", "device", "fingerprint", "model_id")
                    if k in kwargs}
        emb = _as_embedder(model, embedder, embed_fn, **embed_kw)
        index_dir = Path(index_dir)
        if index_dir.exists() and any(index_dir.iterdir()) and not (index_dir / "manifest.json").exists():
            raise FileExistsError(f"{index_dir} exists and is not an hvit index; choose an empty or new folder")
        return cls._write(index_dir, source, emb, create={"kind": kind, "options": dict(index_options or {})},
                          **kwargs)

    @classmethod
    def add(cls, index_dir: str | os.PathLike, source: Any, model: Any = None, *,
            embedder: Embedder | None = None, embed_fn: Callable | None = None, **kwargs: Any) -> "HViTIndex":
        """Append the items of ``source`` not yet in the index (ids already present are skipped).

        Keywords: ``batch_size`` (32), ``shard_size`` (1024 items per committed shard),
        ``progress`` (tqdm), ``labels_from_folders``, ``split`` / ``image_column`` / ``label_column``
        (datasets), ``max_skipped_fraction`` (1.0: stop if more than this fraction is unreadable).
        """
        Manifest.read(index_dir)  # must exist
        embed_kw = {k: kwargs.pop(k) for k in ("geometry", "curvature", "device", "fingerprint", "model_id")
                    if k in kwargs}
        return cls._write(Path(index_dir), source, _as_embedder(model, embedder, embed_fn, **embed_kw),
                          create=None, **kwargs)

    @classmethod
    def _write(cls, index_dir: Path, source: Any, embedder: Embedder, *, create: dict | None,
               batch_size: int = 32, shard_size: int = 1024, progress: bool = False,
               labels_from_folders: bool = False, split: str | None = None, image_column: str = "image",
               label_column: str | None = "label", metadata: dict[str, dict] | None = None,
               use_faiss: bool | None = None) -> "HViTIndex":
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be ≥ 1, got {batch_size}, {shard_size}")
        items = items_from(source, split=split, image_column=image_column, label_column=label_column,
                           labels_from_folders=labels_from_folders)
        if not items:
            raise ValueError(f"{source if not isinstance(source, list) else 'the list'}: no images to index "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        index_dir.mkdir(parents=True, exist_ok=True)
        with writer_lock(index_dir):
            manifest = cls._start(index_dir, embedder, create, use_faiss)
            shards = ShardTable(index_dir)
            shards.clean()
            done = shards.ids()
            pending = [it for it in items if it.id not in done]
            number = shards.next_number()
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(pending), desc=f"indexing {index_dir.name}", unit="img")
            try:
                for s0 in range(0, len(pending), shard_size):
                    chunk = pending[s0:s0 + shard_size]
                    cls._write_shard(shards, number, chunk, embedder, batch_size, manifest, index_dir, metadata, bar)
                    number += 1
            finally:
                if bar is not None:
                    bar.close()
            return cls._finish(index_dir, manifest, shards, use_faiss)

    @staticmethod
    def _start(index_dir: Path, embedder: Embedder, create: dict | None, use_faiss: bool | None) -> Manifest:
        try:
            manifest = Manifest.read(index_dir)
        except FileNotFoundError:
            if create is None:
                raise
            if create["kind"] != "flat" and not (faiss_available() if use_faiss is None else use_faiss):
                raise ImportError(f"index kind {create['kind']!r} needs FAISS: pip install 'hvit[faiss]'")
            manifest = Manifest(format=FORMAT, format_version=FORMAT_VERSION, **embedder.describe(),
                                hvit_version=_version(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                index={"kind": create["kind"], **create["options"]}, dim=None, count=0)
        else:
            check_compatible(manifest, embedder, str(index_dir))
            if create is not None and manifest["index"]["kind"] != create["kind"]:
                raise ValueError(f"{index_dir}: existing index is {manifest['index']['kind']!r}, not "
                                 f"{create['kind']!r}; build into a new folder to change the kind")
        manifest["complete"] = False
        manifest.write(index_dir)
        return manifest

    @staticmethod
    def _write_shard(shards: ShardTable, number: int, chunk: list[Item], embedder: Embedder, batch_size: int,
                     manifest: Manifest, index_dir: Path, metadata: dict | None, bar) -> None:
        rows = {"id": [], "path": [], "label": [], "metadata": []}
        embs, skipped = [], []
        for b0 in range(0, len(chunk), batch_size):
            batch = chunk[b0:b0 + batch_size]
            emb, ok, bad = embedder.embed_items(batch)
            for i in ok:
                it = batch[i]
                rows["id"].append(it.id)
                rows["path"].append(it.path)
                rows["label"].append(it.label)
                rows["metadata"].append(json_or_none({**it.metadata, **((metadata or {}).get(it.id) or {})}))
            if len(ok):
                embs.append(emb.numpy())
            skipped += [{"id": batch[i].id, "path": batch[i].path, "reason": why} for i, why in bad]
            for _, why in bad:
                logger.warning("skipped: %s", why)
            if bar is not None:
                bar.update(len(batch))
        if embs:
            dim = embs[0].shape[1]
            if manifest.get("dim") is None:
                manifest["dim"] = dim
                manifest.write(index_dir)
            elif manifest["dim"] != dim:
                raise IndexMismatchError(f"{index_dir}: embeddings of dim {dim}, the index holds dim {manifest['dim']}")
        dim = manifest.get("dim") or 1
        shards.write(number, rows, np.concatenate(embs) if embs else np.zeros((0, dim), np.float32), skipped)

    @staticmethod
    def _finish(index_dir: Path, manifest: Manifest, shards: ShardTable, use_faiss: bool | None) -> "HViTIndex":
        table = shards.load()
        emb = embeddings_of(table, manifest.get("dim"))
        present = set() if table is None else set(table.data.column("id").to_pylist())
        latest = {}
        for s in shards.skipped():
            if s["id"] not in present:
                latest[s["id"]] = s
        vectors = None
        if len(emb):
            vectors = _vector_index(manifest, use_faiss)
            record = manifest.get("vector_file") or {}
            start = 0
            if vectors.use_faiss and record:
                try:  # extend the existing file: rows are appended in table order
                    vectors.load_faiss(index_dir / record["file"], record)
                    start = vectors.ntotal if vectors.ntotal <= len(emb) else 0
                except IndexFileError as err:
                    logger.warning("%s; rebuilding it from the table", err)
                    start = 0
                if start == 0:
                    vectors = _vector_index(manifest, use_faiss)
            for b0 in range(start, len(emb), 65536):
                vectors.add(torch.from_numpy(emb[b0:b0 + 65536]))
            manifest["vector_file"] = vectors.save(index_dir / VECTOR_FILE) or None
            manifest["index"]["backend"] = "faiss" if vectors.use_faiss else "torch"
        manifest.update(count=int(len(emb)), skipped=len(latest), skipped_items=list(latest.values()),
                        complete=True, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), hvit_version=_version())
        manifest.write(index_dir)
        return HViTIndex(index_dir, manifest, table, emb, vectors)

    def export_parquet(self, path: str | os.PathLike, *, lifted: bool = True) -> Path:
        """Rows (id, path, label, vector) as Parquet for any vector database with inner-product search.

        ``lifted=True`` writes the gallery-side features (``scoring.features``: the Lorentz lift for
        poincare, unit vectors for sphere, ``[x, −‖x‖²/2]`` for euclidean); search them with the
        query-side features of the query (``features(q, geometry, curvature, "query")``) by maximum
        inner product: the ranking is the geometry's nearest-neighbour ranking."""
        import datasets

        vec = self.gallery_features() if lifted else self.embeddings
        ds = datasets.Dataset.from_dict({"id": self.ids, "path": self.paths, "label": self.labels,
                                         "vector": vec.numpy()})
        ds.to_parquet(str(path))
        return Path(path)

    # -- queries (see query.py) ----------------------------------------------------------------
    def embed_queries(self, queries: Any, embedder: Embedder | None = None, model: Any = None) -> torch.Tensor:
        """Query embeddings: a tensor/array as is, else images (paths, folder, PIL) embedded by the
        index's own model (checked against the fingerprint)."""
        if torch.is_tensor(queries) or isinstance(queries, np.ndarray):
            q = torch.as_tensor(queries).float()
            if q.ndim == 1:
                q = q[None]
            if len(self) and q.shape[1] != self.embeddings.shape[1]:
                raise ValueError(f"query dim {q.shape[1]} != index dim {self.embeddings.shape[1]}")
            return q
        if embedder is None and model is None:
            raise ValueError("image queries need the index's model (model=...) or an embedder")
        embedder = embedder or Embedder.from_model(model)
        check_compatible(self.manifest, embedder, str(self.dir))
        if isinstance(queries, (str, os.PathLike)) and Path(queries).is_dir():
            queries = [it.path for it in items_from(queries)]
            if not queries:
                raise ValueError("the query folder holds no images")
        elif isinstance(queries, (str, os.PathLike)) or hasattr(queries, "convert"):
            queries = [queries]
        return embedder.embed_images(list(queries))

    def search(self, queries: Any, k: int = 10, *, model: Any = None, embedder: Embedder | None = None,
               **kwargs: Any) -> list[list[dict]]:
        """Top-k neighbours of each query (embeddings or images); see ``query.semantic_search``."""
        from .query import semantic_search

        return semantic_search(self.embed_queries(queries, embedder, model), self, top_k=k, **kwargs)

    def range_search(self, queries: Any, max_distance: float, *, model: Any = None,
                     embedder: Embedder | None = None) -> list[list[dict]]:
        """Everything within ``max_distance`` of each query; see ``query.range_search``."""
        from .query import range_search

        return range_search(self.embed_queries(queries, embedder, model), self, max_distance)


def _vector_index(manifest: dict, use_faiss: bool | None) -> VectorIndex:
    opts = {k: v for k, v in manifest["index"].items() if k not in ("kind", "backend")}
    return VectorIndex(manifest["geometry"], manifest.get("curvature"), manifest["dim"], manifest["index"]["kind"],
                       use_faiss=use_faiss, **opts)
