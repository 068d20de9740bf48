# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`hvit train --help`: hvit's options first, by group, each default with where it comes from.

Sources: the recipe in effect (``--config``, else the demo recipe), the paper (SPEC §2–§5), hvit's
own choice, or transformers (inherited `TrainingArguments`, listed only by ``--help-all``).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import MISSING, fields

from transformers import HfArgumentParser, TrainingArguments

from .trainer import HViTTrainingArguments
from .training import ModelArguments, TrainDataArguments

__all__ = ["HELP_GROUPS", "PAPER_DEFAULTS", "dataclass_defaults", "format_train_help", "given_dests"]

# `--help`: hvit's options first, grouped; each default says where it comes from. Field → group;
# fields not listed are the other inherited TrainingArguments, shown by `--help-all`.
HELP_GROUPS = {
    "model": ("backbone", "model_name_or_path", "embedding_dim", "geometry", "curvature", "clip_radius",
              "freeze_patch_embed", "freeze_blocks", "image_size", "delta_n", "delta_draws"),
    "data": ("dataset", "data_dir", "verify_images", "skip_bad_images", "train_fraction", "split_rule",
             "image_column", "label_column", "hierarchy_column", "hub_config", "crop_scale_min",
             "dataloader_num_workers", "cache_images", "cache_dir", "cache_min_side", "cache_format",
             "augment_on_device"),
    "loss and sampler": ("per_device_train_batch_size", "samples_per_class", "temperature", "loss_reduction"),
    "evaluation": ("recall_ks", "max_eval_samples", "eval_strategy", "eval_steps", "per_device_eval_batch_size"),
    "optimisation and run (TrainingArguments)": (
        "output_dir", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "max_grad_norm",
        "num_train_epochs", "max_steps", "gradient_accumulation_steps", "bf16", "fp16", "seed", "logging_steps",
        "save_strategy", "save_steps", "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id",
        "hub_private_repo", "hub_token"),
}
# Defaults that are the paper's recipe (SPEC §2–§5); other hvit defaults are this package's choices.
PAPER_DEFAULTS = {"embedding_dim", "geometry", "curvature", "clip_radius", "freeze_patch_embed", "freeze_blocks",
                  "image_size", "crop_scale_min", "learning_rate", "weight_decay", "lr_scheduler_type",
                  "max_grad_norm", "per_device_train_batch_size", "samples_per_class", "temperature",
                  "loss_reduction"}


def _hvit_fields() -> set[str]:
    """Fields whose default is hvit's (or the paper's), not transformers'."""
    base = {f.name: f for f in fields(TrainingArguments)}
    own = {f.name for cls in (ModelArguments, TrainDataArguments) for f in fields(cls)}
    for f in fields(HViTTrainingArguments):
        if f.name not in base or _field_default(f) != _field_default(base[f.name]):
            own.add(f.name)
    return own


def _field_default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def dataclass_defaults() -> dict:
    """Every option's dataclass default (the paper's, hvit's or transformers')."""
    return {f.name: _field_default(f) for cls in (ModelArguments, TrainDataArguments, HViTTrainingArguments)
            for f in fields(cls)}


def _default_note(dest: str, value, recipe: dict, recipe_name: str, recipe_dataset: str, hvit: set[str],
                  defaults: dict) -> str:
    """`default: <value> (<where it comes from>)` for one option."""
    if dest == "recall_ks":
        from .metrics import DEFAULT_RECALL_KS, RECALL_KS

        note = "by dataset: " + "; ".join(f"{name} {','.join(map(str, ks))}" for name, ks in RECALL_KS.items())
        note += f"; others {','.join(map(str, DEFAULT_RECALL_KS))}"
        if "recall_ks" in recipe:
            note += f"; {recipe_name}: {recipe['recall_ks']} with --dataset {recipe_dataset}"
        return f"default {note}"
    if dest in recipe:
        paper = f"; paper: {defaults[dest]}" if dest in PAPER_DEFAULTS and defaults[dest] != value else ""
        return f"default: {value} ({recipe_name}{paper})"
    source = "paper" if dest in PAPER_DEFAULTS else "hvit" if dest in hvit else "transformers"
    if dest == "temperature" and value is None:
        return "default: 0.2 for poincare, 0.1 for sphere (paper)"
    return f"default: {value} ({source})"


def format_train_help(parser: HfArgumentParser, recipe: dict, recipe_name: str, full: bool = False) -> str:
    """`hvit train --help`: hvit's option groups first, every default with its source (the recipe in
    effect, the paper, hvit or transformers); the other inherited TrainingArguments only when ``full``."""
    hvit, defaults = _hvit_fields(), dataclass_defaults()
    recipe_dataset = str(recipe.get("dataset", "demo"))
    display = argparse.ArgumentParser(
        prog=parser.prog, add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{parser.prog} [--config RECIPE] [--flag value ...]",
        description=("Train an HViT model. With no flags: the demo recipe (built-in shapes dataset, a tiny ViT "
                     "from scratch, CPU, minutes).\nSeveral processes/GPUs: accelerate launch -m modeling_hvit "
                     "train ...\nDefaults come from --config (else the demo recipe), the paper (SPEC §5), hvit, "
                     "or transformers."),
        epilog=None if full else "The other ~130 inherited transformers TrainingArguments: --help-all.")
    general = display.add_argument_group("recipe")
    general.add_argument("-h", "--help", action="store_true", help="this help; --help-all adds every TrainingArgument")
    general.add_argument("--config", metavar="RECIPE", help="a .yaml/.json recipe (configs/); its values become "
                         "the defaults below, flags override them")
    group_of = {dest: title for title, dests in HELP_GROUPS.items() for dest in dests}
    groups = {title: display.add_argument_group(title) for title in HELP_GROUPS}
    if full:
        groups["other"] = display.add_argument_group("other transformers TrainingArguments")
    for action in parser._actions:
        title = group_of.get(action.dest, "other")
        if action.dest == "help" or title not in groups:
            continue
        shown = copy.copy(action)
        if isinstance(action, argparse._StoreFalseAction):
            shown.help = f"turn off --{action.dest}"
        else:
            note = _default_note(action.dest, action.default, recipe, recipe_name, recipe_dataset, hvit, defaults)
            shown.help = f"{action.help or ''} [{note}]".strip().replace("%", "%%")
        groups[title]._group_actions.append(shown)
    return display.format_help()


def given_dests(parser: HfArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options written on the command line."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
    return given
