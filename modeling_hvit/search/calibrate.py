# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Choosing the near-duplicate threshold: from labelled pairs, or from synthetic edits of the user's
own images (resize, JPEG re-compression, small crop), as the smallest distance that catches a
given fraction (default 99%) of the known duplicates."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .scoring import distance
from .sources import Item, items_from

__all__ = ["SYNTHETIC_EDITS", "Calibration", "calibrate_from_edits", "calibrate_from_pairs", "threshold_for_recall"]


def _resize(im: Image.Image, scale: float = 0.5) -> Image.Image:
    w, h = im.size
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def _jpeg(im: Image.Image, quality: int = 60) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(im: Image.Image, keep: float = 0.9) -> Image.Image:
    w, h = im.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


# name → edit; each keeps the picture a person would call "the same image"
SYNTHETIC_EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize_50": _resize,
    "jpeg_q60": _jpeg,
    "crop_90": _crop,
    "resize_75+jpeg_q80": lambda im: _jpeg(_resize(im, 0.75), 80),
}


def threshold_for_recall(distances: Sequence[float] | np.ndarray, recall: float = 0.99) -> float:
    """Smallest t with at least ``recall`` of ``distances`` ≤ t."""
    d = np.sort(np.asarray(distances, dtype=np.float64))
    if len(d) == 0:
        raise ValueError("no duplicate distances to calibrate on")
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    return float(d[math.ceil(recall * len(d)) - 1])


@dataclass
class Calibration:
    """The chosen ``threshold`` and what it does on the calibration data."""

    threshold: float
    recall: float  # fraction of known duplicates at distance ≤ threshold
    n_duplicates: int
    false_positive_rate: float | None = None  # on known non-duplicates, when given
    per_edit: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"threshold {self.threshold:.6g}: catches {self.recall:.1%} of {self.n_duplicates} known duplicates"]
        if self.false_positive_rate is not None:
            lines.append(f"  false positives on non-duplicate pairs: {self.false_positive_rate:.2%}")
        for name, st in self.per_edit.items():
            lines.append(f"  {name:20s} median {st['median']:.4g}  max {st['max']:.4g}  caught {st['caught']:.1%}")
        if self.skipped:
            lines.append(f"  {len(self.skipped)} unreadable images skipped")
        return "\n".join(lines)


def calibrate_from_pairs(duplicate_distances: Sequence[float], non_duplicate_distances: Sequence[float] | None = None,
                         recall: float = 0.99) -> Calibration:
    """Threshold from the distances of labelled duplicate pairs (and, to report false positives, of
    labelled non-duplicate pairs)."""
    d = np.asarray(duplicate_distances, dtype=np.float64)
    t = threshold_for_recall(d, recall)
    fpr = None
    if non_duplicate_distances is not None and len(non_duplicate_distances):
        fpr = float(np.mean(np.asarray(non_duplicate_distances, dtype=np.float64) <= t))
    return Calibration(t, float(np.mean(d <= t)), len(d), fpr)


def calibrate_from_edits(embedder: Any, images: Any, *, recall: float = 0.99, sample: int = 200,
                         edits: dict[str, Callable] | None = None, seed: int = 0,
                         batch_size: int = 32) -> Calibration:
    """Embed up to ``sample`` of ``images`` (folder, paths or items; random subset) and their
    synthetic edits; the threshold is the distance that catches ``recall`` of the (original,
    edit) pairs. ``embedder``: an ``Embedder`` (e.g. ``Embedder.from_model(model)``)."""
    edits = edits or SYNTHETIC_EDITS
    items = images if isinstance(images, list) and images and isinstance(images[0], Item) else items_from(images)
    if not items:
        raise ValueError("no images to calibrate on")
    rng = np.random.default_rng(seed)
    chosen = [items[i] for i in sorted(rng.permutation(len(items))[:sample])]
    originals, skipped = [], []
    for it in chosen:
        try:
            originals.append(it.load())
        except ValueError as err:
            skipped.append(str(err))
    if not originals:
        raise ValueError(f"none of the {len(chosen)} sampled images could be read")

    def embed(ims: list) -> torch.Tensor:
        return torch.cat([embedder.embed_images(ims[b:b + batch_size]) for b in range(0, len(ims), batch_size)])

    base = embed(originals)
    all_d, per_edit = [], {}
    for name, fn in edits.items():
        d = distance(base, embed([fn(im) for im in originals]), embedder.geometry, embedder.curvature).numpy()
        per_edit[name] = d
        all_d.append(d)
    all_d = np.concatenate(all_d)
    t = threshold_for_recall(all_d, recall)
    stats = {k: {"median": float(np.median(v)), "max": float(v.max()), "caught": float(np.mean(v <= t))}
             for k, v in per_edit.items()}
    return Calibration(t, float(np.mean(all_d <= t)), len(all_d), None, stats, skipped)
