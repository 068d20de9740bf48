# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""ClassPairSampler properties, sharded with accelerate's own BatchSamplerShard as the oracle of sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from modeling_hvit.sampling import ClassPairSampler


def _labels(num_classes: int, sizes: tuple[int, int] = (3, 12), seed: int = 0) -> np.ndarray:
    """Shuffled dataset labels with class sizes in [sizes[0], sizes[1]); class ids are sparse."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=num_classes, replace=False)
    labels = np.concatenate([[c] * rng.integers(*sizes) for c in ids])
    return labels[rng.permutation(len(labels))]


def _rank_batches(sampler: ClassPairSampler, world_size: int) -> list[list[list[int]]]:
    """What each rank's DataLoader gets after accelerate.prepare (split_batches=False)."""
    out = []
    for rank in range(world_size):
        batch_sampler = BatchSampler(sampler, sampler.batch_size, drop_last=False)
        out.append(list(BatchSamplerShard(batch_sampler, world_size, rank)))
    return out


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("m", [2, 3])
def test_global_batches_unique_classes_and_m_blocks(world_size, m):
    labels = _labels(53)
    batch = 4 * m  # 4 classes per device batch
    sampler = ClassPairSampler(labels, samples_per_class=m, batch_size=batch, world_size=world_size, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        ranks = _rank_batches(sampler, world_size)
        steps = 53 // (4 * world_size)
        assert sampler.steps_per_epoch == steps and all(len(r) == steps for r in ranks)
        assert len(sampler) == len(list(sampler)) == steps * world_size * batch
        seen = Counter()
        for step in range(steps):
            global_classes = []
            for rank in range(world_size):
                b = ranks[rank][step]
                assert len(b) == batch
                blocks = [labels[b[k:k + m]] for k in range(0, batch, m)]
                assert all(len(set(blk)) == 1 for blk in blocks)  # m consecutive samples of one class
                global_classes += [blk[0] for blk in blocks]
            assert len(set(global_classes)) == 4 * world_size  # unique classes in the global batch
            seen.update(global_classes)
        assert max(seen.values()) == 1  # each class at most once per epoch


def test_determinism_and_epochs_differ():
    labels = _labels(40)
    a = ClassPairSampler(labels, 2, 8, world_size=2, seed=5)
    b = ClassPairSampler(list(labels), 2, 8, world_size=2, seed=5)
    for epoch in range(3):
        a.set_epoch(epoch), b.set_epoch(epoch)
        assert list(a) == list(b) == list(a)
    a.set_epoch(0)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    c = ClassPairSampler(labels, 2, 8, world_size=2, seed=6)
    assert list(c) != e0
    # The stream ignores torch / numpy global RNG state (ranks seed them differently).
    torch.manual_seed(123), np.random.seed(123)
    a.set_epoch(0)
    assert list(a) == e0


def test_within_class_draws_vary_and_are_distinct():
    labels = np.repeat(np.arange(6), 10)
    s = ClassPairSampler(labels, samples_per_class=3, batch_size=6, seed=0)
    draws = {}
    for epoch in range(40):
        s.set_epoch(epoch)
        stream = list(s)
        for k in range(0, len(stream), 3):
            blk = stream[k:k + 3]
            assert len(set(blk)) == 3  # no replacement in classes with ≥ m samples
            draws.setdefault(labels[blk[0]], set()).update(blk)
    assert all(len(v) == 10 for v in draws.values())  # every image of every class gets drawn


def test_coverage_over_epochs():
    labels = _labels(37)
    s = ClassPairSampler(labels, 2, 10, world_size=2, seed=0)  # 10 classes per step, 7 dropped per epoch
    seen = set()
    for epoch in range(30):
        s.set_epoch(epoch)
        seen |= {int(labels[i]) for i in s}
    assert seen == set(np.unique(labels).tolist())


def test_small_classes_sampled_with_replacement_only_when_needed():
    labels = np.array([0] * 1 + [1] * 2 + [2] * 5 + [3] * 5 + [4] * 3)
    s = ClassPairSampler(labels, samples_per_class=3, batch_size=15, seed=0)
    for epoch in range(10):
        s.set_epoch(epoch)
        stream = np.array(list(s))
        for k in range(0, 15, 3):
            blk = stream[k:k + 3]
            c = labels[blk[0]]
            assert (labels[blk] == c).all()
            size = int((labels == c).sum())
            if size >= 3:
                assert len(set(blk)) == 3
            else:  # every member once, the rest repeated
                assert set(blk) == set(np.flatnonzero(labels == c))


def test_drop_last_false_completes_last_step():
    labels = _labels(23)
    s = ClassPairSampler(labels, 2, 8, world_size=2, seed=3, drop_last=False)  # 8 classes/step: 2 full + 7
    assert s.steps_per_epoch == 3 and len(s) == 3 * 2 * 8
    for epoch in range(3):
        s.set_epoch(epoch)
        ranks = _rank_batches(s, 2)
        counts = Counter()
        for step in range(3):
            classes = [int(labels[i]) for r in range(2) for i in ranks[r][step][::2]]
            assert len(set(classes)) == 8
            counts.update(classes)
        assert set(counts) == set(np.unique(labels).tolist()) and max(counts.values()) <= 2


def test_usable_in_a_dataloader():
    labels = np.repeat(np.arange(8), 4)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(labels))
    s = ClassPairSampler(labels, 2, 4)
    got = [b[0].tolist() for b in torch.utils.data.DataLoader(ds, batch_size=4, sampler=s)]
    assert len(got) == s.steps_per_epoch == 4
    assert all(b[0] == b[1] and b[2] == b[3] and b[0] != b[2] for b in got)


def test_error_too_few_classes_names_both_numbers():
    labels = np.repeat(np.arange(100), 30)  # CUB train: 100 classes
    ClassPairSampler(labels, 9, 900)  # one GPU: exactly one step
    with pytest.raises(ValueError, match=r"has 100 classes but one global batch of 900×2 .*"
                                         r"samples_per_class=9 needs 200 distinct classes"):
        ClassPairSampler(labels, 9, 900, world_size=2)
    with pytest.raises(ValueError, match=r"has 25 classes .* 900×1 .* needs 100"):
        ClassPairSampler(np.repeat(np.arange(25), 9), 9, 900)


@pytest.mark.parametrize("kwargs, match", [
    (dict(samples_per_class=2, batch_size=9), "multiple of samples_per_class=2"),
    (dict(samples_per_class=1, batch_size=4), "samples_per_class must be an integer ≥ 2"),
    (dict(samples_per_class=2, batch_size=0), "batch_size must be an integer ≥ 1"),
    (dict(samples_per_class=2, batch_size=4, world_size=0), "world_size must be an integer ≥ 1"),
])
def test_error_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassPairSampler(np.repeat(np.arange(10), 3), **kwargs)


@pytest.mark.parametrize("labels, match", [
    ([], "non-empty"),
    ([[0, 1], [1, 0]], "1-D"),
    ([0, 1, 1.5, 2], r"integers .* index 2: 1.5"),
    (["a", "b"], "integers"),
])
def test_error_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        ClassPairSampler(labels, 2, 2)


def test_per_device_share_need_not_hold_whole_classes():
    """Global batch 900 over 4 GPUs with m = 9 is 225 per device (not a multiple of 9): the sampler accepts it
    when the *global* batch holds whole classes; each global batch (ranks' batches in order) is class-major."""
    labels = np.repeat(np.arange(12), 5)
    s = ClassPairSampler(labels, samples_per_class=2, batch_size=3, world_size=2, seed=0)  # global 6 = 3 classes × 2
    stream = np.asarray(list(s))
    assert len(stream) == s.steps_per_epoch * 6 == 24
    for step in stream.reshape(-1, 6):  # rank 0 gets [a, a, b], rank 1 [b, c, c]
        pairs = labels[step].reshape(3, 2)
        assert (pairs[:, 0] == pairs[:, 1]).all() and len(set(pairs[:, 0])) == 3
    with pytest.raises(ValueError, match="3×1 = 3 must be a multiple of samples_per_class=2"):
        ClassPairSampler(labels, samples_per_class=2, batch_size=3, world_size=1)
