# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The model card of a trained HViT folder: `hub_cards/model_card.md.jinja` filled from the folder's
`config.json`, `metrics.json` (final metrics, `encoder_`-prefixed encoder metrics, an `untrained`
sub-dict) and `train_args.json` (`{"model", "data", "training"}` as `train_hvit.py` writes them).

Every number on the card is read from those files; metric keys this module does not know are listed
in the table and the `model-index` all the same. Hierarchy metrics (``coarse_*``, ``mistake_severity@1``;
`hierarchy_metrics`) and ``radius_correct_correlation`` are head-only: they get their own table.
Rendering needs no network (`ModelCard.validate` would).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data.names import canonical_dataset_name
from .data.splits import describe_splits

__all__ = ["TEMPLATE_PATH", "HubFolderError", "build_card", "final_metrics", "metric_label", "read_json"]

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "hub_cards" / "model_card.md.jinja"
# Numbers in metrics.json that describe the run rather than measure retrieval.
META_KEYS = {"untrained", "wall_seconds", "dataset", "curvature", "delta_rel", "world_size", "global_step",
             "split", "splits", "seed", "epoch", "partial_resume", "fewshot_episodes",
             "num_queries", "num_gallery", "embedding_dim", "runtime", "samples_per_second", "steps_per_second"}
DATASET_NAMES = {"cub": "CUB-200-2011", "cars": "Cars196", "sop": "Stanford Online Products",
                 "inshop": "In-Shop Clothes Retrieval", "omniglot": "Omniglot", "caltech101": "Caltech-101",
                 "demo": "the built-in demo shapes dataset (synthetic)", "folder": "a local image folder"}
_LABELS = {"precision@1": "Precision@1", "r_precision": "R-Precision", "map@r": "MAP@R", "nmi": "NMI",
           "coarse_map@r": "Coarse MAP@R", "mistake_severity@1": "Mistake severity@1",
           "radius_correct_correlation": "Radius–correct correlation"}
_FRACTION = re.compile(r"^(recall@\d+|precision@\d+|r_precision|map@r|map@\d+|nmi|coarse_recall@\d+|coarse_map@r|"
                       r"mistake_severity@1)$")
_HIERARCHY = re.compile(r"^(coarse_.*|mistake_severity@1|radius_correct_correlation)$")  # head-only metrics
# train_args.json entries that are machine-local or bookkeeping, not hyperparameters.
_NOT_RECIPE = re.compile(r"(^|_)(dir|path|token)s?$|^(output_dir|data_dir|logging_dir|run_name|report_to|"
                         r"push_to_hub|hub_.*|resume_from_checkpoint|overwrite_output_dir)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubFolderError(ValueError):
    """The folder cannot be published as it is (missing or malformed files, named in the message)."""


def read_json(path: Path) -> dict:
    """A JSON object from `path`; malformed content is an error naming the file and line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HubFolderError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise HubFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def final_metrics(metrics: dict) -> dict[str, float]:
    """The final evaluation's numbers: numeric top-level entries except run metadata, plus numeric
    leaves of unknown sub-dicts as `parent/key` (the `untrained` sub-dict is the baseline, not final)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in META_KEYS:
            continue
        if _number(value):
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items() if _number(v)})
    return out


def metric_label(key: str) -> str:
    """`recall@1` → `Recall@1`, `encoder_map@r` → `MAP@R (encoder)`; unknown keys as they are."""
    encoder = key.startswith("encoder_")
    base = key[len("encoder_"):] if encoder else key
    label = _LABELS.get(base) or (f"Recall@{base[7:]}" if base.startswith("recall@") else
                                  f"Coarse Recall@{base[14:]}" if base.startswith("coarse_recall@") else base)
    return f"{label} (encoder)" if encoder else label


def _sort_key(base: str) -> tuple:
    for rank, prefix in enumerate(("recall@", "coarse_recall@")):
        if base.startswith(prefix) and base[len(prefix):].isdigit():
            return (0, rank, int(base[len(prefix):]), base)
    order = list(_LABELS)
    return (1, 0, order.index(base), base) if base in order else (2, 0, 0, base)


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    base = key.split("/")[-1].removeprefix("encoder_")
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.1f}" if _FRACTION.match(base) else f"{value:.4g}"


def _metric_rows(final: dict[str, float], untrained: dict, hierarchy: bool = False) -> list[dict[str, str]]:
    """Table rows of the head/encoder metrics, or (``hierarchy``) of the head-only hierarchy metrics."""
    bases = sorted({b for b in (k.removeprefix("encoder_") for k in final) if bool(_HIERARCHY.match(b)) == hierarchy},
                   key=_sort_key)
    before = {k: float(v) for k, v in untrained.items() if _number(v)}
    return [{"label": metric_label(b), "head": _fmt(b, final.get(b)), "encoder": _fmt(b, final.get(f"encoder_{b}")),
             "head_before": _fmt(b, before.get(b)), "encoder_before": _fmt(b, before.get(f"encoder_{b}"))}
            for b in bases]


def _dataset(metrics: dict, data_args: dict) -> tuple[str | None, str, str, str | None]:
    """(key, display name, model-index type, Hub dataset id) of the evaluation dataset."""
    raw = metrics.get("dataset") or data_args.get("dataset")
    if not raw:
        return None, "an unrecorded dataset", "unknown", None
    raw = str(raw)
    if raw.lower().startswith("hub:"):
        hub_id = raw[4:]
        return hub_id, hub_id, hub_id, hub_id
    key = canonical_dataset_name(raw)
    return key, DATASET_NAMES.get(key, raw), key, None


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(os.path.expanduser(name)).exists()


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _non_default_training_args(training: dict) -> dict:
    """`training` entries that differ from the `HViTTrainingArguments` defaults (all of them if unknown)."""
    defaults: dict = {}
    try:
        from .trainer import HViTTrainingArguments

        try:  # an instance: its to_dict() has the values __post_init__ derives, as train_args.json does
            defaults = json.loads(json.dumps(HViTTrainingArguments(output_dir="unused").to_dict(), default=str))
        except Exception:
            for f in dataclasses.fields(HViTTrainingArguments):
                if f.default is not dataclasses.MISSING:
                    defaults[f.name] = _plain(f.default)
                elif f.default_factory is not dataclasses.MISSING:
                    defaults[f.name] = _plain(f.default_factory())
    except Exception:  # the card must still render where the trainer cannot import
        pass
    return {k: v for k, v in training.items() if k not in defaults or _plain(v) != defaults[k]}


def _recipe_args(train_args: dict) -> str | None:
    if not train_args:
        return None
    keep = {name: {k: v for k, v in (train_args.get(name) or {}).items() if not _NOT_RECIPE.search(k)}
            for name in ("model", "data")}
    keep["training"] = {k: v for k, v in _non_default_training_args(train_args.get("training") or {}).items()
                        if not _NOT_RECIPE.search(k)}
    return json.dumps(keep, indent=2, default=str)


def _backbone(config: dict, model_args: dict) -> tuple[str, str | None]:
    """(sentence about the encoder's origin, base_model Hub id or None)."""
    bb = config.get("backbone_config") or {}
    arch = [f"{bb.get('model_type', '?')}"]
    for key, fmt in (("num_hidden_layers", "{} layers"), ("hidden_size", "{}-d"), ("patch_size", "patch {}"),
                     ("image_size", "{} px input")):
        if bb.get(key) is not None:
            arch.append(fmt.format(bb[key]))
    arch_text = ", ".join(arch)
    start, backbone = model_args.get("model_name_or_path"), model_args.get("backbone")
    if start:
        source, verb = str(start), "Training continued from the HViT model"
    elif backbone and not str(backbone).startswith("scratch:"):
        source, verb = str(backbone), "The encoder was initialised from"
    elif not backbone and bb.get("_name_or_path"):
        source, verb = str(bb["_name_or_path"]), "The encoder was initialised from"
    else:
        return f"The encoder ({arch_text}) was trained from scratch, without pretrained weights.", None
    if _is_hub_id(source):
        return f"{verb} [`{source}`](https://huggingface.co/{source}) ({arch_text}) and fine-tuned.", source
    return f"{verb} a local checkpoint `{Path(source).name}` ({arch_text}) and fine-tuned.", None


def _geometry(config: dict) -> dict[str, str]:
    g, c, r = config.get("geometry", "poincare"), config.get("curvature"), config.get("clip_radius")
    if g == "poincare":
        clip = f"clipped to norm r = {r}, then " if r is not None else ""
        return {"geometry_text": f"in the Poincaré ball of curvature −c (c = {c}): the feature is {clip}mapped "
                                 "into the ball by the exponential map at the origin",
                "geometry_short": f"Poincaré ball, c = {c}", "score_text": "the hyperbolic (geodesic) distance",
                "distance_call": "poincare_distance(query, gallery, model.config.curvature)",
                "distance_code": (
                    "def poincare_distance(x, y, c):\n"
                    '    """Geodesic distance of all pairs of rows in the Poincaré ball of curvature -c (float64)."""\n'
                    "    x, y = x.double(), y.double()\n"
                    "    x2, y2 = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1)\n"
                    "    sq = (x2 + y2 - 2 * x @ y.T).clamp_min(0)  # |x - y|^2\n"
                    "    return torch.acosh(1 + 2 * c * sq / ((1 - c * x2) * (1 - c * y2))) / c**0.5")}
    if g == "lorentz":
        clip = f"clipped to norm r = {r}, doubled, then " if r is not None else "doubled, then "
        return {"geometry_text": f"on the hyperboloid (Lorentz model) of curvature −c (c = {c}): the feature is {clip}"
                                 "mapped onto it by the exponential map at the origin; the embeddings are the space "
                                 "components x_s (time component x_0 = sqrt(1/c + |x_s|^2))",
                "geometry_short": f"Lorentz model, c = {c}", "score_text": "the hyperbolic (geodesic) distance",
                "distance_call": "lorentz_distance(query, gallery, model.config.curvature)",
                "distance_code": (
                    "def lorentz_distance(x, y, c):\n"
                    '    """Geodesic distance of all pairs of rows (space components) on the hyperboloid of curvature -c."""\n'
                    "    x, y = x.double(), y.double()\n"
                    "    x0, y0 = (1 / c + x.pow(2).sum(-1)).sqrt(), (1 / c + y.pow(2).sum(-1)).sqrt()\n"
                    "    return torch.acosh((c * (x0[:, None] * y0 - x @ y.T)).clamp_min(1)) / c**0.5")}
    if g == "sphere":
        return {"geometry_text": "on the unit sphere (L2-normalised)", "geometry_short": "unit sphere",
                "score_text": "cosine similarity", "distance_call": "cosine_distance(query, gallery)",
                "distance_code": ("def cosine_distance(x, y):\n"
                                  '    """1 - cosine similarity of all pairs of rows (the embeddings are unit vectors)."""\n'
                                  "    return 1 - x @ y.T")}
    return {"geometry_text": "in Euclidean space", "geometry_short": "Euclidean", "score_text": "Euclidean distance",
            "distance_call": "torch.cdist(query, gallery)", "distance_code": "# Euclidean embeddings: torch.cdist"}


def _recipe(config: dict, metrics: dict, train_args: dict, dataset_name: str, backbone_text: str) -> list:
    m, d, t = (train_args.get(k) or {} for k in ("model", "data", "training"))
    g = config.get("geometry", "poincare")
    rows = [("Dataset", f"{dataset_name}" + (f" (`--dataset {d['dataset']}`)" if d.get("dataset") else "")),
            *([("Splits", describe_splits(metrics["splits"]))] if isinstance(metrics.get("splits"), dict) else []),
            ("Encoder", backbone_text.rstrip(".")),
            ("Head", f"Linear({config.get('backbone_hidden_size')} → {config.get('embedding_dim')}), geometry "
                     f"`{g}`" + (f", curvature c = {config.get('curvature')}, clip radius r = {config.get('clip_radius')}"
                                 if g in ("poincare", "lorentz") else ""))]
    delta = config.get("delta_rel") if config.get("delta_rel") is not None else metrics.get("delta_rel")
    if str(m.get("curvature", "")).strip().lower() == "auto" or delta is not None:
        rows.append(("Curvature", f"c = {config.get('curvature')}" + (
            f", from the relative δ-hyperbolicity of the encoder's training features, δ_rel = {delta:.4g} "
            "(c = (0.144 / δ_rel)²)" if delta is not None else "")))
    if not t:
        rows.append(("Hyperparameters", "`train_args.json` was not found: only the config above is known"))
        return rows
    from .losses import DEFAULT_TEMPERATURE

    tau = t.get("temperature")
    tau = f"{tau}" if tau is not None else f"{DEFAULT_TEMPERATURE.get(g, '?')} (default for {g})"
    bs, spc = t.get("per_device_train_batch_size"), t.get("samples_per_class")
    classes = f" = {bs // spc} classes × {spc} images" if isinstance(bs, int) and isinstance(spc, int) and spc else ""
    length = (f"{t['max_steps']} steps" if isinstance(t.get("max_steps"), int) and t["max_steps"] > 0
              else f"{t.get('num_train_epochs')} epochs")
    if _number(metrics.get("global_step")):
        length += f" ({int(metrics['global_step'])} optimiser steps)"
    world = metrics.get("world_size")
    world_text = (f"; {int(world)} process{'es' if world != 1 else ''}, global batch {bs * int(world)}"
                  if _number(world) and isinstance(bs, int) else " (the global batch is this × the number of processes)")
    frozen = ["patch embedding"] if m.get("freeze_patch_embed", config.get("freeze_patch_embed")) else []
    if m.get("freeze_blocks") or config.get("freeze_blocks"):
        frozen.append(f"first {m.get('freeze_blocks') or config.get('freeze_blocks')} blocks")
    precision = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else "fp32"
    rows += [("Loss", f"pairwise cross-entropy, temperature τ = {tau}, reduction `{t.get('loss_reduction', 'sum')}`"),
             ("Batch", f"{bs} images per device{classes}{world_text}"),
             ("Optimiser", f"`{t.get('optim')}`, learning rate {t.get('learning_rate')}, weight decay "
                           f"{t.get('weight_decay')}, schedule `{t.get('lr_scheduler_type')}`, warm-up "
                           f"{t.get('warmup_steps', 0)}, gradient clip {t.get('max_grad_norm')}"),
             ("Length", length), ("Frozen", ", ".join(frozen) or "nothing"),
             ("Input", f"{m.get('image_size')} px, {precision}"), ("Seed", f"{t.get('seed')}")]
    if _number(metrics.get("wall_seconds")) and "untrained" in metrics:  # training.py's metrics.json
        rows.append(("Wall time", f"{metrics['wall_seconds'] / 60:.1f} min (training and evaluation)"))
    partial = metrics.get("partial_resume")
    if isinstance(partial, dict):  # --allow_partial_resume (checkpoint.resume_checkpoint)
        what = ([f"without {', '.join(map(str, partial['missing']))}"] if partial.get("missing") else []) + [
            str(c) for c in partial.get("changed", [])]
        rows.append(("Resumed", f"from a checkpoint {'; '.join(what)}: not an exact continuation of the run"))
    return rows


def build_card(folder: Path, repo_id: str | None = None, *, license: str = "apache-2.0",
               template_path: str | os.PathLike | None = None) -> ModelCard:
    """Render the card (see `modeling_hvit.hub.render_model_card`)."""
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template.is_file():
        raise HubFolderError(f"model-card template {template} not found (it ships in the repository's hub_cards/; "
                             "pass template_path=)")
    if not (folder / "config.json").is_file():
        raise HubFolderError(f"{folder}: config.json is missing; cannot describe the model")
    config = read_json(folder / "config.json")
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    train_args = read_json(folder / "train_args.json") if (folder / "train_args.json").is_file() else {}
    data_args = train_args.get("data") or {}
    name = (repo_id or folder.resolve().name).split("/")[-1]
    key, dataset_name, dataset_type, hub_dataset = _dataset(metrics, data_args)
    split = str(metrics.get("split") or ("query" if key == "inshop" else "test"))  # eval_hvit.py records it
    if data_args.get("max_eval_samples"):
        split = f"{split}[:{int(data_args['max_eval_samples'])}]"
    final = final_metrics(metrics)
    eval_results = [EvalResult(task_type="image-feature-extraction", task_name="Image retrieval",
                               dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=split,
                               metric_type=k, metric_name=metric_label(k), metric_value=round(v, 4))
                    for k, v in final.items() if math.isfinite(v)]
    backbone_text, base_model = _backbone(config, train_args.get("model") or {})
    geometry = config.get("geometry", "poincare")
    bb_type = (config.get("backbone_config") or {}).get("model_type")
    tags = ["hvit", "image-retrieval", "metric-learning", "vision-transformer",
            *({"poincare": ["hyperbolic", "poincare-ball"], "lorentz": ["hyperbolic", "lorentz-model"],
               "sphere": ["hypersphere"]}.get(geometry, [])),
            *([bb_type] if bb_type else []), *([key] if key and key in DATASET_NAMES and key != "folder" else [])]
    card_data = ModelCardData(model_name=name, base_model=base_model, datasets=[hub_dataset] if hub_dataset else None,
                              eval_results=eval_results or None, library_name="transformers",
                              pipeline_tag="image-feature-extraction", license=license, tags=tags)
    image = next((p for p in ("poincare_disk.png",) if (folder / p).is_file()), None) or next(
        (p.name for p in sorted(folder.iterdir()) if p.suffix.lower() == ".png"), None)
    untrained = metrics.get("untrained") if isinstance(metrics.get("untrained"), dict) else {}
    queries = f", {int(metrics['num_queries'])} queries" if _number(metrics.get("num_queries")) else ""
    gallery = "the gallery split" if "gallery" in split else "all other images of the split (leave-one-out)"
    return ModelCard.from_template(
        card_data, template_path=str(template), model_name=name, repo_ref=repo_id or f"path/to/{name}",
        backbone_text=backbone_text, hidden_size=config.get("backbone_hidden_size"),
        embedding_dim=config.get("embedding_dim"), **_geometry(config),
        metric_rows=_metric_rows(final, untrained), has_untrained=bool(untrained), dataset_name=dataset_name,
        hierarchy_rows=_metric_rows(final, untrained, hierarchy=True),
        hierarchy_column=str(metrics.get("hierarchy_column") or "super-class"),
        split_text=f"split `{split}`{queries}", gallery_text=gallery, image=image,
        recipe=_recipe(config, metrics, train_args, dataset_name, backbone_text), full_args=_recipe_args(train_args))
