# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`train_hvit.py`: arguments, recipes, and the run (data → model → HViTTrainer → eval → save).

With no arguments the embedded demo recipe runs: the built-in hierarchical shapes dataset and a tiny
ViT from scratch, on CPU in a few minutes. `--config recipe.yaml|json` loads a recipe (see
`configs/`); flags given on the command line override it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from .checkpoint import write_manifest
from .configuration_hvit import HViTConfig
from .data import DataArguments, dataset_labels
from .data.splits import describe_splits, split_summary
from .metrics import recall_ks_for
from .modeling_hvit import HViTModel
from .evaluation import hierarchy_column_of
from .trainer import HViTTrainer, HViTTrainingArguments, make_compute_metrics
from .data.batched_transforms import BatchedTrainTransform
from .data.transforms import DecodeTransform, model_preprocessing, transforms_for_model, with_image_transform

logger = logging.get_logger(__name__)

# Backbones trained from scratch, by name (`--backbone scratch:<name>`).
SCRATCH_BACKBONES = {
    "tiny": {"model_type": "vit", "hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
             "intermediate_size": 192, "patch_size": 4},
    "vit-s16": {"model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                "intermediate_size": 1536, "patch_size": 16},
}

# The embedded default: `accelerate launch train_hvit.py` with no arguments.
DEMO_RECIPE = {
    "dataset": "demo", "backbone": "scratch:tiny", "image_size": 32, "embedding_dim": 32, "freeze_patch_embed": False,
    "output_dir": "outputs/hvit-demo", "learning_rate": 1e-3, "global_batch_size": 64,
    "samples_per_class": 2, "num_train_epochs": 150, "logging_steps": 20, "eval_strategy": "no",
    "dataloader_num_workers": 0, "seed": 0, "recall_ks": "1,2,4,8", "crop_scale_min": 0.6,
}


@dataclass
class ModelArguments:
    backbone: str = field(default="scratch:tiny", metadata={"help": "Pretrained backbone (Hub id or dir), or "
                          f"scratch:<name> to train from scratch ({', '.join(SCRATCH_BACKBONES)})."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from a saved HViT model."})
    embedding_dim: int = field(default=128, metadata={"help": "Head output dimension."})
    geometry: str = field(default="poincare", metadata={"help": "poincare, lorentz, sphere or euclidean."})
    curvature: str = field(default="0.1", metadata={"help": "c of the ball, or 'auto' to estimate it from δ."})
    learn_curvature: bool = field(default=False, metadata={"help": "Learn c (log space, within the config's "
                                  "curvature_min/max; LR --curvature_learning_rate); the final c is saved."})
    clip_radius: float | None = field(default=2.3, metadata={"help": "Feature clipping radius r."})
    freeze_patch_embed: bool = field(default=True, metadata={"help": "Freeze the patch embedding (paper)."})
    freeze_blocks: int = field(default=0, metadata={"help": "Also freeze the first N blocks."})
    image_size: int = field(default=224, metadata={"help": "Input resolution."})
    delta_n: int = field(default=2000, metadata={"help": "--curvature auto: points per δ draw."})
    delta_draws: int = field(default=100, metadata={"help": "--curvature auto: number of draws (the original's 100)."})


@dataclass
class TrainDataArguments(DataArguments):
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N test images."})
    crop_scale_min: float = field(default=0.2, metadata={"help": "RandomResizedCrop scale lower bound (paper 0.2)."})
    cache_images: bool = field(default=False, metadata={"help": (
        "Train from a decode-once cache of the train split (data.cache): each image stored once with its shorter "
        "side --cache_min_side, built on first use (by the main process; the others wait), reused while the "
        "source and settings are unchanged, rebuilt when they change. Evaluation reads the original images.")})
    cache_dir: str | None = field(default=None, metadata={"help": "Root of the image caches; default "
                                  "$HF_HOME/hvit/images (~/.cache/huggingface/hvit/images)."})
    cache_min_side: int = field(default=256, metadata={"help": "Shorter side of the cached images (never enlarged); "
                                "≥ the crop size, e.g. 256 for 224 crops."})
    cache_format: str = field(default="jpeg", metadata={"help": "Cached images as 'jpeg' (q95, 4:4:4) or 'raw' "
                              "(uncompressed: no decoding, ≈ 7× the disk space of jpeg on Caltech-101)."})

    def __post_init__(self):
        from .data.cache import FORMATS
        from .errors import UserError

        if self.cache_format not in FORMATS:
            raise UserError(f"--cache_format {self.cache_format!r}: expected one of {', '.join(FORMATS)}")
        if self.cache_min_side < 1:
            raise UserError(f"--cache_min_side {self.cache_min_side}: expected a positive number of pixels")


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, TrainDataArguments, HViTTrainingArguments]:
    """Recipe (`--config`, else the demo) as defaults, command-line flags on top.

    The recipe's dataset-specific values (Recall@K) apply only to its own dataset; a run on another
    dataset without `--config` warns which demo-recipe values it inherits. `--help` / `--help-all`
    print `format_train_help` and exit.
    """
    from .data.names import canonical_dataset_name
    from .errors import UserError
    from .training_help import PAPER_DEFAULTS, dataclass_defaults, format_train_help, given_dests

    argv = sys.argv[1:] if argv is None else list(argv)
    recipe, recipe_name = dict(DEMO_RECIPE), "demo recipe"
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a path to a .yaml or .json recipe")
        path = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
        if not path.is_file():
            raise UserError(f"--config {path}: no such file")
        try:
            recipe = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise UserError(f"--config {path}: not valid {'YAML' if path.suffix != '.json' else 'JSON'} ({err})") from None
        if not isinstance(recipe, dict):
            raise UserError(f"--config {path}: expected a mapping of argument names to values")
        recipe_name = f"--config {path}"
    parser = HfArgumentParser((ModelArguments, TrainDataArguments, HViTTrainingArguments), allow_abbrev=False)
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise UserError(f"{recipe_name} has unknown keys {unknown}; see `hvit train --help-all`")
    parser.set_defaults(**{k: (str(v) if k == "curvature" else v) for k, v in recipe.items()})
    if "--help-all" in argv or "-h" in argv or "--help" in argv:
        print(format_train_help(parser, recipe, recipe_name, full="--help-all" in argv))
        raise SystemExit(0)
    try:  # the arguments' own checks (`__post_init__`) raise ValueError: a user error, one line
        margs, dargs, targs, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as err:
        raise UserError(str(err).strip().splitlines()[0]) from None
    if rest:
        raise UserError(f"unknown arguments {rest}; see `hvit train --help-all`")
    given = given_dests(parser, argv)
    recipe_dataset = canonical_dataset_name(str(recipe.get("dataset", "demo")))
    if canonical_dataset_name(dargs.dataset) != recipe_dataset:
        if "recall_ks" in recipe and "recall_ks" not in given:
            targs.recall_ks = None  # Recall@K by dataset (metrics.recall_ks_for), not the recipe's
        if recipe_name == "demo recipe":
            paper = dataclass_defaults()
            inherited = {k: v for k, v in recipe.items() if k in PAPER_DEFAULTS and k not in given and v != paper[k]}
            if inherited:
                logger.warning(
                    f"--dataset {dargs.dataset} without --config: the demo recipe's values apply to "
                    + ", ".join(f"{k}={v} (paper: {paper[k]})" for k, v in inherited.items())
                    + "; pass --config configs/<recipe>.yaml for a paper recipe, or set these flags "
                    "(`hvit train --help` shows every default and its source)")
    return margs, dargs, targs


def build_model(margs: ModelArguments, curvature: float) -> HViTModel:
    head = {"embedding_dim": margs.embedding_dim, "geometry": margs.geometry, "curvature": curvature,
            "clip_radius": margs.clip_radius, "freeze_patch_embed": margs.freeze_patch_embed,
            "freeze_blocks": margs.freeze_blocks, "learn_curvature": margs.learn_curvature}
    if margs.model_name_or_path:
        return HViTModel.from_pretrained(margs.model_name_or_path, dtype=torch.float32)  # fp32 master weights
    if margs.backbone.startswith("scratch:"):
        name = margs.backbone.split(":", 1)[1]
        if name not in SCRATCH_BACKBONES:
            raise SystemExit(f"--backbone scratch:{name}: unknown; expected one of {sorted(SCRATCH_BACKBONES)}")
        backbone = {**SCRATCH_BACKBONES[name], "image_size": margs.image_size}
        return HViTModel(HViTConfig(backbone_config=backbone, **head))
    return HViTModel.from_backbone(margs.backbone, **head)


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    """Before/after metrics in %; hierarchy metrics after the flat ones; correlations as plain numbers."""
    def order(k: str) -> tuple:
        group = 0 if k.startswith("recall@") else 2 if k.startswith(("coarse_", "mistake_", "radius_")) else 1
        recall = k.startswith(("recall@", "coarse_recall@"))
        return group, not recall, int(k.rsplit("@", 1)[1]) if recall else 0, k

    keys = sorted({k for r in rows.values() for k in r if not k.startswith(("encoder_", "eval_loss"))}, key=order)
    print(f"\n{'metric':<28}" + "".join(f"{name:>14}" for name in rows))
    for key in keys:
        for prefix, label in (("", key), ("encoder_", f"{key} (encoder)")):
            vals = [r.get(f"{prefix}{key}") for r in rows.values()]
            if any(v is not None for v in vals):
                cell = "{:>+14.3f}" if key.endswith("correlation") else "{:>13.1f}%"
                print(f"{label:<28}" + "".join(cell.format(v if key.endswith("correlation") else 100 * v)
                                               if v is not None else f"{'':>14}" for v in vals))


def main(argv: list[str] | None = None) -> dict[str, float]:
    margs, dargs, targs = parse_args(argv)
    hub_token, targs.hub_token = targs.hub_token, None  # in memory only: never saved with the args (issue 12.15)
    # We push ourselves after the final evaluation, with our model card: the Trainer's own push would
    # create the repo at construction and replace README.md with its generic card (HF_NOTES §3.6).
    push_to = None
    if targs.push_to_hub:
        from .hub import check_can_push

        push_to = targs.hub_model_id or Path(targs.output_dir).name
        check_can_push(push_to, hub_token)  # before hours of training, not after
        targs.push_to_hub = False
    set_seed(targs.seed)
    start = time.perf_counter()
    dsd = dargs.build()
    splits = split_summary(dsd, dargs.dataset)  # recorded in metrics.json and the card
    if targs.process_index == 0:  # information, not a warning: stdout, once
        print(f"splits: {describe_splits(splits)}", flush=True)
    eval_split = "test" if "test" in dsd else "query"
    train_ds, eval_ds = dsd["train"], dsd[eval_split]
    gallery_ds = dsd["gallery"] if eval_split == "query" and "gallery" in dsd else None  # In-Shop
    if dargs.max_eval_samples:
        eval_ds = eval_ds.select(range(min(dargs.max_eval_samples, len(eval_ds))))
    train_labels = dataset_labels(train_ds)
    if dargs.cache_images:
        if dargs.cache_min_side < margs.image_size:
            logger.warning(f"--cache_min_side {dargs.cache_min_side} is below --image_size {margs.image_size}: "
                           "every random crop will be upsampled; use at least the crop size (256 for 224)")
        train_ds = cached_train_split(train_ds, dargs, targs)  # --curvature auto's δ reads it too

    auto = margs.curvature.strip().lower() == "auto"
    model = build_model(margs, 0.1 if auto else float(margs.curvature))
    train_tf, eval_tf = transforms_for_model(model, dargs.dataset, margs.image_size, dargs.crop_scale_min)
    train_augment = None
    if targs.augment_on_device:  # workers decode only; HViTTrainer crops on the device
        prep = model_preprocessing(model)
        train_augment = BatchedTrainTransform(train_tf.image_size, prep.image_mean, prep.image_std, scale=train_tf.scale,
                                              ratio=train_tf.ratio, flip_p=train_tf.flip_p)
        train_tf = DecodeTransform()
        if not dargs.cache_images:
            logger.warning("--augment_on_device without --cache_images: each batch is padded to its largest "
                           "original image before it is sent to the device")
    def with_tf(ds, tf):  # decode errors name the file; --skip_bad_images replaces them (counted)
        return with_image_transform(ds, tf, skip_bad_images=dargs.skip_bad_images)

    train_set, eval_set = with_tf(train_ds, train_tf), with_tf(eval_ds, eval_tf)
    ks = targs.ks or recall_ks_for(dargs.dataset)
    # the eval split's super-classes (Omniglot alphabet, demo superclass, --hierarchy_column): hierarchy metrics
    hierarchy_column = hierarchy_column_of(eval_ds, dargs.hierarchy_column) if gallery_ds is None else None
    hierarchy = ((dataset_labels(eval_ds), dataset_labels(eval_ds, hierarchy_column))
                 if hierarchy_column else None)
    trainer = HViTTrainer(model=model, args=targs, train_dataset=train_set, eval_dataset=eval_set,
                          train_labels=train_labels, train_augment=train_augment,
                          gallery_dataset=with_tf(gallery_ds, eval_tf) if gallery_ds is not None else None,
                          compute_metrics=make_compute_metrics(model.config.geometry, model.learnt_curvature, ks,
                                                               hierarchy=hierarchy, head=model.head))
    if auto:
        _set_curvature_from_delta(trainer, with_tf(train_ds, eval_tf), margs)

    before = trainer.evaluate(metric_key_prefix="before")
    trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    after = trainer.evaluate(metric_key_prefix="eval")
    results = {"untrained": _strip(before, "before_"), "trained": _strip(after, "eval_")}
    trainer.save_model(targs.output_dir)
    if trainer.is_world_process_zero():  # save_model also wrote the image processor (HViTModel.save_pretrained)
        summary = {**results["trained"], "untrained": results["untrained"], "wall_seconds": time.perf_counter() - start,
                   "dataset": dargs.dataset, "splits": splits, **({"hierarchy_column": hierarchy_column}
                                                                   if hierarchy_column else {}),
                   "curvature": model.config.curvature, "delta_rel": model.config.delta_rel,
                   "world_size": trainer.args.world_size, "global_step": trainer.state.global_step,
                   "log_history": trainer.state.log_history}  # the loss and evaluation curves
        summary.update({k: v for h in trainer.state.log_history for k, v in h.items() if k == "partial_resume"})
        Path(targs.output_dir, "metrics.json").write_text(json.dumps(summary, indent=2))
        Path(targs.output_dir, "train_args.json").write_text(json.dumps(
            {"model": asdict(margs), "data": asdict(dargs), "training": targs.to_dict()}, indent=2, default=str))
        write_manifest(targs.output_dir)  # checksums.sha256 of the saved model, verified on push and load
        _print_table(results)
        if push_to:
            from .hub import push_to_hub

            print(f"Pushed to {push_to_hub(targs.output_dir, push_to, private=targs.hub_private_repo, token=hub_token)}")
        print(f"\nSaved to {targs.output_dir} in {summary['wall_seconds']:.0f} s. Load it with:\n"
              f"    import modeling_hvit; from transformers import AutoModel\n"
              f"    model = AutoModel.from_pretrained({str(targs.output_dir)!r})\n"
              f"or, without hvit installed: AutoModel.from_pretrained(..., trust_remote_code=True)")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # finish the trackers and destroy the process group: a clean exit
    return results["trained"]


def cached_train_split(train_ds, dargs: TrainDataArguments, targs: HViTTrainingArguments):
    """`--cache_images`: the train split from its decode-once cache (`data.cache.build_cache`) under
    ``<cache_dir>/<dataset>/train/<fingerprint>``. The main process (of each node) builds it first; the
    others wait and then read the finished cache. Evaluation splits are not cached: their metrics are
    those of the saved model's processor on the original images (eval_hvit.py, the model card)."""
    import re

    from .data.cache import META, build_cache, default_cache_dir

    root = Path(dargs.cache_dir).expanduser() if dargs.cache_dir else default_cache_dir()
    where = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", dargs.dataset) / "train"
    start = time.perf_counter()
    with targs.main_process_first(desc="image cache"):
        entered = time.time()  # a cache finished before this was found, not built (one fingerprint pass)
        cached = build_cache(train_ds, where, min_side=dargs.cache_min_side, fmt=dargs.cache_format,
                             num_proc=targs.dataloader_num_workers if targs.dataloader_num_workers > 1 else None)
    folder = Path(cached.cache_files[0]["filename"]).parent
    found = (folder / META).stat().st_mtime < entered
    if targs.process_index == 0 or not found:
        print(f"image cache: train split ({len(cached)} images, {dargs.cache_format}, shorter side "
              f"{dargs.cache_min_side}) {'read from' if found else 'built in'} {folder} "
              f"({time.perf_counter() - start:.1f} s, process {targs.process_index})", flush=True)
    return cached


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    drop = ("runtime", "samples_per_second", "steps_per_second", "epoch", "preparation_time")
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and not k.endswith(drop)}


def _set_curvature_from_delta(trainer: HViTTrainer, train_eval_set, margs: ModelArguments) -> None:
    """`--curvature auto`: δ_rel of the encoder features of the train split → c = (0.144/δ_rel)²."""
    from .delta import estimate_delta

    # only the features are wanted here, not retrieval metrics of the train split; the eval metrics read
    # the model's curvature at each evaluation (HViTModel.learnt_curvature), so they are restored as they were
    compute_metrics, trainer.compute_metrics = trainer.compute_metrics, None
    with trainer.float32_forward():  # float32 features, as the original, whatever --bf16/--fp16
        features = torch.as_tensor(trainer.predict(train_eval_set, metric_key_prefix="delta").predictions[1])
    n = min(margs.delta_n, len(features))
    est = estimate_delta(features.double(), n=n, draws=margs.delta_draws, seed=trainer.args.seed, progress=True)
    if not (math.isfinite(est.curvature) and est.curvature > 0):
        raise ValueError(f"--curvature auto gave c = {est.curvature} (δ_rel = {est.delta_rel_mean}); pass a value")
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.curvature, model.config.delta_rel = float(est.curvature), float(est.delta_rel_mean)
    trainer.loss_fn.curvature = model.config.curvature
    if model.config.learn_curvature:  # the estimate is the learnt c's starting point (kept within its bounds)
        with torch.no_grad():
            model.log_curvature.fill_(math.log(est.curvature))
    trainer.compute_metrics = compute_metrics
    logger.warning(f"--curvature auto: δ_rel = {est.delta_rel_mean:.3f} ± {est.delta_rel_std:.3f} over "
                   f"{est.draws} draws of {n} → c = {est.curvature:.4f}")


if __name__ == "__main__":
    main()
