# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The evaluation on the model's device (issue 17, item 3): the k-NN search and the metrics on a given
device against float64 brute force, one search for the metrics and the top-1, the Trainer searching
where its model is, and `hvit eval`'s per-device defaults. CUDA cases skip without a GPU
(``pytest -k cuda`` selects them)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from modeling_hvit.errors import UserError
from modeling_hvit.evaluation import EvalSettings, evaluate_embeddings, resolve_eval_settings
from modeling_hvit.hierarchy_metrics import hierarchy_metrics, radius_metrics
from modeling_hvit.metrics import retrieval_metrics, retrieval_metrics_with_nearest
from modeling_hvit.retrieval import knn, search_counts
from test_fewshot import brute_force_hierarchy
from test_metrics import clustered, oracle_distance, oracle_metrics
from test_retrieval import oracle_knn

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import eval_hierarchy_record as record  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
GEOMETRIES = ("poincare", "sphere", "euclidean")
KS = (1, 2, 4)


def _data(seed: int = 0, c: float = 0.1):
    x, y = clustered(14, np.random.default_rng(seed).integers(2, 7, 14), 8, c, seed)
    return x.astype(np.float32), y


def _encoder_features(x: np.ndarray, seed: int) -> np.ndarray:
    """Other features of the same items (for the encoder's cosine metrics)."""
    rng = np.random.default_rng(seed)
    return (x @ rng.normal(size=(x.shape[1], 12)) + 0.5 * rng.normal(size=(len(x), 12))).astype(np.float32)


def _searches(before: dict[str, int], device: str) -> int:
    return search_counts().get(device, 0) - before.get(device, 0)


# ---------------------------------------------------------------- search + metrics on a device
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_knn_on_device_matches_float64_brute_force(device, geometry):
    c = 0.1
    x, _ = _data(2, c)  # nearest distances ≥ 1.5e-4 apart (relative): no float32 near-ties
    before = search_counts()
    sim, idx = knn(torch.from_numpy(x), k=6, geometry=geometry, curvature=c, device=device, block_size=7,
                   gallery_block_size=13)
    assert idx.device.type == device and _searches(before, device) == 1
    ref_idx, d = oracle_knn(x, x, 6, geometry, c, exclude_self=True)
    np.testing.assert_array_equal(idx.cpu().numpy(), ref_idx)
    ref_d = np.take_along_axis(d, ref_idx, 1)
    np.testing.assert_allclose(sim.cpu().numpy(), 1 - ref_d if geometry == "sphere" else -ref_d, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_metrics_on_device_match_float64_brute_force(device, geometry):
    c = 0.1
    x, y = _data(0, c)  # sorted distances ≥ 1e-5 apart (relative): the same ranking in float32 anywhere
    q, ql, g, gl = x[:25], y[:25], x[25:], y[25:]
    before = search_counts()
    self_got = retrieval_metrics(torch.from_numpy(x), y, geometry, c, KS, device=device, block_size=7,
                                 gallery_block_size=13)
    gallery_got = retrieval_metrics(torch.from_numpy(q), ql, geometry, c, KS, gallery=torch.from_numpy(g),
                                    gallery_labels=gl, device=device, block_size=5)
    assert _searches(before, device) == 2
    for got, want in ((self_got, oracle_metrics(x, y, x, y, geometry, c, KS, True)),
                      (gallery_got, oracle_metrics(q, ql, g, gl, geometry, c, KS, False))):
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_embeddings_on_device_matches_float64_brute_force(device):
    """Head (Poincaré), encoder (cosine), hierarchy and radius metrics with ``device=``: all on the
    device, all equal to the textbook loops."""
    c = 0.1
    x, y = _data(0, c)
    enc = _encoder_features(x, 4)  # head and encoder distances ≥ 8e-6 apart (relative)
    groups = y // 3
    before = search_counts()
    got = evaluate_embeddings(torch.from_numpy(x), torch.from_numpy(enc), y, "poincare", c, KS, groups=groups,
                              device=device, block_size=9)
    assert _searches(before, device) == 3 and _searches(before, "cpu" if device != "cpu" else "cuda") == 0
    want = oracle_metrics(x, y, x, y, "poincare", c, KS, True)
    want |= {f"encoder_{k}": v for k, v in oracle_metrics(enc, y, enc, y, "sphere", c, KS, True).items()}
    d = oracle_distance(x, x, "poincare", c)
    want |= brute_force_hierarchy(d, y, groups, KS)
    np.fill_diagonal(d, np.inf)
    x64 = x.astype(np.float64)
    radius = 2 / math.sqrt(c) * np.arctanh(math.sqrt(c) * np.linalg.norm(x64, axis=1))
    want["radius_correct_correlation"] = stats.pointbiserialr(y[d.argmin(1)] == y, radius).statistic
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@CUDA
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cuda_search_and_metrics_equal_the_cpu(geometry):
    """SOP-like shapes (128-d, many small classes, several query and gallery blocks). float64: the same
    neighbour ids. float32 with TF32 allowed globally (as ``--tf32`` or bench/gpu_check.py set it): the
    search still runs in full float32, so distances equal the CPU's to float32 rounding (TF32 would be off
    by ~1e-3) and only near-ties may swap."""
    x, y = clustered(300, np.random.default_rng(5).integers(2, 13, 300), 128, 0.1, 5)
    x = torch.from_numpy(x.astype(np.float32))
    kw = dict(geometry=geometry, curvature=0.1, block_size=256, gallery_block_size=700)
    _, i_cpu = knn(x, k=20, exact=True, **kw)
    _, i_gpu = knn(x, k=20, exact=True, device="cuda", **kw)
    assert i_gpu.is_cuda
    np.testing.assert_array_equal(i_gpu.cpu().numpy(), i_cpu.numpy())
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        s_gpu, i_gpu = knn(x, k=20, device="cuda", **kw)
        gpu = retrieval_metrics(x, y, ks=(1, 10, 100), device="cuda", **kw)
        assert torch.get_float32_matmul_precision() == "high"  # restored after the search
    finally:
        torch.set_float32_matmul_precision(before)
    s_cpu, i_cpu = knn(x, k=20, **kw)
    np.testing.assert_allclose(s_gpu.cpu().numpy(), s_cpu.numpy(), rtol=1e-4, atol=1e-4)
    assert (i_gpu.cpu() == i_cpu).float().mean() > 0.99
    assert gpu == pytest.approx(retrieval_metrics(x, y, ks=(1, 10, 100), **kw), abs=2e-3)


# ---------------------------------------------------------------- one search for the metrics and the top-1
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_nearest_from_the_metric_search_is_the_top1(geometry):
    x, y = _data(6)
    x[[3, 9]] = x[[40, 2]]  # bit-identical rows: ties broken by the lower index
    y = y.copy()
    y[0] = 999  # a lone query: it still has a nearest item
    for kw, ref in (({}, None), ({"gallery": torch.from_numpy(x[20:]), "gallery_labels": y[20:]}, x[20:])):
        q, ql = (x, y) if ref is None else (x[:20], y[:20])
        with pytest.warns(UserWarning, match="no same-class"):
            metrics, nearest = retrieval_metrics_with_nearest(torch.from_numpy(q), ql, geometry, 0.1, KS,
                                                              block_size=6, gallery_block_size=11, **kw)
        _, idx = knn(torch.from_numpy(q), None if ref is None else torch.from_numpy(ref), k=1, geometry=geometry,
                     curvature=0.1, block_size=6, gallery_block_size=11)
        np.testing.assert_array_equal(nearest.numpy(), idx[:, 0].numpy())
        with pytest.warns(UserWarning, match="no same-class"):
            assert metrics == retrieval_metrics(torch.from_numpy(q), ql, geometry, 0.1, KS, **kw)
    with pytest.warns(UserWarning, match="no same-class"):
        assert retrieval_metrics_with_nearest(x, y, "sphere", include=("nmi",))[1] is None


@pytest.mark.parametrize("geometry,gallery", [("poincare", False), ("sphere", False), ("poincare", True)])
def test_evaluate_embeddings_reuses_the_metric_search(geometry, gallery):
    """The same numbers as separate searches for the metrics, the hierarchy top-1 and the radius top-1,
    with one search fewer."""
    x, y = _data(7)
    enc = _encoder_features(x, 8)
    groups = y // 3
    emb, enc = torch.from_numpy(x), torch.from_numpy(enc)
    head_output = emb * 1.7 + 0.1 if geometry == "sphere" else None  # any per-item radius
    if gallery:
        q, ql, ref = (emb[:20], enc[:20], y[:20]), (emb[20:], enc[20:], y[20:]), None
        kw = {"gallery": ql}
    else:
        q, ref, kw = (emb, enc, y), groups, {"groups": groups}
    before = search_counts()
    got = evaluate_embeddings(*q, geometry, 0.1, KS, head_output=head_output, **kw)
    searches = _searches(before, "cpu")
    g_emb, g_enc, g_lab = (None, None, None) if not gallery else ql
    want = retrieval_metrics(q[0], q[2], geometry, 0.1, KS, gallery=g_emb, gallery_labels=g_lab)
    want |= {f"encoder_{k}": v for k, v in retrieval_metrics(q[1], q[2], "sphere", 0.1, KS, gallery=g_enc,
                                                             gallery_labels=g_lab).items()}
    if ref is not None:
        want |= hierarchy_metrics(q[0], q[2], ref, geometry, 0.1, KS)  # its own top-1 search
    want |= radius_metrics(q[0], q[2], geometry, 0.1, head_output=head_output, gallery=g_emb,
                           gallery_labels=g_lab)  # its own top-1 search
    assert "radius_correct_correlation" in got and got == want
    assert searches == 2 + (ref is not None)  # head, encoder (+ coarse): no separate top-1 search


# ---------------------------------------------------------------- the Trainer searches where its model is
@pytest.mark.parametrize("device", DEVICES)
def test_trainer_evaluation_searches_on_the_model_device(device, tmp_path):
    from transformers import EvalPrediction

    from modeling_hvit.data import dataset_labels
    from modeling_hvit.data.transforms import EvalTransform, with_image_transform
    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments, make_compute_metrics

    test, model = record.eval_split(), record.tiny_model("poincare")
    args = HViTTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                                 report_to="none", dataloader_num_workers=0, disable_tqdm=True,
                                 use_cpu=device == "cpu")
    data = with_image_transform(test, EvalTransform(16))
    compute = make_compute_metrics("poincare", 0.1, (1, 2), hierarchy=(dataset_labels(test),
                                                                      dataset_labels(test, "superclass")))
    trainer = HViTTrainer(model=model, args=args, eval_dataset=data, compute_metrics=compute)
    before = search_counts()
    got = trainer.evaluate()
    assert _searches(before, device) == 3  # head, encoder, coarse: all on the model's device
    trainer.compute_metrics = None
    pred = trainer.predict(data)  # the same predictions, scored on the CPU
    want = compute(EvalPrediction(predictions=pred.predictions, label_ids=pred.label_ids))
    for key, value in want.items():
        assert got[f"eval_{key}"] == pytest.approx(value, abs=1e-6), key


def test_trainer_evaluation_embeds_with_the_training_precision_and_workers(tmp_path):
    """``--bf16 true``: the evaluation's embeddings are those of a bf16-autocast encoder (not fp32), decoded
    by the training's DataLoader workers."""
    from modeling_hvit.data.transforms import EvalTransform, with_image_transform
    from modeling_hvit.evaluation import embed_dataset
    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments

    test, model = record.eval_split(), record.tiny_model("poincare")
    data = with_image_transform(test, EvalTransform(16))
    bf16 = embed_dataset(model, data, 9, "cpu", torch.bfloat16)[0]
    fp32 = embed_dataset(model, data, 9, "cpu")[0]  # before the Trainer: accelerate wraps the model's forward
    args = HViTTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=9,
                                 report_to="none", disable_tqdm=True, use_cpu=True, bf16=True)
    trainer = HViTTrainer(model=model, args=args, eval_dataset=data)
    assert trainer.get_eval_dataloader().num_workers == args.dataloader_num_workers >= 1
    got = torch.from_numpy(trainer.predict(data).predictions[0])
    torch.testing.assert_close(got, bf16, rtol=0, atol=1e-6)
    assert (got - fp32).abs().max() > 1e-4


# ---------------------------------------------------------------- hvit eval's defaults per device
def test_eval_defaults_per_device():
    assert resolve_eval_settings("cpu") == EvalSettings(torch.float32, 0)
    assert resolve_eval_settings("cuda", bf16_supported=True, cpus=16, local_processes=1) == EvalSettings(torch.bfloat16, 8)
    assert resolve_eval_settings("cuda", bf16_supported=False, cpus=16, local_processes=1) == EvalSettings(torch.float16, 8)
    assert resolve_eval_settings("cuda", bf16_supported=True, cpus=16, local_processes=8).num_workers == 2
    assert resolve_eval_settings("cuda", bf16_supported=True, cpus=2, local_processes=8).num_workers == 1
    assert resolve_eval_settings("mps").dtype == torch.float32


def test_explicit_eval_flags_win():
    assert resolve_eval_settings("cuda", "fp32", 0, bf16_supported=True, cpus=16) == EvalSettings(torch.float32, 0)
    assert resolve_eval_settings("cuda", "fp16", bf16_supported=True, cpus=16).dtype == torch.float16
    assert resolve_eval_settings("cpu", "bf16", 3) == EvalSettings(torch.bfloat16, 3)
    with pytest.raises(UserError, match="--precision 'fp8'"):
        resolve_eval_settings("cpu", "fp8")
    with pytest.raises(UserError, match="--num_workers -1"):
        resolve_eval_settings("cuda", num_workers=-1)
