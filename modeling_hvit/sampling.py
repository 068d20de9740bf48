# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Class-pair sampler: a flat, epoch-seeded index stream in blocks of N classes × m samples (SPEC §4).

Why flat: the Trainer only hands a *sampler* to its DataLoader (``batch_size`` = per-device batch)
and accelerate's ``BatchSamplerShard`` gives rank r the batches r, r + W, r + 2W, … of that stream.
So the stream is the **global** one, identical on every rank (seeded by ``(seed, epoch)`` only,
never by global RNG), and it is built in *global steps*: W consecutive batches whose
W·batch_size/m classes are all distinct, so the gathered global batch has unique classes.

An epoch: a seeded permutation of all classes, cut into ``floor(C / (W·batch_size/m))`` global
steps; every class appears at most once per epoch and the leftover classes (fewer than one global
step) are dropped, a different set each epoch. With ``drop_last=False`` the last global step is
completed with classes already used this epoch instead, so every class appears at least once.
For each class, m of its samples are drawn without replacement; a class with k < m samples gives
all k once plus m − k drawn with replacement (the only case of replacement).

A *loader* epoch may span several such passes (``passes_per_epoch`` = k): loader epoch e is passes
e·k … e·k + k − 1, each seeded as above, so the index stream does not depend on k. With few classes per
batch (CUB: one pass = one step of 900 images) a one-pass epoch would hand one batch to one DataLoader
worker and then drain the pipeline; k passes keep every worker decoding (`passes_for_workers`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ClassPairSampler", "passes_for_workers"]


class ClassPairSampler(Sampler[int]):
    """Flat index stream: consecutive ``world_size × batch_size`` blocks hold whole classes × m samples.

    Args:
        labels: the integer class of every dataset item, in dataset order (collect them *before*
            attaching a lazy transform, see HF_NOTES §3.1).
        samples_per_class: m ≥ 2, consecutive samples of one class inside a batch.
        batch_size: per-device batch size; the global batch ``world_size × batch_size`` is a multiple
            of m (a class may straddle two ranks: the loss sees the gathered global batch in stream order).
        world_size: number of processes W; the stream covers all of them (shard it with
            accelerate, or take batches r, r + W, … yourself).
        seed: base seed; epoch e uses ``numpy.random.default_rng([seed, e])``.
        drop_last: drop the last incomplete global step (default, SPEC §4) or complete it with
            classes already seen this epoch.
        passes_per_epoch: class passes per loader epoch (``set_epoch``); the stream is the same for any value.

    ``len(sampler)`` is the exact number of indices per loader epoch (all ranks together);
    ``steps_per_epoch`` is the number of optimiser steps (= batches per rank) in it. Call
    ``set_epoch(e)`` before iterating (the Trainer does).
    """

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, samples_per_class: int,
                 batch_size: int, world_size: int = 1, seed: int = 0, drop_last: bool = True,
                 passes_per_epoch: int = 1):
        labels = _as_label_array(labels)
        for name, value, low in (("samples_per_class", samples_per_class, 2), ("batch_size", batch_size, 1),
                                 ("world_size", world_size, 1), ("passes_per_epoch", passes_per_epoch, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"ClassPairSampler: {name} must be an integer ≥ {low}, got {value!r}")
        if (batch_size * world_size) % samples_per_class:
            total = batch_size * world_size
            raise ValueError(
                f"ClassPairSampler: the global batch batch_size×world_size = {batch_size}×{world_size} = {total} must "
                f"be a multiple of samples_per_class={samples_per_class}, e.g. "
                f"{max(1, total // samples_per_class) * samples_per_class}")
        self.samples_per_class = int(samples_per_class)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.passes_per_epoch = int(passes_per_epoch)
        self.epoch = 0
        self.classes, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self._members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # dataset indices per class
        need = self.classes_per_step
        if len(self.classes) < need:
            raise ValueError(
                f"ClassPairSampler: the dataset has {len(self.classes)} classes but one global batch of "
                f"{self.batch_size}×{self.world_size} (per-device batch × processes) with samples_per_class="
                f"{self.samples_per_class} needs {need} distinct classes; lower the global batch "
                f"(≤ {len(self.classes) * self.samples_per_class}, --global_batch_size) or samples_per_class")

    @property
    def classes_per_step(self) -> int:
        """Distinct classes in one global batch = W · batch_size / m."""
        return self.world_size * self.batch_size // self.samples_per_class

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def steps_per_pass(self) -> int:
        """Global steps in one pass over the classes."""
        full, rest = divmod(self.num_classes, self.classes_per_step)
        return full + int(rest > 0 and not self.drop_last)

    @property
    def steps_per_epoch(self) -> int:
        """Global steps (= batches each rank sees) per loader epoch."""
        return self.steps_per_pass * self.passes_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.world_size * self.batch_size

    def _class_order(self, rng: np.random.Generator) -> np.ndarray:
        """Class indices (into ``self.classes``) for the epoch, length steps_per_epoch · classes_per_step."""
        perm = rng.permutation(self.num_classes)
        g = self.classes_per_step
        full = (self.num_classes // g) * g
        if self.drop_last or full == self.num_classes:
            return perm[:full]
        # Complete the last step with distinct classes not in it (all were used once this epoch).
        tail = perm[full:]
        filler = rng.choice(perm[:full], size=g - len(tail), replace=False)
        return np.concatenate([perm, filler])

    def _draw(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m = self.samples_per_class
        if len(members) >= m:
            return members[rng.choice(len(members), size=m, replace=False)]
        extra = rng.integers(0, len(members), size=m - len(members))
        return members[rng.permutation(np.concatenate([np.arange(len(members)), extra]))]

    def _pass(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        order = self._class_order(rng)
        return np.concatenate([self._draw(self._members[k], rng) for k in order]) if len(order) else np.zeros(0, int)

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.passes_per_epoch
        return (int(i) for p in range(first, first + self.passes_per_epoch) for i in self._pass(p))


def passes_for_workers(steps_per_pass: int, num_workers: int, prefetch_factor: int | None = None) -> int:
    """Class passes per loader epoch so that an epoch holds at least 2 × workers × prefetch batches (every
    worker busy, the pipeline not drained at each epoch boundary); 1 without workers."""
    if num_workers <= 0:
        return 1
    wanted = 2 * num_workers * (prefetch_factor or 2)
    return max(1, -(-wanted // max(1, steps_per_pass)))


def _as_label_array(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise ValueError(f"ClassPairSampler: labels must be a 1-D sequence of integers ({err})") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ClassPairSampler: labels must be a non-empty 1-D sequence of integers, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        bad = 0
        if arr.dtype.kind == "f":  # point at the first non-integral value, if any
            bad = int(np.argmax(arr != np.round(arr))) if (arr != np.round(arr)).any() else 0
        raise ValueError(f"ClassPairSampler: labels must be integers (class ids), got dtype {arr.dtype}; "
                         f"first offending item at index {bad}: {arr[bad].item()!r}")
    return arr
