"""Decode-once training cache (issue 17 item 1): reduction, formats, fingerprint reuse/invalidation,
and the train transform's statistics from the cache against the original images."""

from __future__ import annotations

import io
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from modeling_hvit.data.cache import build_cache, decode_cached, encode_cached, main, reduce_image, reduced_size
from modeling_hvit.data.transforms import TrainTransform, random_resized_crop_box


def _jpeg(w: int, h: int, seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    a = a + rng.normal(0, 8, a.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _dataset(sizes, seed=0) -> datasets.Dataset:
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"image": [{"bytes": _jpeg(w, h, seed + i), "path": None} for i, (w, h) in enumerate(sizes)],
            "label": list(range(len(sizes)))}
    return datasets.Dataset.from_dict(rows, features=feats)


def test_reduced_size_keeps_aspect_and_never_enlarges():
    assert reduced_size(640, 480, 256) == (341, 256)
    assert reduced_size(480, 640, 256) == (256, 341)
    assert reduced_size(200, 900, 256) == (200, 900)
    assert reduced_size(256, 256, 256) == (256, 256)


@pytest.mark.parametrize("draft", [True, False])
def test_reduce_image_close_to_full_decode_resize(draft):
    data = _jpeg(1200, 900, 1)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.Resampling.BICUBIC)
    got = reduce_image(data, 256, draft=draft)
    assert got.size == (341, 256) and got.mode == "RGB"
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(full, np.float64))
    assert diff.mean() < (1.5 if draft else 1e-9)  # DCT-domain scaling changes pixels a little


@pytest.mark.parametrize("fmt", ["jpeg", "raw"])
def test_formats_round_trip(fmt):
    im = reduce_image(_jpeg(400, 300, 2), 128)
    back = decode_cached(encode_cached(im, fmt))
    assert back.size == im.size and back.mode == "RGB"
    diff = np.abs(np.asarray(back, np.float64) - np.asarray(im, np.float64))
    assert diff.max() == 0 if fmt == "raw" else diff.mean() < 2.5  # q95 on noisy content: ≈ 1.6
    with pytest.raises(ValueError, match="cache format 'png'"):
        encode_cached(im, "png")


def test_build_cache_reduces_reuses_and_invalidates(tmp_path):
    sizes = [(400, 300), (300, 500), (100, 80), (640, 480)]
    src = _dataset(sizes)
    cached = build_cache(src, tmp_path, min_side=128, fmt="jpeg", num_proc=1)
    assert cached.column_names == src.column_names and cached["label"] == src["label"]
    assert [im.size for im in cached["image"]] == [reduced_size(w, h, 128) for w, h in sizes]
    cache_dir = {f["filename"].rsplit("/", 2)[-2] for f in cached.cache_files}
    assert len(cache_dir) == 1
    meta = next(tmp_path.glob("*/hvit_cache.json"))
    stamp = meta.stat().st_mtime_ns
    again = build_cache(src, tmp_path, min_side=128, fmt="jpeg", num_proc=1)
    assert meta.stat().st_mtime_ns == stamp and len(again) == len(src)  # reused, not rebuilt
    assert len(list(tmp_path.glob("*/hvit_cache.json"))) == 1
    changed = _dataset(sizes, seed=100)  # same shapes and labels, other pixels
    build_cache(changed, tmp_path, min_side=128, fmt="jpeg", num_proc=1)
    build_cache(src, tmp_path, min_side=160, fmt="jpeg", num_proc=1)  # another setting
    raw = build_cache(src, tmp_path, min_side=128, fmt="raw", num_proc=1)
    assert len(list(tmp_path.glob("*/hvit_cache.json"))) == 4
    expect = reduce_image(src.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"], 128)
    assert np.array_equal(np.asarray(raw[0]["image"]), np.asarray(expect))


def test_on_disk_source_change_invalidates(tmp_path):
    src_dir = tmp_path / "src"
    _dataset([(300, 200), (200, 300)]).save_to_disk(str(src_dir))
    build_cache(datasets.load_from_disk(str(src_dir)), tmp_path / "cache", min_side=64, num_proc=1)
    build_cache(datasets.load_from_disk(str(src_dir)), tmp_path / "cache", min_side=64, num_proc=1)
    assert len(list((tmp_path / "cache").glob("*/hvit_cache.json"))) == 1
    other = tmp_path / "src2"
    _dataset([(300, 200), (200, 300)], seed=9).save_to_disk(str(other))
    import shutil

    shutil.rmtree(src_dir)
    other.rename(src_dir)  # the source was rebuilt in place
    build_cache(datasets.load_from_disk(str(src_dir)), tmp_path / "cache", min_side=64, num_proc=1)
    assert len(list((tmp_path / "cache").glob("*/hvit_cache.json"))) == 2


def test_bad_arguments_are_named(tmp_path):
    src = _dataset([(64, 64)])
    with pytest.raises(ValueError, match="--format 'webp'"):
        build_cache(src, tmp_path, fmt="webp")
    with pytest.raises(KeyError, match="no column 'img'"):
        build_cache(src, tmp_path, image_column="img")


def test_crops_cover_the_same_scene_fraction_and_position():
    """RandomResizedCrop boxes on the cached size, mapped back to the original's coordinates, have
    the distribution of boxes drawn on the original (area fraction, aspect, centre): two-sample KS."""
    W, H = 640, 480
    w, h = reduced_size(W, H, 256)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    n = 3000

    def stats(width, height, g):
        out = []
        for _ in range(n):
            l, t, bw, bh = random_resized_crop_box(width, height, (0.2, 1.0), (3 / 4, 4 / 3), g)
            out.append((bw * bh / (width * height), bw / bh * height / width * W / H,
                        (l + bw / 2) / width, (t + bh / 2) / height))
        return np.array(out)

    orig, cache = stats(W, H, g1), stats(w, h, g2)
    for j, name in enumerate(("area", "aspect", "centre x", "centre y")):
        assert ks_2samp(orig[:, j], cache[:, j]).pvalue > 1e-3, name
    square = stats(h, h, torch.Generator().manual_seed(2))  # a centre-square cache would be caught
    square[:, 2] = 0.5 + (square[:, 2] - 0.5) * h / w
    assert ks_2samp(orig[:, 2], square[:, 2]).pvalue < 1e-6


def test_train_transform_pixel_statistics_from_cache_match_original():
    """Per-crop channel means of TrainTransform outputs: same distribution from the cache (JPEG q95,
    shorter side 256) as from the original 800×600 JPEG (two-sample KS on 300 crops each)."""
    data = _jpeg(800, 600, 3)
    original = Image.open(io.BytesIO(data))
    original.load()
    cached = decode_cached(encode_cached(reduce_image(data, 256), "jpeg"))
    n = 300
    t1, t2 = TrainTransform(96, seed=0), TrainTransform(96, seed=1)
    a = torch.stack([t1(original) for _ in range(n)]).float() / 127.5 - 1  # uint8 → the normalised scale
    b = torch.stack([t2(cached) for _ in range(n)]).float() / 127.5 - 1
    for c in range(3):
        assert ks_2samp(a[:, c].mean((1, 2)).numpy(), b[:, c].mean((1, 2)).numpy()).pvalue > 1e-3, c
    assert math.isclose(a.mean().item(), b.mean().item(), abs_tol=0.03)


def test_main_builds_every_split(tmp_path, capsys):
    out = main(["--dataset", "demo", "--out_dir", str(tmp_path), "--min_side", "16", "--num_proc", "1"])
    assert set(out) == {"train", "test"} and all(v["rows"] > 0 for v in out.values())
    assert "train:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--splits \\['nope'\\]"):
        main(["--dataset", "demo", "--out_dir", str(tmp_path), "--splits", "nope"])


def test_an_image_stored_by_path_and_edited_in_place_invalidates(tmp_path):
    """A folder dataset holds paths, not bytes: an edited image changes no Arrow byte, only the file."""
    paths = []
    for i, (w, h) in enumerate([(300, 200), (200, 300)]):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(_jpeg(w, h, i))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})

    def source():
        return datasets.Dataset.from_dict({"image": [str(p) for p in paths], "label": [0, 1]}, features=feats)

    first = build_cache(source(), tmp_path / "cache", min_side=64, num_proc=1)
    build_cache(source(), tmp_path / "cache", min_side=64, num_proc=1)
    assert len(list((tmp_path / "cache").glob("*/hvit_cache.json"))) == 1
    paths[0].write_bytes(_jpeg(300, 200, 50))  # same path, other pixels
    second = build_cache(source(), tmp_path / "cache", min_side=64, num_proc=1)
    assert len(list((tmp_path / "cache").glob("*/hvit_cache.json"))) == 2
    assert not np.array_equal(np.asarray(first[0]["image"]), np.asarray(second[0]["image"]))
