"""Training from the decode-once cache and with the augmentation on the device (issue 17 items 1–2).

`--cache_images`: the train split is built once into the cache, reused by the next run, rebuilt when a
source image changes, never read when incomplete; what the training pipeline decodes from it equals
the originals reduced by `cache.reduce_image`. `--augment_on_device`: a training step's pixel values
equal the per-image PIL path applied to the same images with the same generator (interpolation
tolerance of tests/test_batched_transforms.py), crops depend on (seed, step) only, a resumed run sees the
uninterrupted run's crops and ends with its weights, and the demo learns as with the default path.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from modeling_hvit import HViTModel
from modeling_hvit.configuration_hvit import HViTConfig
from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.data.batched_transforms import BatchedTrainTransform, crop_generator, sample_crops
from modeling_hvit.data.cache import build_cache, is_complete, reduce_image
from modeling_hvit.data.transforms import DecodeTransform, TrainTransform, random_resized_crop_box, with_image_transform
from modeling_hvit.errors import UserError
from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments
from modeling_hvit.training import SCRATCH_BACKBONES, TrainDataArguments, cached_train_split, main, parse_args

ROOT = Path(__file__).resolve().parents[1]


def _write_folder(root: Path, seed: int = 0, classes: int = 4, per_class: int = 4) -> Path:
    """JPEGs of several sizes (some above, some below the cache's shorter side of 24) in class folders."""
    rng = np.random.default_rng(seed)
    sizes = [(60, 40), (30, 50), (20, 18), (48, 48)]
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[(c + i) % len(sizes)]
            ramp = np.linspace(0, 80, w)[None, :, None] + np.linspace(0, 60, h)[:, None, None]
            pixels = np.clip(rng.normal(40 * c + 30, 8, (h, w, 3)) + ramp, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def _train_flags(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset", "folder", "--data_dir", str(data), "--image_size", "16", "--embedding_dim", "8",
            "--global_batch_size", "4", "--samples_per_class", "2", "--max_steps", "1", "--recall_ks", "1",
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
            "--dataloader_num_workers", "0", "--cache_images", "true", "--cache_dir", str(cache),
            "--cache_min_side", "24", *extra]


def _caches(cache: Path) -> list[Path]:
    return sorted(cache.glob("folder/train/*/hvit_cache.json"))


def test_training_builds_the_cache_once_reuses_it_and_rebuilds_on_a_changed_source(tmp_path, capsys):
    data, cache = _write_folder(tmp_path / "data"), tmp_path / "cache"
    main(_train_flags(data, tmp_path / "a", cache))
    assert "image cache: train split (8 images, jpeg, shorter side 24) built in" in capsys.readouterr().out
    [meta] = _caches(cache)
    stamp = meta.stat().st_mtime_ns
    main(_train_flags(data, tmp_path / "b", cache, "--augment_on_device", "true"))
    assert "read from" in capsys.readouterr().out
    assert _caches(cache) == [meta] and meta.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # a train image edited in place (same path): a new cache
    target = data / "class0" / "0.jpg"
    Image.new("RGB", (60, 40), (250, 10, 10)).save(target, quality=90)
    main(_train_flags(data, tmp_path / "c", cache))
    assert "built in" in capsys.readouterr().out
    assert len(_caches(cache)) == 2 and meta.stat().st_mtime_ns == stamp  # the old one is left as it was


def _dargs(tmp_path: Path, **kw) -> TrainDataArguments:
    return TrainDataArguments(dataset="folder", cache_images=True, cache_dir=str(tmp_path / "cache"),
                              cache_min_side=24, **kw)


def _targs(tmp_path: Path, **kw) -> HViTTrainingArguments:
    return HViTTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, use_cpu=True,
                                 report_to="none", dataloader_num_workers=0, **kw)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_the_training_pipeline_decodes_the_reduced_originals(tmp_path, fmt):
    data = _write_folder(tmp_path / "data")
    train = build_dataset("folder", str(data))["train"]
    cached = cached_train_split(train, _dargs(tmp_path, cache_format=fmt), _targs(tmp_path))
    assert dataset_labels(cached) == dataset_labels(train)
    seen = with_image_transform(cached, DecodeTransform())  # what decode-only workers emit
    paths = train.cast_column("image", datasets.Image(decode=False))["image"]
    for i, value in enumerate(paths):
        want = torch.from_numpy(np.array(reduce_image(Path(value["path"]).read_bytes(), 24))).permute(2, 0, 1)
        got = seen[i]["pixel_values"]
        assert got.shape == want.shape and min(got.shape[1:]) == min(24, *Image.open(value["path"]).size)
        diff = (got.float() - want.float()).abs()
        assert diff.max() == 0 if fmt == "raw" else diff.mean() < 2.5, (i, diff.mean())  # JPEG q95
    # and the per-image train transform on the cache sees those pixels (a full-box crop at the same size)
    t = TrainTransform(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    square = next(i for i, v in enumerate(paths) if Image.open(v["path"]).size == (48, 48))
    full = with_image_transform(cached, t)[square]["pixel_values"]
    torch.testing.assert_close(full, seen[square]["pixel_values"], rtol=0, atol=0)


def test_an_incomplete_or_damaged_cache_is_never_read(tmp_path):
    data = _write_folder(tmp_path / "data")
    train = build_dataset("folder", str(data))["train"]
    first = cached_train_split(train, _dargs(tmp_path, cache_format="raw"), _targs(tmp_path))
    folder = Path(first.cache_files[0]["filename"]).parent
    assert is_complete(folder)
    arrow = next(folder.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-100])  # truncated (a copy cut short, a full disk)
    assert not is_complete(folder)
    with pytest.warns(UserWarning, match="incomplete or damaged; rebuilding"):
        again = cached_train_split(train, _dargs(tmp_path, cache_format="raw"), _targs(tmp_path))
    assert is_complete(folder) and len(again) == len(train)
    assert np.array_equal(np.asarray(again[0]["image"]), np.asarray(first[0]["image"]))
    (folder / "hvit_cache.json").unlink()  # killed before the metadata: not a cache
    assert not is_complete(folder)
    with pytest.warns(UserWarning, match="rebuilding"):
        build_cache(train, folder.parent, min_side=24, fmt="raw", num_proc=1)
    assert is_complete(folder)
    assert not list(folder.parent.glob(".*tmp*"))  # no temporary directory left behind


def test_cache_options_are_documented_and_bad_values_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    data_group = text.split("\ndata:")[1].split("\nloss and sampler:")[0]
    for flag in ("--cache_images", "--cache_dir", "--cache_min_side", "--cache_format", "--augment_on_device"):
        assert flag in data_group, flag
    assert "$HF_HOME/hvit/images" in data_group and "'jpeg'" in data_group
    with pytest.raises(UserError, match=r"^--cache_format 'png': expected one of jpeg, raw$"):
        parse_args(["--cache_format", "png"])
    with pytest.raises(UserError, match="--cache_min_side 0"):
        parse_args(["--cache_min_side", "0"])
    good = tmp_path / "ok.yaml"  # recipes take the options too
    good.write_text("cache_images: true\ncache_format: raw\ncache_min_side: 320\naugment_on_device: true\n")
    _, dargs, targs = parse_args(["--config", str(good), "--use_cpu", "true"])
    assert (dargs.cache_images, dargs.cache_format, dargs.cache_min_side, targs.augment_on_device) == (True, "raw", 320, True)
    bad = tmp_path / "r.yaml"  # a recipe's value is checked as well
    bad.write_text("cache_images: true\ncache_format: webp\n")
    with pytest.raises(UserError, match="--cache_format 'webp'"):
        parse_args(["--config", str(bad)])
    proc = subprocess.run([sys.executable, "-m", "modeling_hvit", "train", "--cache_format", "png"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "hvit train: error: --cache_format 'png': expected one of jpeg, raw"]


# --- augmentation on the device -----------------------------------------------------------------

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


class _Recorder:
    """Forward pre-hook: the pixel values of every training forward, in order."""

    def __init__(self, model):
        self.batches: list[torch.Tensor] = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if module.training:
            self.batches.append(kwargs["pixel_values"].detach().clone())


def _demo():
    return build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4, "images_per_class": 6,
                                              "image_size": 20})["train"]


def _trainer(out_dir, *, device: bool, max_steps: int = 6, seed: int = 0, lr: float = 1e-3, **kw):
    torch.manual_seed(0)
    train = _demo()
    model = HViTModel(HViTConfig(backbone_config={**SCRATCH_BACKBONES["tiny"], "image_size": 16, "hidden_size": 32,
                                                  "num_hidden_layers": 2, "intermediate_size": 64},
                                 embedding_dim=8))
    args = HViTTrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=8, samples_per_class=2,
                                 learning_rate=lr, max_steps=max_steps, use_cpu=True, report_to="none", seed=seed,
                                 dataloader_num_workers=0, logging_steps=1, disable_tqdm=True, **kw)
    augment = BatchedTrainTransform(16, MEAN, STD) if device else None
    transform = DecodeTransform() if device else TrainTransform(16, MEAN, STD)
    trainer = HViTTrainer(model=model, args=args, train_dataset=with_image_transform(train, transform),
                          train_labels=dataset_labels(train), train_augment=augment)
    return trainer, _Recorder(model), train


def test_a_device_step_equals_the_per_image_path_on_the_same_images():
    trainer, seen, train = _trainer("/tmp/unused", device=True, max_steps=3)
    trainer.train()
    assert len(seen.batches) == 3
    sampler = trainer._train_sampler
    per_epoch = sampler.steps_per_epoch * sampler.batch_size
    decoded = train.with_format(None)
    for step, got in enumerate(seen.batches):
        sampler.set_epoch(step // sampler.steps_per_epoch)
        stream = list(iter(sampler))[:per_epoch]
        start = (step % sampler.steps_per_epoch) * sampler.batch_size
        indices = stream[start:start + sampler.batch_size]
        # the PIL path, one image after the other, from the generator of this step
        t = TrainTransform(16, MEAN, STD, generator=crop_generator(0, step, 0, 0))
        want = torch.stack([t(decoded[i]["image"]) for i in indices])
        assert got.shape == want.shape == (8, 3, 16, 16)
        levels = (got - want).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
        assert levels.mean() < 0.25 and (levels > 2.01).float().mean() < 0.03, (step, levels.mean())
    assert not torch.equal(seen.batches[0], seen.batches[1])


def test_device_crops_depend_on_seed_and_step_and_a_resume_sees_the_same(tmp_path):
    full, seen_full, _ = _trainer(tmp_path / "full", device=True, save_strategy="steps", save_steps=4)
    full.train()
    again, seen_again, _ = _trainer(tmp_path / "again", device=True)
    again.train()
    for a, b in zip(seen_full.batches, seen_again.batches, strict=True):
        assert torch.equal(a, b)  # reproducible
    other, seen_other, _ = _trainer(tmp_path / "other", device=True, seed=1)
    other.train()
    assert not torch.equal(seen_other.batches[0], seen_full.batches[0])
    resumed, seen_resumed, _ = _trainer(tmp_path / "resumed", device=True)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert len(seen_resumed.batches) == 2
    for a, b in zip(seen_full.batches[4:], seen_resumed.batches, strict=True):
        assert torch.equal(a, b)  # the crops of steps 5 and 6, as uninterrupted
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7, msg=k)


def test_step_seeded_crops_have_the_per_image_distribution():
    """Boxes drawn per step (`crop_generator`) vs per worker (`TrainTransform` reseeded from the worker
    seed): area fraction, aspect and centre have the same distribution (two-sample KS)."""
    sizes = [(64, 48), (48, 64), (50, 50)] * 40

    def stats(boxes):
        b = np.asarray(boxes, np.float64)
        wh = np.asarray(sizes * (len(b) // len(sizes)), np.float64)
        return np.stack([b[:, 2] * b[:, 3] / (wh[:, 0] * wh[:, 1]), np.log(b[:, 2] / b[:, 3]),
                         (b[:, 0] + b[:, 2] / 2) / wh[:, 0]], 1)

    device = torch.cat([sample_crops(sizes, generator=crop_generator(0, step, 0, 0))[0] for step in range(25)])
    g = torch.Generator().manual_seed(12345)
    worker = [random_resized_crop_box(w, h, (0.2, 1.0), (3 / 4, 4 / 3), g) for _ in range(25) for w, h in sizes]
    a, b = stats(device.tolist()), stats(worker)
    for j, name in enumerate(("area", "log aspect", "centre x")):
        assert ks_2samp(a[:, j], b[:, j]).pvalue > 1e-3, name
    narrow = stats(torch.cat([sample_crops(sizes, scale=(0.5, 1.0), generator=crop_generator(0, s))[0]
                              for s in range(25)]).tolist())
    assert ks_2samp(a[:, 0], narrow[:, 0]).pvalue < 1e-6  # the test can tell another scale range


@pytest.mark.slow
def test_demo_learns_with_the_augmentation_on_the_device(tmp_path):
    losses = {}
    for device in (False, True):
        trainer, _, _ = _trainer(tmp_path / str(device), device=device, max_steps=60, lr=2e-3)
        trainer.train()
        losses[device] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    for device, curve in losses.items():
        first, last = np.mean(curve[:10]), np.mean(curve[-10:])
        assert last < 0.85 * first, (device, first, last)
    assert np.mean(losses[True][-10:]) < 1.15 * np.mean(losses[False][-10:])


def test_augment_on_device_flag_builds_the_models_transform(tmp_path):
    trainer, seen, _ = _trainer(tmp_path, device=False, max_steps=1, augment_on_device=True)
    assert isinstance(trainer.train_augment, BatchedTrainTransform) and trainer.train_augment.image_size == 16
    trainer.train_dataset = with_image_transform(_demo(), DecodeTransform())
    trainer.train()
    assert seen.batches[0].shape == (8, 3, 16, 16) and seen.batches[0].dtype == torch.float32


@pytest.mark.slow
def test_two_processes_build_the_cache_once(tmp_path):
    """Under `accelerate launch` with two CPU processes the main process builds, the other reads."""
    import socket

    data, cache = _write_folder(tmp_path / "data", classes=8), tmp_path / "cache"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "modeling_hvit", "train", *_train_flags(data, tmp_path / "out", cache, "--augment_on_device",
                                                                    "true", "--global_batch_size", "8")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("image cache: train split") == 1 and "built in" in proc.stdout, proc.stdout
    assert len(_caches(cache)) == 1 and not list((cache / "folder" / "train").glob(".*"))
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["world_size"] == 2
