"""bench/gpu_check.py (issue 17): the FLOP count and device sync it relies on, and its CPU dry run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import train_step  # noqa: E402

from modeling_hvit import HViTConfig, HViTModel  # noqa: E402


def _textbook_vit_flops(d: int, layers: int, mlp: int, patch: int, size: int, emb: int = 128) -> int:
    """Independent oracle, written out term by term: 2 FLOPs per multiply-add."""
    t = (size // patch) ** 2 + 1
    patch_embed = 2 * (t - 1) * (3 * patch * patch) * d
    qkv, proj, fc1, fc2 = 2 * t * d * 3 * d, 2 * t * d * d, 2 * t * d * mlp, 2 * t * mlp * d
    scores, mix = 2 * t * t * d, 2 * t * t * d
    return patch_embed + layers * (qkv + proj + fc1 + fc2 + scores + mix) + 2 * d * emb


@pytest.mark.parametrize("patch,size", [(16, 224), (8, 112)])
def test_forward_flops_match_textbook_count(patch, size):
    """ViT-S/16 is 9.20 GFLOP forward per 224² image (27.6 trained); the old script used 13.8 trained."""
    cfg = {**train_step.VIT_S16, "patch_size": patch, "image_size": size}
    model = HViTModel(HViTConfig(backbone_config=cfg, embedding_dim=128))
    counted = train_step.forward_flops_per_image(model, size, "cpu")
    oracle = _textbook_vit_flops(384, 12, 1536, patch, size)
    assert counted == pytest.approx(oracle, rel=1e-3)
    if patch == 16:
        assert 3 * counted / 1e9 == pytest.approx(27.6, abs=0.1)
    assert model.backbone.config._attn_implementation == "sdpa"  # restored after counting with eager
    assert train_step.vit_forward_flops(384, 12, 1536, patch, size) == oracle


def test_profile_breakdown_accounts_for_the_step():
    """The profiled steps' time is split by kind with shares summing to 1, the largest entries first;
    a training step's time is mostly matrix products, and the kinds name them (CPU: aten ops)."""
    import gpu_check

    sz = {**gpu_check.DRY, "image": 64, "batch": 8, "hidden": 64}
    model = gpu_check.build_model(sz, 16, torch.device("cpu"))
    prof = gpu_check.plain_loop(model, torch.device("cpu"), sz, "fp32", 2, 1, profile_steps=2)["profile"]
    assert prof["steps_profiled"] == 2 and prof["what"].startswith("CPU")
    assert sum(prof["share_by_kind"].values()) == pytest.approx(1, abs=0.01)
    ms = [row["ms_per_step"] for row in prof["top"]]
    assert ms == sorted(ms, reverse=True) and len(ms) == 12
    assert set(prof["share_by_kind"]) <= {kind for kind, _ in gpu_check.KERNEL_KINDS} | {"other"}
    assert prof["share_by_kind"]["matmul"] > 0 and all(row["kind"] == gpu_check.kernel_kind(row["name"])
                                                      for row in prof["top"])
    assert prof["kernel_ms_per_step"] > 0 and prof["step_ms_unprofiled"] > 0  # no bound on their ratio: timings
    assert prof["busy_fraction"] == pytest.approx(prof["kernel_ms_per_step"] / prof["step_ms_unprofiled"], rel=5e-3)


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", "matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>(Params)", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, false, cutlass::bfloat16_t>, "
     "false, false, false, false, true, true, false>(Flash_fwd_params)", "attention"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, "
     "c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, c10::BFloat16*)", "layer_norm"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
     "at::native::GeluType)::{lambda()#2}::operator()() const, at::detail::Array<char*, 2> >(int, T2, T3)", "elementwise"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous "
     "namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)", "softmax"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>>(...)", "optimizer / clip"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
     "at::native::sum_functor<float, float, float>::operator()>, unsigned int, float, 4> >(...)", "reduction"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
     "::{lambda()#3}::operator()() const::{lambda()#10}::operator()() const::{lambda(c10::BFloat16)#1}, ...>", "copy / layout"),
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::add_", "elementwise"), ("aten::native_layer_norm", "layer_norm"),
    ("Memset (Device)", "other"),
])
def test_kernel_kinds_by_name(name, kind):
    """Kernel names as torch.profiler lists them for a bf16 ViT step on a Hopper GPU, and CPU op names."""
    import gpu_check

    assert gpu_check.kernel_kind(name) == kind


def test_sync_waits_for_the_given_cuda_device(monkeypatch):
    """`sync("cuda:1")` must synchronise device 1, not the current device."""
    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(device))
    train_step.sync(torch.device("cuda", 1))
    train_step.sync("cpu")
    assert seen == [torch.device("cuda", 1)]


def test_out_of_memory_retries_with_checkpointing_once_per_patch(monkeypatch, tmp_path):
    """An OOM without activation checkpointing is recorded, the section is rerun with it, and later
    sections at that patch size start with it (fault injected into the timed loop)."""
    import argparse

    import gpu_check

    real, seen = gpu_check.plain_loop, []

    def flaky(model, *args, **kwargs):
        seen.append(any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()))
        if not seen[-1]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(gpu_check, "plain_loop", flaky)
    args = argparse.Namespace(dry_run=True, device="cpu", out=str(tmp_path / "x.json"), budget_s=60, peak_tflops=989.0)
    check = gpu_check.Check(args)
    check.sizes = {**gpu_check.DRY, "steps": 1, "warmup": 1, "fp16_steps": 1}
    first = gpu_check.train_section(check, 0, "bf16", "plain")
    assert seen == [False, True] and first["gradient_checkpointing"] is True
    assert first["oom_without_checkpointing"].startswith("CUDA out of memory") and first["images_per_s"] > 0
    second = gpu_check.train_section(check, 0, "fp16", "plain")
    assert seen == [False, True, True] and second["gradient_checkpointing"] is True


def test_synthetic_cub_is_read_by_the_cub_builder(tmp_path):
    """The recipe section's data: the real `cub` builder reads it with the requested class and image counts
    (CUB-200-2011's own: 100 + 100 classes, 5,864 + 5,924 images, spread 58–60 per class)."""
    import gpu_check

    from modeling_hvit.data import build_dataset

    sizes = gpu_check._class_sizes(5864, 100) + gpu_check._class_sizes(5924, 100)
    assert sum(sizes[:100]) == 5864 and sum(sizes[100:]) == 5924 and min(sizes) == 58 and max(sizes) == 60
    sz = {**gpu_check.DRY, "recipe_classes": 3, "recipe_train_images": 10, "recipe_test_images": 8, "recipe_jpeg_width": 40}
    info = gpu_check.write_synthetic_cub(tmp_path / "CUB_200_2011", sz, workers=1)
    assert (info["train_images"], info["test_images"], info["train_classes"]) == (10, 8, 3)
    dsd = build_dataset("cub", str(tmp_path))  # verifies every image while building
    train, test = dsd["train"], dsd["test"]
    assert (len(train), len(test)) == (10, 8)
    assert sorted(np.bincount(train["label"], minlength=6).tolist()) == [0, 0, 0, 3, 3, 4]  # classes 4-6 are test's
    assert set(train["label"]).isdisjoint(test["label"]) and len(set(test["label"])) == 3
    w, h = train[0]["image"].size
    assert w == 40 and 0.6 * 40 <= h <= 0.9 * 40


def test_only_rejects_an_unknown_section(capsys):
    import gpu_check

    with pytest.raises(SystemExit, match="unknown section.*recipes.*recipe"):
        gpu_check.main(["--dry-run", "--only", "recipes", "--out", "/dev/null"])


@pytest.mark.slow
def test_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    sections = res["sections"]
    expected = {"cuda_tests", "flops", "profile_p16_bf16", "encode", "retrieval_sop", "delta", "recipe", "input_pipeline",
                *(f"train_p{p}_{prec}_plain" for p in (16, 8) for prec in ("bf16", "fp16")),
                "train_p16_bf16_trainer", "train_p16_fp16_trainer", "train_p16_bf16_plain_compiled",
                "train_p16_bf16_trainer_compiled"}
    assert expected <= set(sections), expected - set(sections)
    assert not res["skipped"] and not res["summary"]["errors"], res["summary"]["errors"]
    assert all(s["status"] == "ok" for s in sections.values())
    tests = sections["cuda_tests"]
    assert tests["returncode"] == 0 and tests["skipped"] >= 3 and tests["failed"] == tests["error"] == 0
    for name, sec in sections.items():
        if name.startswith("train_") and not sec.get("not_run"):
            assert sec["images_per_s"] > 0 and sec["tflops"] > 0, name
            assert 0 < sec["mfu"] <= 1, name
            assert math.isfinite(sec["final_loss"]) if "final_loss" in sec else True
            expect_flops = sections["flops"][f"patch{sec['patch']}_forward_flops"]
            assert sec["gradient_checkpointing"] == name.startswith("train_p8"), name  # forced in the dry run
            assert sec["tflops"] == pytest.approx(sec["images_per_s"] * 3 * expect_flops / 1e12, rel=2e-3)
        if "fp16" in name and not sec.get("not_run"):
            assert isinstance(sec["skipped_steps"], list)
    assert sections["flops"]["patch8_formula_over_counted"] == pytest.approx(1.0, abs=1e-3)
    for key in ("trainer_over_plain_bf16", "compiled_over_eager_plain_bf16", "compiled_over_eager_trainer_bf16"):
        assert 0 < res["summary"][key] < math.inf, key
    pipe = sections["input_pipeline"]
    assert all(v > 0 for v in pipe["per_worker_images_per_s"].values())
    assert all(v["images_per_s"] > 0 for v in pipe["all_cores"].values())
    assert pipe["batched_aug"]["images_per_s"] > 0 and pipe["batched_aug"]["output_shape"] == [16, 3, 32, 32]
    assert sum(sections["profile_p16_bf16"]["share_by_kind"].values()) == pytest.approx(1, abs=0.01)
    assert res["summary"]["profile_p16_bf16"]["busy_fraction"] > 0
    assert sections["encode"]["images_per_s"] > 0
    assert 0 < sections["retrieval_sop"]["metrics"]["recall@1"] <= 1
    assert 0 < sections["delta"]["delta_rel_mean"] < 1
    _check_recipe(sections["recipe"], res["summary"]["recipe"])


def _check_recipe(rec: dict, summary: dict) -> None:
    """The CUB recipe section (dry sizes): `hvit train --config configs/cub-vit-hyp.yaml` ran the requested
    steps on the synthetic CUB, with phase times that are positive and add up to at most the command's
    wall time."""
    import gpu_check

    dry = gpu_check.DRY
    assert "--config" in rec["command"] and "cub-vit-hyp.yaml" in rec["command"] and "scratch:tiny" in rec["command"]
    data = rec["dataset"]
    assert (data["train_classes"], data["train_images"], data["test_images"]) == (
        dry["recipe_classes"], dry["recipe_train_images"], dry["recipe_test_images"])
    assert rec["batch"] == 9 * dry["recipe_classes"]  # one class pass per step, m = 9 as the recipe
    assert rec["steps_requested"] == rec["steps_done"] == dry["recipe_steps"] == rec["step_end_times_recorded"]
    phases, total = rec["phases_s"], rec["total_s"]
    named = {k: v for k, v in phases.items() if k != "other"}
    assert set(named) >= {"startup_and_imports", "dataset_build", "model_and_trainer_setup", "evaluation_before",
                          "train", "evaluation_after"}
    assert all(v > 0 for v in named.values()), phases
    assert sum(named.values()) <= total + 0.05 and phases["other"] >= -0.05, phases
    assert total <= rec["seconds"] and rec["metrics_wall_seconds"] < total
    assert 0 < rec["first_step_s"] <= phases["train"] + 0.01

    def rate_of(images: int, phase_s: float) -> tuple[float, float]:  # the phases are rounded to 1 ms
        return images / (phase_s + 0.0005) * 0.999, images / max(phase_s - 0.0005, 1e-9) * 1.001

    low, high = rate_of(rec["steps_done"] * rec["batch"], phases["train"])
    assert low <= rec["train_images_per_s"] <= high
    low, high = rate_of(data["test_images"], phases["evaluation_before"])
    assert low <= rec["eval_images_per_s_before"] <= high
    assert rec["steady_images_per_s"] > 0 and math.isfinite(rec["train_loss"])
    assert all(0 <= r <= 1 for r in rec["recall@1_before_after"])
    assert rec["meets_target"] == (total <= 180)
    assert summary["total_s"] == total and summary["steps_done"] == rec["steps_done"]
