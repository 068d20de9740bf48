"""Images/s of one HViT training step (ViT-S/16, 224², random init) and of the loss alone.

One step = forward, pairwise hyperbolic loss (m = 2), backward, AdamW update, as HViTTrainer does
(autocast in bf16 when asked). Reports images/s, achieved TFLOP/s at ≈ 13.8 GFLOP per trained image
(3 × the 4.6 GFLOP forward of ViT-S/16) and, given the device's peak, the model FLOP utilisation.

    python bench/train_step.py                                   # CPU, batch 32, fp32
    python bench/train_step.py --device cuda --batch 900 --bf16 --peak-tflops 989   # H100/H200 dense bf16
"""

from __future__ import annotations

import argparse
import time

import torch

from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit.losses import PairwiseCrossEntropyLoss

GFLOP_PER_IMAGE = 13.8
VIT_S16 = {"model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
           "intermediate_size": 1536, "patch_size": 16, "image_size": 224}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_step(device: torch.device, batch: int, bf16: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = HViTModel(HViTConfig(backbone_config=VIT_S16, embedding_dim=128)).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5, weight_decay=0.01)
    loss_fn = PairwiseCrossEntropyLoss("poincare")
    x = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.arange(batch // 2, device=device).repeat_interleave(2)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(pixel_values=x).embeddings, labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
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
        _sync(device)
        t = time.perf_counter()
        loss_fn(emb, labels).loss.backward()
        _sync(device)
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
    batch = args.batch or (900 if device.type == "cuda" else 32)
    step = bench_step(device, batch, args.bf16, args.steps, args.warmup)
    ips = batch / step
    tflops = ips * GFLOP_PER_IMAGE / 1e3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; ViT-S/16 224², batch {batch}, {'bf16' if args.bf16 else 'fp32'}")
    print(f"train step: {step:.3f} s  ->  {ips:.1f} images/s, {tflops:.3f} TFLOP/s achieved"
          + (f", MFU {100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops else ""))
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    loss_t = bench_loss(device, 900)
    print(f"loss alone (batch 900 × 128, forward+backward): {1e3 * loss_t:.1f} ms "
          f"({100 * loss_t / step:.1f}% of the step at batch {batch})")


if __name__ == "__main__":
    main()
