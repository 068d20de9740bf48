# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""eval_hvit.py end to end on a tiny saved model and the built-in demo dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modeling_hvit.configuration_hvit import HViTConfig  # noqa: E402
from modeling_hvit.evaluation import evaluate_embeddings, format_table, main  # noqa: E402
from modeling_hvit.modeling_hvit import HViTModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "image_size": 32, "patch_size": 8}


def _save_tiny(path: Path, geometry: str = "poincare", embedding_dim: int = 16) -> Path:
    torch.manual_seed(0)
    # clip radius 5: the untrained head's outputs (norm ≈ 3.7–4.0) stay unclipped, so the radius varies
    # (at the paper's 2.3 every point sits at the clip and radius_correct_correlation is undefined)
    HViTModel(HViTConfig(backbone_config=TINY_VIT, embedding_dim=embedding_dim, geometry=geometry,
                         curvature=0.1, clip_radius=5.0)).save_pretrained(path)
    return path


def _oracle_nearest(x: np.ndarray, geometry: str, c: float = 0.1) -> np.ndarray:
    """Nearest other item by float64 textbook distance (Poincaré arcosh form, or 1 − cos)."""
    x = x.astype(np.float64)
    if geometry == "poincare":
        sq = ((x[:, None] - x[None]) ** 2).sum(-1)
        n2 = (x**2).sum(-1)
        d = np.arccosh(1 + 2 * c * sq / np.outer(1 - c * n2, 1 - c * n2)) / np.sqrt(c)
    else:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - xn @ xn.T
    np.fill_diagonal(d, np.inf)
    return d.argmin(1)


def _oracle_recall1(x: np.ndarray, y: np.ndarray, geometry: str, c: float = 0.1) -> float:
    return float(np.mean(y[_oracle_nearest(x, geometry, c)] == y))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("model") / "tiny-hvit")


def test_main_in_process_matches_an_independent_oracle(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "out"
    metrics = main(["--model", str(tiny_model), "--dataset", "demo", "--output_dir", str(out),
                    "--batch_size", "200", "--progress", "false", "--device", "cpu"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["recall@1"] == metrics["recall@1"]
    for key in ("recall@1", "recall@32", "precision@1", "r_precision", "map@r"):
        assert 0 <= saved[key] <= 1 and 0 <= saved[f"encoder_{key}"] <= 1
    assert saved["num_queries"] == saved["num_gallery"] == 1280 and saved["split"] == "test"
    assert saved["geometry"] == "poincare" and saved["embedding_dim"] == 16

    # oracle: embed the demo test split here, straight through the model, and take brute-force R@1
    from modeling_hvit.data import build_dataset
    from modeling_hvit.data.transforms import EvalTransform, normalization_from_processor

    model = HViTModel.from_pretrained(tiny_model).eval()
    ds = build_dataset("demo")["test"]
    mean, std = normalization_from_processor(model.image_processor)
    tf = EvalTransform(32, mean, std)
    pix = torch.stack([tf(im) for im in ds["image"]])
    with torch.no_grad():
        o = model(pixel_values=pix)
    y = np.asarray(list(ds["label"]))
    assert saved["recall@1"] == pytest.approx(_oracle_recall1(o.embeddings.numpy(), y, "poincare"), abs=1e-9)
    assert saved["encoder_recall@1"] == pytest.approx(_oracle_recall1(o.encoder_embeddings.numpy(), y, "sphere"),
                                                      abs=1e-9)
    # the radius–correct correlation: hyperbolic distance to the origin vs "nearest other image is right"
    x = o.embeddings.double().numpy()
    radius = 2 / np.sqrt(0.1) * np.arctanh(np.sqrt(0.1) * np.linalg.norm(x, axis=1))
    correct = y[_oracle_nearest(x, "poincare")] == y
    assert saved["radius_correct_correlation"] == pytest.approx(stats.pointbiserialr(correct, radius).statistic,
                                                                abs=1e-6)
    printed = capsys.readouterr().out
    assert "radius_correct_correlation" in printed
    assert "device: cpu, encoder precision float32, 0 decoding worker(s)" in printed  # the CPU defaults


def test_sphere_radius_is_the_head_output_norm(tmp_path, monkeypatch):
    """Sph-: every embedding has norm 1, so the radius is the norm of the head's linear output."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model_dir = _save_tiny(tmp_path / "sph", geometry="sphere")
    got = main(["--model", str(model_dir), "--dataset", "demo", "--output_dir", str(tmp_path / "o"),
                "--max_samples", "160", "--batch_size", "80", "--progress", "false", "--device", "cpu"])
    from modeling_hvit.data import build_dataset
    from modeling_hvit.data.transforms import EvalTransform, normalization_from_processor

    model = HViTModel.from_pretrained(model_dir).eval()
    ds = build_dataset("demo")["test"].select(range(160))
    tf = EvalTransform(32, *normalization_from_processor(model.image_processor))
    with torch.no_grad():
        o = model(pixel_values=torch.stack([tf(im) for im in ds["image"]]))
    w, b = model.head.weight.double().detach().numpy(), model.head.bias.double().detach().numpy()
    radius = np.linalg.norm(o.encoder_embeddings.double().numpy() @ w.T + b, axis=1)
    y = np.asarray(ds["label"])
    correct = y[_oracle_nearest(o.embeddings.double().numpy(), "sphere")] == y
    assert got["radius_correct_correlation"] == pytest.approx(stats.pearsonr(radius, correct).statistic, abs=1e-5)


@pytest.mark.slow  # a fresh interpreter imports transformers and datasets (~10 s of CPU)
def test_cli_subprocess_with_plot(tmp_path):
    model = _save_tiny(tmp_path / "tiny2d", embedding_dim=2)  # 2-d: plotted directly, no UMAP
    out = tmp_path / "eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "eval_hvit.py"), "--model", str(model), "--dataset", "demo",
                           "--output_dir", str(out), "--plot", "--recall_ks", "1,4", "--max_samples", "300",
                           "--batch_size", "100"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recall@1" in proc.stdout and "encoder" in proc.stdout and "embedding test" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"recall@1", "recall@4", "encoder_recall@4", "map@r", "wall_seconds"}
    assert metrics["num_queries"] == 300
    png = (out / "poincare_disk.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_clear(tmp_path, capsys):
    from modeling_hvit.cli import run

    with pytest.raises(FileNotFoundError, match="no config.json"):
        main(["--model", str(tmp_path), "--dataset", "demo", "--progress", "false"])
    # a bad --precision: one line naming the flag and the allowed values, no traceback
    assert run("eval", ["--model", str(tmp_path), "--precision", "fp8", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "hvit eval: error: --precision 'fp8': expected one of auto, fp32, fp16, bf16"


def test_unknown_hierarchy_column_is_a_one_line_error(tiny_model, tmp_path, monkeypatch, capsys):
    from modeling_hvit.cli import run

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert run("eval", ["--model", str(tiny_model), "--dataset", "demo", "--hierarchy_column", "genus",
                        "--output_dir", str(tmp_path / "o"), "--progress", "false", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("hvit eval: error: --hierarchy_column 'genus' is not a column of the dataset "
                   "(columns: image, label, superclass)")


def test_python_m_evaluation_runs_the_eval_command(tmp_path, capsys, monkeypatch):
    """`python -m modeling_hvit.evaluation ...` is `hvit eval ...` (it used to do nothing, silently)."""
    import runpy
    import warnings

    monkeypatch.setattr(sys, "argv", ["evaluation.py", "--model", str(tmp_path), "--precision", "fp8"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module("modeling_hvit.evaluation", run_name="__main__")
    assert exit_.value.code == 2
    assert "hvit eval: error: --precision 'fp8'" in capsys.readouterr().err


def test_query_gallery_and_table():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(20, 8)) * 0.3, rng.normal(size=(50, 8)) * 0.3
    ql, gl = rng.integers(0, 5, 20), rng.integers(0, 5, 50)
    m = evaluate_embeddings(torch.tensor(q), torch.tensor(q), ql, "poincare", 0.1, (1, 10),
                            gallery=(torch.tensor(g), torch.tensor(g), gl))
    # oracle: nearest gallery item by float64 Poincaré distance / cosine
    for geometry, key in (("poincare", "recall@1"), ("sphere", "encoder_recall@1")):
        if geometry == "poincare":
            sq = ((q[:, None] - g[None]) ** 2).sum(-1)
            d = np.arccosh(1 + 2 * 0.1 * sq / np.outer(1 - 0.1 * (q**2).sum(1), 1 - 0.1 * (g**2).sum(1)))
        else:
            d = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
        assert m[key] == pytest.approx(np.mean(gl[d.argmin(1)] == ql))
    table = format_table({**m, "curvature": 0.1})
    assert table.splitlines()[1].startswith("recall@1") and "curvature" not in table


@pytest.mark.slow
def test_cli_umap_plot_for_16d(tiny_model, tmp_path):
    pytest.importorskip("umap")
    out = tmp_path / "eval"
    main(["--model", str(tiny_model), "--dataset", "demo", "--output_dir", str(out), "--plot",
          "--max_samples", "200", "--progress", "false"])
    assert (out / "poincare_disk.png").read_bytes()[:4] == b"\x89PNG"


def test_dataset_comes_from_the_model_or_is_required(tiny_model, tmp_path, monkeypatch):
    """No silent demo (issue 12.3): without --dataset the model's recorded dataset is used, or it stops."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    flags = ["--progress", "false", "--device", "cpu", "--max_samples", "120", "--batch_size", "120"]
    with pytest.raises(ValueError, match="--dataset is required: .* has no train_args.json or metrics.json"):
        main(["--model", str(tiny_model), "--output_dir", str(tmp_path / "a"), *flags])
    model = tmp_path / "trained"
    model.mkdir()
    for f in tiny_model.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "train_args.json").write_text(json.dumps({"data": {"dataset": "demo", "data_dir": None}, "model": {}}))
    got = main(["--model", str(model), "--output_dir", str(tmp_path / "b"), *flags])
    assert got["dataset"] == "demo" and got["dataset_source"] == f"recorded in {model / 'train_args.json'}"
    explicit = main(["--model", str(model), "--dataset", "demo", "--output_dir", str(tmp_path / "c"), *flags])
    assert explicit["dataset_source"] == "--dataset" and explicit["recall@1"] == got["recall@1"]


def test_recall_k_beyond_the_gallery_is_dropped_and_recorded(tiny_model, tmp_path, monkeypatch, capsys):
    """Issue 12.6: K ≥ the gallery is never printed as 100%; the JSON and the table say it was dropped."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    got = main(["--model", str(tiny_model), "--dataset", "demo", "--output_dir", str(tmp_path / "o"),
                "--recall_ks", "1,119,500", "--max_samples", "120", "--batch_size", "120",
                "--progress", "false", "--device", "cpu"])
    assert got["recall_ks_dropped"] == [119, 500] and "recall@1" in got
    assert not any(k.endswith(("recall@119", "recall@500")) for k in got)
    assert "Recall@K not reported for K = 119, 500: K ≥ the 119 gallery items" in capsys.readouterr().out
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["recall_ks_dropped"] == [119, 500]


def test_trainer_evaluation_uses_the_same_k_rule():
    from transformers import EvalPrediction

    from modeling_hvit.trainer import make_compute_metrics

    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(6, 4)) * 0.3).astype(np.float32)
    pred = EvalPrediction(predictions=(emb, emb), label_ids=np.array([0, 0, 1, 1, 2, 2]))
    with pytest.warns(UserWarning, match="Recall@K dropped for K = 5, 8: K ≥ the 5 gallery items"):
        got = make_compute_metrics("poincare", 0.1, (1, 5, 8))(pred)
    assert "recall@1" in got and "encoder_recall@1" in got
    assert not any(k.endswith(("@5", "@8")) for k in got)


def test_fewshot_and_hierarchy_in_the_table_and_json(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    got = main(["--model", str(tiny_model), "--dataset", "demo", "--output_dir", str(tmp_path / "o"),
                "--max_samples", "400", "--batch_size", "200", "--progress", "false", "--device", "cpu",
                "--fewshot", "--fewshot_episodes", "20", "--recall_ks", "1,4"])
    assert got["hierarchy_column"] == "superclass"
    assert got["coarse_recall@1"] >= got["recall@1"]  # a same-class neighbour shares the super-class
    assert 0 <= got["mistake_severity@1"] <= 1 and 0 < got["coarse_map@r"] <= 1
    assert 0 < got["fewshot_5way_1shot"] <= 1 and got["fewshot_5way_1shot_ci95"] > 0
    assert "fewshot_5way_1shot_within" in got and got["fewshot_episodes"] == 20
    out = capsys.readouterr().out
    assert "coarse_recall@1" in out and "fewshot_5way_1shot " in out and "±" in out
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["fewshot_5way_5shot"] == got["fewshot_5way_5shot"]
