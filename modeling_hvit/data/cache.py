# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Decode-once training cache: each split stored once at a reduced size, so training decodes small images.

An image is reduced to ``min_side`` pixels on its shorter side (never enlarged), decoding JPEGs in
PIL's draft mode (libjpeg's DCT-domain 1/2–1/8 scaling, to no less than twice the target, then a
bicubic resize), and stored in a sharded Arrow dataset (``datasets.save_to_disk``) as JPEG
(``quality`` 95, 4:4:4) or raw (uncompressed PPM: decoding is a copy). Both are ordinary
``datasets.Image`` values, so the cached split is a drop-in for the original (same columns, same
``with_image_transform``). RandomResizedCrop draws its box relative to the image (a fraction of the
area, an aspect ratio), so crops from the cache cover the same part of the scene as crops from the
original; only the pixels per crop differ (a crop of scale s has √s·min_side pixels on its shorter
side before the resize: ``min_side`` 256 upsamples crops below (224/256)² ≈ 0.77 of the area, 512
keeps every crop of scale ≥ 0.2 at or above 224 px).

The cache directory is named by a fingerprint of the source split (its ``datasets`` fingerprint and
its Arrow files' sizes and modification times, or the table's content when in memory, plus the size
and modification time of every image stored by path) and of the settings: a changed source or setting
builds a new cache, an unchanged one is reused. A cache is written to a temporary directory and renamed
into place with its ``hvit_cache.json`` (which lists its files and their sizes) only when complete; a
directory without it, or whose files no longer have the listed sizes, is never read (it is rebuilt).

    python -m modeling_hvit.data.cache --dataset caltech101 --data_dir ../shared/data/caltech101 \
        [--out_dir DIR] [--min_side 256] [--format jpeg|raw] [--num_proc 8]

The default root (`default_cache_dir`) is ``$HF_HOME/hvit/images`` (``~/.cache/huggingface/hvit/images``);
``hvit train --cache_images true`` reads and builds its caches there too (``--cache_dir``).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import warnings
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .transforms import BICUBIC, to_rgb

__all__ = ["FORMATS", "build_cache", "cache_fingerprint", "cache_path", "decode_cached", "default_cache_dir",
           "encode_cached", "is_complete", "main", "reduce_image", "reduced_size"]

FORMATS = ("jpeg", "raw")
CACHE_VERSION = 1
META = "hvit_cache.json"


def default_cache_dir() -> Path:
    """``$HF_HOME/hvit/images`` (``~/.cache/huggingface/hvit/images`` unless ``HF_HOME`` is set)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hvit" / "images"


def reduced_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """``(w, h)`` with the shorter side ``min_side`` (aspect kept, rounded), or unchanged if smaller."""
    short = min(width, height)
    if short <= min_side:
        return width, height
    s = min_side / short
    return (min_side, max(1, round(height * s))) if width <= height else (max(1, round(width * s)), min_side)


def reduce_image(image: Image.Image | bytes, min_side: int = 256, draft: bool = True) -> Image.Image:
    """An RGB image whose shorter side is ``min_side`` (never enlarged).

    With ``draft``, a JPEG is decoded by libjpeg at the largest 1/2–1/8 scale that keeps at least
    twice the target size (so the bicubic resize that follows still antialiases properly).
    """
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    size = reduced_size(*image.size, min_side)
    if draft and image.format == "JPEG" and size != image.size:
        image.draft("RGB", (2 * size[0], 2 * size[1]))
    image = to_rgb(image)
    size = reduced_size(*image.size, min_side)
    return image if size == image.size else image.resize(size, BICUBIC)


def encode_cached(image: Image.Image, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Image file bytes: JPEG at ``quality`` (4:4:4 chroma) or raw RGB as binary PPM."""
    image = to_rgb(image)
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0)
    elif fmt == "raw":
        image.save(buf, format="PPM")
    else:
        raise ValueError(f"cache format {fmt!r}: expected one of {FORMATS}")
    return buf.getvalue()


def decode_cached(data: bytes) -> Image.Image:
    """The RGB PIL image of `encode_cached` bytes."""
    image = Image.open(io.BytesIO(data))
    return image if image.mode == "RGB" else image.convert("RGB")


def _source_state(dataset, image_column: str) -> list:
    files = [f["filename"] for f in dataset.cache_files]
    if files:
        state = [dataset._fingerprint, [(os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]]
    else:
        from datasets.fingerprint import Hasher

        state = [Hasher.hash(dataset.data.table), dataset._indices is not None and Hasher.hash(dataset._indices)]
    return state + [_linked_files_digest(dataset, image_column)]


def _linked_files_digest(dataset, image_column: str) -> str:
    """Digest of (path, size, mtime) of every image stored by path only (a folder dataset holds paths:
    an image edited in place changes no Arrow byte). Reads the Arrow ``path``/``bytes`` children only."""
    import pyarrow as pa

    digest = hashlib.sha256()
    if image_column not in dataset.data.column_names:
        return ""
    for chunk in dataset.data.column(image_column).chunks:
        if not pa.types.is_struct(chunk.type) or chunk.type.get_field_index("path") < 0:
            continue
        paths = chunk.field("path").to_pylist()
        has_bytes = (chunk.field("bytes").is_valid().to_pylist() if chunk.type.get_field_index("bytes") >= 0
                     else [False] * len(paths))
        for path, inline in zip(paths, has_bytes):
            if path and not inline:
                try:
                    st = os.stat(path)
                    digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def cache_fingerprint(dataset, *, min_side: int, fmt: str, quality: int, draft: bool, image_column: str) -> str:
    """Hex digest of the source split's identity and the cache settings (see the module docstring)."""
    state = [CACHE_VERSION, _source_state(dataset, image_column), len(dataset), min_side, fmt, quality, draft,
             image_column]
    return hashlib.sha256(json.dumps(state, default=str).encode()).hexdigest()[:20]


def _open_source(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    return Image.open(value["path"])


def _reduce_one(value, min_side: int, fmt: str, quality: int, draft: bool) -> dict:
    try:
        return {"bytes": encode_cached(reduce_image(_open_source(value), min_side, draft), fmt, quality), "path": None}
    except Exception as err:  # PIL raises a zoo of types for bad data
        from .sources import DataError

        path = value.get("path") if isinstance(value, dict) else None
        raise DataError(f"image cache: image {path!r} is not readable ({type(err).__name__}: {err}); rebuild the "
                        "dataset with verify_images=True (add skip_bad_images=True to drop bad images)") from None


def _reduce_batch(batch: dict, image_column: str, min_side: int, fmt: str, quality: int, draft: bool) -> dict:
    return {image_column: [_reduce_one(v, min_side, fmt, quality, draft) for v in batch[image_column]]}


def _files_of(path: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file() and f.name != META}


def is_complete(path: str | os.PathLike) -> bool:
    """A finished cache: its metadata exists and every file it lists has the listed size (a truncated
    or half-copied cache is not read)."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
        return meta.get("version") == CACHE_VERSION and _files_of(path) == meta["files"]
    except (OSError, ValueError, KeyError):
        return False


def cache_path(dataset, cache_dir: str | os.PathLike, *, min_side: int = 256, fmt: str = "jpeg", quality: int = 95,
               draft: bool = True, image_column: str = "image") -> Path:
    """Where `build_cache` keeps the cache of ``dataset`` with these settings (complete or not)."""
    fp = cache_fingerprint(dataset, min_side=min_side, fmt=fmt, quality=quality, draft=draft, image_column=image_column)
    return Path(cache_dir) / fp


def build_cache(dataset, cache_dir: str | os.PathLike, *, min_side: int = 256, fmt: str = "jpeg", quality: int = 95,
                draft: bool = True, image_column: str = "image", num_proc: int | None = None,
                max_shard_size: str | int = "500MB"):
    """The cached copy of ``dataset`` (a ``datasets.Dataset`` with an image column), built once.

    Returns the cached split loaded from ``cache_dir/<fingerprint>``, building it first when that
    directory has no complete cache (written to a temporary directory, then renamed). Safe when
    several processes or machines build the same cache at once: each writes its own temporary
    directory and the first complete one to be renamed into place is kept.
    """
    import datasets

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
    if min_side < 1 or not 1 <= quality <= 100:
        raise ValueError(f"min_side must be ≥ 1 and quality in 1..100, got min_side={min_side}, quality={quality}")
    if image_column not in dataset.column_names:
        raise KeyError(f"dataset has no column {image_column!r} (columns: {dataset.column_names})")
    path = cache_path(dataset, cache_dir, min_side=min_side, fmt=fmt, quality=quality, draft=draft,
                      image_column=image_column)
    fp = path.name
    if is_complete(path):
        return datasets.load_from_disk(str(path))
    if path.exists():
        warnings.warn(f"image cache {path} is incomplete or damaged; rebuilding it", stacklevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{fp}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    src = dataset.cast_column(image_column, datasets.Image(decode=False))
    cached = src.map(_reduce_batch, batched=True, batch_size=64, num_proc=num_proc,
                     fn_kwargs=dict(image_column=image_column, min_side=min_side, fmt=fmt, quality=quality, draft=draft),
                     features=src.features, desc=f"caching images ({fmt}, shorter side {min_side})",
                     load_from_cache_file=False, new_fingerprint=fp)
    cached = cached.cast_column(image_column, datasets.Image())
    cached.save_to_disk(str(tmp), max_shard_size=max_shard_size)
    meta = {"version": CACHE_VERSION, "fingerprint": fp, "min_side": min_side, "format": fmt, "quality": quality,
            "draft": draft, "image_column": image_column, "rows": len(cached),
            "build_seconds": round(time.perf_counter() - start, 2), "files": _files_of(tmp)}
    (tmp / META).write_text(json.dumps(meta, indent=2))
    if not is_complete(path):  # another process may have finished first: keep its cache
        shutil.rmtree(path, ignore_errors=True)  # an incomplete or damaged earlier attempt
        try:
            tmp.rename(path)
        except OSError:  # renamed into place by another process meanwhile
            if not is_complete(path):
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def main(argv: Sequence[str] | None = None) -> dict:
    """`hvit data cache`: build (or find) the cache of every split of a dataset; prints one line per split."""
    from .builders import build_dataset

    p = argparse.ArgumentParser(allow_abbrev=False, prog="hvit data cache", description=main.__doc__)
    p.add_argument("--dataset", required=True, help="a dataset name as for training (cub, sop, caltech101, demo, …)")
    p.add_argument("--data_dir", default=None, help="the extracted folder or official archive")
    p.add_argument("--out_dir", default=str(default_cache_dir()), help="cache root (default: $HF_HOME/hvit/images)")
    p.add_argument("--min_side", type=int, default=256, help="shorter side of the stored images (never enlarged)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="jpeg", help="jpeg (q95) or raw (PPM)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--no_draft", action="store_true", help="decode full size before resizing (no DCT scaling)")
    p.add_argument("--num_proc", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    args = p.parse_args(argv)
    dsd = build_dataset(args.dataset, args.data_dir, verify_images=False)
    splits = args.splits.split(",") if args.splits else list(dsd)
    unknown = [s for s in splits if s not in dsd]
    if unknown:
        raise SystemExit(f"--splits {unknown}: not in {args.dataset} (splits: {list(dsd)})")
    out = {}
    for split in splits:
        start = time.perf_counter()
        ds = build_cache(dsd[split], Path(args.out_dir) / args.dataset / split, min_side=args.min_side, fmt=args.fmt,
                         quality=args.quality, draft=not args.no_draft,
                         num_proc=args.num_proc or os.cpu_count() or 1)
        size = sum(os.path.getsize(f["filename"]) for f in ds.cache_files)
        out[split] = {"path": str(Path(ds.cache_files[0]["filename"]).parent), "rows": len(ds), "bytes": size}
        print(f"{split}: {len(ds)} images, {size / 2**20:.1f} MiB at {out[split]['path']} "
              f"({time.perf_counter() - start:.1f} s)")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
