# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`train_record.py` for a learnt curvature, launched by tests/test_curvature_multiprocess.py.

    ACCELERATE_USE_CPU=1 python -m accelerate.commands.launch --multi_gpu --num_processes 2 \\
        --main_process_port PORT tests/scripts/train_curvature_record.py OUT_DIR [train_hvit.py flags ...]

Everything `train_record.py` records (``OUT_DIR/rank{r}.pt``), plus, when the run resumes, the log c each
rank holds right after the checkpoint's weights were loaded (``OUT_DIR/loaded_rank{r}.pt``).

``HVIT_TEST_PER_RANK_CURVATURE=1`` is the negative control of the test: after each backward, the gradient of
``log_curvature`` is put back to this rank's own (kept by a tensor hook before DDP averages it), so each rank
learns its own c: what a c kept outside DDP's parameters would do, the failure the test must detect. (Hiding
it with ``_ddp_params_and_buffers_to_ignore`` does not do that: torch 2.13's DDP still averages it.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_record  # noqa: E402

from modeling_hvit.distributed import exit_launched_process  # noqa: E402
from modeling_hvit.trainer import HViTTrainer  # noqa: E402


def main(out_dir: Path, argv: list[str]) -> None:
    load = HViTTrainer._load_from_checkpoint

    def recording_load(self, resume_from_checkpoint, model=None):
        load(self, resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        torch.save({"log_curvature": target.log_curvature.detach().cpu().clone(), "checkpoint": str(resume_from_checkpoint)},
                   out_dir / f"loaded_rank{self.args.process_index}.pt")

    HViTTrainer._load_from_checkpoint = recording_load
    if os.environ.get("HVIT_TEST_PER_RANK_CURVATURE") == "1":
        training_step = HViTTrainer.training_step

        def per_rank_c(self, model, *args, **kwargs):
            param = self.accelerator.unwrap_model(model).log_curvature
            local = []
            handle = param.register_hook(lambda g: local.append(g.detach().clone()))  # before DDP's all-reduce
            try:
                loss = training_step(self, model, *args, **kwargs)
            finally:
                handle.remove()
            param.grad.copy_(sum(local))  # this rank's gradient instead of the average
            return loss

        HViTTrainer.training_step = per_rank_c
    train_record.main(out_dir, argv)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
    exit_launched_process(0)  # as the CLIs end: no interpreter finalization under the launcher
