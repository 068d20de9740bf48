# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Transforms against hand-made pixels, PIL's own resize and hand-computed crop boxes."""

import io
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_hvit.data import dataset_labels
from modeling_hvit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    eval_resize_for,
    normalization_from_processor,
    random_resized_crop_box,
    to_rgb,
    with_image_transform,
)


def rgb(image):
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(int)


# -- mode conversion ---------------------------------------------------------------------------------
def test_bilevel_and_grey():
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    assert rgb(im).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert rgb(Image.new("L", (1, 1), 77)).tolist() == [[[77, 77, 77]]]


def test_palette_with_and_without_transparency():
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    assert rgb(im).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    im.info["transparency"] = 0  # index 0 fully transparent → white
    assert rgb(im).tolist() == [[[255, 255, 255], [200, 100, 50]]]
    buf = io.BytesIO()
    im.save(buf, format="PNG")  # the same through a real PNG tRNS chunk
    assert rgb(Image.open(io.BytesIO(buf.getvalue()))).tolist() == [[[255, 255, 255], [200, 100, 50]]]


@pytest.mark.parametrize("alpha", [0, 64, 128, 255])
def test_rgba_and_la_composited_on_white(alpha):
    a = alpha / 255
    expected = [round(c * a + 255 * (1 - a)) for c in (200, 100, 0)]
    got = rgb(Image.new("RGBA", (1, 1), (200, 100, 0, alpha)))[0, 0]
    assert np.abs(got - expected).max() <= 1
    got = rgb(Image.new("LA", (1, 1), (50, alpha)))[0, 0]
    assert np.abs(got - round(50 * a + 255 * (1 - a))).max() <= 1


def test_cmyk_textbook_formula():
    c, m, y, k = 128, 0, 200, 64
    got = rgb(Image.new("CMYK", (1, 1), (c, m, y, k)))[0, 0]
    expected = [(255 - v) * (255 - k) / 255 for v in (c, m, y)]
    assert np.abs(got - expected).max() <= 1


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 1000, 25700, 32768, 65535]], dtype=np.uint16)
    expected = np.rint(values.astype(float) * 255 / 65535).astype(int)  # 0, 4, 100, 128, 255; clipping would give 255s
    for im in (Image.fromarray(values), Image.frombytes("I;16B", (5, 1), values.astype(">u2").tobytes()),
               Image.fromarray(values.astype(np.int32))):
        assert im.mode in ("I;16", "I;16B", "I"), im.mode
        assert rgb(im)[..., 0].tolist() == expected.tolist()
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")  # a real 16-bit PNG
    assert rgb(Image.open(io.BytesIO(buf.getvalue())))[..., 1].tolist() == expected.tolist()


def test_float_and_wide_int_modes():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert rgb(f)[..., 2].tolist() == [[0, 128, 255]]
    f = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32))  # outside 0..1: min-max
    assert rgb(f)[..., 0].tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[-100, 100000]], dtype=np.int32))
    assert rgb(wide)[..., 0].tolist() == [[0, 255]]


# -- geometry ----------------------------------------------------------------------------------------
def gradient_image(w, h):
    x = np.arange(w)[None, :, None] * 255 // max(w - 1, 1)
    y = np.arange(h)[:, None, None] * 255 // max(h - 1, 1)
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 60)], 2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def unnormalise(x, mean, std):
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def test_eval_resize_and_center_crop_match_pil():
    im = gradient_image(40, 60)  # portrait: shorter side is the width
    t = EvalTransform(32, IMAGENET_MEAN, IMAGENET_STD, resize_size=36)
    # Hand-computed: 40x60 → 36 x int(36*60/40)=54; crop left round(4/2)=2, top round(22/2)=11.
    expected = np.asarray(im.resize((36, 54), Image.BICUBIC).crop((2, 11, 34, 43))) / 255.0
    got = unnormalise(t(im), IMAGENET_MEAN, IMAGENET_STD).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    landscape = gradient_image(75, 50)  # 50 → 32, 75 → int(32*75/50)=48; left round(16/2)=8
    expected = np.asarray(landscape.resize((48, 32), Image.BICUBIC).crop((8, 0, 40, 32))) / 255.0
    got = unnormalise(EvalTransform(32, IMAGENET_MEAN, IMAGENET_STD)(landscape), IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_eval_resize_rule():
    assert eval_resize_for("cub", 224) == 256 and eval_resize_for("cars", 224) == 224
    assert eval_resize_for("cub", 32) == round(32 * 256 / 224)


def test_full_crop_with_flip_matches_pil():
    im = gradient_image(48, 48)
    t = TrainTransform(32, (0.5,) * 3, (0.5,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, seed=3)
    expected = np.asarray(im.resize((32, 32), Image.BICUBIC).transpose(Image.FLIP_LEFT_RIGHT)) / 255.0
    got = unnormalise(t(im), (0.5,) * 3, (0.5,) * 3).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_random_crop_reproduces_hand_drawn_box():
    im = gradient_image(90, 70)
    seed = 11
    t = TrainTransform(32, IMAGENET_MEAN, IMAGENET_STD, seed=seed)
    g = torch.Generator().manual_seed(seed)  # redo the draws by the torchvision definition
    while True:
        target = 90 * 70 * torch.empty(1).uniform_(0.2, 1.0, generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= 90 and 0 < h <= 70:
            top = torch.randint(0, 70 - h + 1, (1,), generator=g).item()
            left = torch.randint(0, 90 - w + 1, (1,), generator=g).item()
            break
    flip = torch.rand(1, generator=g).item() < 0.5
    ref = im.crop((left, top, left + w, top + h)).resize((32, 32), Image.BICUBIC)
    if flip:
        ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
    got = unnormalise(t(im), IMAGENET_MEAN, IMAGENET_STD).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, np.asarray(ref) / 255.0, atol=2 / 255)  # box-resize vs crop-then-resize


def test_crop_box_invariants_and_fallback():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        left, top, w, h = random_resized_crop_box(120, 80, (0.2, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 80
        assert 0.2 * 9600 * 0.9 <= w * h <= 9600  # rounding slack
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # 1000x10 can never host a crop of area >= 2000 with aspect <= 4/3: central fallback, hand-computed
    assert random_resized_crop_box(1000, 10, (0.2, 1.0), (3 / 4, 4 / 3), g) == (493, 0, 13, 10)


def test_seeded_transform_is_reproducible():
    im = gradient_image(64, 48)
    a = [TrainTransform(32, seed=5)(im) for _ in range(1)][0]
    t1, t2, t3 = TrainTransform(32, seed=5), TrainTransform(32, seed=5), TrainTransform(32, seed=6)
    seq1 = torch.stack([t1(im) for _ in range(4)])
    assert torch.equal(seq1, torch.stack([t2(im) for _ in range(4)]))
    assert torch.equal(seq1[0], a)
    assert not torch.equal(seq1, torch.stack([t3(im) for _ in range(4)]))


def test_constant_image_statistics_and_processor_normalisation():
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 0.125])
    mean, std = normalization_from_processor(proc)
    assert mean == (0.1, 0.2, 0.3) and std == (0.5, 0.25, 0.125)
    assert normalization_from_processor(None) == (IMAGENET_MEAN, IMAGENET_STD)
    im = Image.new("RGB", (50, 40), (51, 102, 204))
    expected = torch.tensor([(51 / 255 - 0.1) / 0.5, (102 / 255 - 0.2) / 0.25, (204 / 255 - 0.3) / 0.125])
    for t in (TrainTransform(32, mean, std, seed=0), EvalTransform(32, mean, std)):
        x = t(im)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        torch.testing.assert_close(x.mean((1, 2)), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="3 channel"):
        normalization_from_processor(image_mean=[0.5], image_std=[0.5])


def tiny_dataset(n=8):
    ims = [gradient_image(20 + i, 30) for i in range(n)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    return datasets.Dataset.from_dict({"image": ims, "label": [i % 4 for i in range(n)]}, features=feats)


def test_with_image_transform_emits_pixel_values_and_labels():
    ds = tiny_dataset()
    labels = dataset_labels(ds)
    out = with_image_transform(ds, EvalTransform(32))
    item = out[3]
    assert set(item) == {"pixel_values", "labels"}
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"] == labels[3] == 3
    assert dataset_labels(out) == labels  # still readable after the transform is attached
    from transformers import default_data_collator

    batch = next(iter(torch.utils.data.DataLoader(out, batch_size=4, collate_fn=default_data_collator)))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].tolist() == labels[:4]
    with pytest.raises(KeyError, match="no column 'img'"):
        with_image_transform(ds, EvalTransform(32), image_column="img")


def _epoch(ds, seed):
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: b)
    return torch.stack([x["pixel_values"] for batch in loader for x in batch])


def test_dataloader_workers_differ_and_repeat_under_manual_seed():
    im = gradient_image(64, 48)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [im] * 4, "label": [0] * 4}, features=feats)
    ds = with_image_transform(ds, TrainTransform(32, seed=1))
    first = _epoch(ds, 0)
    assert torch.equal(first, _epoch(ds, 0))
    # the same image in the two workers' batches must not get the same crops
    assert not torch.equal(first[:2], first[2:])
