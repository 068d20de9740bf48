# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Is the built-in demo dataset learnable on a small CPU budget? Recall@1 on its test half.

    .venv/bin/python bench/demo_learnability.py [--seconds 120] [--threads 2]

Baselines measured in the same run: raw-pixel nearest neighbours and the *untrained* tiny ViT
(transformers ``ViTModel``: hidden 64, 2 layers, 4 heads, patch 8, 32 px). The same ViT is then
trained for a wall-clock budget with a cosine pairwise cross-entropy (SPEC §3, Sph- variant,
τ = 0.1; 32 classes × 2 views per batch, AdamW 1e-3) and the train transform at scale (0.6, 1);
Recall@1 (CLS feature, cosine, query excluded) is printed every 50 steps. This stands in for the
full HViT recipe so the dataset can be judged independently of the model code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F


def recall_at_1(z: torch.Tensor, y: torch.Tensor) -> float:
    z = F.normalize(z.float(), dim=1)
    s = z @ z.T
    s.fill_diagonal_(-float("inf"))
    return (y[s.argmax(1)] == y).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import ViTConfig, ViTModel

    from modeling_hvit.data import build_dataset, dataset_labels
    from modeling_hvit.data.transforms import EvalTransform, TrainTransform

    start = time.process_time()
    ds = build_dataset("demo")
    print(f"demo dataset: {len(ds['train'])} train / {len(ds['test'])} test images, "
          f"{len(set(dataset_labels(ds['test'])))} test classes, generated in {time.process_time() - start:.1f} s CPU")
    mean = std = (0.5, 0.5, 0.5)
    x_test = torch.stack([EvalTransform(32, mean, std)(r["image"]) for r in ds["test"]])
    y_test = torch.tensor(dataset_labels(ds["test"]))
    print(f"raw-pixel nearest neighbours   R@1 = {recall_at_1(x_test.flatten(1), y_test):.3f}")

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128)
    model = ViTModel(cfg, add_pooling_layer=False)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            r = recall_at_1(model(pixel_values=x_test).last_hidden_state[:, 0], y_test)
        model.train()
        return r

    untrained = evaluate()
    print(f"untrained tiny ViT (CLS)       R@1 = {untrained:.3f}")
    train_t = TrainTransform(32, mean, std, scale=(0.6, 1.0), seed=args.seed)
    images = [r["image"] for r in ds["train"]]
    labels = np.asarray(dataset_labels(ds["train"]))
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    classes = np.asarray(sorted(by_class))
    rng = np.random.default_rng(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    n, m, tau = 32, 2, 0.1
    eye = torch.eye(n, dtype=torch.bool)
    step, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        chosen = rng.choice(classes, n, replace=False)
        idx = [int(rng.choice(by_class[c])) for c in chosen for _ in range(m)]
        x = torch.stack([train_t(images[i]) for i in idx])
        z = F.normalize(model(pixel_values=x).last_hidden_state[:, 0], dim=1).view(n, m, -1)
        loss = 0.0
        for i, j in ((0, 1), (1, 0)):
            a, pos = z[:, i], z[:, j]
            logits = torch.cat([a @ pos.T, (a @ a.T)[~eye].view(n, n - 1)], 1) / tau
            loss = loss + F.cross_entropy(logits, torch.arange(n))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step:4d}  {time.perf_counter() - t0:5.0f} s  loss {loss.item():.2f}  R@1 = {evaluate():.3f}")
    trained = evaluate()
    print(f"trained tiny ViT, {step} steps in {time.perf_counter() - t0:.0f} s: R@1 = {trained:.3f} "
          f"(gain {100 * (trained - untrained):+.1f} points over untrained)")


if __name__ == "__main__":
    main()
