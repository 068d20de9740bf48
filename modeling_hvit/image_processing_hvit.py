# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Image processor for HViT: the one evaluation preprocessing of a model, saved with it.

Every evaluation path (the Trainer's during training, `eval_hvit.py`, `AutoImageProcessor` + the
model, `pipeline("image-feature-extraction")`, `--curvature auto`) sees the same pixels: convert to
RGB, resize the shorter side to `resize_size` (`resample`), centre-crop `crop_size`, scale to [0, 1],
normalise with `image_mean` / `image_std`. The settings are saved as a standard transformers
`BitImageProcessor` (`size={"shortest_edge"}`, `crop_size`, `do_center_crop`), which
`AutoImageProcessor` reloads without custom code.

`read_preprocessing` takes those settings from any processor a backbone brings: ViT / DeiT / BiT
(DINOv2) style processors (`size`, `crop_size`, `crop_pct`, `resample`, `image_mean`, `image_std`) and
timm's `TimmWrapperImageProcessor`, whose settings live only in its `data_config` (or, when timm is not
installed, in the backbone config's `pretrained_cfg`), with timm's rule resize = floor(crop / crop_pct).

Flat remote code: imports only transformers and the standard library (copied beside modeling_hvit.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import is_torchvision_available

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC
# timm / torchvision interpolation names → PIL resampling filters
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
TIMM_DEFAULT_CROP_PCT = 0.875  # timm.data.constants.DEFAULT_CROP_PCT


@dataclass(frozen=True)
class EvalPreprocessing:
    """Resize the shorter side to ``resize_size`` with ``resample``, centre-crop ``crop_size``, normalise."""

    crop_size: int
    resize_size: int
    resample: int = BICUBIC
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if not (0 < self.crop_size <= self.resize_size):
            raise ValueError(f"expected 0 < crop_size <= resize_size, got crop {self.crop_size}, resize {self.resize_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"expected 3 channel means and 3 positive stds, got {self.image_mean}, {self.image_std}")

    def to_processor(self) -> BaseImageProcessor:
        """The standard processor that `AutoImageProcessor` round-trips (saved as preprocessor_config.json)."""
        return _bit_processor_class()(
            do_resize=True, size={"shortest_edge": self.resize_size}, resample=self.resample,
            do_center_crop=True, crop_size={"height": self.crop_size, "width": self.crop_size},
            do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
            image_mean=list(self.image_mean), image_std=list(self.image_std), do_convert_rgb=True)

    def scaled_to(self, crop_size: int) -> "EvalPreprocessing":
        """The same recipe at another input size (the resize keeps its ratio to the crop)."""
        resize = max(crop_size, round(crop_size * self.resize_size / self.crop_size))
        return EvalPreprocessing(crop_size, resize, self.resample, self.image_mean, self.image_std)


def _bit_processor_class() -> type:
    """`BitImageProcessor`, by its PIL-backend name where torchvision is absent (importing the plain
    name there warns); both save as "BitImageProcessor"."""
    if not is_torchvision_available():
        try:
            from transformers import BitImageProcessorPil

            return BitImageProcessorPil
        except ImportError:  # transformers before the backend split
            pass
    from transformers import BitImageProcessor

    return BitImageProcessor


def _floats(values, what: str, owner: str) -> tuple[float, float, float]:
    values = [values] * 3 if isinstance(values, (int, float)) else list(values)
    if len(values) != 3:
        raise ValueError(f"{owner}: expected 3 values for {what}, got {values}")
    return tuple(float(v) for v in values)


def _resample(value, owner: str) -> int:
    if value is None:
        return BICUBIC
    if isinstance(value, str):
        if value.lower() not in RESAMPLE:
            raise ValueError(f"{owner}: interpolation {value!r} not supported (expected one of {sorted(RESAMPLE)})")
        return RESAMPLE[value.lower()]
    return int(getattr(value, "value", value))


def _from_timm(cfg: dict, owner: str) -> EvalPreprocessing:
    """timm's eval transform: Resize(floor(crop / crop_pct)) on the shorter side, CenterCrop(crop)."""
    _, height, width = cfg.get("input_size", (3, 224, 224))
    if height != width:
        raise ValueError(f"{owner}: input_size {height}x{width} is not square (expected a square crop)")
    if cfg.get("crop_mode", "center") != "center":
        raise ValueError(f"{owner}: crop_mode {cfg['crop_mode']!r} is not supported (expected 'center')")
    crop_pct = cfg.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
    return EvalPreprocessing(int(height), max(int(height), math.floor(height / crop_pct)),
                             _resample(cfg.get("interpolation"), owner),
                             _floats(cfg.get("mean", (0.485, 0.456, 0.406)), "mean", owner),
                             _floats(cfg.get("std", (0.229, 0.224, 0.225)), "std", owner))


def read_preprocessing(processor=None, backbone_config=None) -> EvalPreprocessing:
    """Evaluation settings of ``processor`` (any type HViT accepts), else of the backbone config.

    ``size={"height", "width"}`` without a crop (ViT) becomes shortest side = crop = that size;
    with ``crop_size`` (DeiT: 256 then 224) the shorter side goes to ``size`` and then the crop;
    ``crop_pct`` (ConvNeXt style) gives resize = int(shortest_edge / crop_pct). Without a processor:
    timm backbones use their ``pretrained_cfg``, others the input size with mean = std = 0.5.
    """
    if processor is None:
        cfg = getattr(backbone_config, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg:
            return _from_timm(cfg, f"{type(backbone_config).__name__}.pretrained_cfg")
        size = int(getattr(backbone_config, "image_size", None) or 224)
        return EvalPreprocessing(size, size)
    owner = type(processor).__name__
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, dict):  # TimmWrapperImageProcessor: no image_mean/size attributes
        return _from_timm(data_config, f"{owner}.data_config")
    size = dict(getattr(processor, "size", None) or {})
    if size.get("shortest_edge"):
        resize = int(size["shortest_edge"])
    elif size.get("height") and size.get("width"):
        resize = min(int(size["height"]), int(size["width"]))
    else:
        raise ValueError(f"{owner}: size {size or None} has neither 'shortest_edge' nor 'height'/'width'")
    crop = dict(getattr(processor, "crop_size", None) or {})
    if getattr(processor, "do_center_crop", False) and crop.get("height"):
        crop_size = min(int(crop["height"]), int(crop["width"]))
    elif getattr(processor, "crop_pct", None) and size.get("shortest_edge"):
        crop_size, resize = resize, int(resize / processor.crop_pct)
    else:
        crop_size = resize
    if getattr(processor, "do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        if getattr(processor, "image_mean", None) is None or getattr(processor, "image_std", None) is None:
            raise ValueError(f"{owner} has no image_mean/image_std (expected a normalising image processor)")
        mean = _floats(processor.image_mean, "image_mean", owner)
        std = _floats(processor.image_std, "image_std", owner)
    return EvalPreprocessing(crop_size, resize, _resample(getattr(processor, "resample", None), owner), mean, std)


def evaluation_image_processor(processor=None, config=None) -> BaseImageProcessor:
    """The standard processor equivalent to ``processor`` (or, if None, to the model ``config``)."""
    return read_preprocessing(processor, getattr(config, "backbone_config", None)).to_processor()


__all__ = ["EvalPreprocessing", "evaluation_image_processor", "read_preprocessing"]
