# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""A built-in, deterministic, hierarchical toy dataset for demos and end-to-end tests.

Super-classes are shapes (circle, square, triangle, cross, ring, diamond, bar, half-disk); a class
is shape × colour × texture (solid, horizontal stripes; optionally vertical stripes and checker; the
pattern turns with the shape), so the default 8 × 8 × 2 gives 128 classes, 64 per half. Classes are
split like a checkerboard, ``(shape + colour + texture) % 2``: both halves contain every shape,
colour and texture, never the same combination, so retrieval on the test half asks for unseen
combinations of features learned on the train half (a small analogue of class-disjoint retrieval).
Intra-class variation (position, scale, rotation, brightness, background level and faint tint,
pattern phase, pixel noise) keeps an untrained network far from perfect Recall@1.

Learnability is measured by ``bench/demo_learnability.py`` (2-core CPU shared with other jobs):
a random tiny ViT (hidden 64, 2 layers, patch 8) scores test Recall@1 ≈ 0.10, the same ViT trained
for 2 minutes (~340 steps) ≈ 0.33, i.e. a gain of ~22 points. Generation takes ≈ 1–1.5 s of CPU.

Everything is generated in memory from ``seed`` (numpy ``default_rng``), no files or network.
"""

from __future__ import annotations

import io
import math

import datasets
import numpy as np
from datasets import ClassLabel, Features
from datasets import Image as HFImage
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "half_disk")
COLOURS = {
    "red": (0.9, 0.1, 0.1), "orange": (1.0, 0.55, 0.0), "yellow": (0.95, 0.9, 0.1), "green": (0.1, 0.75, 0.2),
    "cyan": (0.1, 0.85, 0.9), "blue": (0.15, 0.3, 1.0), "purple": (0.55, 0.2, 0.85), "magenta": (0.95, 0.2, 0.7),
}
TEXTURES = ("solid", "hstripes", "vstripes", "checker")


def _shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (approximate, in pixels; < 0 inside) of a shape of radius ``r`` at the origin."""
    ax, ay = np.abs(x), np.abs(y)
    rad = np.hypot(x, y)
    if shape == "circle":
        return rad - r
    if shape == "ring":
        return np.abs(rad - 0.72 * r) - 0.28 * r
    if shape == "square":
        return np.maximum(ax, ay) - 0.8 * r
    if shape == "diamond":
        return (ax + ay) / math.sqrt(2) - 0.75 * r
    if shape == "triangle":  # equilateral, apex up (image y grows downwards)
        d = [np.cos(a) * x + np.sin(a) * y for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
        return np.maximum.reduce(d) - 0.5 * r
    if shape == "cross":
        return np.minimum(np.maximum(ax - r, ay - 0.3 * r), np.maximum(ax - 0.3 * r, ay - r))
    if shape == "bar":
        return np.maximum(ax - r, ay - 0.35 * r)
    if shape == "half_disk":
        return np.maximum(rad - r, y - 0.15 * r)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(shape: str, colour: tuple[float, float, float], texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image [size, size, 3] of ``shape`` with random pose, scale, lighting and noise."""
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = size / 2 + rng.uniform(-0.15, 0.15, size=2) * size
    angle = rng.uniform(-10, 10) * math.pi / 180
    coords = np.arange(size, dtype=np.float64) + 0.5
    gx, gy = np.meshgrid(coords - cx, coords - cy)
    x = math.cos(angle) * gx + math.sin(angle) * gy
    y = -math.sin(angle) * gx + math.cos(angle) * gy
    inside = np.clip(0.5 - _shape_sdf(shape, x, y, r), 0.0, 1.0)  # anti-aliased coverage
    fill = np.asarray(colour) * rng.uniform(0.8, 1.0)
    if texture != "solid":  # patterns turn with the shape; random phase
        px, py = rng.uniform(0, 2 * math.pi, size=2)
        sx, sy = np.sign(np.sin(x * (2 * math.pi / 4.0) + px)), np.sign(np.sin(y * (2 * math.pi / 4.0) + py))
        pattern = {"hstripes": sy, "vstripes": sx, "checker": sx * sy}.get(texture)
        if pattern is None:
            raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
        fill = fill[None, None, :] * (0.65 + 0.35 * pattern)[..., None]
    background = rng.uniform(0.05, 0.4) + rng.uniform(-0.1, 0.1, size=3)  # grey level + a faint random tint
    img = background * (1 - inside[..., None]) + fill * inside[..., None]
    img = img + rng.normal(0.0, 0.06, size=img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def build_demo_dataset(num_shapes: int = 8, num_colours: int = 8, num_textures: int = 2, images_per_class: int = 20,
                       image_size: int = 32, seed: int = 0) -> datasets.DatasetDict:
    """``DatasetDict(train, test)`` with ``image``, ``label`` (``shape/colour/texture``), ``superclass``.

    ``num_shapes × num_colours × num_textures`` classes, split in class-disjoint halves (module docstring).
    """
    if not (1 <= num_shapes <= len(SHAPES) and 1 <= num_colours <= len(COLOURS) and 1 <= num_textures <= len(TEXTURES)):
        raise ValueError(f"num_shapes must be in 1..{len(SHAPES)}, num_colours in 1..{len(COLOURS)}, "
                         f"num_textures in 1..{len(TEXTURES)}")
    if images_per_class < 2 or image_size < 8:
        raise ValueError("need images_per_class >= 2 (retrieval needs a positive) and image_size >= 8")
    rng = np.random.default_rng(seed)
    shapes, colours = SHAPES[:num_shapes], list(COLOURS)[:num_colours]
    classes = [(s, c, t) for s in range(num_shapes) for c in range(num_colours) for t in range(num_textures)]
    names = [f"{shapes[s]}/{colours[c]}/{TEXTURES[t]}" for s, c, t in classes]
    if len({(s + c + t) % 2 for s, c, t in classes}) < 2:
        raise ValueError("need at least 2 shapes or colours for class-disjoint halves")
    features = Features({"image": HFImage(), "label": ClassLabel(names=names), "superclass": ClassLabel(names=list(shapes))})
    rows: dict[str, dict[str, list]] = {"train": {k: [] for k in features}, "test": {k: [] for k in features}}
    for k, (s, c, t) in enumerate(classes):
        split = rows["train" if (s + c + t) % 2 == 0 else "test"]
        for _ in range(images_per_class):
            array = render(shapes[s], COLOURS[colours[c]], TEXTURES[t], image_size, rng)
            split["image"].append({"bytes": _png(array), "path": None})
            split["label"].append(k)
            split["superclass"].append(s)
    return datasets.DatasetDict({name: datasets.Dataset.from_dict(cols, features=features) for name, cols in rows.items()})
