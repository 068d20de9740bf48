# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""``HViTIndex``: build, extend, open and query a persistent image index (layout in ``store.py``).

``HViTIndex.build(source, dir, model)`` embeds a folder / file list / HF dataset batch by batch and
commits a shard every ``shard_size`` items, then (re)builds the vector index; ``add`` does the same
on an existing index. Both resume: rerun after an interruption and every image ends up in the
table exactly once (items are keyed by id; ids already present are never embedded again).
Unreadable images are skipped, counted and listed (``skipped``), and retried by the next run.
Under ``accelerate launch`` (or any process group of several ranks) the work is shared: each rank
embeds its chunks and rank 0 merges them into the one index a single process would have built
(``sharding.py``).
An index only accepts additions and image queries from the model it was built with: the
manifest's fingerprint (weights, config, preprocessing), geometry and curvature must match.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embedder import Embedder
from .sharding import Plan, ProcessGroup, adopt_parts, launched_world_size, parts_table, prepare_plan
from .sources import IMAGE_EXTENSIONS, Item, items_from
from .store import FORMAT, FORMAT_VERSION, Manifest, ShardTable, embeddings_of, writer_lock
from .vectors import IndexFileError, VectorIndex, faiss_available
from .writer import ChunkEmbedder, IndexMismatchError

logger = logging.getLogger(__name__)

VECTOR_FILE = "vectors.faiss"

__all__ = ["HViTIndex", "IndexMismatchError"]


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
        (datasets), ``distributed`` (None: share the work between the processes of an
        ``accelerate launch`` / initialised process group when there are several; see ``sharding.py``).
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
               use_faiss: bool | None = None, distributed: bool | None = None) -> "HViTIndex":
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be ≥ 1, got {batch_size}, {shard_size}")
        items = items_from(source, split=split, image_column=image_column, label_column=label_column,
                           labels_from_folders=labels_from_folders)
        if not items:
            raise ValueError(f"{source if not isinstance(source, list) else 'the list'}: no images to index "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        index_dir.mkdir(parents=True, exist_ok=True)
        job = ChunkEmbedder(embedder, batch_size, shard_size, metadata, progress, index_dir)
        if distributed or (distributed is None and launched_world_size() > 1):
            return cls._write_sharded(index_dir, items, job, create, use_faiss, ProcessGroup())
        with writer_lock(index_dir):
            manifest = cls._start(index_dir, embedder, create, use_faiss)
            adopt_parts(index_dir)  # parts of an interrupted multi-process run: committed, not redone
            shards = ShardTable(index_dir)
            shards.clean()
            done = shards.ids()
            pending = [it for it in items if it.id not in done]
            number = shards.next_number()
            with job.bar(len(pending)) as bar:
                for s0 in range(0, len(pending), shard_size):
                    rows, emb, skipped = job.embed(pending[s0:s0 + shard_size], bar)
                    if emb is not None and manifest.get("dim") is None:
                        manifest["dim"] = emb.shape[1]
                        manifest.write(index_dir)
                    shards.write(number, rows, job.array(emb, manifest), skipped)
                    number += 1
            return cls._finish(index_dir, manifest, shards, use_faiss)

    @classmethod
    def _write_sharded(cls, index_dir: Path, items: list[Item], job: ChunkEmbedder, create: dict | None,
                       use_faiss: bool | None, group: ProcessGroup) -> "HViTIndex":
        """Several processes (``sharding.py``): rank 0 locks and plans, every rank embeds its chunks
        into parts, rank 0 merges them and builds the vector index; the others then open the result.
        A failure on any rank raises on every rank (no rank is left waiting)."""
        rank, failure = group.rank, None

        def outcome(fn):
            nonlocal failure
            try:
                return "ok", fn()
            except Exception as err:  # reported to every rank, re-raised below
                failure = err
                return "error", f"rank {rank}: {type(err).__name__}: {err}"

        def raise_first(reports: list[tuple[str, Any]]):
            errors = [msg for status, msg in reports if status == "error"]
            if failure is not None:
                raise failure
            if errors:
                raise RuntimeError(f"{index_dir}: another process failed ({errors[0]}); rerun to resume")

        with ExitStack() as stack:
            manifest = None
            if rank == 0:
                def prepare():
                    nonlocal manifest
                    stack.enter_context(writer_lock(index_dir))
                    manifest = cls._start(index_dir, job.embedder, create, use_faiss)
                    ShardTable(index_dir).clean()
                    return prepare_plan(index_dir, [it.id for it in items], job.shard_size)
                prepared = outcome(prepare)
            prepared = group.broadcast(prepared if rank == 0 else None)
            raise_first([prepared])
            plan: Plan = prepared[1]

            def embed_share():
                nonlocal manifest
                if rank != 0:
                    manifest = Manifest.read(index_dir)
                    check_compatible(manifest, job.embedder, f"{index_dir} (process {rank})")
                done = ShardTable(index_dir).ids()
                pending = [it for it in items if it.id not in done]
                if Plan.of([it.id for it in pending], plan.base, plan.shard_size) != plan:
                    raise ValueError(f"{index_dir}: process {rank} sees {len(pending)} images to index, process 0 "
                                     f"sees {plan.count}; every process must see the same images and index folder")
                parts = parts_table(index_dir)
                finished = {parts.number(p) for p in parts.shard_paths()}
                todo = [j for j in range(plan.chunks) if j % group.world == rank and j not in finished]
                dims = set()
                with job.bar(sum(len(pending[j * plan.shard_size:(j + 1) * plan.shard_size]) for j in todo),
                             show=rank == 0) as bar:
                    for j in todo:
                        rows, emb, skipped = job.embed(pending[j * plan.shard_size:(j + 1) * plan.shard_size], bar)
                        if emb is not None:
                            dims.add(emb.shape[1])
                        parts.write(j, rows, job.array(emb, manifest), skipped)
                return sorted(dims)

            reports = group.all_gather(outcome(embed_share))
            raise_first(reports)
            dims = {d for _, ds in reports for d in ds} | ({manifest["dim"]} if manifest.get("dim") else set())
            if len(dims) > 1:
                raise IndexMismatchError(f"{index_dir}: embeddings of dims {sorted(dims)}; one model gives one dim")
            result = None
            if rank == 0:
                def merge():
                    if dims and manifest.get("dim") is None:
                        manifest["dim"] = dims.pop()
                        manifest.write(index_dir)
                    adopt_parts(index_dir)
                    return cls._finish(index_dir, manifest, ShardTable(index_dir), use_faiss)
                merged = outcome(merge)
                result = merged[1] if merged[0] == "ok" else None
            merged = group.broadcast((merged[0], None if merged[0] == "ok" else merged[1]) if rank == 0 else None)
        raise_first([merged])
        return result if rank == 0 else cls.load(index_dir, use_faiss=use_faiss)

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

