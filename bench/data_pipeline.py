# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Data pipeline throughput on real Caltech-101 JPEGs (or the demo): decode, + train/eval transform,
N workers, and the same from the decode-once cache (`modeling_hvit.data.cache`, JPEG q95 and raw);
and the `--augment_on_device` pipeline: workers decode to uint8 only (`DecodeTransform`), batches are
padded (`collate_padded`) and `BatchedTrainTransform` crops them (here on the CPU, for its cost there).

    .venv/bin/python bench/data_pipeline.py [--data_dir ../shared/data/caltech101] [--n_images 1024]
    .venv/bin/python bench/data_pipeline.py --dataset demo --image_size 32

All variants run in one subprocess, interleaved round-robin (``--repeats`` rounds, best pass of each),
so that a load change on a shared box spreads over all of them; its peak memory is the larger
``ru_maxrss`` of that process (``RUSAGE_SELF``) and of its largest reaped DataLoader worker
(``RUSAGE_CHILDREN``); images/s are reported with their ratio to the decode-only baseline of the same run. Also reports what building the dataset costs with
and without image verification, and how many workers a given GPU rate needs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # proposed trainer default (dataloader_num_workers)


def _dataset(args, source: str = "original"):
    import datasets

    from modeling_hvit.data import build_dataset

    if source != "original":  # the cached copy ("jpeg" or "raw") the parent built
        return datasets.load_from_disk(args.cache_paths[source])
    ds = build_dataset(args.dataset, args.data_dir, verify_images=False, cache_dir=args.cache_dir)["train"]
    ds = ds.shuffle(seed=0).select(range(min(args.n_images, len(ds))))
    return ds.flatten_indices() if ds.cache_files else ds


def _pass(kind: str, ds, args):
    """A callable doing one timed pass of ``kind`` over ``ds`` (set-up, e.g. pre-decoding, done here)."""
    import datasets
    import torch

    from modeling_hvit.data.batched_transforms import BatchedTrainTransform, collate_padded
    from modeling_hvit.data.cache import reduce_image
    from modeling_hvit.data.transforms import (DecodeTransform, EvalTransform, TrainTransform, to_rgb,
                                               with_image_transform)

    if kind == "decode":
        return lambda: [to_rgb(row["image"]).load() for row in ds]
    if kind in ("decodeu8", "train", "eval"):
        t = {"decodeu8": DecodeTransform(), "train": TrainTransform(args.image_size, seed=0),
             "eval": EvalTransform(args.image_size)}[kind]
        return lambda: [t(row["image"]) for row in ds]
    if kind == "batched":  # decode-only items (not timed), padded batches of 64, batched augmentation on the CPU
        items = [DecodeTransform()(row["image"]) for row in ds]
        aug = BatchedTrainTransform(args.image_size, seed=0)

        def run():
            for i in range(0, len(items), 64):
                batch = collate_padded([{"pixel_values": x, "labels": 0} for x in items[i:i + 64]])
                aug(batch["pixel_values"], batch["image_sizes"])
        return run
    if kind.startswith("reduce"):  # building the cache: decode + reduce to the cache size, per image
        raw = [r["image"]["bytes"] or open(r["image"]["path"], "rb").read()
               for r in ds.cast_column("image", datasets.Image(decode=False))]
        return lambda: [reduce_image(data, args.min_side, draft=kind == "reduce_draft") for data in raw]
    # loaderN: PIL train transform in N workers; loaderdevN: decode-only workers + padded batches
    device = kind.startswith("loaderdev")
    workers = int(kind.removeprefix("loaderdev" if device else "loader"))
    out = with_image_transform(ds, DecodeTransform() if device else TrainTransform(args.image_size, seed=0))

    def run():
        loader = torch.utils.data.DataLoader(out, batch_size=64, num_workers=workers,
                                             collate_fn=collate_padded if device else None)
        for batch in loader:
            assert batch["pixel_values"].shape[1] == 3
    return run


def run_variants(args) -> dict:
    """Every variant in this one process, interleaved round-robin ``repeats`` times; best pass of each
    (the box is shared: interleaving spreads load changes over all variants, the minimum is the least
    disturbed pass)."""
    import torch

    torch.set_num_threads(1)
    sources = {s: _dataset(args, s) for s in ("original", *args.cache_paths)}
    passes = {}
    for name in args.variants:
        source, kind = name.split(":")
        passes[name] = (_pass(kind, sources[source], args), len(sources[source]))
    best = {name: float("inf") for name in passes}
    for _ in range(args.repeats):
        for name, (run, _n) in passes.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"rates": {name: passes[name][1] / best[name] for name in passes}, "peak_mib": peak / 1024,
            "images": {name: passes[name][1] for name in passes}}


def build_caches(args) -> dict:
    """Build the JPEG and raw caches of the benchmark images (one process: the build rate per worker)."""
    import datasets

    from modeling_hvit.data.cache import build_cache

    datasets.disable_progress_bars()
    ds = _dataset(args)
    out = {}
    for fmt in ("jpeg", "raw"):
        start = time.perf_counter()
        cached = build_cache(ds, Path(args.cache_dir) / "hvit_image_cache", min_side=args.min_side, fmt=fmt, num_proc=1)
        files = [f["filename"] for f in cached.cache_files]
        out[fmt] = {"path": str(Path(files[0]).parent), "seconds": time.perf_counter() - start,
                    "mib": sum(os.path.getsize(f) for f in files) / 2**20}
    return out


def build_cost(args) -> dict:
    from modeling_hvit.data import build_dataset

    start = time.perf_counter()
    build_dataset("caltech101", args.data_dir, verify_images=False, cache_dir=args.cache_dir)
    out = {"cold": time.perf_counter() - start}  # lists the tar and writes the Arrow cache
    for verify in (False, True):
        start = time.perf_counter()
        build_dataset("caltech101", args.data_dir, verify_images=verify, cache_dir=args.cache_dir)
        out[f"verify={verify}"] = time.perf_counter() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="caltech101", help="caltech101 (real JPEGs) or demo (generated 32² images)")
    p.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101"))
    p.add_argument("--min_side", type=int, default=256, help="the cache's shorter side")
    p.add_argument("--n_images", type=int, default=1024)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache_paths", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        args.variants = json.loads(args.variant)
        print(json.dumps(run_variants(args)))
        return
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="hvit_bench_")
    if args.dataset == "caltech101":
        cost = build_cost(args)  # also fills the Arrow cache the variants read
        print(f"build caltech101 (8,677 images): first build {cost['cold']:.1f} s; with the Arrow cache warm: "
              f"verify_images=False {cost['verify=False']:.1f} s, verify_images=True {cost['verify=True']:.1f} s "
              f"(verification ≈ {cost['verify=True'] - cost['verify=False']:.1f} s)")
    caches = build_caches(args)
    for fmt, c in caches.items():
        print(f"cache ({fmt}, shorter side {args.min_side}) of {args.n_images} images: built in {c['seconds']:.1f} s "
              f"(1 process), {c['mib']:.1f} MiB on disk")
    args.cache_paths = {fmt: c["path"] for fmt, c in caches.items()}
    loaders = [f"loader{args.workers}", f"loaderdev{args.workers}"] if args.workers else []
    per_source = ("decode", "decodeu8", "train", "batched", *loaders)
    args.variants = (["original:eval", "original:reduce_draft", "original:reduce_full"]
                     + [f"{src}:{v}" for src in ("original", "jpeg", "raw") for v in per_source])
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", json.dumps(args.variants), "--data_dir", args.data_dir,
           "--dataset", args.dataset, "--min_side", str(args.min_side), "--cache_paths", json.dumps(args.cache_paths),
           "--n_images", str(args.n_images), "--image_size", str(args.image_size), "--cache_dir", args.cache_dir,
           "--repeats", str(args.repeats)]
    uptime = os.getloadavg()
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    rates = out["rates"]
    base = rates["original:decode"]
    labels = {"decode": "decode only (baseline)", "train": "decode + PIL train transform",
              "decodeu8": "decode to uint8 only (--augment_on_device worker)",
              "batched": "batched augmentation on the CPU, batch 64", "eval": "decode + eval transform",
              "reduce_draft": f"cache build: decode (draft) + reduce to {args.min_side}",
              "reduce_full": f"cache build: full decode + reduce to {args.min_side}"}
    print(f"{len(args.variants)} variants interleaved, best of {args.repeats} passes of {out['images']['original:decode']} "
          f"images; load average {uptime[0]:.1f} before, {os.getloadavg()[0]:.1f} after; peak RSS {out['peak_mib']:.0f} MiB")
    print(f"{'variant (1 process unless N workers)':<66}{'images/s':>10}{'vs decode':>11}")
    for name, rate in rates.items():
        source, kind = name.split(":")
        label = labels.get(kind) or (f"DataLoader, {kind.removeprefix('loaderdev')} decode-only workers, padded"
                                     if kind.startswith("loaderdev") else
                                     f"DataLoader, {kind.removeprefix('loader')} workers, PIL train transform")
        print(f"{source + ': ' + label:<66}{rate:>10.0f}{rate / base:>10.2f}x")
    orig = rates["original:train"]
    print(f"\nper worker, vs the PIL train transform on the original images ({orig:.0f} images/s):")
    for fmt in ("jpeg", "raw"):
        print(f"  cache {fmt}: PIL train transform {rates[f'{fmt}:train'] / orig:.2f}x; "
              f"decode-only worker (--augment_on_device) {rates[f'{fmt}:decodeu8'] / orig:.2f}x")
    print(f"  original images, decode-only worker: {rates['original:decodeu8'] / orig:.2f}x")
    per_worker = orig
    if args.workers:
        print(f"\nper worker: {per_worker:.0f} images/s of {args.image_size}px train crops; with {args.workers} workers "
              f"measured {rates[f'original:loader{args.workers}']:.0f} images/s on {os.cpu_count()} cores")
    for gpu_rate, what in ((350, "paper's CUB run on one A100 (50 epochs x 5,864 images in ~14 min)"),
                           (2000, "assumed, not measured: ViT-S/16 224px bf16 training on one A100")):
        print(f"  {gpu_rate:>5} images/s ({what}): needs ~{gpu_rate / per_worker:.1f} workers at this per-worker rate")


if __name__ == "__main__":
    main()
