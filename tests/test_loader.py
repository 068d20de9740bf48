# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The training input pipeline keeps its DataLoader workers: alive across epochs (not re-forked) and all busy
even when one pass over the classes is a single batch (CUB/Cars at batch 900), with the same index stream."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_hvit import HViTModel
from modeling_hvit.configuration_hvit import HViTConfig
from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.data.transforms import TrainTransform, with_image_transform
from modeling_hvit.sampling import ClassPairSampler, passes_for_workers
from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments
from modeling_hvit.training import SCRATCH_BACKBONES


def _stream(sampler: ClassPairSampler, epochs: int) -> list[int]:
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        out += list(sampler)
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_multi_pass_epochs_give_the_same_stream(k):
    labels = np.repeat(np.arange(13), 5)
    one = ClassPairSampler(labels, 2, 4, world_size=2, seed=7)
    many = ClassPairSampler(labels, 2, 4, world_size=2, seed=7, passes_per_epoch=k)
    assert many.steps_per_epoch == k * one.steps_per_epoch and len(many) == k * len(one)
    assert _stream(many, 2) == _stream(one, 2 * k)  # epoch e of k passes = passes e·k … e·k + k − 1
    many.set_epoch(1)
    assert len(list(many)) == len(many)


def test_passes_for_workers():
    assert passes_for_workers(1, 0) == 1  # no workers: one pass, as before
    assert passes_for_workers(1, 8) == 32  # CUB at batch 900: 2 × 8 workers × prefetch 2 batches per epoch
    assert passes_for_workers(5, 8, 4) == 13
    assert passes_for_workers(100, 8) == 1  # SOP: one pass is already long


class _RecordingTransform:
    """The training transform, also recording which process decoded each item (one file per process)."""

    def __init__(self, folder: Path):
        self.folder, self.inner = folder, TrainTransform(16)

    def __call__(self, image):
        with open(self.folder / str(os.getpid()), "a") as fh:
            fh.write("x")
        return self.inner(image)


def _trainer(tmp_path: Path, batch: int, max_steps: int, workers: int, **kw) -> HViTTrainer:
    torch.manual_seed(0)
    dsd = build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4, "images_per_class": 6,
                                             "image_size": 16})
    model = HViTModel(HViTConfig(backbone_config={**SCRATCH_BACKBONES["tiny"], "image_size": 16, "hidden_size": 32,
                                                  "num_hidden_layers": 1, "intermediate_size": 64}, embedding_dim=8))
    args = HViTTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=batch,
                                 samples_per_class=2, max_steps=max_steps, use_cpu=True, report_to="none", seed=0,
                                 dataloader_num_workers=workers, disable_tqdm=True, **{"logging_steps": 100, **kw})
    (tmp_path / "pids").mkdir()
    train = dsd["train"]
    return HViTTrainer(model=model, args=args, train_labels=dataset_labels(train),
                       train_dataset=with_image_transform(train, _RecordingTransform(tmp_path / "pids")))


def _decodes_per_process(tmp_path: Path) -> Counter:
    return Counter({p.name: len(p.read_text()) for p in (tmp_path / "pids").iterdir()})


def test_workers_persist_and_all_decode_when_a_pass_is_one_batch(tmp_path):
    # 16 train classes, 16 classes per batch: one pass over the classes = one step (CUB at batch 900).
    trainer = _trainer(tmp_path, batch=32, max_steps=12, workers=2)
    assert trainer.args.dataloader_persistent_workers
    sampler = trainer._train_sampler
    assert sampler.steps_per_pass == 1 and sampler.steps_per_epoch == 8  # 2 × 2 workers × prefetch 2
    trainer.train()  # 12 steps = 2 loader epochs
    decodes = _decodes_per_process(tmp_path)
    assert str(os.getpid()) not in decodes  # decoding happens in the workers
    assert len(decodes) == 2, f"workers re-forked across epochs or idle: {decodes}"
    assert min(decodes.values()) >= 32 * 3  # each worker decoded several batches, not one worker for all


def test_persistent_workers_need_workers():
    with pytest.raises(ValueError, match="dataloader_num_workers"):
        HViTTrainingArguments(output_dir="x", per_device_train_batch_size=4, use_cpu=True, report_to="none",
                              dataloader_num_workers=0, dataloader_persistent_workers=True)
    args = HViTTrainingArguments(output_dir="x", per_device_train_batch_size=4, use_cpu=True, report_to="none",
                                 dataloader_num_workers=0)
    assert args.dataloader_persistent_workers is False


def test_epochs_count_class_passes_when_a_loader_epoch_holds_several(tmp_path):
    # One pass over the classes = one step; with 2 workers a loader epoch holds 8 passes. Three epochs asked
    # for are three passes = 3 steps (the CUB recipe's 50 epochs = 50 steps), and the logs count passes.
    trainer = _trainer(tmp_path, batch=32, max_steps=-1, workers=2, num_train_epochs=3, logging_steps=1)
    assert trainer._train_sampler.passes_per_epoch == 8
    trainer.train()
    assert trainer.state.global_step == 3
    epochs = [h["epoch"] for h in trainer.state.log_history if "loss" in h]
    assert epochs == pytest.approx([1.0, 2.0, 3.0])
