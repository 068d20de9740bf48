# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""``python -m modeling_hvit.delta``: δ_rel and the suggested curvature of a model's encoder features.

    python -m modeling_hvit.delta --model facebook/dino-vits16 --dataset cub --data_dir /data/CUB_200_2011
    python -m modeling_hvit.delta --features train_features.npy --n 2000 --draws 100

With ``--model`` (an HViT model or a plain backbone such as ``facebook/dino-vits16``; directory or Hub id,
``loading.load_model``) the train split is embedded with the model's encoder
(``.encoder_embeddings``: the CLS feature, 384-d for ViT-S) after the eval transform (resize, center
crop, the model's own normalisation); ``--features`` (.npy or .pt, shape (N, D)) skips the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .delta import estimate_delta


def load_features(path: str | os.PathLike) -> torch.Tensor:
    """A (N, D) feature matrix from a ``.npy`` or ``.pt`` file (a tensor or an array, nothing else)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--features {path}: no such file")
    if path.suffix == ".npy":
        feats = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".pt":
        feats = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(feats, np.ndarray):
            feats = torch.from_numpy(feats)
        if not isinstance(feats, torch.Tensor):
            raise ValueError(f"--features {path}: expected a saved tensor of shape (N, D), got {type(feats).__name__}")
    else:
        raise ValueError(f"--features {path}: expected a .npy or .pt file")
    if feats.ndim != 2 or feats.shape[0] < 2 or not (feats.is_floating_point() or feats.dtype.is_signed):
        raise ValueError(f"--features {path}: expected a real (N, D) matrix with N ≥ 2, "
                         f"got shape {tuple(feats.shape)} and dtype {feats.dtype}")
    return feats


def save_features(features: torch.Tensor, path: str | os.PathLike) -> None:
    path = Path(path)
    if path.suffix == ".npy":
        np.save(path, features.numpy())
    elif path.suffix == ".pt":
        torch.save(features, path)
    else:
        raise ValueError(f"--save_features {path}: expected a .npy or .pt file name")


def model_features(model_name: str, dataset: str, data_dir: str | None = None, *, split: str = "train",
                   batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """Encoder features (N, D) of ``split`` of a named dataset (``data.build_dataset``) under an HViT model,
    through the evaluation transform and ``evaluation.embed_dataset``."""
    from .data import build_dataset
    from .evaluation import embed_dataset
    from .loading import load_model
    from .data.transforms import eval_transform_for, with_image_transform

    model = load_model(model_name, what="--model")
    dsd = build_dataset(dataset, data_dir)
    if split not in dsd:
        raise ValueError(f"dataset {dataset!r} has no split {split!r} (splits: {list(dsd)})")
    ds = with_image_transform(dsd[split], eval_transform_for(model))  # the model's saved eval processor
    return embed_dataset(model, ds, batch_size, device, num_workers=num_workers, progress=progress,
                         desc=f"embedding {split}")[1]


def build_parser(prog: str = "python -m modeling_hvit.delta") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HViT model or plain backbone, directory or Hub id (its encoder embeds the images)")
    src.add_argument("--features", help="precomputed (N, D) features, .npy or .pt")
    p.add_argument("--dataset", help="dataset name for data.build_dataset (cub, cars, sop, inshop, demo, …)")
    p.add_argument("--data_dir", help="the dataset's folder or archive")
    p.add_argument("--split", default="train", help="split to embed (default: train, as in the paper)")
    p.add_argument("--n", type=int, default=2000, help="points per subset (default 2000)")
    p.add_argument("--draws", type=int, default=100, help="random subsets (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base_points", type=int, default=1,
                   help="maximum of δ_w over this many base points per subset (default 1: the reference)")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda when available)")
    p.add_argument("--batch_size", type=int, default=64, help="embedding batch size")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers for embedding")
    p.add_argument("--save_features", help="also write the embedded features here (.npy or .pt)")
    p.add_argument("--output", help="write the estimate as JSON here")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m modeling_hvit.delta") -> dict:
    """Run the command; returns the JSON-able result (the estimate plus its source)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.model and not args.dataset:  # the dataset the model was trained on, never a silent default
        from .evaluation import recorded_data_arguments

        try:
            found = recorded_data_arguments(args.model)
        except ValueError as err:
            parser.error(str(err))
        if found is None:
            parser.error(f"--model needs --dataset (the images to embed): {args.model} has no train_args.json "
                         "or metrics.json recording its training dataset")
        recorded, path = found
        args.dataset, args.data_dir = recorded["dataset"], args.data_dir or recorded.get("data_dir")
        print(f"dataset: {args.dataset} (recorded in {path})", file=sys.stderr)
    if args.features and args.dataset:
        parser.error("--dataset is only used with --model; --features already holds the features")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = not args.no_progress
    try:
        if args.features:
            feats = load_features(args.features)
        else:
            feats = model_features(args.model, args.dataset, args.data_dir, split=args.split,
                                   batch_size=args.batch_size, device=device, num_workers=args.num_workers,
                                   progress=progress)
        if args.save_features:
            save_features(feats, args.save_features)
        if feats.shape[0] < args.n:
            parser.error(f"only {feats.shape[0]} points to sample from, fewer than --n {args.n}; "
                         f"pass --n {feats.shape[0]} or less")
        est = estimate_delta(feats, n=args.n, draws=args.draws, seed=args.seed, device=device,
                             progress=progress, base_points=args.base_points)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(est)
    result = dataclasses.asdict(est)
    result.update(source=args.features or f"{args.model} on {args.dataset}/{args.split}", seed=args.seed,
                  base_points=args.base_points, num_points=int(feats.shape[0]), dim=int(feats.shape[1]))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
