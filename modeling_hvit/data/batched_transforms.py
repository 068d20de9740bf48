# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The training augmentation as batched torch ops on a uint8 batch, on CPU or GPU.

RandomResizedCrop(scale, ratio, bicubic) + horizontal flip + normalise, as `transforms.TrainTransform`
does per PIL image, but for a whole batch at once: the crop boxes and flips are drawn on the CPU with
the same generator calls in the same order (so a seed gives the same crops as the per-image path), and
the crop + resize is two batched matrix products with PIL's own resampling weights (bicubic a = −0.5,
support widened by the downscale factor, i.e. antialiased, normalised per output pixel), horizontal pass
first and rounded to uint8 in between. The result equals PIL's to one grey level, except where PIL
(which picks the order of its two passes itself) clips a bicubic overshoot at a hard edge differently:
there, rare pixels differ more (mean difference ≈ 0.1 grey level, < 2 % of pixels by more than 2).

Workers then only decode (small cached images, see `cache`) and the device does the rest:

    images, sizes = pad_batch([np.asarray(im) for im in pil_images])     # uint8 (N, 3, H, W), (N, 2) = (w, h)
    pixel_values = BatchedTrainTransform(224, seed=0)(images.cuda(), sizes)  # float (N, 3, 224, 224)

In training (``--augment_on_device``) the workers run `transforms.DecodeTransform`, `collate_padded`
pads each batch, and `HViTTrainer` draws the crops of a batch from `crop_generator` ``(seed, step,
micro-batch, rank)``: the crops depend on the run's seed and the step, not on which worker decoded the
batch, so a resumed run sees the crops of the uninterrupted one. The host never waits for the device:
crops are drawn from the sizes on the CPU and the resampling taps are counted there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_box

__all__ = ["BatchedTrainTransform", "collate_padded", "crop_generator", "crop_resize_flip", "pad_batch",
           "resample_weights", "sample_crops"]


def _bicubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """PIL's bicubic kernel (Keys, a = −0.5), support 2."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _num_taps(length: torch.Tensor, out_size: int) -> int:
    """Taps per output pixel for crops of ``length`` pixels (2·support + 1), counted where ``length`` lives."""
    longest = float(length.max())
    return math.ceil(2.0 * max(longest / out_size, 1.0)) * 2 + 1


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: torch.Tensor, out_size: int,
                     n_in: int, num_taps: int | None = None) -> torch.Tensor:
    """(N, out_size, n_in) float64 matrices mapping a row of ``n_in`` pixels to ``out_size`` pixels.

    Row i resamples the interval ``[start, start + length)`` of an image ``in_size`` pixels wide
    (taps beyond ``in_size`` get no weight), by PIL's ``precompute_coeffs``: centre
    ``start + (i + ½)·scale``, support ``2·max(scale, 1)``, weights normalised to sum 1.
    ``num_taps`` (`_num_taps` of the CPU lengths) spares a device → host read of the longest crop.
    """
    k = _num_taps(length, out_size) if num_taps is None else num_taps
    start, length, in_size = (t.to(torch.float64) for t in (start, length, in_size))
    scale = length / out_size
    filterscale = scale.clamp(min=1.0)
    support = 2.0 * filterscale
    centre = start[:, None] + (torch.arange(out_size, dtype=torch.float64, device=start.device) + 0.5) * scale[:, None]
    lo = torch.floor(centre - support[:, None] + 0.5).clamp(min=0)
    hi = torch.minimum(torch.floor(centre + support[:, None] + 0.5), in_size[:, None])
    taps = lo[..., None] + torch.arange(k, dtype=torch.float64, device=start.device)
    w = _bicubic((taps - centre[..., None] + 0.5) / filterscale[:, None, None]) * (taps < hi[..., None])
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    out = torch.zeros(len(start), out_size, n_in + k, dtype=torch.float64, device=start.device)
    return out.scatter_add_(2, taps.long(), w)[..., :n_in]  # taps ≥ n_in carry zero weight


def sample_crops(sizes: Sequence[tuple[int, int]], scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes (N, 4) int64 ``(left, top, w, h)`` and flips (N,) bool for images of ``(w, h)``
    sizes, drawn exactly as `TrainTransform` draws them (box, then flip, per image, in order)."""
    boxes, flips = [], []
    for width, height in sizes:
        boxes.append(random_resized_crop_box(int(width), int(height), scale, ratio, generator))
        flips.append(torch.rand(1, generator=generator).item() < flip_p)
    return torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4), torch.tensor(flips, dtype=torch.bool)


def pad_batch(images: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """HWC uint8 RGB images of any sizes → a zero-padded (N, 3, H_max, W_max) uint8 batch and the
    sizes (N, 2) as ``(width, height)``."""
    if not len(images):
        raise ValueError("pad_batch: no images")
    arrays = [torch.from_numpy(np.array(im, copy=True)) if not isinstance(im, torch.Tensor) else im for im in images]
    for i, a in enumerate(arrays):
        if a.dtype != torch.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"pad_batch: image {i} has dtype {a.dtype} and shape {tuple(a.shape)}; expected uint8 (H, W, 3)")
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = torch.zeros(len(arrays), 3, h, w, dtype=torch.uint8)
    for i, a in enumerate(arrays):
        out[i, :, : a.shape[0], : a.shape[1]] = a.permute(2, 0, 1)
    sizes = torch.tensor([(a.shape[1], a.shape[0]) for a in arrays], dtype=torch.int64)
    return out, sizes


def collate_padded(items: Sequence[dict]) -> dict:
    """DataLoader collate for decode-only items ``{"pixel_values": uint8 [3, H, W], "labels": int}`` of
    any sizes: ``pixel_values`` zero-padded to (N, 3, H_max, W_max) uint8, ``labels`` (N,) int64 and
    ``image_sizes``, a tuple of ``(width, height)`` ints (kept on the host: the crops are drawn there)."""
    images, sizes = pad_batch([item["pixel_values"].permute(1, 2, 0) for item in items])
    return {"pixel_values": images, "labels": torch.tensor([int(item["labels"]) for item in items]),
            "image_sizes": tuple(map(tuple, sizes.tolist()))}


def crop_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and ``keys`` (e.g. step, micro-batch, rank) through NumPy's
    ``SeedSequence``: independent streams for distinct keys, the same stream for the same ones."""
    state = np.random.SeedSequence([int(seed) % 2**63, *(int(k) for k in keys)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def crop_resize_flip(images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                     out_size: int) -> torch.Tensor:
    """Crop each ``box`` of a padded uint8 batch, resize it to ``out_size``² (PIL bicubic,
    antialiased) and mirror where ``flips``: float32 (N, 3, out_size, out_size) in 0..255, rounded."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 (N, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    dev = images.device
    kx, ky = _num_taps(boxes[:, 2], out_size), _num_taps(boxes[:, 3], out_size)  # where the boxes are (CPU)
    sizes, boxes, flips = sizes.to(dev), boxes.to(dev), flips.to(dev)
    n, _, h, w = images.shape
    wx = resample_weights(boxes[:, 0], boxes[:, 2], sizes[:, 0], out_size, w, kx)  # (N, S, W)
    wx = torch.where(flips[:, None, None], wx.flip(1), wx).float()
    wy = resample_weights(boxes[:, 1], boxes[:, 3], sizes[:, 1], out_size, h, ky).float()  # (N, S, H)
    x = images.float()
    x = torch.matmul(x, wx.transpose(1, 2)[:, None]).round_().clamp_(0, 255)  # horizontal pass, uint8 as PIL
    return torch.matmul(wy[:, None], x).round_().clamp_(0, 255)


class BatchedTrainTransform:
    """`TrainTransform` for a padded uint8 batch: ``(images, sizes) → normalised float (N, 3, S, S)``
    on the images' device. Crops are drawn on the CPU from the ``generator`` of the call, else the one
    given here (or made from ``seed``); ``sizes`` may be a CPU tensor or a sequence of ``(w, h)``."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 *, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip_p: float = 0.5, seed: int | None = None, generator: torch.Generator | None = None):
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.scale, self.ratio, self.flip_p = scale, ratio, flip_p
        self.generator = generator if generator is not None else (
            torch.Generator().manual_seed(seed) if seed is not None else None)

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor | Sequence[tuple[int, int]],
                 generator: torch.Generator | None = None) -> torch.Tensor:
        sizes = torch.as_tensor(sizes, dtype=torch.int64).cpu() if not isinstance(sizes, torch.Tensor) else sizes
        if len(sizes) != len(images):
            raise ValueError(f"BatchedTrainTransform: {len(images)} images but {len(sizes)} sizes")
        boxes, flips = sample_crops(sizes.tolist(), self.scale, self.ratio, self.flip_p,
                                    generator if generator is not None else self.generator)
        x = crop_resize_flip(images, sizes, boxes, flips, self.image_size)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1).mul_(255).to(x.device, non_blocking=True)
        std = torch.tensor(self.std).view(1, 3, 1, 1).mul_(255).to(x.device, non_blocking=True)
        return (x - mean) / std
