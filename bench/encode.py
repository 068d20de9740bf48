# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`HViTModel.encode` throughput and peak memory on a folder of real JPEGs (Caltech-101).

    .venv/bin/python bench/encode.py [--tar $HVIT_DATA_DIR/caltech101/101_ObjectCategories.tar]
        [--n_images 1024] [--models demo,vit-s16] [--workers 0,2] [--batch_size 64]
        [--memory_counts 1000,8000] [--device cuda --precision bf16]

The first ``max(n_images, memory_counts)`` JPEGs of the tar are extracted once to ``--folder``
(default /tmp/hvit_bench_jpegs). Models: the demo architecture (tiny ViT, 32 px, ``scratch:tiny``)
and a ViT-S/16 at 224 px, both random init (throughput does not depend on the weights), saved and
reloaded so both paths use the model's saved image processor. Each measurement runs in its own
subprocess: ``loop`` is the plain loop a user writes (PIL decode → ``model.image_processor`` →
forward, batch by batch, in one process); ``encode-wN`` is ``model.encode(folder, num_workers=N)``.
Images/s are wall time of the whole call (worker start-up included) and are reported with their
ratio to the plain loop of the same run. Peak memory: ``ru_maxrss`` of the measuring process and of
its largest reaped DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(os.environ.get("HVIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
TAR = DATA / "caltech101" / "101_ObjectCategories.tar"
MODELS = {  # name → (scratch backbone, image size, embedding_dim)
    "demo": ("tiny", 32, 32),
    "vit-s16": ("vit-s16", 224, 128),
}


def extract(tar: Path, folder: Path, n: int) -> list[Path]:
    """The first ``n`` JPEGs of the tar (sorted member order) under ``folder``, extracted once."""
    done = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
    if len(done) >= n:
        return done[:n]
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as tf:
        members = sorted((m for m in tf if m.isfile() and m.name.lower().endswith(".jpg")), key=lambda m: m.name)
        for m in members[:n]:
            target = folder / m.name.replace("/", "__")
            if not target.exists():
                target.write_bytes(tf.extractfile(m).read())
    return sorted(folder.rglob("*.jpg"))[:n]


def save_model(name: str, root: Path) -> Path:
    path = root / name
    if not (path / "config.json").is_file():
        import torch

        from modeling_hvit import HViTConfig, HViTModel
        from modeling_hvit.training import SCRATCH_BACKBONES

        backbone, size, dim = MODELS[name]
        torch.manual_seed(0)
        HViTModel(HViTConfig(backbone_config={**SCRATCH_BACKBONES[backbone], "image_size": size},
                             embedding_dim=dim)).save_pretrained(path)
    return path


def measure(args) -> dict:
    """One variant in this process: images/s and peak memory."""
    import torch
    from PIL import Image

    from modeling_hvit import HViTModel
    from modeling_hvit.evaluation import PRECISIONS

    torch.set_num_threads(args.threads)
    model = HViTModel.from_pretrained(args.model_dir).eval().to(args.device)
    folder = Path(args.subset)
    files = sorted(str(p) for p in folder.iterdir())
    dtype = PRECISIONS[args.precision]
    start = time.perf_counter()
    if args.variant == "loop":
        processor, n = model.image_processor, 0
        with torch.inference_mode():
            for i in range(0, len(files), args.batch_size):
                images = [Image.open(f).convert("RGB") for f in files[i:i + args.batch_size]]
                pixels = processor(images, return_tensors="pt")["pixel_values"].to(args.device)
                with torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32):
                    out = model(pixel_values=pixels)
                n += out.embeddings.float().cpu().shape[0]
    else:
        workers = int(args.variant.removeprefix("encode-w"))
        n = len(model.encode(str(folder), batch_size=args.batch_size, num_workers=workers, device=args.device,
                             precision=args.precision, show_progress_bar=False))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def subset(files: list[Path], n: int, root: Path) -> Path:
    """A folder of symlinks to the first n files (encode reads a folder)."""
    folder = root / f"subset-{n}"
    if not folder.is_dir() or len(list(folder.iterdir())) != n:
        folder.mkdir(parents=True, exist_ok=True)
        for f in files[:n]:
            link = folder / f.name
            if not link.exists():
                link.symlink_to(f)
    return folder


def run(variant: str, model_dir: Path, folder: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--_variant", variant, "--_model_dir", str(model_dir), "--_subset", str(folder),
           "--batch_size", str(args.batch_size), "--device", args.device, "--precision", args.precision,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tar", default=str(TAR))
    p.add_argument("--folder", default="/tmp/hvit_bench_jpegs")
    p.add_argument("--n_images", type=int, default=1024, help="images per throughput measurement")
    p.add_argument("--models", default="demo,vit-s16")
    p.add_argument("--vit_images", type=int, default=256, help="images for the ViT-S/16 rows (slow on CPU)")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--memory_counts", default="1000,8000", help="image counts for the peak-memory rows (demo model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the measuring process (1: the DataLoader workers get the other core)")
    p.add_argument("--_variant")
    p.add_argument("--_model_dir")
    p.add_argument("--_subset")
    args = p.parse_args()
    if args._variant:
        args.variant, args.model_dir, args.subset = args._variant, args._model_dir, args._subset
        print(json.dumps(measure(args)))
        return
    counts = [int(c) for c in args.memory_counts.split(",") if c]
    root = Path(args.folder)
    files = extract(Path(args.tar), root / "jpegs", max([args.n_images, *counts]))
    print(f"{len(files)} JPEGs under {root / 'jpegs'}; device {args.device}, {args.precision}, "
          f"batch {args.batch_size}, {args.threads} torch threads", flush=True)
    rows = []
    for name in args.models.split(","):
        model_dir = save_model(name, root / "models")
        n = args.n_images if name == "demo" or args.device != "cpu" else min(args.n_images, args.vit_images)
        folder = subset(files, n, root)
        base = run("loop", model_dir, folder, args)
        rows.append((name, n, "plain loop", base, 1.0))
        print(f"| {name} | {n} | plain loop | {base['images_per_s']} | 1.00× | {base['peak_mb']} MB |", flush=True)
        for w in args.workers.split(","):
            r = run(f"encode-w{w}", model_dir, folder, args)
            ratio = r["images_per_s"] / base["images_per_s"]
            print(f"| {name} | {n} | encode, {w} workers | {r['images_per_s']} | {ratio:.2f}× | {r['peak_mb']} MB "
                  f"(worker {r['worker_peak_mb']} MB) |", flush=True)
    model_dir = save_model("demo", root / "models")
    w = max(int(x) for x in args.workers.split(","))
    for n in counts:
        r = run(f"encode-w{w}", model_dir, subset(files, n, root), args)
        print(f"memory: demo, {n} images, encode {w} workers: {r['images_per_s']} images/s, peak {r['peak_mb']} MB "
              f"(largest worker {r['worker_peak_mb']} MB)", flush=True)


if __name__ == "__main__":
    main()
