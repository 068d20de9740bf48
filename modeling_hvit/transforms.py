# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Image transforms in PIL + torch (no torchvision), as in the paper's recipe (SPEC §5).

Train: RandomResizedCrop(size, scale 0.2–1, ratio 3/4–4/3, bicubic) + horizontal flip (p = 0.5).
Eval: resize the shorter side (bicubic; 256 for CUB at 224, else the crop size) + center crop.
Both convert any PIL mode to RGB first (:func:`to_rgb`) and normalise with the backbone's image
processor's ``image_mean`` / ``image_std``. The crop geometry follows torchvision's definitions
(same sampling loop, same rounding) so published numbers stay comparable.

Randomness: a :class:`TrainTransform` draws from an explicit ``torch.Generator``. Given ``seed``,
it is reproducible in the main process, and inside each DataLoader worker it reseeds from
``seed`` and the worker's own seed (which torch derives from the main-process RNG per epoch and
worker), so workers do not repeat each other's crops and runs repeat under ``torch.manual_seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .dataset_names import canonical_dataset_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BICUBIC = Image.Resampling.BICUBIC

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "TrainTransform", "eval_resize_for", "transforms_for_model",
           "normalization_from_processor", "to_rgb", "with_image_transform"]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB uint8, correctly.

    Transparency (RGBA, LA, PA, P or L/RGB with a ``transparency`` key) is composited on white;
    16-bit modes (``I;16*``, and ``I`` within 0..65535) are scaled by 255/65535, not clipped;
    ``I`` outside that range and ``F`` outside 0..1 are min–max scaled; ``F`` in 0..1 is ×255;
    CMYK uses PIL's conversion R = (255−C)(255−K)/255 (no ICC profile is applied).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.min() >= 0 and a.max() <= 65535):
            a = a * (255.0 / 65535.0)
        elif mode == "F" and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0
        else:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def normalization_from_processor(processor=None, image_mean: Sequence[float] | None = None,
                                 image_std: Sequence[float] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)``: explicit values, else the processor's ``image_mean``/``image_std``, else ImageNet."""
    mean = image_mean if image_mean is not None else getattr(processor, "image_mean", None)
    std = image_std if image_std is not None else getattr(processor, "image_std", None)
    mean = tuple(float(m) for m in (IMAGENET_MEAN if mean is None else mean))
    std = tuple(float(s) for s in (IMAGENET_STD if std is None else std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"expected 3 channel means and 3 positive stds, got mean={mean}, std={std}")
    return mean, std


def eval_resize_for(dataset: str, image_size: int = 224) -> int:
    """Shorter-side resize before the eval center crop: 256/224 of the crop for CUB, else the crop."""
    return round(image_size * 256 / 224) if canonical_dataset_name(dataset) == "cub" else image_size


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image → normalised float32 tensor [3, H, W]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                            generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` by torchvision's RandomResizedCrop.get_params (10 tries, then central)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class TrainTransform:
    """RandomResizedCrop + horizontal flip + normalise; PIL image → tensor [3, size, size]."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 *, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip_p: float = 0.5, seed: int | None = None, generator: torch.Generator | None = None):
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.scale, self.ratio, self.flip_p, self.seed = scale, ratio, flip_p, seed
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        self._worker_key = None

    def _rng(self) -> torch.Generator | None:
        info = torch.utils.data.get_worker_info()
        if info is None or self.generator is None:
            return self.generator  # None: torch's global RNG (already distinct per worker)
        key = (info.id, info.seed)
        if key != self._worker_key:  # first call in this worker (this epoch): independent stream
            self._worker_key = key
            base = self.seed if self.seed is not None else 0
            self.generator = torch.Generator().manual_seed((info.seed * 1_000_003 + base) % (2**63))
        return self.generator

    def __call__(self, image: Image.Image) -> torch.Tensor:
        g = self._rng()
        image = to_rgb(image)
        left, top, w, h = random_resized_crop_box(*image.size, self.scale, self.ratio, g)
        out = image.resize((self.image_size, self.image_size), BICUBIC, box=(left, top, left + w, top + h))
        if torch.rand(1, generator=g).item() < self.flip_p:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out, self.mean, self.std)


class EvalTransform:
    """Resize the shorter side to ``resize_size`` (bicubic), center-crop ``image_size``, normalise."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 *, resize_size: int | None = None):
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.resize_size = image_size if resize_size is None else resize_size
        if self.resize_size < image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop {image_size}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize(size, BICUBIC)
        left = int(round((size[0] - self.image_size) / 2.0))
        top = int(round((size[1] - self.image_size) / 2.0))
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        return to_tensor(image, self.mean, self.std)


def transforms_for_model(model, dataset: str, image_size: int | None = None,
                         crop_scale_min: float = 0.2) -> tuple[TrainTransform, EvalTransform]:
    """Train and eval transforms at the model's input size, normalised as its image processor says
    (the default processor of `HViTModel` when it has none)."""
    from .modeling_hvit import default_image_processor

    processor = getattr(model, "image_processor", None) or default_image_processor(model.config)
    mean, std = normalization_from_processor(processor)
    size = image_size or getattr(model.config.backbone_config, "image_size", 224)
    return (TrainTransform(size, mean, std, scale=(crop_scale_min, 1.0)),
            EvalTransform(size, mean, std, resize_size=eval_resize_for(dataset, size)))


def with_image_transform(dataset, transform, *, image_column: str = "image", label_column: str = "label"):
    """``dataset.with_transform`` emitting ``{"pixel_values": FloatTensor[3,H,W], "labels": int}``.

    Collect labels (``dataset_labels``) *before* calling this: a transformed dataset only yields the
    transform's keys. Use with ``remove_unused_columns=False`` and ``label_names=["labels"]``.
    """
    for col in (image_column, label_column):
        if col not in dataset.column_names:
            raise KeyError(f"dataset has no column {col!r} (columns: {dataset.column_names})")

    def apply(batch: dict) -> dict:
        return {"pixel_values": [transform(im) for im in batch[image_column]],
                "labels": [int(y) for y in batch[label_column]]}

    return dataset.with_transform(apply, columns=[image_column, label_column])
