# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Decode-once training cache: each split stored once at a reduced size, so training decodes small images.

An image is reduced to ``min_side`` pixels on its shorter side (never enlarged), decoding JPEGs in
PIL's draft mode (libjpeg's DCT-domain 1/2–1/8 scaling, to no less than twice the target, then a
bicubic resize), and stored either as JPEG (``quality`` 95) or as raw uint8 RGB. RandomResizedCrop
draws its box relative to the image size (scale of the area, aspect ratio), so crops from the cache
cover the same fraction of the scene as crops from the original; only the pixels per crop differ.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .transforms import BICUBIC, to_rgb

__all__ = ["decode_cached", "encode_cached", "reduce_image", "reduced_size"]

FORMATS = ("jpeg", "raw")


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


def encode_cached(image: Image.Image, fmt: str = "jpeg", quality: int = 95) -> dict:
    """``{"bytes", "width", "height"}``: JPEG at ``quality`` (4:4:4) or raw HWC uint8 RGB."""
    image = to_rgb(image)
    if fmt == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality, subsampling=0)
        data = buf.getvalue()
    elif fmt == "raw":
        data = np.asarray(image, dtype=np.uint8).tobytes()
    else:
        raise ValueError(f"cache format {fmt!r}: expected one of {FORMATS}")
    return {"bytes": data, "width": image.width, "height": image.height}


def decode_cached(record: dict, fmt: str) -> Image.Image:
    """The RGB PIL image of an `encode_cached` record."""
    if fmt == "jpeg":
        image = Image.open(io.BytesIO(record["bytes"]))
        return image if image.mode == "RGB" else image.convert("RGB")
    if fmt == "raw":
        return Image.frombuffer("RGB", (record["width"], record["height"]), record["bytes"], "raw", "RGB", 0, 1)
    raise ValueError(f"cache format {fmt!r}: expected one of {FORMATS}")
