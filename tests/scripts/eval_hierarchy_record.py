# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`HViTTrainer.evaluate` with hierarchy metrics, for the distributed-evaluation test.

    ACCELERATE_USE_CPU=1 python -m accelerate.commands.launch --multi_gpu --num_processes 2 \\
        --main_process_port PORT tests/scripts/eval_hierarchy_record.py OUT_DIR

A seeded tiny model evaluates the demo test split (an odd number of images, batches of 4, so the
ranks' shards are uneven and accelerate pads the last one) with its super-classes; each rank writes
``OUT_DIR/rank{r}.json``: {"world_size", "metrics", "searches" (k-NN searches this rank ran during the
evaluation, ``retrieval.search_counts``), "error" (what ``run_on_main`` raised on this rank when the
main process's computation failed)}. The test compares them with one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from modeling_hvit import HViTModel
from modeling_hvit.configuration_hvit import HViTConfig
from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.data.transforms import EvalTransform, with_image_transform
from modeling_hvit.distributed import exit_launched_process, run_on_main
from modeling_hvit.retrieval import search_counts
from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments, make_compute_metrics

TINY = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "image_size": 16, "patch_size": 4}
N_EVAL = 45


def eval_split():
    test = build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4, "images_per_class": 8,
                                              "image_size": 16})["test"]
    return test.select(range(N_EVAL))


def tiny_model(geometry: str = "sphere") -> HViTModel:
    torch.manual_seed(0)
    return HViTModel(HViTConfig(backbone_config=TINY, embedding_dim=8, geometry=geometry)).eval()


def main(out_dir: Path) -> None:
    test = eval_split()
    model = tiny_model()
    args = HViTTrainingArguments(output_dir=str(out_dir / "run"), per_device_train_batch_size=8,
                                 per_device_eval_batch_size=4, report_to="none", dataloader_num_workers=0,
                                 disable_tqdm=True)
    hierarchy = (dataset_labels(test), dataset_labels(test, "superclass"))
    trainer = HViTTrainer(model=model, args=args, eval_dataset=with_image_transform(test, EvalTransform(16)),
                          compute_metrics=make_compute_metrics("sphere", 0.1, (1, 2), hierarchy=hierarchy,
                                                               head=model.head))
    before = sum(search_counts().values())
    metrics = trainer.evaluate()
    searches = sum(search_counts().values()) - before
    try:
        run_on_main(lambda: int("not a number"))
        error = None
    except ValueError as err:
        error = str(err)
    (out_dir / f"rank{args.process_index}.json").write_text(json.dumps(
        {"world_size": args.world_size, "metrics": metrics, "searches": searches, "error": error}))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_launched_process(0)  # as the CLIs end: no interpreter finalization under the launcher
