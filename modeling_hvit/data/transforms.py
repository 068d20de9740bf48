# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Image transforms in PIL + torch (no torchvision), as in the paper's recipe (SPEC §5).

Train: RandomResizedCrop(size, scale 0.2–1, ratio 3/4–4/3, bicubic) + horizontal flip (p = 0.5).
Eval: the model's evaluation processor (:mod:`image_processing_hvit`): resize the shorter side, centre
crop (as transformers' processors: offset ``(size - crop) // 2``). Both convert any PIL mode to RGB
first (:func:`to_rgb`). The random crop follows torchvision's definitions (same sampling loop, same
rounding) so published numbers stay comparable.

DataLoader workers emit **uint8** images (4× less shared memory than float32: a 900-image batch at
224² is 129 MiB, not 517 MiB); :func:`pixel_values_for` normalises them on the model's device with the
model's evaluation processor's mean/std, through a 256-entry table per channel computed exactly as the
float path (and the processor) does, so the numbers are bit-identical. Passing ``mean``/``std`` to a
transform gives the old normalised float32 output instead.

Randomness: a :class:`TrainTransform` draws from an explicit ``torch.Generator``. Given ``seed``,
it is reproducible in the main process, and inside each DataLoader worker it reseeds from
``seed`` and the worker's own seed (which torch derives from the main-process RNG per epoch and
worker), so workers do not repeat each other's crops and runs repeat under ``torch.manual_seed``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .sources import DataError
from .names import canonical_dataset_name
from ..image_processing_hvit import EvalPreprocessing, read_preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BICUBIC = Image.Resampling.BICUBIC

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DecodeTransform", "EvalTransform", "TrainTransform", "eval_processor_for",
           "eval_resize_for", "eval_transform_for", "normalization_from_processor", "pixel_values_for",
           "preprocess", "to_rgb", "transforms_for_model", "with_image_transform"]


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
    """``(mean, std)``: explicit values, else the processor's (any type, timm's ``data_config`` included,
    see :func:`image_processing_hvit.read_preprocessing`), else ImageNet when there is no processor."""
    if processor is not None and (image_mean is None or image_std is None):
        prep = read_preprocessing(processor)
        image_mean = prep.image_mean if image_mean is None else image_mean
        image_std = prep.image_std if image_std is None else image_std
    mean = tuple(float(m) for m in (IMAGENET_MEAN if image_mean is None else image_mean))
    std = tuple(float(s) for s in (IMAGENET_STD if image_std is None else image_std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"expected 3 channel means and 3 positive stds, got mean={mean}, std={std}")
    return mean, std


def eval_resize_for(dataset: str, image_size: int = 224) -> int:
    """The recipe's shorter-side resize before the eval crop: 256/224 of the crop for CUB, else the crop."""
    return round(image_size * 256 / 224) if canonical_dataset_name(dataset) == "cub" else image_size


def to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → uint8 tensor [3, H, W] (what DataLoader workers send)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image → normalised float32 tensor [3, H, W]."""
    x = to_uint8(image).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


@functools.lru_cache(maxsize=32)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> torch.Tensor:
    """[3, 256] float32: the normalised value of each uint8 level, computed by :func:`to_tensor`'s ops."""
    table = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256).float().div_(255.0)  # as [3, H=1, W=256]
    table = table.sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))
    return table.view(3, 256).to(device)


def normalize_uint8(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] → float32 normalised, on the input's device, bit-identical to :func:`to_tensor`."""
    table = _normalisation_table(tuple(float(m) for m in mean), tuple(float(s) for s in std), str(pixel_values.device))
    out = torch.empty(pixel_values.shape, dtype=torch.float32, device=pixel_values.device)
    for c in range(3):
        out[..., c, :, :] = table[c][pixel_values[..., c, :, :].long()]
    return out


def _unwrap(model):
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP / DataParallel / torch.compile
        model = getattr(model, "module", None) or model._orig_mod
    return model


def model_preprocessing(model) -> EvalPreprocessing:
    """The model's evaluation preprocessing: from the processor it holds, else from its config."""
    model = _unwrap(model)
    return read_preprocessing(getattr(model, "image_processor", None), model.config.backbone_config)


def pixel_values_for(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """A batch as the model takes it: uint8 (from the workers) → normalised float32 on its device with
    the model's evaluation mean/std; float batches (already normalised) unchanged."""
    if pixel_values.dtype != torch.uint8:
        return pixel_values
    prep = model_preprocessing(model)
    return normalize_uint8(pixel_values, prep.image_mean, prep.image_std)


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
    """RandomResizedCrop + horizontal flip; PIL image → uint8 [3, size, size] (normalised float32
    when ``mean``/``std`` are given)."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 *, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip_p: float = 0.5, seed: int | None = None, generator: torch.Generator | None = None):
        self.image_size, self.mean, self.std = image_size, _optional(mean), _optional(std)
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
        return _output(out, self.mean, self.std)


class DecodeTransform:
    """PIL image → uint8 [3, H, W] at its own size, nothing else: what DataLoader workers emit when the
    train augmentation runs on the device (``--augment_on_device``, `batched_transforms`)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_uint8(to_rgb(image))


class EvalTransform:
    """Resize the shorter side to ``resize_size`` (``resample``), centre-crop ``image_size``: the pixels
    of transformers' processors with ``size={"shortest_edge"}`` and ``crop_size`` (PIL backend);
    uint8 [3, size, size] out (normalised float32 when ``mean``/``std`` are given)."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 *, resize_size: int | None = None, resample: int = BICUBIC):
        self.image_size, self.mean, self.std = image_size, _optional(mean), _optional(std)
        self.resize_size = image_size if resize_size is None else resize_size
        self.resample = resample
        if self.resize_size < image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop {image_size}")

    @classmethod
    def from_preprocessing(cls, prep: EvalPreprocessing, *, normalize: bool = False) -> "EvalTransform":
        """Geometry of ``prep`` (uint8 out), or its full preprocessing with ``normalize=True``."""
        norm = (prep.image_mean, prep.image_std) if normalize else (None, None)
        return cls(prep.crop_size, *norm, resize_size=prep.resize_size, resample=prep.resample)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize(size, self.resample)
        left, top = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        return _output(image, self.mean, self.std)


def _optional(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(values)


def _output(image: Image.Image, mean, std) -> torch.Tensor:
    return to_uint8(image) if mean is None and std is None else to_tensor(image, mean or IMAGENET_MEAN, std or IMAGENET_STD)


def eval_processor_for(model, dataset: str | None = None, image_size: int | None = None):
    """The model's evaluation processor (a ``BitImageProcessor``): its mean/std/resample from the
    processor it holds (or its config); with ``dataset`` (training time) the recipe decides the
    geometry: crop ``image_size``, shorter side :func:`eval_resize_for`, bicubic (SPEC §5)."""
    prep = model_preprocessing(model)
    if dataset is not None:
        size = image_size or prep.crop_size
        prep = EvalPreprocessing(size, eval_resize_for(dataset, size), int(BICUBIC), prep.image_mean, prep.image_std)
    elif image_size is not None and image_size != prep.crop_size:
        prep = prep.scaled_to(image_size)
    return prep.to_processor()


def eval_transform_for(model, image_size: int | None = None) -> EvalTransform:
    """The model's evaluation transform (uint8 out; :func:`pixel_values_for` normalises), from the
    processor saved with it; ``image_size`` rescales the crop (and the resize with it)."""
    prep = model_preprocessing(model)
    return EvalTransform.from_preprocessing(prep if image_size is None else prep.scaled_to(image_size))


def preprocess(images: Sequence[Image.Image], model) -> torch.Tensor:
    """PIL images → the normalised float32 batch the model evaluates (its saved evaluation processor)."""
    transform = eval_transform_for(model)
    return pixel_values_for(model, torch.stack([transform(im) for im in images]))


def transforms_for_model(model, dataset: str | None = None, image_size: int | None = None,
                         crop_scale_min: float = 0.2) -> tuple[TrainTransform, EvalTransform]:
    """Train and eval transforms (uint8 out) at the model's input size.

    With ``dataset`` (training time) the recipe decides the evaluation preprocessing and it is set as
    ``model.image_processor``, so that what is evaluated during training is what `save_pretrained`
    writes and every later path (eval_hvit.py, AutoImageProcessor, pipeline) reads; without, the
    model's own (saved) evaluation processor is used.
    """
    if dataset is not None:
        _unwrap(model).image_processor = eval_processor_for(model, dataset, image_size)
    eval_tf = eval_transform_for(model, None if dataset is not None else image_size)
    return TrainTransform(eval_tf.image_size, scale=(crop_scale_min, 1.0)), eval_tf


def with_image_transform(dataset, transform, *, image_column: str = "image", label_column: str = "label",
                         skip_bad_images: bool = False):
    """``dataset.with_transform`` emitting ``{"pixel_values": Tensor[3,H,W], "labels": int}``.

    Images are decoded here (as ``datasets.Image`` would), so an unreadable one raises a
    :class:`DataError` naming its file; with ``skip_bad_images`` it is replaced by the first readable
    image of the same class in the split, with a warning and a running count.
    Collect labels (``dataset_labels``) *before* calling this: a transformed dataset only yields the
    transform's keys. Use with ``remove_unused_columns=False`` and ``label_names=["labels"]``.
    """
    import datasets

    for col in (image_column, label_column):
        if col not in dataset.column_names:
            raise KeyError(f"dataset has no column {col!r} (columns: {dataset.column_names})")
    feature = dataset.features[image_column]
    decoder = datasets.Image(mode=feature.mode) if isinstance(feature, datasets.Image) else None  # decode=False too
    raw = dataset.cast_column(image_column, datasets.Image(decode=False)) if decoder and feature.decode else dataset
    substitute = _Substitutes(raw, image_column, label_column, decoder) if skip_bad_images else None

    def apply(batch: dict) -> dict:
        labels = [int(y) for y in batch[label_column]]
        images = [_decode(v, decoder, substitute, y) for v, y in zip(batch[image_column], labels)]
        return {"pixel_values": [transform(im) for im in images], "labels": labels}

    return raw.with_transform(apply, columns=[image_column, label_column])


def _describe(value) -> str:
    path = value.get("path") if isinstance(value, dict) else None
    return repr(path) if path else "an image stored without a path"


def _decode(value, decoder, substitute, label: int) -> Image.Image:
    if decoder is None or isinstance(value, Image.Image):
        return value
    try:
        image = decoder.decode_example(value)
        image.load()
        return image
    except Exception as err:  # PIL raises a zoo of types for bad data
        reason = f"image {_describe(value)} is not readable ({type(err).__name__}: {err})"
        if substitute is None:
            raise DataError(f"{reason}; rebuild with verify_images=True to find all bad images, or pass "
                            "skip_bad_images=True to replace them by another image of the class") from None
        return substitute(label, reason)


class _Substitutes:
    """Replacement images for unreadable ones: the first readable image of the same class."""

    def __init__(self, raw, image_column: str, label_column: str, decoder):
        self.raw, self.image_column, self.label_column, self.decoder = raw, image_column, label_column, decoder
        self.by_label: dict[int, list[int]] | None = None
        self.count = 0

    def __call__(self, label: int, reason: str) -> Image.Image:
        if self.by_label is None:
            self.by_label = {}
            for i, y in enumerate(self.raw.with_format(None)[self.label_column]):
                self.by_label.setdefault(int(y), []).append(i)
        self.count += 1
        for i in self.by_label.get(label, []):
            value = self.raw.with_format(None)[i][self.image_column]
            try:
                image = self.decoder.decode_example(value)
                image.load()
            except Exception:
                continue
            warnings.warn(f"{reason}; replaced by {_describe(value)} of the same class (skip_bad_images; "
                          f"{self.count} replaced so far in this process)", stacklevel=2)
            return image
        raise DataError(f"{reason}, and no readable image of its class {label} is left to replace it")
