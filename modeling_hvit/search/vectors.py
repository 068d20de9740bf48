# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The vector index of a search index: FAISS when installed, an exact torch matrix product otherwise.

Kinds: ``flat`` (exact; an inner-product index on ``scoring.features``: the Lorentz lift for
poincare, so exact inner-product search is exact hyperbolic nearest-neighbour search), and the
approximate ``hnsw``, ``ivf`` and ``ivfpq`` for large galleries. An approximate index compares
gallery items with each other while it is built, which the asymmetric Lorentz inner product cannot
do (it is not a proximity between two gallery points), so it indexes a proxy (L2 between the
gallery-side lifts for poincare, the raw vectors for euclidean, unit vectors for sphere) and the
search re-ranks ``refine · k`` of its candidates by the exact distance.

Files are plain FAISS (``faiss.write_index``), so they load in FAISS GPU or any FAISS tool; the
manifest keeps their size and SHA-256, and ``load`` refuses a truncated or foreign file.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from .scoring import features, one_torch_thread

KINDS = ("flat", "hnsw", "ivf", "ivfpq")

__all__ = ["KINDS", "IndexFileError", "VectorIndex", "faiss_available", "file_sha256"]


class IndexFileError(ValueError):
    """A vector-index file that is missing, truncated, foreign or inconsistent with the manifest."""


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class VectorIndex:
    """``kind`` over embeddings of one geometry; ``add`` lifts and appends, ``candidates`` searches."""

    def __init__(self, geometry: str, curvature: float | None, dim: int, kind: str = "flat", *,
                 nlist: int | None = None, pq_m: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 nprobe: int | None = None, use_faiss: bool | None = None):
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.geometry, self.curvature, self.dim, self.kind = geometry, curvature, dim, kind
        self.nlist, self.pq_m, self.hnsw_m, self.ef_search, self.nprobe = nlist, pq_m, hnsw_m, ef_search, nprobe
        self.use_faiss = faiss_available() if use_faiss is None else use_faiss
        if kind != "flat" and not self.use_faiss:
            raise ImportError(f"index kind {kind!r} needs FAISS: pip install 'hvit[faiss]' (or use kind='flat')")
        self.faiss_index = None
        self._torch_rows: list[torch.Tensor] = []  # torch backend: gallery features

    # -- what is indexed -----------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def gallery_vectors(self, emb: torch.Tensor) -> np.ndarray:
        if self.exact or self.geometry == "sphere":
            x = features(emb, self.geometry, self.curvature, "gallery")
        else:  # proxy: poincare → gallery-side lift, euclidean → raw
            x = features(emb, self.geometry, self.curvature, "gallery") if self.geometry == "poincare" else emb.float()
        return self._pad(x.float().contiguous().numpy())

    def query_vectors(self, emb: torch.Tensor) -> np.ndarray:
        side = "query" if self.exact else "gallery"
        if not self.exact and self.geometry == "euclidean":
            return self._pad(emb.float().contiguous().numpy())
        return self._pad(features(emb, self.geometry, self.curvature, side).float().contiguous().numpy())

    @property
    def width(self) -> int:
        return self.dim + (0 if (self.geometry == "sphere" or (not self.exact and self.geometry == "euclidean")) else 1)

    def _padded_width(self) -> int:
        return math.ceil(self.width / self.pq_m) * self.pq_m if self.kind == "ivfpq" else self.width

    def _pad(self, x: np.ndarray) -> np.ndarray:
        extra = self._padded_width() - x.shape[1]  # IVF-PQ needs a width divisible by pq_m; zeros change no score
        return np.ascontiguousarray(np.pad(x, ((0, 0), (0, extra))) if extra else x)

    def _metric(self):
        import faiss

        return faiss.METRIC_INNER_PRODUCT if self._metric_is_ip() else faiss.METRIC_L2

    # -- building ------------------------------------------------------------------------------
    def _new_faiss(self, n_train: int):
        import faiss

        d, metric = self._padded_width(), self._metric()
        if self.kind == "flat":
            return faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            ix = faiss.IndexHNSWFlat(d, self.hnsw_m, metric)
            ix.hnsw.efConstruction = max(40, 2 * self.hnsw_m)
            return ix
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n_train)), n_train // 39 or 1))
        quantizer = faiss.IndexFlatIP(d) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
        if self.kind == "ivf":
            ix = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        else:
            ix = faiss.IndexIVFPQ(quantizer, d, nlist, self.pq_m, 8, metric)
        return ix  # the faiss Python wrapper keeps a reference to the quantizer

    @property
    def ntotal(self) -> int:
        if self.use_faiss:
            return 0 if self.faiss_index is None else int(self.faiss_index.ntotal)
        return sum(len(r) for r in self._torch_rows)

    def add(self, emb: torch.Tensor) -> None:
        """Append rows (float32 embeddings, (n, dim)). IVF kinds train on the first batch added."""
        if emb.shape[0] == 0:
            return
        if emb.shape[1] != self.dim:
            raise ValueError(f"embedding dim {emb.shape[1]} != index dim {self.dim}")
        if not self.use_faiss:
            self._torch_rows.append(torch.from_numpy(self.gallery_vectors(emb)))
            return
        x = self.gallery_vectors(emb)
        if self.faiss_index is None:
            self.faiss_index = self._new_faiss(x.shape[0])
            if not self.faiss_index.is_trained:
                if x.shape[0] < getattr(self.faiss_index, "nlist", 1):
                    raise ValueError(f"{self.kind} index with nlist={self.faiss_index.nlist} needs at least that "
                                     f"many images to train on the first build, got {x.shape[0]}")
                sample = x[np.random.default_rng(0).permutation(x.shape[0])[:256 * self.faiss_index.nlist]]
                self.faiss_index.train(sample)
        self.faiss_index.add(x)

    def _configure_search(self, n_cand: int) -> None:
        ix = self.faiss_index
        if self.kind == "hnsw":
            ix.hnsw.efSearch = max(self.ef_search, n_cand)
        elif self.kind in ("ivf", "ivfpq"):
            ix.nprobe = min(ix.nlist, self.nprobe or max(8, ix.nlist // 16))

    # -- searching -----------------------------------------------------------------------------
    def candidates(self, q_emb: torch.Tensor, n_cand: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) of ``n_cand`` candidates per query, higher = closer (−L2² for L2 indexes);
        index −1 marks a missing candidate (approximate indexes)."""
        n_cand = min(n_cand, self.ntotal)
        workers = torch.get_num_threads()
        with one_torch_thread():
            q = self.query_vectors(q_emb)
        if not self.use_faiss:
            from .scoring import exact_topk

            return exact_topk(torch.from_numpy(q), self.torch_matrix(), n_cand)
        self._configure_search(n_cand)
        d, i = self._search_threads(q, n_cand, workers)
        d, i = torch.from_numpy(d), torch.from_numpy(i)
        return (d if self._metric_is_ip() else -d), i

    def _search_threads(self, q: np.ndarray, n_cand: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search with single-threaded OpenMP, the queries split over up to ``threads`` Python
        threads (FAISS releases the GIL; its indexes are safe for concurrent searches). OpenMP teams
        spin-wait at their barriers, which on a busy CPU cost more than the work (measured: 1,000
        queries on 100k: 0.34 CPU-s with one thread, 1.6 with two); independent threads never wait.
        FAISS's flat search switches from a scan per query to a matrix product at 128,000 / dim
        queries per call (1,000 for 128-d), 10x cheaper per query from 8 queries on (measured 3.4 →
        0.35 CPU-ms per query at 256 queries on 100k); so the switch is lowered to 8 queries here."""
        import faiss

        workers = max(1, min(threads, len(q) // 32))
        before, blas = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
        faiss.omp_set_num_threads(1)
        faiss.cvar.distance_compute_blas_threshold = 8 * q.shape[1]
        try:
            if workers == 1:
                return self.faiss_index.search(q, n_cand)
            from concurrent.futures import ThreadPoolExecutor

            bounds = np.linspace(0, len(q), workers + 1).astype(int)

            def part(ab):
                faiss.omp_set_num_threads(1)  # per thread: OpenMP's thread count is a per-thread setting
                return self.faiss_index.search(q[ab[0]:ab[1]], n_cand)

            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(part, zip(bounds[:-1], bounds[1:])))
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        finally:
            faiss.omp_set_num_threads(before)
            faiss.cvar.distance_compute_blas_threshold = blas

    def _metric_is_ip(self) -> bool:
        return self.exact or self.geometry == "sphere"

    def torch_matrix(self) -> torch.Tensor:
        """The indexed vectors as a float32 (ntotal, width) tensor: a view of a flat FAISS index's
        storage (valid while that index lives), or the torch backend's rows."""
        if self.use_faiss:
            import faiss

            ix = self.faiss_index
            return torch.from_numpy(faiss.rev_swig_ptr(ix.get_xb(), ix.ntotal * ix.d).reshape(ix.ntotal, ix.d))
        if len(self._torch_rows) > 1:
            self._torch_rows = [torch.cat(self._torch_rows)]
        return self._torch_rows[0] if self._torch_rows else torch.empty(0, self._padded_width())

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> dict:
        """Write the FAISS file atomically; returns its ``{"file", "bytes", "sha256", "ntotal"}``
        (the torch backend writes nothing: it rebuilds from the embeddings)."""
        if not self.use_faiss or self.faiss_index is None:
            return {}
        import faiss

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.faiss_index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
                "ntotal": int(self.faiss_index.ntotal)}

    def load_faiss(self, path: str | os.PathLike, expected: dict) -> None:
        """Read a FAISS file after checking its size and SHA-256 against the manifest's record."""
        import faiss

        path = Path(path)
        if not path.exists():
            raise IndexFileError(f"{path}: vector index file is missing")
        size = path.stat().st_size
        if expected.get("bytes") is not None and size != expected["bytes"]:
            raise IndexFileError(f"{path}: {size} bytes, the manifest recorded {expected['bytes']} "
                                 "(truncated or replaced); delete it and run `hvit index add` to rebuild it")
        if expected.get("sha256") and file_sha256(path) != expected["sha256"]:
            raise IndexFileError(f"{path}: content differs from the one this index wrote (foreign or corrupted "
                                 "file); delete it and run `hvit index add` to rebuild it")
        try:
            ix = faiss.read_index(str(path))
        except RuntimeError as err:
            raise IndexFileError(f"{path}: not a readable FAISS index ({str(err).splitlines()[0][:200]})") from err
        if ix.d != self._padded_width():
            raise IndexFileError(f"{path}: FAISS index of width {ix.d}, expected {self._padded_width()}")
        self.faiss_index = ix
