# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Run `train_hvit.py`'s `main` and record what the distributed-training test checks, per rank.

    ACCELERATE_USE_CPU=1 python -m accelerate.commands.launch --multi_gpu --num_processes 2 \\
        --main_process_port PORT tests/scripts/train_record.py OUT_DIR [train_hvit.py flags ...]
    python tests/scripts/train_record.py OUT_DIR [train_hvit.py flags ...]      # one process

Test-only instrumentation, patched onto the classes here (nothing in the package):

- every training `compute_loss` call records whether the model it gets is DDP-wrapped and the
  labels of this rank's batch;
- after `train()`, each rank saves its own parameters (before the final evaluation and save);
- the train transform is replaced by the (deterministic) eval transform, so one process and two
  processes see identical pixels: random crops/flips would otherwise be drawn in a different order.

Writes ``OUT_DIR/rank{r}.pt``: {"world_size", "ddp": [bool per step], "labels": [tensor per step],
"initial_params" / "params": {name: tensor} before / after `train()`, "curvature": float}.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from modeling_hvit import training
from modeling_hvit.distributed import exit_launched_process
from modeling_hvit.trainer import HViTTrainer


def main(out_dir: Path, argv: list[str]) -> None:
    record: dict = {"ddp": [], "labels": []}
    compute_loss, train = HViTTrainer.compute_loss, HViTTrainer.train

    def recording_compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            record["ddp"].append(isinstance(model, DistributedDataParallel))
            record["labels"].append(inputs["labels"].detach().cpu().clone())
        return compute_loss(self, model, inputs, *args, **kwargs)

    def recording_train(self, *args, **kwargs):
        model = self.accelerator.unwrap_model(self.model)
        record["initial_params"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
        out = train(self, *args, **kwargs)
        record.update(world_size=self.args.world_size, curvature=float(model.config.curvature),
                      params={n: p.detach().cpu().clone() for n, p in model.named_parameters()})
        torch.save(record, out_dir / f"rank{self.args.process_index}.pt")
        return out

    def deterministic_transforms(*args, **kwargs):
        _, eval_tf = transforms_for_model(*args, **kwargs)
        return eval_tf, eval_tf

    transforms_for_model = training.transforms_for_model
    HViTTrainer.compute_loss, HViTTrainer.train = recording_compute_loss, recording_train
    training.transforms_for_model = deterministic_transforms
    training.main(argv)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
    exit_launched_process(0)  # as the CLIs end: no interpreter finalization under the launcher
