# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The built-in demo dataset: deterministic, hierarchical, class-disjoint, fast, non-trivial."""

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.data.demo import SHAPES, TEXTURES, build_demo_dataset


@pytest.fixture(scope="module")
def demo():
    start = time.process_time()  # CPU time: the wall clock on a shared 2-core box is noisy
    ds = build_dataset("demo")
    return ds, time.process_time() - start


def pixels(ds):
    return np.stack([np.asarray(r["image"], dtype=np.float32) for r in ds]) / 255.0


def test_shape_sizes_and_speed(demo):
    ds, seconds = demo
    assert seconds < 5.0
    assert set(ds) == {"train", "test"} and set(ds["train"].column_names) == {"image", "label", "superclass"}
    train, test = dataset_labels(ds["train"]), dataset_labels(ds["test"])
    assert len(set(test)) >= 50 and len(set(train)) >= 50
    assert not set(train) & set(test)
    assert all(np.bincount(test)[sorted(set(test))] == 20)
    im = ds["test"][0]["image"]
    assert im.size == (32, 32) and im.mode == "RGB"


def test_hierarchy_matches_class_names(demo):
    ds, _ = demo
    names, supers = ds["train"].features["label"].names, ds["train"].features["superclass"].names
    assert supers == list(SHAPES)
    for split in ("train", "test"):
        rows = ds[split].select_columns(["label", "superclass"]).with_format(None)[:]
        for y, s in zip(rows["label"], rows["superclass"]):
            assert names[y].split("/")[0] == supers[s]
        assert set(rows["superclass"]) == set(range(len(SHAPES)))  # every shape in both halves


def test_deterministic_and_seeded():
    a = build_demo_dataset(num_shapes=3, num_colours=2, num_textures=4, images_per_class=3, image_size=16, seed=1)
    b = build_demo_dataset(num_shapes=3, num_colours=2, num_textures=4, images_per_class=3, image_size=16, seed=1)
    c = build_demo_dataset(num_shapes=3, num_colours=2, num_textures=4, images_per_class=3, image_size=16, seed=2)
    np.testing.assert_array_equal(pixels(a["test"]), pixels(b["test"]))
    assert not np.array_equal(pixels(a["test"]), pixels(c["test"]))
    assert len(a["train"]) + len(a["test"]) == 3 * 2 * len(TEXTURES) * 3 and a["test"][0]["image"].size == (16, 16)
    with pytest.raises(ValueError, match="num_shapes"):
        build_demo_dataset(num_shapes=99)


def test_not_trivial_but_learnable_in_pixel_space(demo):
    """Raw-pixel nearest neighbours (an independent baseline) sit far from 0 and far from 100%:
    there is class signal, and intra-class variation leaves room for a learned embedding."""
    ds, _ = demo
    x = pixels(ds["test"]).reshape(len(ds["test"]), -1)
    y = np.asarray(dataset_labels(ds["test"]))
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    recall_at_1 = float((y[d.argmin(1)] == y).mean())
    chance = 1 / len(set(y))
    assert 3 * chance < recall_at_1 < 0.6, recall_at_1
