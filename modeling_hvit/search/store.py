# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The on-disk pieces of an index directory: manifest, writer lock, and the Arrow table in shards.

::

    my-index/
      manifest.json          model id + fingerprint, geometry, curvature, processor, counts, index kind
      table/shard-00000.arrow   rows (id, path, label, metadata, embedding) as a `datasets` Arrow file
      table/shard-00000.skipped.json   items of that shard that could not be read
      table/parts/           a multi-process build's parts before rank 0 merges them (sharding.py)
      vectors.faiss          the FAISS index over the rows, in table order (see vectors.py)
      .lock                  held (flock) by the one process writing

A shard is committed by an atomic rename of its Arrow file, so after a crash (even ``kill -9``)
the directory holds whole shards only; a rerun embeds what no shard holds yet. The lock is an
``fcntl.flock``: the kernel releases it when the writer dies, so there are no stale locks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np

__all__ = ["FORMAT", "IndexLockedError", "Manifest", "ShardTable", "writer_lock"]

FORMAT, FORMAT_VERSION = "hvit-index", 1
MANIFEST, TABLE_DIR, LOCK = "manifest.json", "table", ".lock"
_SHARD = re.compile(r"^shard-(\d{5,})\.arrow$")


class IndexLockedError(RuntimeError):
    """Another process is writing this index."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Manifest(dict):
    """``manifest.json`` as a dict; ``read`` refuses files that are not an hvit index."""

    @classmethod
    def read(cls, index_dir: str | os.PathLike) -> "Manifest":
        path = Path(index_dir) / MANIFEST
        if not path.exists():
            what = "is not a folder" if not Path(index_dir).is_dir() else f"has no {MANIFEST}"
            raise FileNotFoundError(f"{index_dir} {what}: not an hvit index (build one with `hvit index build`)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); the index is damaged") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an hvit index manifest (expected \"format\": \"{FORMAT}\")")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: index format version {data['format_version']} is newer than this hvit "
                             f"({FORMAT_VERSION}); upgrade hvit")
        return cls(data)

    def write(self, index_dir: str | os.PathLike) -> None:
        _atomic_write(Path(index_dir) / MANIFEST, json.dumps(self, indent=2, sort_keys=True) + "\n")


class writer_lock:
    """``with writer_lock(dir):`` — exclusive, non-blocking; a second writer gets ``IndexLockedError``."""

    def __init__(self, index_dir: str | os.PathLike):
        self.path = Path(index_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "writer_lock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise IndexLockedError(f"{self.path.parent}: another process (pid {holder}) is writing this index; "
                                   "wait for it to finish, then rerun (nothing was changed)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _features(dim: int) -> datasets.Features:
    seq = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Features({"id": datasets.Value("string"), "path": datasets.Value("string"),
                              "label": datasets.Value("string"), "metadata": datasets.Value("string"),
                              "embedding": seq(datasets.Value("float32"), length=dim)})


class ShardTable:
    """The Arrow shards of an index directory, in commit order."""

    def __init__(self, index_dir: str | os.PathLike, sub: str = TABLE_DIR):
        self.dir = Path(index_dir) / sub

    @staticmethod
    def number(path: Path) -> int:
        return int(_SHARD.match(path.name).group(1))

    def shard_paths(self) -> list[Path]:
        if not self.dir.exists():
            return []
        found = sorted((int(m.group(1)), p) for p in self.dir.iterdir() if (m := _SHARD.match(p.name)))
        return [p for _, p in found]

    def clean(self) -> None:
        """Remove leftovers of an interrupted write (``*.tmp``, skip lists without their shard)."""
        if not self.dir.exists():
            return
        shards = {p.name for p in self.shard_paths()}
        for p in self.dir.iterdir():
            orphan = p.name.endswith(".skipped.json") and p.name.replace(".skipped.json", ".arrow") not in shards
            if p.name.endswith(".tmp") or orphan:
                p.unlink()

    def next_number(self) -> int:
        paths = self.shard_paths()
        return self.number(paths[-1]) + 1 if paths else 0

    def write(self, number: int, rows: dict[str, list], embeddings: np.ndarray, skipped: list[dict]) -> Path:
        """Write one shard: skip list first, then the Arrow file renamed into place (the commit)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{number:05d}"
        _atomic_write(self.dir / f"{name}.skipped.json", json.dumps(skipped))
        from datasets.arrow_writer import ArrowWriter

        final, tmp = self.dir / f"{name}.arrow", self.dir / f"{name}.arrow.tmp"
        writer = ArrowWriter(features=_features(embeddings.shape[1]), path=str(tmp))
        writer.write_batch({**rows, "embedding": list(embeddings.astype(np.float32))})
        writer.finalize()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final

    def load(self) -> datasets.Dataset | None:
        """All committed rows as one memory-mapped ``datasets.Dataset`` (None when no shard)."""
        parts = []
        for p in self.shard_paths():
            try:
                parts.append(datasets.Dataset.from_file(str(p)))
            except Exception as err:  # pyarrow raises ArrowInvalid / OSError on damaged files
                raise ValueError(f"{p}: not a readable Arrow shard ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:200]}); the index is damaged") from err
        parts = [d for d in parts if len(d)]
        if not parts:
            return None
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def ids(self) -> set[str]:
        """Ids of every committed row (read from the id column only)."""
        ds = self.load()
        return set() if ds is None else set(ds.data.column("id").to_pylist())

    def skipped(self) -> list[dict]:
        out = []
        for p in self.shard_paths():
            side = p.with_name(p.name.replace(".arrow", ".skipped.json"))
            if side.exists():
                out.extend(json.loads(side.read_text()))
        return out


def embeddings_of(ds: datasets.Dataset | None, dim: int | None) -> np.ndarray:
    """The embedding column as a float32 (n, dim) array (zero-copy per Arrow chunk, then one concatenation)."""
    if ds is None:
        return np.zeros((0, dim or 0), np.float32)
    col = ds.data.column("embedding")
    chunks = [c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), -1) for c in col.chunks if len(c)]
    return np.ascontiguousarray(np.concatenate(chunks) if chunks else np.zeros((0, dim or 0), np.float32),
                                dtype=np.float32)


def json_or_none(value: Any) -> str | None:
    return None if not value else json.dumps(value, sort_keys=True, default=str)
