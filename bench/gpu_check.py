# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""One prepared GPU check (issue 17): every figure the project needs from a brief GPU loan, in one run.

No downloads: ViT-S/16 and /8 are built from config (random init), images are synthetic (random
tensors for the model, JPEGs generated on the fly for the input pipeline). Sections, in order:

- ``cuda_tests``: the test suite's CUDA-only tests (``pytest -k cuda`` on the files that have them);
- ``flops``: forward FLOPs per image (FlopCounterMode, eager attention; plus the textbook formula);
- ``train_*``: images/s, TFLOP/s, MFU and peak memory of a training step at batch 900: a plain
  PyTorch loop written here (forward, loss, backward, clip 3, AdamW) and HViTTrainer's own step
  (same model, loss, optimiser settings, data already on the device), bf16 and fp16 with loss scaling
  (overflow-skipped steps counted), patch 16 and 8 (8 retried with gradient checkpointing on OOM),
  torch.compile on/off. FLOPs per trained image = 3 × forward FLOPs (backward ≈ 2 × forward);
- ``profile_p16_bf16``: where the bf16 patch-16 step's time goes (torch.profiler: kernel time by kind,
  the largest kernels, and the fraction of the step the device is busy);
- ``encode``: eval forward (inference mode, bf16) images/s on pre-transformed tensors;
- ``retrieval_sop``: Recall@K + MAP@R of 60,502 × 128 points in the ball on the device;
- ``delta``: δ-hyperbolicity, 100 draws of 2,000 points, on the device;
- ``recipe``: the CUB recipe end to end, ``hvit train --config configs/cub-vit-hyp.yaml`` in a
  subprocess (batch 900 = 100 × 9, 50 steps, bf16, evaluation before and after) on a synthetic
  CUB-200-2011 in the real layout and counts on local disk, random-init ViT-S/16
  (``--backbone scratch:vit-s16``): total wall time against the 3-minute target, time per phase,
  images/s (``--recipe-args`` appends training flags);
- ``input_pipeline``: decode + train transform images/s per worker and with all cores, from
  full-size JPEGs and from the reduced cache (JPEG q95 and raw uint8), and the batched augmentation;
- ``train_*_compiled``: the bf16 patch-16 steps again with ``torch.compile`` (last: slowest to start).

Each section is guarded (a failure records its error and the others still run) and timed against a
global budget (sections that would not fit are skipped and listed). The JSON is rewritten after each
section to ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``bench/gpu_check.json``).

    bash bench/gpu_check.sh                       # on the GPU machine (≤ 8 min)
    bash bench/gpu_check.sh --only recipe         # the CUB recipe alone (≈ 1–2 min)
    python bench/gpu_check.py --dry-run           # CPU, tiny model and sizes (≈ 2 min on 2 quiet cores)
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from train_step import forward_flops_per_image, sync, vit_forward_flops  # noqa: E402

from modeling_hvit import HViTConfig, HViTModel  # noqa: E402
from modeling_hvit.losses import PairwiseCrossEntropyLoss  # noqa: E402

T0 = time.perf_counter()

# Sizes of a real run and of the CPU dry run.
REAL = dict(image=224, batch=900, patches=(16, 8), hidden=384, layers=12, heads=6, mlp=1536, steps=10, warmup=3,
            fp16_steps=30, encode_batch=1024, encode_steps=10, retrieval_n=60_502, delta_n=2000, delta_draws=100,
            delta_points=20_000, n_jpeg=4096, jpeg_side=(400, 800), per_worker_images=256, loader_batch=64,
            cache_side=256, aug_batch=900, compile_backend="inductor", force_checkpointing_p8=False,
            recipe_classes=100, recipe_train_images=5864, recipe_test_images=5924, recipe_jpeg_width=500,
            recipe_image=224, recipe_backbone="scratch:vit-s16", recipe_steps=50, profile_steps=3)
DRY = dict(image=32, batch=16, patches=(16, 8), hidden=32, layers=2, heads=2, mlp=64, steps=2, warmup=1,
           fp16_steps=4, encode_batch=16, encode_steps=2, retrieval_n=1500, delta_n=100, delta_draws=3,
           delta_points=400, n_jpeg=48, jpeg_side=(64, 128), per_worker_images=16, loader_batch=8,
           cache_side=40, aug_batch=16, compile_backend="eager", force_checkpointing_p8=True,
           recipe_classes=4, recipe_train_images=48, recipe_test_images=48, recipe_jpeg_width=64,
           recipe_image=32, recipe_backbone="scratch:tiny", recipe_steps=3, profile_steps=1)


class SectionTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (SIGALRM; no-op where unavailable)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def handler(signum, frame):
        raise SectionTimeout(f"section ran past its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Check:
    """Runs the sections under the budget and keeps the JSON up to date."""

    def __init__(self, args):
        self.args = args
        self.sizes = DRY if args.dry_run else REAL
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.results: dict = {"meta": self.meta(), "sections": {}, "skipped": [], "summary": {}}
        self.out = Path(args.out)
        self.deadline = T0 + args.budget_s
        self.oom_patches: set[int] = set()  # patch sizes that ran out of memory without checkpointing

    def meta(self) -> dict:
        import transformers

        d = self.device
        info = {"dry_run": self.args.dry_run, "device": str(self.args.device), "torch": torch.__version__,
                "transformers": transformers.__version__, "python": platform.python_version(),
                "cpu_count": os.cpu_count(), "peak_tflops": self.args.peak_tflops, "budget_s": self.args.budget_s,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "flop_convention": "trained FLOPs per image = 3 × forward FLOPs; forward counted by "
                                   "torch.utils.flop_counter.FlopCounterMode with eager attention, 2 FLOPs per MAC"}
        if d.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(d)
            info["cuda"] = torch.version.cuda
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(d).total_memory / 2**30, 1)
        return info

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - T0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.out)

    def run(self, name: str, fn, estimate_s: float, limit_s: float | None = None) -> dict | None:
        left = self.deadline - time.perf_counter()
        if left < estimate_s:
            log(f"SKIP {name}: needs ~{estimate_s:.0f} s, {left:.0f} s left in the budget")
            self.results["skipped"].append(name)
            self.results["sections"][name] = {"status": "skipped", "reason": f"budget: ~{estimate_s:.0f} s needed, {left:.0f} s left"}
            self.write()
            return None
        log(f"BEGIN {name}")
        start = time.perf_counter()
        try:
            with time_limit(min(left - 5, limit_s or left)):
                out = fn()
            out = {"status": "ok", **(out or {})}
        except Exception as err:  # noqa: BLE001 - every failure is recorded, the next section runs
            traceback.print_exc()
            out = {"status": "error", "error": f"{type(err).__name__}: {err}"[:1000]}
        out["seconds"] = round(time.perf_counter() - start, 2)
        self.results["sections"][name] = out
        self.write()
        shown = {k: v for k, v in out.items() if not isinstance(v, (dict, list))}
        log(f"END {name}: {json.dumps(shown, default=str)[:600]}")
        free_memory(self.device)
        return out


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def backbone_config(sz: dict, patch: int) -> dict:
    return {"model_type": "vit", "hidden_size": sz["hidden"], "num_hidden_layers": sz["layers"],
            "num_attention_heads": sz["heads"], "intermediate_size": sz["mlp"], "patch_size": patch,
            "image_size": sz["image"]}


def build_model(sz: dict, patch: int, device: torch.device) -> HViTModel:
    torch.manual_seed(0)
    return HViTModel(HViTConfig(backbone_config=backbone_config(sz, patch), embedding_dim=128)).to(device).train()


def batch_data(sz: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sz["batch"], 3, sz["image"], sz["image"], generator=g).to(device)
    labels = torch.randperm(sz["batch"] // 2, generator=g).repeat_interleave(2).to(device)  # m = 2
    return x, labels


def loss_for(model: HViTModel) -> PairwiseCrossEntropyLoss:
    cfg = model.config  # as HViTTrainer builds it (trainer.py)
    return PairwiseCrossEntropyLoss(cfg.geometry, None, cfg.curvature, reduction="sum")


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def rates(batch: int, seconds_per_step: float, fwd_flops: int, peak_tflops: float | None) -> dict:
    ips = batch / seconds_per_step
    tflops = ips * 3 * fwd_flops / 1e12
    out = {"step_s": _sig(seconds_per_step), "images_per_s": _sig(ips), "tflops": _sig(tflops)}
    if peak_tflops:
        out["mfu"] = _sig(tflops / peak_tflops)
    return out


def plain_loop(model: HViTModel, device: torch.device, sz: dict, precision: str, steps: int, warmup: int,
               compile_backend: str | None = None, profile_steps: int = 0) -> dict:
    """The reference's structure: forward, loss, backward, clip 3, AdamW step; nothing else. With
    ``profile_steps``, that many more steps run under torch.profiler (`kernel_breakdown`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=3e-5, weight_decay=0.01, fused=fused)
    loss_fn = loss_for(model)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    fwd = torch.compile(model, backend=compile_backend) if compile_backend else model
    x, labels = batch_data(sz, device)
    scales = []
    init_scale = scaler.get_scale() if scaler is not None else None

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(fwd(pixel_values=x).embeddings.float(), labels).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            scaler.step(opt)
            scaler.update()
            scale = getattr(scaler, "_scale", None)
            scales.append(scale.detach().clone() if isinstance(scale, torch.Tensor) else torch.tensor(scaler.get_scale()))
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    sync(device)
    t = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        step()
    sync(device)
    t = time.perf_counter()
    losses = [step() for _ in range(steps)]
    sync(device)
    per_step = (time.perf_counter() - t) / steps
    out = {"first_step_s": round(first, 3), "per_step_s": per_step, "final_loss": float(losses[-1]),
           "optimizer": f"torch.optim.AdamW(fused={fused})"}
    if scaler is not None:
        s = torch.stack([v.float().cpu() for v in scales])
        skipped = (s[1:] < s[:-1]).nonzero().flatten() + 1  # the scale drops exactly when a step is skipped
        first_skip = [0] if float(s[0]) < init_scale else []
        out["skipped_steps"] = first_skip + skipped.tolist()
        out["final_scale"] = float(s[-1])
    if profile_steps:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(profile_steps):
                step()
            sync(device)
        out["profile"] = kernel_breakdown(prof, device, profile_steps, per_step)
    return out


# Kinds of GPU kernels (CPU ops in the dry run), by name; the first pattern that matches wins.
KERNEL_KINDS = (
    ("attention", r"flash|fmha|attention|sdpa"),
    ("matmul", r"gemm|cutlass|xmma|cublas|nvjet|sm\d\d_|\b(aten::)?(mm|addmm|bmm|matmul|linear)\b|convolution|conv2d"),
    ("layer_norm", r"layer_?norm"),
    ("softmax", r"softmax"),
    ("optimizer / clip", r"adam|multi_tensor|foreach"),
    ("reduction", r"reduce|\bnorm\b|\bsum\b|\bmean\b"),
    ("copy / layout", r"copy|\bcat\b|transpose|contiguous|index|gather|scatter|permute"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|\badd|\bmul|\bdiv|fill|where|clamp|exp|log|tanh|sqrt"),
)


def kernel_kind(name: str) -> str:
    """The kind of a kernel (or CPU op) by its name: the first of `KERNEL_KINDS` that matches, else 'other'."""
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def kernel_breakdown(prof, device: torch.device, steps: int, step_s: float, top: int = 12) -> dict:
    """Where a training step's time goes: per kind of kernel (on CPU: of op) and the largest ones, in
    ms per step and as a share of all kernel time; ``busy_fraction`` = kernel time ÷ the step's
    unprofiled wall time (well under 1 on a GPU: the device waits for the host)."""
    cuda = device.type == "cuda"
    events = prof.key_averages()

    def device_us(ev) -> float:
        return getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0) or 0

    if cuda:
        what = "GPU kernels"
        picked = [(ev.key, device_us(ev)) for ev in events if "cuda" in str(getattr(ev, "device_type", "")).lower()]
        if not any(us > 0 for _, us in picked):  # kernels not listed apart: the ops' own device time
            what, picked = "CPU ops' device time", [(ev.key, device_us(ev)) for ev in events]
    else:
        what, picked = "CPU aten ops (self time)", [(ev.key, ev.self_cpu_time_total) for ev in events
                                                    if ev.key.startswith("aten::")]
    rows: dict[str, float] = {}
    for key, us in picked:
        if us > 0:
            rows[key] = rows.get(key, 0.0) + us / 1e3 / steps
    total = sum(rows.values())
    if total == 0:
        raise RuntimeError(f"the profiler recorded no time ({what})")
    kinds: dict[str, float] = {}
    named = []
    for name, ms in sorted(rows.items(), key=lambda kv: -kv[1]):
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms
        named.append({"name": name[:100], "kind": kind, "ms_per_step": _sig(ms), "share": _sig(ms / total, 3)})
    return {"what": what, "steps_profiled": steps,
            "kernel_ms_per_step": _sig(total), "step_ms_unprofiled": _sig(step_s * 1e3),
            "busy_fraction": _sig(total / (step_s * 1e3), 3),
            "share_by_kind": {k: _sig(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": named[:top]}


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"labels": self.labels[i]}


def trainer_loop(model: HViTModel, device: torch.device, sz: dict, precision: str, steps: int, warmup: int,
                 compile_: bool = False) -> dict:
    """HViTTrainer.train() for warmup + steps optimiser steps on a fixed device batch (the collator
    returns it), timed between the ends of step `warmup` and step `warmup + steps`."""
    from transformers import TrainerCallback

    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments

    x, fixed_labels = batch_data(sz, device)
    n_classes = sz["batch"] * (warmup + steps + 1) // 2  # one sampler epoch covers every step
    labels = [i // 2 for i in range(2 * n_classes)]

    def collate(rows):  # the plain loop's device batch: no host-device copy (and no sync) in either loop
        return {"pixel_values": x, "labels": fixed_labels}

    marks: dict[int, float] = {}
    skipped: list[int] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            opt = kw.get("optimizer")
            if precision == "fp16" and getattr(opt, "step_was_skipped", False):
                skipped.append(state.global_step)
            if state.global_step in (1, warmup, warmup + steps):
                sync(device)
                marks[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="hvit_gpu_check_") as tmp:
        targs = HViTTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=sz["batch"], max_steps=warmup + steps,
            bf16=precision == "bf16", fp16=precision == "fp16", dataloader_num_workers=0,
            dataloader_pin_memory=False, report_to="none", disable_tqdm=True, logging_steps=10**6,
            save_strategy="no", eval_strategy="no", seed=0, use_cpu=device.type == "cpu", torch_compile=compile_,
            torch_compile_backend=sz["compile_backend"] if compile_ else None)
        trainer = HViTTrainer(model=model, args=targs, train_dataset=_ListDataset(labels), train_labels=labels,
                              data_collator=collate, callbacks=[Timer()])
        sync(device)
        t = time.perf_counter()
        trainer.train()
        sync(device)
        opt = trainer.optimizer
        inner = getattr(opt, "optimizer", opt)
    per_step = (marks[warmup + steps] - marks[warmup]) / steps
    out = {"first_step_s": round(marks[1] - t, 3), "per_step_s": per_step,
           "optimizer": f"{type(inner).__module__}.{type(inner).__name__}"
                        f"(fused={inner.defaults.get('fused')}, foreach={inner.defaults.get('foreach')})",
           "optim_arg": str(targs.optim)}
    if precision == "fp16":
        out["skipped_steps"] = skipped
    return out


def train_section(check: Check, which: int, precision: str, loop: str, compile_: bool = False) -> dict:
    """``which`` indexes the sizes' patches: 0 = patch 16, 1 = patch 8."""
    sz, device = check.sizes, check.device
    patch = sz["patches"][which]
    if precision == "fp16" and loop == "trainer" and device.type != "cuda":
        return {"status_detail": "fp16 Trainer needs CUDA (dry run: not run)", "not_run": True}
    steps = sz["fp16_steps"] if precision == "fp16" else sz["steps"]
    fwd = check.results["sections"].get("flops", {}).get(f"patch{patch}_forward_flops")
    out: dict = {"patch": patch, "precision": precision, "loop": loop, "compile": compile_, "batch": sz["batch"],
                 "steps_timed": steps}
    # The dry run forces gradient checkpointing on the second patch size, so that path is exercised;
    # after one OOM without it at this patch size, later sections go straight to checkpointing.
    forced = (which == 1 and sz["force_checkpointing_p8"]) or patch in check.oom_patches
    for checkpointing in ((True,) if forced else (False, True)):
        free_memory(device)
        model = build_model(sz, patch, device)
        if fwd is None:
            fwd = forward_flops_per_image(model, sz["image"])
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.2x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        active = [getattr(type(model), a, None) for a in ("is_activation_checkpointing", "is_gradient_checkpointing")]
        out["gradient_checkpointing"] = bool(next((a.fget(model) for a in active if isinstance(a, property)), checkpointing))
        out["attn_implementation"] = model.backbone.config._attn_implementation
        try:
            if loop == "plain":
                res = plain_loop(model, device, sz, precision, steps, sz["warmup"],
                                 sz["compile_backend"] if compile_ else None)
            else:
                res = trainer_loop(model, device, sz, precision, steps, sz["warmup"], compile_)
        except torch.cuda.OutOfMemoryError as err:
            del model
            out["oom_without_checkpointing"] = str(err).splitlines()[0][:200]
            check.oom_patches.add(patch)
            if checkpointing:
                raise
            log(f"  OOM at patch {patch} without gradient checkpointing: retrying with it")
            continue
        out.update(res)
        out.update(rates(sz["batch"], res["per_step_s"], fwd, check.args.peak_tflops))
        out["peak_memory_gib"] = peak_gib(device)
        del model
        return out
    raise AssertionError("unreachable")


def profile_section(check: Check) -> dict:
    """ViT-S/16 bf16, plain loop: a few timed steps, then profiled ones (`kernel_breakdown`): which
    kernels set the step time, to act on the images/s target."""
    sz, device = check.sizes, check.device
    model = build_model(sz, sz["patches"][0], device)
    res = plain_loop(model, device, sz, "bf16", sz["steps"], sz["warmup"], profile_steps=sz["profile_steps"])
    return {"patch": sz["patches"][0], "precision": "bf16", "batch": sz["batch"], **res["profile"]}


def flops_section(check: Check) -> dict:
    sz, out = check.sizes, {}
    for patch in sz["patches"]:
        model = build_model(sz, patch, check.device)
        counted = forward_flops_per_image(model, sz["image"])
        formula = vit_forward_flops(sz["hidden"], sz["layers"], sz["mlp"], patch, sz["image"])
        out[f"patch{patch}_forward_flops"] = counted
        out[f"patch{patch}_forward_gflops"] = round(counted / 1e9, 4)
        out[f"patch{patch}_trained_gflops_per_image"] = round(3 * counted / 1e9, 4)
        out[f"patch{patch}_formula_over_counted"] = round(formula / counted, 4)
    return out


def encode_section(check: Check) -> dict:
    sz, device = check.sizes, check.device
    model = build_model(sz, sz["patches"][0], device).eval()
    x = torch.randn(sz["encode_batch"], 3, sz["image"], sz["image"], device=device)
    dtype = torch.bfloat16

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            return model(pixel_values=x).embeddings

    run()
    sync(device)
    t = time.perf_counter()
    for _ in range(sz["encode_steps"]):
        run()
    sync(device)
    s = (time.perf_counter() - t) / sz["encode_steps"]
    return {"what": "HViTModel forward in eval (inference_mode, bf16 autocast) on pre-transformed tensors; "
                    "HViTModel.encode(pixel_values) is the backbone part of it",
            "patch": sz["patches"][0], "batch": sz["encode_batch"], "images_per_s": round(sz["encode_batch"] / s, 1),
            "peak_memory_gib": peak_gib(device)}


def retrieval_section(check: Check) -> dict:
    from retrieval import make_data

    from modeling_hvit.metrics import retrieval_metrics

    x, labels = make_data(check.sizes["retrieval_n"])
    x = x.to(check.device)
    sync(check.device)
    t = time.perf_counter()
    m = retrieval_metrics(x, labels, "poincare", 0.1, (1, 10, 100, 1000), device=check.device)
    sync(check.device)
    return {"n": len(labels), "dim": int(x.shape[1]), "seconds_search_and_metrics": round(time.perf_counter() - t, 3),
            "metrics": {k: round(v, 4) for k, v in m.items()}, "peak_memory_gib": peak_gib(check.device)}


def delta_section(check: Check) -> dict:
    from modeling_hvit.delta import estimate_delta

    sz = check.sizes
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 384, generator=g) * 3
    feats = centres[torch.randint(0, 20, (sz["delta_points"],), generator=g)] + torch.randn(sz["delta_points"], 384, generator=g)
    feats = feats.to(check.device)
    sync(check.device)
    t = time.perf_counter()
    est = estimate_delta(feats, n=sz["delta_n"], draws=sz["delta_draws"], device=check.device)
    sync(check.device)
    return {"n": sz["delta_n"], "draws": sz["delta_draws"], "seconds": round(time.perf_counter() - t, 3),
            "delta_rel_mean": round(est.delta_rel_mean, 5), "delta_rel_std": round(est.delta_rel_std, 5),
            "peak_memory_gib": peak_gib(check.device)}


def cuda_tests_section(check: Check) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if re.search(r"\bcuda\b", p.read_text()) and p.name != "test_gpu_check.py")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-k", "cuda",
               f"--junitxml={xml}", *files]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=check.args.tests_timeout_s,
                              env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        tests = {}
        if xml.exists():
            for case in ET.parse(xml).iter("testcase"):
                name = f"{case.get('classname')}::{case.get('name')}"
                outcome = "passed"
                for tag in ("failure", "error", "skipped"):
                    node = case.find(tag)
                    if node is not None:
                        outcome = {"failure": "failed"}.get(tag, tag)
                        if tag != "skipped":
                            tests[name + " (message)"] = (node.get("message") or "")[:300]
                        break
                tests[name] = outcome
    counts = {k: sum(v == k for v in tests.values()) for k in ("passed", "failed", "error", "skipped")}
    return {"files": files, "returncode": proc.returncode, **counts, "tests": tests,
            "tail": proc.stdout[-1500:] + proc.stderr[-500:]}


# ------------------------------------------------------------------------------------------------------
# input pipeline


def _synth_jpeg(args) -> bytes:
    """A JPEG of random size (side in [lo, hi]) with photo-like statistics (:func:`_photo_jpeg`)."""
    seed, lo, hi = args
    rng = np.random.default_rng(seed)
    w = int(rng.integers(lo, hi + 1))
    return _photo_jpeg(rng, w, int(np.clip(w * rng.uniform(0.6, 1.4), lo * 0.6, hi)))


def _photo_jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A w × h JPEG with photo-like statistics: smooth colour fields + edges + fine noise, q90."""
    from PIL import Image

    coarse = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    im = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    im = im + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _to_cache(args) -> dict:
    from modeling_hvit.data.cache import encode_cached, reduce_image

    data, side, fmt = args
    return encode_cached(reduce_image(data, side), fmt)


def _reduce_rate(originals: list, side: int, draft: bool, n: int) -> float:
    from modeling_hvit.data.cache import reduce_image

    t = time.perf_counter()
    for i in range(n):
        reduce_image(originals[i % len(originals)], side, draft=draft)
    return n / (time.perf_counter() - t)


class _PipelineDataset(torch.utils.data.Dataset):
    """Records → decode (+ train transform, or uint8 only for the batched path)."""

    def __init__(self, records: list, fmt: str, transform):
        self.records, self.fmt, self.transform = records, fmt, transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from PIL import Image

        from modeling_hvit.data.cache import decode_cached

        rec = self.records[i]
        im = Image.open(io.BytesIO(rec)) if self.fmt == "original" else decode_cached(rec)
        if self.transform is None:
            return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8))
        return self.transform(im)


def _collate_uint8(items):
    from modeling_hvit.data.batched_transforms import pad_batch

    return pad_batch(items)


def _per_worker_rate(ds: _PipelineDataset, n: int) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds[0]
        t = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        return n / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def _loader_rate(ds, workers: int, batch: int, collate=None) -> dict:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None, shuffle=True, collate_fn=collate,
                                         drop_last=True)
    t = time.perf_counter()
    for _ in loader:  # epoch 1: includes starting the workers
        pass
    first = time.perf_counter() - t
    t = time.perf_counter()
    n = 0
    for _ in range(2):  # steady state: persistent workers, two more epochs
        for b in loader:
            n += len(b[0]) if isinstance(b, (tuple, list)) else len(b)
    steady = time.perf_counter() - t
    del loader
    return {"images_per_s": round(n / steady, 1), "first_epoch_s": round(first, 2)}


def pipeline_section(check: Check) -> dict:
    from modeling_hvit.data.transforms import EvalTransform, TrainTransform

    sz = check.sizes
    workers = cpu_workers(check.args)
    size = sz["image"]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    t = time.perf_counter()
    jobs = [(i, *sz["jpeg_side"]) for i in range(sz["n_jpeg"])]
    with (ctx or mp).Pool(min(workers, 16)) as pool:
        originals = pool.map(_synth_jpeg, jobs, chunksize=8)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        caches = {fmt: pool.map(_to_cache, [(b, sz["cache_side"], fmt) for b in originals], chunksize=8)
                  for fmt in ("jpeg", "raw")}
        cache_s = time.perf_counter() - t
    from PIL import Image

    dims = np.array([Image.open(io.BytesIO(b)).size for b in originals])
    out: dict = {"workers": workers, "images": len(originals), "image_size": size,
                 "original_mean_wh": dims.mean(0).round(1).tolist(),
                 "original_mean_kib": round(np.mean([len(b) for b in originals]) / 1024, 1),
                 "cache_min_side": sz["cache_side"],
                 "cache_jpeg_mean_kib": round(np.mean([len(r) for r in caches["jpeg"]]) / 1024, 1),
                 "cache_raw_mean_kib": round(np.mean([len(r) for r in caches["raw"]]) / 1024, 1),
                 "generate_s": round(gen_s, 2), "cache_build_s_both_formats": round(cache_s, 2)}
    train = TrainTransform(size, seed=0)
    sources = {"original": originals, "jpeg": caches["jpeg"], "raw": caches["raw"]}
    n = sz["per_worker_images"]
    per_worker, all_cores = {}, {}
    for name, recs in sources.items():
        per_worker[name] = round(_per_worker_rate(_PipelineDataset(recs, name, train), n), 1)
    per_worker["original_eval_transform"] = round(_per_worker_rate(
        _PipelineDataset(originals, "original", EvalTransform(size)), n), 1)
    per_worker["jpeg_decode_only_uint8"] = round(_per_worker_rate(_PipelineDataset(caches["jpeg"], "jpeg", None), n), 1)
    for draft in (True, False):  # building the cache: JPEG DCT-domain downscaling vs full decode
        per_worker[f"cache_build_draft_{draft}"] = round(_reduce_rate(originals, sz["cache_side"], draft, n), 1)
    out["per_worker_images_per_s"] = per_worker
    out["cache_speedup_per_worker"] = {k: round(per_worker[k] / per_worker["original"], 2) for k in ("jpeg", "raw")}
    if check.deadline - time.perf_counter() > 30 or check.args.dry_run:
        for name, recs in sources.items():
            all_cores[name] = _loader_rate(_PipelineDataset(recs, name, train), workers, sz["loader_batch"])
        all_cores["jpeg_decode_only_uint8_padded"] = _loader_rate(
            _PipelineDataset(caches["jpeg"], "jpeg", None), workers, sz["loader_batch"], _collate_uint8)
        out["all_cores"] = all_cores
    out.update(batched_augmentation(check, caches["jpeg"]))
    return out


def batched_augmentation(check: Check, records: list) -> dict:
    """The batched augmentation (crop boxes on CPU, crop + resize + flip + normalise on the device) on
    a padded uint8 batch of cached images: images/s, transfer included."""
    from modeling_hvit.data.batched_transforms import BatchedTrainTransform, pad_batch
    from modeling_hvit.data.cache import decode_cached

    sz, device = check.sizes, check.device
    n = sz["aug_batch"]
    ims = [np.asarray(decode_cached(records[i % len(records)])) for i in range(n)]
    images, sizes = pad_batch(ims)
    if device.type == "cuda":
        images = images.pin_memory()
    aug = BatchedTrainTransform(sz["image"], seed=0)
    aug(images.to(device, non_blocking=True), sizes)
    sync(device)
    reps = 5
    t = time.perf_counter()
    for _ in range(reps):
        y = aug(images.to(device, non_blocking=True), sizes)
    sync(device)
    s = (time.perf_counter() - t) / reps
    return {"batched_aug": {"device": str(device), "batch": n, "padded_hw": list(images.shape[2:]),
                            "images_per_s": round(n / s, 1), "output_shape": list(y.shape)}}


# ------------------------------------------------------------------------------------------------------
# the CUB recipe end to end: `hvit train --config configs/cub-vit-hyp.yaml` on a synthetic CUB-200-2011

RECIPE_CONFIG = ROOT / "configs" / "cub-vit-hyp.yaml"
RECIPE_TARGET_S = 180.0  # issue 17: the CUB recipe (50 steps + both evaluations) in ≤ 3 minutes of wall time


def cpu_workers(args) -> int:
    """DataLoader workers sized to the machine: ``--workers``, else every CPU this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return args.workers or cpus


def _class_sizes(n_images: int, n_classes: int) -> list[int]:
    """``n_images`` spread over ``n_classes`` as evenly as possible (CUB: 58–60 images per class)."""
    base, extra = divmod(n_images, n_classes)
    return [base + (i < extra) for i in range(n_classes)]


def _write_photo(args) -> tuple[int, int, int]:
    """Write one synthetic photo, ``w`` wide and 0.6–0.9 × ``w`` high (mean ≈ 500 × 375 for CUB)."""
    path, seed, w = args
    rng = np.random.default_rng(seed)
    h = int(w * rng.uniform(0.6, 0.9))
    data = _photo_jpeg(rng, w, h)
    Path(path).write_bytes(data)
    return w, h, len(data)


def write_synthetic_cub(root: Path, sz: dict, workers: int) -> dict:
    """The CUB-200-2011 layout the ``cub`` builder reads (classes.txt, images.txt,
    image_class_labels.txt, train_test_split.txt, images/<class>/<image>.jpg) with the real split's
    class and image counts (classes 1–C train, C+1–2C test) and synthetic JPEGs."""
    counts = (_class_sizes(sz["recipe_train_images"], sz["recipe_classes"])
              + _class_sizes(sz["recipe_test_images"], sz["recipe_classes"]))
    classes, images, labels, split, jobs = [], [], [], [], []
    for cid, n in enumerate(counts, start=1):
        name = f"{cid:03d}.Synthetic_Bird_{cid}"
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        classes.append(f"{cid} {name}")
        for k in range(n):
            iid = len(images) + 1
            rel = f"{name}/Synthetic_Bird_{cid}_{k:04d}.jpg"
            images.append(f"{iid} {rel}")
            labels.append(f"{iid} {cid}")
            split.append(f"{iid} {k % 2}")  # the per-image split the protocol ignores (it splits by class)
            jobs.append((str(root / "images" / rel), iid, sz["recipe_jpeg_width"]))
    for fname, lines in (("classes.txt", classes), ("images.txt", images), ("image_class_labels.txt", labels),
                         ("train_test_split.txt", split)):
        (root / fname).write_text("\n".join(lines) + "\n")
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp
    with ctx.Pool(max(1, min(workers, 16))) as pool:
        written = np.array(pool.map(_write_photo, jobs, chunksize=16))
    n_train = sum(counts[:sz["recipe_classes"]])
    return {"train_classes": sz["recipe_classes"], "test_classes": sz["recipe_classes"], "train_images": n_train,
            "test_images": len(jobs) - n_train, "mean_wh": written[:, :2].mean(0).round(1).tolist(),
            "mean_kib": round(float(written[:, 2].mean()) / 1024, 1)}


def recipe_argv(check: Check, recipe: dict, data_dir: Path, output_dir: Path, workers: int) -> tuple[list[str], dict, int]:
    """`hvit train` arguments: the recipe file plus the overrides this check needs (returned too), and
    the global batch."""
    sz = check.sizes
    # --max_steps: the recipe's 50 epochs are 50 steps only while a loader epoch is one class pass; the
    # Trainer's epochs span several passes with workers (`passes_for_workers`), see `recipe_figures`.
    overrides = {"data_dir": str(data_dir), "backbone": sz["recipe_backbone"], "output_dir": str(output_dir),
                 "dataloader_num_workers": workers, "report_to": "none", "max_steps": sz["recipe_steps"]}
    batch = sz["recipe_classes"] * recipe["samples_per_class"]  # one class pass per step, as CUB's 100 × 9
    wanted = {"image_size": sz["recipe_image"], "global_batch_size": batch}  # where the dry run differs
    overrides.update({k: v for k, v in wanted.items() if recipe.get(k) != v})
    if check.device.type == "cpu":
        overrides["use_cpu"] = True
    argv = ["--config", str(RECIPE_CONFIG)]
    for k, v in overrides.items():
        argv += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    # ↓ Flags of work in progress go here, e.g. --recipe-args "--cache_images true --augment_on_device true"
    # (training) or an evaluation-device option: appended as given, recorded in the JSON.
    argv += shlex.split(check.args.recipe_args or "")
    return argv, overrides, batch


def recipe_child(out: str, argv: list[str]) -> int:
    """In the recipe's own process: ``hvit train argv`` with pass-through wall-clock timers around the
    dataset build, each ``evaluate``, ``train`` (plus a callback timing each optimiser step's end) and
    ``save_model``, written to ``out`` as JSON; returns the command's exit status. The parent measures
    the whole command."""
    import functools

    started = time.time()
    from transformers import TrainerCallback

    import modeling_hvit.training  # noqa: F401 - imported here (`hvit train` imports it): counted as start-up
    from modeling_hvit import cli
    from modeling_hvit.data.arguments import DataArguments
    from modeling_hvit.trainer import HViTTrainer

    rec: dict = {"imported_at": time.time(), "child_started_at": started, "spans": [], "step_ends": []}
    cuda = torch.cuda.is_available() and "--use_cpu" not in argv

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            rec["step_ends"].append(time.time())

    def timed(cls, name: str, label) -> None:
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            if name == "train":
                self.add_callback(StepEnds())
            start = time.time()
            try:
                return original(self, *args, **kwargs)
            finally:
                span = {"what": label(kwargs), "start": start, "end": time.time()}
                if name == "train":
                    span["global_step"] = self.state.global_step
                rec["spans"].append(span)

        setattr(cls, name, wrapper)

    timed(DataArguments, "build", lambda kw: "dataset_build")
    timed(HViTTrainer, "evaluate", lambda kw: f"evaluate:{kw.get('metric_key_prefix', 'eval')}")
    timed(HViTTrainer, "train", lambda kw: "train")
    timed(HViTTrainer, "save_model", lambda kw: "save_model")
    try:
        rec["returncode"] = cli.run("train", argv)
    finally:
        rec["finished_at"] = time.time()
        Path(out).write_text(json.dumps(rec))
    return rec["returncode"]


def recipe_section(check: Check) -> dict:
    """The CUB recipe as a user runs it (`hvit train --config configs/cub-vit-hyp.yaml`: batch 900 =
    100 classes × 9, 50 steps, bf16, LR 3e-5, frozen patch embedding, evaluation before and after on the
    test split) in a subprocess, on a synthetic CUB-200-2011 written to local disk in the real layout,
    with a random-init ViT-S/16 (`--backbone scratch:vit-s16`) instead of the Hub weights. Total wall
    time, time per phase, images/s."""
    import yaml  # here: a machine without it loses this section only

    sz = check.sizes
    workers = cpu_workers(check.args)
    with tempfile.TemporaryDirectory(prefix="hvit_gpu_check_cub_") as tmp:
        data_dir, output_dir, timers = Path(tmp, "CUB_200_2011"), Path(tmp, "run"), Path(tmp, "timers.json")
        t = time.perf_counter()
        data = write_synthetic_cub(data_dir, sz, workers)
        data["generate_s"] = round(time.perf_counter() - t, 2)
        log(f"  synthetic CUB: {json.dumps(data)}")
        recipe = yaml.safe_load(RECIPE_CONFIG.read_text())
        argv, overrides, batch = recipe_argv(check, recipe, data_dir, output_dir, workers)
        cmd = [sys.executable, "-u", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import gpu_check; "
               "sys.exit(gpu_check.recipe_child(sys.argv[2], sys.argv[3:]))", str(ROOT / "bench"), str(timers), *argv]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        launched = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group: a timeout ends its workers too
        tail: list[str] = []
        try:
            for line in proc.stdout:
                print(f"  recipe| {line.rstrip()}", flush=True)
                tail = (tail + [line.rstrip()])[-40:]
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        total = time.time() - launched
        if rc != 0:
            raise RuntimeError(f"hvit train exited with {rc}: " + " | ".join(tail[-8:]))
        rec = json.loads(timers.read_text())
        metrics = json.loads((output_dir / "metrics.json").read_text())
    return {"what": "hvit train --config configs/cub-vit-hyp.yaml on a synthetic CUB-200-2011 (real layout and "
                    "counts, local disk), random-init backbone; wall times of the command and its phases",
            "command": "hvit train " + " ".join(shlex.quote(a) for a in argv), "overrides": overrides,
            "workers": workers, "dataset": data,
            **recipe_figures(rec, metrics, total, launched, batch, sz["recipe_steps"], data["test_images"],
                             recipe["num_train_epochs"])}


def recipe_figures(rec: dict, metrics: dict, total: float, launched: float, batch: int, steps_requested: int,
                   eval_images: int, recipe_epochs: float) -> dict:
    """Phases (s), images/s and the target check from the child's timers and the run's metrics.json."""
    spans = {s["what"]: s for s in rec["spans"]}
    dur = {k: spans[k]["end"] - spans[k]["start"] for k in spans}
    phases = {"startup_and_imports": rec["imported_at"] - launched, "dataset_build": dur["dataset_build"],
              "model_and_trainer_setup": spans["evaluate:before"]["start"] - spans["dataset_build"]["end"],
              "evaluation_before": dur["evaluate:before"], "train": dur["train"],
              "evaluation_after": dur["evaluate:eval"], "save_model": dur.get("save_model", 0.0),
              "process_exit": launched + total - rec["finished_at"]}  # interpreter and worker shutdown
    phases["other"] = total - sum(phases.values())  # argument parsing, metrics.json, checksums
    train, ends = spans["train"], rec["step_ends"]
    steps = train["global_step"]
    # The Trainer's epoch count after `steps` steps: the recipe's num_train_epochs (50 for CUB) means
    # recipe_epochs × steps / epochs steps (50 while an epoch is one class pass = one CUB step).
    epochs = next((h["epoch"] for h in reversed(metrics.get("log_history", [])) if "epoch" in h), None)
    out = {"total_s": round(total, 2), "target_s": RECIPE_TARGET_S, "meets_target": total <= RECIPE_TARGET_S,
           "phases_s": {k: round(v, 3) for k, v in phases.items()}, "steps_requested": steps_requested,
           "steps_done": steps, "batch": batch, "step_end_times_recorded": len(ends),
           "train_images_per_s": round(steps * batch / dur["train"], 1),
           "first_step_s": round(ends[0] - train["start"], 2) if ends else None,
           "eval_images": eval_images,
           "eval_images_per_s_before": round(eval_images / dur["evaluate:before"], 1),
           "eval_images_per_s_after": round(eval_images / dur["evaluate:eval"], 1),
           "train_loss": next((h["train_loss"] for h in metrics.get("log_history", []) if "train_loss" in h), None),
           "recall@1_before_after": [metrics["untrained"].get("recall@1"), metrics.get("recall@1")],
           "metrics_wall_seconds": metrics.get("wall_seconds"), "trainer_epochs_at_end": epochs,
           "recipe_num_train_epochs": recipe_epochs,
           "steps_the_recipe_epochs_run": round(recipe_epochs * steps / epochs) if epochs else None}
    if len(ends) > 2:  # after the first step (worker start, allocator, autotuning)
        out["steady_images_per_s"] = round((len(ends) - 1) * batch / (ends[-1] - ends[0]), 1)
    return out


# ------------------------------------------------------------------------------------------------------


def summarise(check: Check) -> None:
    s = check.results["sections"]
    summ = check.results["summary"]

    def ips(name):
        sec = s.get(name, {})
        return sec.get("images_per_s") if sec.get("status") == "ok" else None

    for prec in ("bf16", "fp16"):
        p, t = ips(f"train_p16_{prec}_plain"), ips(f"train_p16_{prec}_trainer")
        if p and t:
            summ[f"trainer_over_plain_{prec}"] = round(t / p, 3)
    p, c = ips("train_p16_bf16_plain"), ips("train_p16_bf16_plain_compiled")
    if p and c:
        summ["compiled_over_eager_plain_bf16"] = round(c / p, 3)
    p, c = ips("train_p16_bf16_trainer"), ips("train_p16_bf16_trainer_compiled")
    if p and c:
        summ["compiled_over_eager_trainer_bf16"] = round(c / p, 3)
    pipe = s.get("input_pipeline", {})
    train = ips("train_p16_bf16_plain")
    if pipe.get("status") == "ok" and train:
        for k, v in pipe.get("all_cores", {}).items():
            summ[f"pipeline_{k}_over_train_rate"] = round(v["images_per_s"] / train, 3)
    for name, sec in s.items():
        if name.startswith("train_") and sec.get("status") == "ok":
            summ[name] = {k: sec.get(k) for k in ("images_per_s", "tflops", "mfu", "peak_memory_gib",
                                                  "gradient_checkpointing", "skipped_steps") if k in sec}
    if pipe.get("status") == "ok":
        summ["pipeline_per_worker_images_per_s"] = pipe.get("per_worker_images_per_s")
        summ["pipeline_all_cores_images_per_s"] = {k: v["images_per_s"] for k, v in pipe.get("all_cores", {}).items()}
        summ["batched_aug_images_per_s"] = pipe.get("batched_aug", {}).get("images_per_s")
    prof = s.get("profile_p16_bf16", {})
    if prof.get("status") == "ok":
        summ["profile_p16_bf16"] = {k: prof.get(k) for k in ("busy_fraction", "kernel_ms_per_step", "share_by_kind")}
    for name in ("encode", "retrieval_sop", "delta"):
        if s.get(name, {}).get("status") == "ok":
            summ[name] = {k: v for k, v in s[name].items() if k not in ("status", "what")}
    recipe = s.get("recipe", {})
    if recipe.get("status") == "ok":
        summ["recipe"] = {k: recipe.get(k) for k in ("total_s", "meets_target", "phases_s", "steps_done",
                                                     "train_images_per_s", "steady_images_per_s",
                                                     "eval_images_per_s_before", "steps_the_recipe_epochs_run")}
    summ["errors"] = {k: v["error"] for k, v in s.items() if v.get("status") == "error"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model and sizes: checks the script itself")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu for --dry-run)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100/H200 SXM dense bf16: 989)")
    p.add_argument("--budget-s", type=float, default=None, help="global time budget (default 450; dry run 480)")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json, else bench/gpu_check.json)")
    p.add_argument("--workers", type=int, default=None, help="input-pipeline and recipe DataLoader workers (default: all cores)")
    p.add_argument("--tests-timeout-s", type=float, default=150)
    p.add_argument("--only", default=None, help="comma-separated section names to run (default: all), "
                   "e.g. --only recipe")
    p.add_argument("--recipe-args", default="", help="extra `hvit train` flags for the recipe section (one "
                   "string, shell-quoted), e.g. --recipe-args '--dataloader_prefetch_factor 4'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a size (JSON value), e.g. --set batch=512 --set 'jpeg_side=[200,400]'")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    args.budget_s = args.budget_s or (480.0 if args.dry_run else 450.0)
    if args.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench"
        args.out = str(base / ("gpu_check_dry.json" if args.dry_run else "gpu_check.json"))
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    check = Check(args)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in check.sizes:
            raise SystemExit(f"--set {item}: unknown size {key!r}; expected one of {sorted(check.sizes)}")
        check.sizes = {**check.sizes, key: json.loads(value) if value[:1] in "[{0123456789-tfn" else value}
    check.results["meta"]["sizes"] = check.sizes
    log(f"hvit gpu_check: {json.dumps(check.results['meta'])}")
    if check.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # (name, fn, estimated seconds on the H200, hard limit) in priority order.
    sections = [
        ("cuda_tests", lambda: cuda_tests_section(check), 20, args.tests_timeout_s + 10),
        ("flops", lambda: flops_section(check), 5, 60),
        ("train_p16_bf16_plain", lambda: train_section(check, 0, "bf16", "plain"), 15, 90),
        ("train_p16_bf16_trainer", lambda: train_section(check, 0, "bf16", "trainer"), 20, 90),
        ("profile_p16_bf16", lambda: profile_section(check), 20, 90),
        ("train_p16_fp16_plain", lambda: train_section(check, 0, "fp16", "plain"), 15, 90),
        ("train_p8_bf16_plain", lambda: train_section(check, 1, "bf16", "plain"), 30, 120),
        ("train_p8_fp16_plain", lambda: train_section(check, 1, "fp16", "plain"), 40, 120),
        ("train_p16_fp16_trainer", lambda: train_section(check, 0, "fp16", "trainer"), 20, 90),
        ("encode", lambda: encode_section(check), 10, 60),
        ("retrieval_sop", lambda: retrieval_section(check), 15, 90),
        ("delta", lambda: delta_section(check), 20, 120),
        ("recipe", lambda: recipe_section(check), 120, 240),
        ("input_pipeline", lambda: pipeline_section(check), 45, 150),
        ("train_p16_bf16_plain_compiled", lambda: train_section(check, 0, "bf16", "plain", compile_=True), 90, 200),
        ("train_p16_bf16_trainer_compiled", lambda: train_section(check, 0, "bf16", "trainer", compile_=True), 90, 200),
    ]
    only = set(args.only.split(",")) if args.only else None
    if only and only - {name for name, *_ in sections}:
        raise SystemExit(f"--only {args.only}: unknown section(s) {sorted(only - {n for n, *_ in sections})}; "
                         f"expected names from: {', '.join(name for name, *_ in sections)}")
    for name, fn, est, limit in sections:
        if only and name not in only:
            continue
        check.run(name, fn, 0 if args.dry_run else est, limit)
    summarise(check)
    check.write()
    log(f"summary: {json.dumps(check.results['summary'], default=str)}")
    if check.results["skipped"]:
        log(f"skipped (budget): {', '.join(check.results['skipped'])}")
    log(f"wrote {check.out}")
    return check.results


if __name__ == "__main__":
    main()
