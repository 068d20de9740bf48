# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Data checks of issues 10–12: shared memory per worker batch (uint8 vs float32), the cost of image
verification per real JPEG (header-only check vs the truncated-tail check), EXIF orientation tags.

    .venv/bin/python bench/data_checks.py [--data_dir ../shared/data] [--batch 900] [--n_jpegs 500]

The batch is collated by 2 DataLoader workers from Caltech-101 JPEGs at 224², as the Trainer does;
the bytes are those of the batch tensor that crosses shared memory. Verification times are per image,
median of 3 passes over the same JPEGs, with the old header-only check (an end-of-image marker) as the
baseline of the same run. The EXIF count reads every image of the Omniglot zips and the Caltech tar.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def caltech_jpegs(root: Path, n: int) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(root / "caltech101" / "101_ObjectCategories.tar") as tf:
        for m in tf:
            if m.isfile() and m.name.lower().endswith(".jpg") and "BACKGROUND" not in m.name:
                out.append((m.name, tf.extractfile(m).read()))
                if len(out) == n:
                    break
    return out


def batch_bytes(jpegs, batch: int) -> dict[str, float]:
    import datasets
    import torch

    from modeling_hvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform, with_image_transform

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = [{"path": name, "bytes": data} for name, data in jpegs]
    ds = datasets.Dataset.from_dict({"image": [rows[i % len(rows)] for i in range(batch)], "label": [0] * batch},
                                    features=feats)
    out = {}
    for name, tf in (("uint8", TrainTransform(224, seed=0)), ("float32", TrainTransform(224, IMAGENET_MEAN, IMAGENET_STD, seed=0))):
        loader = torch.utils.data.DataLoader(with_image_transform(ds, tf), batch_size=batch, num_workers=2)
        x = next(iter(loader))["pixel_values"]
        out[name] = x.numel() * x.element_size() / 2**20
    return out


def verify_cost(jpegs) -> dict[str, float]:
    from PIL import Image

    from modeling_hvit.data.sources import check_image

    def header_only(data: bytes):
        with Image.open(io.BytesIO(data)):
            return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"

    out = {}
    for name, fn in (("header + end marker (before)", header_only), ("check_image (now)", check_image)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _, data in jpegs:
                fn(data)
            times.append((time.perf_counter() - start) / len(jpegs) * 1e3)
        out[name] = sorted(times)[1]
    flagged = sum(check_image(data) is not None for _, data in jpegs)
    cut = sum(check_image(data[: len(data) // 2] + b"\xff\xd9") is not None for _, data in jpegs)
    return {**out, "flagged_intact": flagged, "flagged_cut": cut}


def exif_orientations(root: Path) -> collections.Counter:
    from PIL import Image

    counts: collections.Counter = collections.Counter()

    def visit(data: bytes, source: str):
        with Image.open(io.BytesIO(data)) as im:
            counts[(source, im.getexif().get(0x0112))] += 1

    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(root / "omniglot" / name) as zf:
            for info in zf.infolist():
                if info.filename.lower().endswith(".png"):
                    visit(zf.read(info), "omniglot")
    with tarfile.open(root / "caltech101" / "101_ObjectCategories.tar") as tf:
        for m in tf:
            if m.isfile() and m.name.lower().endswith(".jpg"):
                visit(tf.extractfile(m).read(), "caltech101")
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--batch", type=int, default=900)
    p.add_argument("--n_jpegs", type=int, default=500)
    args = p.parse_args()
    root = Path(args.data_dir)
    jpegs = caltech_jpegs(root, args.n_jpegs)
    mib = batch_bytes(jpegs, args.batch)
    print(f"worker batch of {args.batch} at 224²: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in mib.items())
          + f" (ratio {mib['float32'] / mib['uint8']:.2f})")
    cost = verify_cost(jpegs)
    base = cost["header + end marker (before)"]
    print(f"verification of {len(jpegs)} Caltech-101 JPEGs, ms per image: "
          + ", ".join(f"{k} {v:.3f} ({v / base:.1f}x)" for k, v in cost.items() if not k.startswith("flagged"))
          + f"; flagged: {cost['flagged_intact']} intact, {cost['flagged_cut']}/{len(jpegs)} cut + end marker")
    counts = exif_orientations(root)
    print("EXIF orientation tags (source, value): count: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))


if __name__ == "__main__":
    main()
