# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Images/s of one HViT training step (ViT-S/16, 224², random init) and of the loss alone.

One step = forward, pairwise hyperbolic loss (m = 2), backward, clip 3, AdamW update, as HViTTrainer
does (autocast in bf16 when asked). Reports images/s, achieved TFLOP/s and, given the device's peak,
the model FLOP utilisation. FLOPs per trained image = 3 × forward FLOPs (backward ≈ 2 × forward),
the forward counted by ``torch.utils.flop_counter.FlopCounterMode`` on one image with eager attention
(the counter does not see every fused SDPA kernel): 9.20 GFLOP forward, 27.6 GFLOP trained for ViT-S/16.

    python bench/train_step.py                                   # CPU, batch 32, fp32
    python bench/train_step.py --device cuda --batch 900 --bf16 --peak-tflops 989   # H100/H200 dense bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_hvit import HViTConfig, HViTModel  # noqa: E402
from modeling_hvit.losses import PairwiseCrossEntropyLoss  # noqa: E402

VIT_S16 = {"model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
           "intermediate_size": 1536, "patch_size": 16, "image_size": 224}


def sync(device: torch.device | str) -> None:
    """Wait for ``device`` (its own index: ``cuda:1`` is not the current device by default)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _set_attention(model: HViTModel, impl: str) -> None:
    backbone = model.backbone
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation(impl)
    else:  # older transformers: the attention modules read the config at call time
        backbone.config._attn_implementation = impl


@torch.no_grad()
def forward_flops_per_image(model: HViTModel, image_size: int, device: torch.device | str | None = None) -> int:
    """Forward FLOPs of one image (multiply-add = 2 FLOPs), by FlopCounterMode with eager attention.

    Eager attention makes the attention products visible to the counter as ``bmm``; the fused SDPA
    kernels it replaces do the same arithmetic. The model's attention implementation is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device) if device is not None else next(model.parameters()).device
    impl = model.backbone.config._attn_implementation
    was_training = model.training
    model.eval()
    try:
        _set_attention(model, "eager")
        x = torch.zeros(1, 3, image_size, image_size, device=device)
        with FlopCounterMode(display=False) as counter:
            model(pixel_values=x)
    finally:
        _set_attention(model, impl)
        model.train(was_training)
    return int(counter.get_total_flops())


def vit_forward_flops(hidden: int, layers: int, mlp: int, patch: int, image_size: int, embedding_dim: int = 128) -> int:
    """Textbook ViT forward FLOPs per image (2 per multiply-add): patch projection, per block QKV +
    output projection + MLP + the two attention products, and the head. An independent check."""
    tokens = (image_size // patch) ** 2 + 1
    per_block = 2 * tokens * hidden * (4 * hidden + 2 * mlp) + 4 * tokens * tokens * hidden
    return 2 * (tokens - 1) * 3 * patch * patch * hidden + layers * per_block + 2 * hidden * embedding_dim


def bench_step(device: torch.device, batch: int, bf16: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = HViTModel(HViTConfig(backbone_config=VIT_S16, embedding_dim=128)).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5, weight_decay=0.01)
    loss_fn = PairwiseCrossEntropyLoss("poincare")
    x = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.arange(batch // 2, device=device).repeat_interleave(2)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(pixel_values=x).embeddings, labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bench_loss(device: torch.device, batch: int, reps: int = 10) -> float:
    g = torch.Generator().manual_seed(0)
    emb = (torch.randn(batch, 128, generator=g) * 0.1).to(device).requires_grad_()
    labels = torch.arange(batch // 2, device=device).repeat_interleave(2)
    loss_fn = PairwiseCrossEntropyLoss("poincare")
    times = []
    for _ in range(reps + 2):
        sync(device)
        t = time.perf_counter()
        loss_fn(emb, labels).loss.backward()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: 900 on GPU, 32 on CPU)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (the recipes' mixed precision)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU column")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    batch = args.batch or (900 if device.type == "cuda" else 32)
    fwd = forward_flops_per_image(HViTModel(HViTConfig(backbone_config=VIT_S16, embedding_dim=128)), 224, "cpu")
    step = bench_step(device, batch, args.bf16, args.steps, args.warmup)
    ips = batch / step
    tflops = ips * 3 * fwd / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; ViT-S/16 224², batch {batch}, {'bf16' if args.bf16 else 'fp32'}")
    print(f"train step: {step:.3f} s  ->  {ips:.1f} images/s, {tflops:.3f} TFLOP/s achieved "
          f"(3 × {fwd / 1e9:.2f} GFLOP forward per image)"
          + (f", MFU {100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops else ""))
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    loss_t = bench_loss(device, 900)
    print(f"loss alone (batch 900 × 128, forward+backward): {1e3 * loss_t:.1f} ms "
          f"({100 * loss_t / step:.1f}% of the step at batch {batch})")


if __name__ == "__main__":
    main()
