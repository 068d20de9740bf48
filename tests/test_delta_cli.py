# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""``python -m modeling_hvit.delta`` on a tiny saved model with the demo dataset, and on feature files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_hvit.delta import estimate_delta

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture
def tiny_model_dir(tmp_path):
    from modeling_hvit import HViTConfig, HViTModel

    torch.manual_seed(0)
    config = HViTConfig(backbone_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
                                         "num_attention_heads": 4, "intermediate_size": 37, "image_size": 32,
                                         "patch_size": 8}, embedding_dim=16)
    path = tmp_path / "tiny"
    HViTModel(config).save_pretrained(path)
    return path


def test_model_on_demo_dataset(tiny_model_dir, tmp_path, capsys):
    from modeling_hvit import HViTModel
    from modeling_hvit.data import build_dataset
    from modeling_hvit.delta_cli import main
    from modeling_hvit.data.transforms import EvalTransform

    feats_path, out_path = tmp_path / "f.npy", tmp_path / "delta.json"
    main(["--model", str(tiny_model_dir), "--dataset", "demo", "--n", "60", "--draws", "3", "--device", "cpu",
          "--save_features", str(feats_path), "--output", str(out_path), "--no_progress"])
    assert "suggested curvature" in capsys.readouterr().out

    # the features: every train image, the encoder's CLS (hidden 32), as a direct forward pass gives it
    train = build_dataset("demo")["train"]
    feats = torch.from_numpy(np.load(feats_path))
    assert feats.shape == (len(train), 32)
    model = HViTModel.from_pretrained(tiny_model_dir).eval()
    transform = EvalTransform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # the default processor
    pixels = torch.stack([transform(train[i]["image"]) for i in (0, 7, len(train) - 1)])
    with torch.no_grad():
        direct = model.backbone(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(feats[[0, 7, len(train) - 1]], direct, atol=1e-5, rtol=1e-5)

    # the estimate: the library's on those features, recorded in the JSON
    result = json.loads(out_path.read_text())
    expected = estimate_delta(feats, n=60, draws=3, seed=0)
    assert result["delta_rel_values"] == pytest.approx(list(expected.delta_rel_values), abs=1e-6)
    assert result["curvature"] == pytest.approx(expected.curvature, rel=1e-5)
    assert (result["n"], result["draws"], result["num_points"], result["dim"]) == (60, 3, len(train), 32)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_feature_files(tmp_path, suffix):
    from modeling_hvit.delta_cli import main

    feats = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"f{suffix}"
    np.save(path, feats.numpy()) if suffix == ".npy" else torch.save(feats, path)
    result = main(["--features", str(path), "--n", "20", "--draws", "4", "--seed", "3", "--no_progress"])
    expected = estimate_delta(feats, n=20, draws=4, seed=3)
    assert result["delta_rel_values"] == pytest.approx(list(expected.delta_rel_values), abs=1e-6)
    assert result["delta_rel_mean"] == pytest.approx(expected.delta_rel_mean, abs=1e-6)


def _fails(argv, capsys) -> str:
    from modeling_hvit.delta_cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_errors(tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).normal(size=(30, 4)))
    assert "fewer than --n 31" in _fails(["--features", str(good), "--n", "31"], capsys)
    bad = np.random.default_rng(0).normal(size=(30, 4))
    bad[12, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert "first: row 12" in _fails(["--features", str(tmp_path / "nan.npy"), "--n", "10"], capsys)
    np.save(tmp_path / "flat.npy", np.zeros(30))
    assert "expected a real (N, D) matrix" in _fails(["--features", str(tmp_path / "flat.npy")], capsys)
    assert "no such file" in _fails(["--features", str(tmp_path / "missing.npy")], capsys)
    (tmp_path / "f.csv").write_text("1,2\n")
    assert ".npy or .pt" in _fails(["--features", str(tmp_path / "f.csv")], capsys)
    torch.save({"x": torch.zeros(3, 3)}, tmp_path / "dict.pt")
    assert "expected a saved tensor" in _fails(["--features", str(tmp_path / "dict.pt")], capsys)
    assert "--model needs --dataset" in _fails(["--model", "some/model"], capsys)
    assert "not allowed with" in _fails(["--model", "m", "--features", str(good)], capsys)


@pytest.mark.slow  # a fresh interpreter importing transformers: ≈ 5–13 s on the 2-core machine
def test_module_entry_point(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.random.default_rng(2).normal(size=(40, 6)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "modeling_hvit.delta", "--features", str(path), "--n", "30",
                           "--draws", "2", "--no_progress"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "δ_rel = " in proc.stdout and "suggested curvature c = " in proc.stdout


def test_model_without_dataset_uses_the_recorded_one(tiny_model_dir, tmp_path, capsys):
    """Issue 12.3: no --dataset → the dataset in the model's train_args.json (or a clear error)."""
    from modeling_hvit.delta_cli import main

    (tiny_model_dir / "train_args.json").write_text(json.dumps({"data": {"dataset": "demo", "data_dir": None}}))
    result = main(["--model", str(tiny_model_dir), "--n", "40", "--draws", "2", "--device", "cpu", "--no_progress"])
    assert result["source"] == f"{tiny_model_dir} on demo/train"
    assert f"dataset: demo (recorded in {tiny_model_dir / 'train_args.json'})" in capsys.readouterr().err
    (tiny_model_dir / "train_args.json").unlink()
    assert "has no train_args.json or metrics.json" in _fails(["--model", str(tiny_model_dir)], capsys)
