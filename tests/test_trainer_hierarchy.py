# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Hierarchy metrics and the radius–correct correlation in the Trainer's evaluation and `hvit train`'s
outputs (issue 15, items 2 and 5), against brute-force loops and `hierarchy_metrics` on the same embeddings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import EvalPrediction

from modeling_hvit import HViTModel
from modeling_hvit.configuration_hvit import HViTConfig
from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.data.transforms import EvalTransform, with_image_transform
from modeling_hvit.evaluation import embed_dataset
from modeling_hvit.hierarchy_metrics import hierarchy_metrics
from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments, make_compute_metrics
from modeling_hvit.training import SCRATCH_BACKBONES, main
from test_fewshot import brute_force_hierarchy


def _d_hyp(x, y, c):
    sq = ((x[:, None] - y[None]) ** 2).sum(-1)
    return np.arccosh(1 + 2 * c * sq / np.outer(1 - c * (x**2).sum(1), 1 - c * (y**2).sum(1))) / math.sqrt(c)


def _points(rng, n=40, dim=4, c=0.1):
    labels = np.repeat(np.arange(n // 4), 4)
    groups = labels // 3
    v = rng.normal(size=(n, dim)) * 0.6 + rng.normal(size=(groups.max() + 1, dim))[groups]
    x = v / np.linalg.norm(v, axis=1, keepdims=True) * rng.uniform(0.1, 0.9, (n, 1)) / math.sqrt(c)
    return x.astype(np.float32), labels, groups


def test_compute_metrics_hierarchy_equals_a_brute_force_loop():
    c = 0.1
    x, labels, groups = _points(np.random.default_rng(0))
    pred = EvalPrediction(predictions=(x, x), label_ids=labels)
    got = make_compute_metrics("poincare", c, (1, 4), hierarchy=(labels, groups))(pred)
    x64 = x.astype(np.float64)
    d = _d_hyp(x64, x64, c)
    want = brute_force_hierarchy(d, labels, groups, (1, 4))
    assert 0 < want["mistake_severity@1"] < 1
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # the radius–correct correlation: distance to the origin vs "top-1 has the right class"
    np.fill_diagonal(d, np.inf)
    correct = labels[d.argmin(1)] == labels
    radius = _d_hyp(np.zeros((1, 4)), x64, c)[0]
    assert got["radius_correct_correlation"] == pytest.approx(stats.pearsonr(radius, correct).statistic, abs=1e-6)
    # and the flat metrics are unchanged by the hierarchy
    flat = make_compute_metrics("poincare", c, (1, 4))(pred)
    assert {k: v for k, v in got.items() if k in flat} == flat
    assert not any(k.startswith(("coarse_", "mistake_")) for k in flat)


def test_misaligned_predictions_stop_the_evaluation_a_prefix_is_paired():
    x, labels, groups = _points(np.random.default_rng(1))
    perm = np.random.default_rng(2).permutation(len(labels))
    pred = EvalPrediction(predictions=(x[perm], x[perm]), label_ids=labels[perm])
    with pytest.raises(ValueError, match="not in the order of the eval dataset"):
        make_compute_metrics("poincare", 0.1, (1,), hierarchy=(labels, groups))(pred)
    # --dataloader_drop_last: the predictions are a prefix of the split, paired with its first super-classes
    prefix = EvalPrediction(predictions=(x[:30], x[:30]), label_ids=labels[:30])
    got = make_compute_metrics("poincare", 0.1, (1,), hierarchy=(labels, groups))(prefix)
    want = hierarchy_metrics(torch.from_numpy(x[:30]), labels[:30], groups[:30], "poincare", 0.1, (1,))
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-12)


def _tiny(geometry: str) -> HViTModel:
    torch.manual_seed(0)
    return HViTModel(HViTConfig(backbone_config={**SCRATCH_BACKBONES["tiny"], "image_size": 16, "hidden_size": 32,
                                                 "num_hidden_layers": 2, "intermediate_size": 64},
                                embedding_dim=8, geometry=geometry))


@pytest.mark.parametrize("geometry", ["sphere", "poincare"])
def test_trainer_evaluate_reports_hierarchy_metrics_of_the_eval_split(tmp_path, geometry):
    """`HViTTrainer.evaluate()`: the eval loop's (batched, padded last batch) predictions paired with the
    split's super-classes give what `hierarchy_metrics` gives on `embed_dataset`'s embeddings."""
    test = build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4, "images_per_class": 6,
                                              "image_size": 16})["test"]
    labels, groups = dataset_labels(test), dataset_labels(test, "superclass")
    model = _tiny(geometry)
    eval_set = with_image_transform(test, EvalTransform(16))
    args = HViTTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=10,
                                 use_cpu=True, report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    trainer = HViTTrainer(model=model, args=args, eval_dataset=eval_set, compute_metrics=make_compute_metrics(
        geometry, 0.1, (1, 2), hierarchy=(labels, groups), head=model.head))
    got = trainer.evaluate()
    emb, enc, lab = embed_dataset(model, eval_set)
    want = hierarchy_metrics(emb, lab, groups, geometry, 0.1, (1, 2))
    assert set(want) == {"coarse_recall@1", "coarse_recall@2", "coarse_map@r", "mistake_severity@1"}
    for key, value in want.items():
        assert got[f"eval_{key}"] == pytest.approx(value, abs=1e-6), key
    # the radius: the head's linear output norm (sphere) or the hyperbolic distance to the origin
    e = emb.double().numpy()
    if geometry == "sphere":
        w, b = model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy()
        radius = np.linalg.norm(enc.double().numpy() @ w.T + b, axis=1)
        sim = e @ e.T
    else:
        radius = _d_hyp(np.zeros((1, e.shape[1])), e, 0.1)[0]
        sim = -_d_hyp(e, e, 0.1)
    np.fill_diagonal(sim, -np.inf)
    correct = np.asarray(labels)[sim.argmax(1)] == np.asarray(labels)
    want_r = stats.pearsonr(radius, correct).statistic
    assert got["eval_radius_correct_correlation"] == pytest.approx(want_r, abs=1e-5)


def test_train_writes_hierarchy_metrics_before_and_after(tmp_path, capsys):
    """`hvit train` on the demo (superclass column): metrics.json and the before/after table have them."""
    out = tmp_path / "o"
    main(["--output_dir", str(out), "--max_steps", "1", "--max_eval_samples", "96", "--disable_tqdm", "true",
          "--report_to", "none", "--clip_radius", "10"])  # unclipped points: a radius that varies
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["hierarchy_column"] == "superclass"
    for where in (summary, summary["untrained"]):
        assert {"coarse_recall@1", "coarse_map@r", "radius_correct_correlation"} <= set(where)
        assert where["coarse_recall@1"] >= where["recall@1"]  # a same-class neighbour shares the super-class
        assert -1 <= where["radius_correct_correlation"] <= 1
    table = capsys.readouterr().out
    assert "coarse_recall@1" in table and "coarse_map@r" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("radius_correct_correlation"))
    assert "%" not in line  # a correlation, not a percentage
