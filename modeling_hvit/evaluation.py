# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Evaluate a trained HViT model: embed a split, score it, print a table, write ``metrics.json``.

Both outputs are scored (SPEC §2): the head embeddings in the model's geometry (Poincaré distance,
cosine, or L2) and the encoder's CLS features with cosine (keys prefixed ``encoder_``, the paper's
headline 384-d numbers). Datasets with ``query``/``gallery`` splits (In-Shop) are scored queries
against the gallery, others (``test``) every image against all the others. The Trainer's evaluation
and ``eval_hvit.py`` share ``retrieval_metrics`` (on already computed embeddings) and
``embed_dataset``. ``--plot`` draws the head embeddings in the Poincaré disk (``visualize``).
Both also report the hierarchy metrics when the split has a hierarchy column and the radius–correct
correlation (``hierarchy_metrics``), through ``evaluate_embeddings``. The search and the metrics run on
the evaluation's device (the model's GPU); on CUDA ``hvit eval`` embeds under bf16 autocast with
decoding workers by default (``resolve_eval_settings``), on the CPU in fp32 in the process.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .metrics import DEFAULT_METRICS, recall_ks_for, retrieval_metrics, retrieval_metrics_with_nearest, usable_recall_ks
from .data.transforms import pixel_values_for

__all__ = ["EvalArguments", "EvalSettings", "embed_dataset", "evaluate_embeddings", "format_extra", "format_table",
           "head_linear_output", "hierarchy_column_of", "main", "recorded_data_arguments", "resolve_data_arguments",
           "resolve_dtype", "resolve_eval_settings", "retrieval_metrics"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "Trained model: a local directory or a Hub id."})
    split: str | None = field(default=None, metadata={"help": "Split to score; default test (or query/gallery)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where metrics.json (and the plot) go; "
                                   "default ./eval-<model name>-<dataset>."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:1, ... "
                        "The neighbour search and the metrics run there too."})
    precision: str = field(default="auto", metadata={"help": "Encoder autocast: fp32, fp16 or bf16 (the head and all "
                           "distances stay fp32); auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."})
    num_workers: int | None = field(default=None, metadata={"help": "DataLoader workers decoding images; default "
                                    "min(8, CPUs / processes on this node) on CUDA, 0 (in this process) on CPU."})
    image_size: int | None = field(default=None, metadata={"help": "Input size; default the backbone's."})
    recall_ks: str | None = field(default=None, metadata={"help": "Comma-separated K; default by dataset."})
    nmi: bool = field(default=False, metadata={"help": "Also compute NMI (k-means, slow on large sets)."})
    backend: str = field(default="blocked", metadata={"help": "Neighbour search: blocked (exact) or faiss."})
    faiss_index: str = field(default="flat", metadata={"help": "faiss backend: flat (exact), ivf or hnsw."})
    block_size: int = field(default=1024, metadata={"help": "Queries per search block (memory bound)."})
    max_samples: int | None = field(default=None, metadata={"help": "Score only the first N images per split."})
    plot: bool = field(default=False, metadata={"help": "Write poincare_disk.png (needs the viz extra)."})
    plot_max_points: int = field(default=5000, metadata={"help": "Random subset size for the plot."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Load Hub code instead of this package."})
    seed: int = field(default=0, metadata={"help": "Seed for the plot subset, UMAP and k-means."})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bars."})
    fewshot: bool = field(default=False, metadata={"help": "Also score 5/20-way 1/5-shot episodes "
                          "(nearest prototype in the head's geometry; within one super-class too when "
                          "the dataset has a hierarchy column)."})
    fewshot_episodes: int = field(default=1000, metadata={"help": "Episodes per few-shot setting."})


def resolve_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        from .errors import UserError

        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


class EvalSettings(NamedTuple):
    """How ``hvit eval`` embeds: the encoder's autocast dtype and the DataLoader workers."""

    dtype: torch.dtype
    num_workers: int


def resolve_eval_settings(device_type: str, precision: str = "auto", num_workers: int | None = None, *,
                          bf16_supported: bool | None = None, cpus: int | None = None,
                          local_processes: int | None = None) -> EvalSettings:
    """The evaluation's defaults for a device type (``cuda``, ``cpu``, ...); an explicit value wins.

    On CUDA: bf16 autocast for the encoder (fp16 where the GPU has no bf16; the head and distances
    stay fp32, as in training) and ``min(8, CPUs / processes on this node)`` decoding workers, so the
    GPU is not left waiting on one process decoding JPEGs. Elsewhere: fp32 and 0 workers (the model
    shares the CPU cores with any worker). ``bf16_supported``/``cpus``/``local_processes`` default to
    this machine's."""
    if precision not in ("auto", *PRECISIONS):
        from .errors import UserError

        raise UserError(f"--precision {precision!r}: expected one of auto, {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device_type == "cuda":
            if bf16_supported is None:
                bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            precision = "bf16" if bf16_supported else "fp16"
        else:
            precision = "fp32"
    dtype = resolve_dtype(precision)
    if num_workers is None:
        from .trainer import default_num_workers  # training's rule (trainer imports this module)

        num_workers = default_num_workers(cpus, local_processes) if device_type == "cuda" else 0
    elif num_workers < 0:
        from .errors import UserError

        raise UserError(f"--num_workers {num_workers}: expected ≥ 0 (or leave it unset for the device's default)")
    return EvalSettings(dtype, int(num_workers))


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([int(r["labels"]) for r in rows])}


def embed_dataset(model: torch.nn.Module, dataset: Any, batch_size: int = 64,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                  num_workers: int = 0, progress: bool = False,
                  desc: str = "embedding") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(head embeddings, encoder features, labels) of a dataset yielding ``pixel_values``/``labels``
    (``transforms.with_image_transform``); float32 CPU tensors, in dataset order. ``dtype`` fp16/bf16
    autocasts the encoder; the model keeps its head in fp32."""
    from torch.utils.data import DataLoader

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=desc, unit="batch")
    autocast = dtype is not None and dtype != torch.float32
    embs, encs, labels = [], [], []
    with torch.inference_mode():
        for batch in loader:
            pixel_values = pixel_values_for(model, batch["pixel_values"].to(device))  # uint8 → normalised
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                out = model(pixel_values=pixel_values)
            embs.append(out.embeddings.float().cpu())
            encs.append(out.encoder_embeddings.float().cpu())
            labels.append(batch["labels"])
    if not embs:
        raise ValueError("the dataset is empty: nothing to embed")
    return torch.cat(embs), torch.cat(encs), torch.cat(labels)


def evaluate_embeddings(emb: torch.Tensor, enc: torch.Tensor | None, labels: Any, geometry: str,
                        curvature: float, ks: Sequence[int] | None = None, *,
                        gallery: tuple[torch.Tensor, torch.Tensor | None, Any] | None = None,
                        include: Sequence[str] = DEFAULT_METRICS, groups: Any | None = None,
                        head_output: torch.Tensor | None = None, **search_kwargs: Any) -> dict[str, float]:
    """Head metrics in its geometry plus ``encoder_``-prefixed cosine metrics of the encoder features.
    ``gallery=(emb, enc, labels)`` scores the queries against it (In-Shop).

    Also, from the head's top-1 (the nearest neighbours of its metric search, not a second search): with
    ``groups`` (a super-class per item; self-retrieval only) ``coarse_recall@K``, ``coarse_map@r``,
    ``mistake_severity@1``, and ``radius_correct_correlation`` (``hierarchy_metrics.radius_metrics``;
    for the sphere only with ``head_output``, the head's linear output before normalisation:
    ``head_linear_output``). ``search_kwargs`` go to every search (``device``: where it and the
    per-query metrics run, e.g. the model's GPU; ``block_size``, ``backend``, ...)."""
    from .hierarchy_metrics import hierarchy_metrics, nearest_other, radius_metrics

    g_emb, g_enc, g_lab = gallery if gallery is not None else (None, None, None)
    if groups is not None and gallery is not None:
        raise ValueError("hierarchy metrics are defined for self-retrieval only (no gallery)")
    out, top1 = retrieval_metrics_with_nearest(emb, labels, geometry, curvature, ks, gallery=g_emb,
                                               gallery_labels=g_lab, include=include, **search_kwargs)
    if enc is not None:
        enc_out = retrieval_metrics(enc, labels, "sphere", curvature, ks, gallery=g_enc,
                                    gallery_labels=g_lab, include=include, **search_kwargs)
        out.update({f"encoder_{k}": v for k, v in enc_out.items()})
    with_radius = geometry != "sphere" or head_output is not None
    if groups is None and not with_radius:
        return out
    search = {k: v for k, v in search_kwargs.items() if k not in ("seed", "progress")}
    if top1 is None:  # no metric search ran (only NMI asked for)
        top1 = nearest_other(emb, geometry, curvature, g_emb, **search)
    if groups is not None:
        ks_ = [k for k in (ks or (1,)) if k < len(labels) - 1] or [1]
        out.update(hierarchy_metrics(emb, labels, groups, geometry, curvature, ks_, top1=top1, **search))
    if with_radius:
        out.update(radius_metrics(emb, labels, geometry, curvature, head_output=head_output, gallery=g_emb,
                                  gallery_labels=g_lab, top1=top1))
    return out


def head_linear_output(head: torch.nn.Module, encoder_embeddings: torch.Tensor) -> torch.Tensor:
    """The linear output of the model's head (``HViTModel.head``; before clipping, exp map or
    normalisation) on encoder features, float32 on the CPU, without autocast as in ``HViTModel.project``."""
    x = torch.as_tensor(encoder_embeddings).to(head.weight.device, head.weight.dtype)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        return head(x).float().cpu()


_METRIC = re.compile(r"^(encoder_)?(recall@\d+|precision@1|r_precision|map@r|nmi)$")


def _sort_key(key: str) -> tuple:
    order = ("recall@", "precision@1", "r_precision", "map@r", "nmi")
    rank = next(i for i, p in enumerate(order) if key.startswith(p))
    return rank, int(key.split("@")[1]) if key.startswith("recall@") else 0


def format_table(metrics: dict[str, Any]) -> str:
    """Retrieval metrics as percentages, head and encoder side by side (other keys ignored)."""
    keys = sorted({k.removeprefix("encoder_") for k in metrics if _METRIC.match(k)}, key=_sort_key)
    lines = [f"{'metric':<14}{'head':>10}{'encoder':>10}"]
    for k in keys:
        cells = [metrics.get(k), metrics.get(f"encoder_{k}")]
        lines.append(f"{k:<14}" + "".join(f"{100 * v:>9.2f}%" if v is not None else f"{'':>10}" for v in cells))
    return "\n".join(lines)


FEWSHOT_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))


def format_extra(metrics: dict[str, Any]) -> str:
    """Hierarchy metrics (``coarse_*``, ``mistake_severity@1``), the radius–correct correlation and
    few-shot accuracies ± 95% CI."""
    lines = [f"{k:<26}{100 * v:>9.2f}%" for k, v in metrics.items()
             if k.startswith("coarse_") or k == "mistake_severity@1"]
    if "radius_correct_correlation" in metrics:
        lines.append(f"{'radius_correct_correlation':<26}{metrics['radius_correct_correlation']:>+10.4f}")
    for k, v in metrics.items():
        if k.startswith("fewshot_") and f"{k}_ci95" in metrics:
            lines.append(f"{k:<26}{100 * v:>9.2f}% ± {100 * metrics[k + '_ci95']:.2f}")
    return "\n".join(lines)


def _split_groups(raw, wanted: str | None) -> tuple[str | None, np.ndarray | None]:
    """(hierarchy column, its value per item) of a split, or (None, None)."""
    column = hierarchy_column_of(raw, wanted)
    return column, (np.asarray(raw.with_format(None)[column]) if column else None)


def _fewshot(args: EvalArguments, emb: torch.Tensor, lab: torch.Tensor, groups: np.ndarray | None,
             geometry: str, curvature: float) -> dict[str, Any]:
    """Nearest-prototype episodes on the head embeddings (``--fewshot``); within one super-class too
    when there are ``groups``."""
    from .fewshot import fewshot_accuracy

    if not args.fewshot:
        return {}
    out: dict[str, Any] = {"fewshot_episodes": args.fewshot_episodes}
    for within in (False, True) if groups is not None else (False,):
        for n_way, k_shot in FEWSHOT_SETTINGS:
            key = f"fewshot_{n_way}way_{k_shot}shot{'_within' if within else ''}"
            try:
                res = fewshot_accuracy(emb, lab.numpy(), geometry, curvature, n_way, k_shot, 15,
                                       args.fewshot_episodes, args.seed, groups if within else None)
            except ValueError as err:  # too few classes for this setting: skipped, said
                print(f"{key}: skipped ({err})")
                continue
            out[key], out[f"{key}_ci95"] = res["accuracy"], res["ci95"]
    return out


def hierarchy_column_of(ds, wanted: str | None = None) -> str | None:
    """The split's hierarchy column: ``wanted`` (``--hierarchy_column``), else its first ClassLabel
    column besides ``label`` (Omniglot ``alphabet``, SOP/demo ``superclass``, In-Shop ``category``)."""
    from datasets import ClassLabel

    if wanted is not None:
        if wanted not in ds.column_names:
            from .errors import UserError

            raise UserError(f"--hierarchy_column {wanted!r} is not a column of the dataset (columns: "
                            f"{', '.join(ds.column_names)})")
        return wanted
    extra = [c for c, f in ds.features.items() if isinstance(f, ClassLabel) and c != "label"]
    return extra[0] if extra else None


# Default of every data flag on the eval command line, so that flags given can be told from defaults
# (its repr is what --help shows as the default).
_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "as recorded with the model, else the usual"})()


def recorded_data_arguments(model: str) -> tuple[dict[str, Any], str] | None:
    """The data flags a local model folder was trained with: ``train_args.json``'s ``data`` section
    (all DataArguments), else ``metrics.json``'s ``dataset``; with the file they came from. None when
    neither is there (a Hub id, or a folder saved by other code)."""
    folder = Path(model)
    for name, pick in (("train_args.json", lambda d: d.get("data")),
                       ("metrics.json", lambda d: {"dataset": d["dataset"]} if d.get("dataset") else None)):
        path = folder / name
        if not path.is_file():
            continue
        try:
            found = pick(json.loads(path.read_text()))
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{path}: not a JSON object as train_hvit.py writes it ({err})") from err
        if isinstance(found, dict) and found.get("dataset"):
            return found, str(path)
    return None


def resolve_data_arguments(dargs: Any, model: str) -> tuple[Any, str]:
    """Fill the data flags not given on the command line (``_UNSET``): from the model's recorded
    training data when ``--dataset`` is not given, never silently from the built-in demo. Returns the
    completed DataArguments and where the dataset came from. Raises ValueError when ``--dataset`` is
    missing and the model records none."""
    given = {f.name for f in fields(dargs) if getattr(dargs, f.name) is not _UNSET}
    recorded: dict[str, Any] = {}
    if "dataset" in given:
        source = "--dataset"
    else:
        found = recorded_data_arguments(model)
        if found is None:
            raise ValueError(f"--dataset is required: {model} has no train_args.json or metrics.json recording "
                             "the dataset it was trained on (pass e.g. --dataset cub --data_dir PATH, or "
                             "--dataset demo for the built-in demo)")
        recorded, path = found
        source = f"recorded in {path}"
    values = {f.name: recorded.get(f.name, f.default) for f in fields(dargs) if f.name not in given}
    return replace(dargs, **values), source


def _load_model(args: EvalArguments):
    from .loading import load_model

    return load_model(args.model, what="--model", trust_remote_code=args.trust_remote_code)


def _prepare(model, args: EvalArguments, dataset: str, ds):
    from .data import dataset_labels
    from .data.transforms import eval_transform_for, with_image_transform

    tf = eval_transform_for(model, args.image_size)  # the processor saved with the model, not the dataset's name
    if args.max_samples:
        ds = ds.select(range(min(args.max_samples, len(ds))))
    return ds, with_image_transform(ds, tf), dataset_labels(ds)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``eval_hvit.py`` arguments, evaluate, print the table and write ``metrics.json``."""
    from transformers import HfArgumentParser

    from .data import DataArguments
    from .data.splits import describe_splits, split_summary

    parser = HfArgumentParser((EvalArguments, DataArguments), allow_abbrev=False)
    parser.set_defaults(**{f.name: _UNSET for f in fields(DataArguments)})  # tells given flags from defaults
    args, dargs, rest = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv),
                                                           return_remaining_strings=True)
    if rest:
        from .errors import UserError

        raise UserError(f"unknown arguments {rest}; see `hvit eval --help`")
    start = time.perf_counter()
    device = _device(args.device)
    settings = resolve_eval_settings(device.type, args.precision, args.num_workers)
    print(f"device: {device}, encoder precision {str(settings.dtype).removeprefix('torch.')}, "
          f"{settings.num_workers} decoding worker(s)")
    dargs, data_source = resolve_data_arguments(dargs, args.model)
    print(f"dataset: {dargs.dataset} ({data_source})")
    ks = tuple(int(k) for k in args.recall_ks.split(",")) if args.recall_ks else recall_ks_for(dargs.dataset)
    model = _load_model(args)
    geometry, curvature = model.config.geometry, float(model.config.curvature)
    dsd = dargs.build()
    splits = split_summary(dsd, dargs.dataset)  # recorded in metrics.json
    print(f"splits: {describe_splits(splits)}")
    if args.split is None and "query" in dsd and "gallery" in dsd:
        names = ("query", "gallery")
    else:
        names = (args.split or "test",)
    for name in names:
        if name not in dsd:
            raise KeyError(f"dataset {dargs.dataset!r} has no split {name!r} (splits: {list(dsd)})")
    hierarchy_column_of(dsd[names[0]], dargs.hierarchy_column)  # a bad --hierarchy_column stops before embedding
    embedded = {}
    for name in names:
        raw, ds, labels = _prepare(model, args, dargs.dataset, dsd[name])
        emb, enc, lab = embed_dataset(model, ds, args.batch_size, device, settings.dtype, num_workers=settings.num_workers,
                                      progress=args.progress, desc=f"embedding {name}")
        if lab.tolist() != list(labels):
            raise RuntimeError(f"split {name!r}: labels from the transform differ from the dataset's")
        embedded[name] = (raw, emb, enc, lab)
    _, emb, enc, lab = embedded[names[0]]
    gallery = embedded[names[1]][1:] if len(names) == 2 else None
    include = DEFAULT_METRICS + (("nmi",) if args.nmi else ())
    available = len(gallery[2]) if gallery is not None else len(lab) - 1
    ks, dropped = usable_recall_ks(ks, available)
    if not ks:
        include = tuple(m for m in include if m != "recall")
    column, groups = _split_groups(embedded[names[0]][0], dargs.hierarchy_column) if gallery is None else (None, None)
    head_output = head_linear_output(model.head, enc) if geometry == "sphere" else None  # the sphere's radius
    metrics: dict[str, Any] = evaluate_embeddings(
        emb, enc, lab, geometry, curvature, ks, gallery=gallery, include=include, groups=groups,
        head_output=head_output, backend=args.backend, faiss_index=args.faiss_index, block_size=args.block_size,
        progress=args.progress, seed=args.seed, device=device)
    if column:
        metrics["hierarchy_column"] = column
    metrics.update(_fewshot(args, emb, lab, groups, geometry, curvature))
    safe_name = re.sub(r"[^\w.-]", "_", dargs.dataset)
    default_dir = f"eval-{Path(args.model.rstrip('/')).name}-{safe_name}"
    out_dir = Path(args.output_dir or default_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.plot:
        print(f"plot: {_plot(args, dargs, embedded[names[0]], geometry, curvature, out_dir)}")
    metrics.update({"dataset": dargs.dataset, "dataset_source": data_source, "split": "/".join(names), "splits": splits,
                    "model": args.model, "recall_ks_dropped": list(dropped),
                    "geometry": geometry, "curvature": curvature, "num_queries": len(lab),
                    "num_gallery": len(gallery[2]) if gallery is not None else len(lab),
                    "embedding_dim": int(emb.shape[1]), "wall_seconds": round(time.perf_counter() - start, 2)})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\n{args.model} on {dargs.dataset} ({metrics['split']}, {len(lab)} queries; head: {geometry}"
          f"{f', c={curvature:g}' if geometry in ('poincare', 'lorentz') else ''}; encoder: cosine)\n{format_table(metrics)}")
    extra = format_extra(metrics)
    if extra:
        print(extra)
    if dropped:
        print(f"Recall@K not reported for K = {', '.join(map(str, dropped))}: K ≥ the {available} gallery items a "
              "query can retrieve (100% by construction)")
    print(f"\nwrote {out_dir / 'metrics.json'}")
    return metrics


def _plot(args: EvalArguments, dargs, split: tuple, geometry: str, curvature: float, out_dir: Path) -> Path:
    from .visualize import plot_poincare_disk

    raw, emb, _, lab = split
    column, hierarchy = _split_groups(raw, dargs.hierarchy_column)
    idx = np.arange(len(lab))
    if len(idx) > args.plot_max_points:
        idx = np.sort(np.random.default_rng(args.seed).choice(len(idx), args.plot_max_points, replace=False))
    path = out_dir / "poincare_disk.png"
    feature = raw.features.get(column) if column else None
    plot_poincare_disk(emb[idx], lab.numpy()[idx], geometry, curvature,
                       hierarchy=None if hierarchy is None else hierarchy[idx], hierarchy_name=column or "hierarchy",
                       hierarchy_names=getattr(feature, "names", None),
                       path=path, seed=args.seed,
                       title=f"{Path(args.model.rstrip('/')).name} · {dargs.dataset}")
    return path


if __name__ == "__main__":  # `python -m modeling_hvit.evaluation ...` = `hvit eval ...`
    from .cli import command_main

    command_main("eval")
