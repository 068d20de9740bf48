# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""``loading.load_model``: strict HViT checkpoints, plain backbones, clear errors for bad paths (issues 11.4, 12.10);
and the evaluation / δ entry points that use it, on tiny checkpoints saved to tmp dirs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, BertConfig

from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit.loading import load_model

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
        "image_size": 32, "patch_size": 8}
BACKBONES = {"vit": dict(TINY), "deit": dict(TINY),
             "dinov2": {k: v for k, v in TINY.items() if k != "intermediate_size"}}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def save_backbone(path, family: str = "vit", seed: int = 3):
    """A tiny pretrained-looking backbone checkpoint (random but non-default weights, as on the Hub)."""
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.for_model(family, **BACKBONES[family]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # cls/distillation tokens start at 0: make them distinct
    model.save_pretrained(path)
    return model.eval()


def save_hvit(path, seed: int = 0) -> HViTModel:
    torch.manual_seed(seed)
    model = HViTModel(HViTConfig(backbone_config={"model_type": "vit", **TINY}, embedding_dim=16))
    with torch.no_grad():
        model.head.bias.fill_(0.1)
    model.save_pretrained(path)
    return model.eval()


def edit_weights(path, drop=(), add=None):
    weights = load_file(path / "model.safetensors")
    for key in drop:
        del weights[key]
    weights.update(add or {})
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


# ---- HViT checkpoints: loaded exactly, or refused ------------------------------------------------------
def test_hvit_checkpoint_loads_exactly(tmp_path, pixels):
    ref = save_hvit(tmp_path / "m")
    model = load_model(tmp_path / "m").eval()
    assert isinstance(model, HViTModel) and model.image_processor is not None
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).embeddings, ref(pixels).embeddings, rtol=0, atol=0)


@pytest.mark.parametrize("drop,add,named", [
    (["head.weight"], None, "missing keys: head.weight"),
    ([], {"extra.weight": torch.zeros(2)}, "unexpected keys: extra.weight"),
    (["backbone.layernorm.bias"], {"head.extra": torch.zeros(1)}, "backbone.layernorm.bias"),
])
def test_hvit_checkpoint_with_wrong_weights_is_refused(tmp_path, drop, add, named):
    save_hvit(tmp_path / "m")
    edit_weights(tmp_path / "m", drop, add)
    with pytest.raises(ValueError, match=f"--model {tmp_path / 'm'}: the checkpoint's weights do not match.*{named}"):
        load_model(tmp_path / "m", what="--model")


def test_hvit_checkpoint_through_its_saved_code(tmp_path, pixels):
    ref = save_hvit(tmp_path / "m")
    model = load_model(tmp_path / "m", trust_remote_code=True).eval()  # AutoModel (hvit registered here)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).embeddings, ref(pixels).embeddings, rtol=0, atol=0)
    edit_weights(tmp_path / "m", drop=["head.weight"])
    with pytest.raises(ValueError, match="missing keys: head.weight"):
        load_model(tmp_path / "m", trust_remote_code=True)


# ---- plain backbones: the pretrained encoder, a fresh head ----------------------------------------------
@pytest.mark.parametrize("family", list(BACKBONES))
def test_plain_backbone_gives_its_pretrained_features(tmp_path, family, pixels):
    backbone = save_backbone(tmp_path / "bb", family)
    model = load_model(tmp_path / "bb", embedding_dim=8, curvature=0.2).eval()
    assert isinstance(model, HViTModel) and model.config.curvature == 0.2 and model.config.embedding_dim == 8
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        tokens = backbone(pixel_values=pixels).last_hidden_state
        expected = (tokens[:, 0] + tokens[:, 1]) / 2 if family == "deit" else tokens[:, 0]
        torch.testing.assert_close(model(pixels).encoder_embeddings, expected, rtol=1e-5, atol=1e-5)


def test_backbone_with_missing_weights_is_refused(tmp_path):
    save_backbone(tmp_path / "bb")
    edit_weights(tmp_path / "bb", drop=["encoder.layer.1.output.dense.weight"])
    with pytest.raises(ValueError, match=r"missing from the checkpoint.*layers\.1\."):  # transformers 5 key names
        load_model(tmp_path / "bb")


def test_unsupported_model_type_is_named(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert' is neither an HViT model"):
        load_model(tmp_path / "bert")


# ---- paths: "no such directory", not "Repo id must be in the form…" --------------------------------------
@pytest.mark.parametrize("name", ["./runs/cub-hyp", "../missing-model", "/no/such/dir/model", "runs/a/b",
                                  "existing/typo", "runs\\cub"])
def test_mistyped_local_path_says_no_such_directory(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"--model {name}: no such directory")):
        load_model(name, what="--model")


def test_folder_without_config_and_file_instead_of_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        load_model(tmp_path / "empty")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_model(tmp_path / "model.safetensors")


def test_hub_id_shape_is_left_to_the_hub(tmp_path, monkeypatch):
    """org/name with no such local folder is a Hub id: the Hub's own (offline) error, not 'no such directory'."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError) as err:
        load_model("facebook/dino-vits16")
    assert "no such directory" not in str(err.value)


# ---- the entry points use it -------------------------------------------------------------------------------
def test_eval_cli_mistyped_path(tmp_path, monkeypatch):
    from modeling_hvit.evaluation import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--model ./runs/typo: no such directory"):
        main(["--model", "./runs/typo", "--dataset", "demo", "--progress", "false"])


def test_eval_cli_refuses_a_checkpoint_whose_weights_do_not_load(tmp_path):
    from modeling_hvit.evaluation import main

    save_hvit(tmp_path / "m")
    edit_weights(tmp_path / "m", drop=["head.bias"])
    with pytest.raises(ValueError, match="missing keys: head.bias"):
        main(["--model", str(tmp_path / "m"), "--dataset", "demo", "--progress", "false",
              "--output_dir", str(tmp_path / "out")])


def test_delta_on_a_plain_backbone_measures_its_pretrained_features(tmp_path):
    """Issue 11.4: `python -m modeling_hvit.delta --model <plain backbone>` embedded with random weights."""
    from modeling_hvit.data import build_dataset
    from modeling_hvit.delta_cli import main
    from modeling_hvit.data.transforms import eval_transform_for, pixel_values_for

    backbone = save_backbone(tmp_path / "bb", "vit")
    feats_path = tmp_path / "f.npy"
    main(["--model", str(tmp_path / "bb"), "--dataset", "demo", "--n", "40", "--draws", "2", "--device", "cpu",
          "--save_features", str(feats_path), "--no_progress"])
    feats = torch.from_numpy(np.load(feats_path))
    train = build_dataset("demo")["train"]
    model = load_model(tmp_path / "bb")
    transform = eval_transform_for(model)  # the evaluation preprocessing saved with the model (uint8 out)
    idx = [0, 5, len(train) - 1]
    pixels = pixel_values_for(model, torch.stack([transform(train[i]["image"]) for i in idx]))
    with torch.no_grad():
        direct = backbone(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(feats[idx], direct, atol=1e-5, rtol=1e-5)


def test_delta_cli_mistyped_path_exits_with_a_message(tmp_path, monkeypatch, capsys):
    from modeling_hvit.delta_cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["--model", "./nope", "--dataset", "demo", "--no_progress"])
    assert err.value.code == 2 and "--model ./nope: no such directory" in capsys.readouterr().err


def test_corrupted_weights_in_a_folder_with_a_manifest_are_refused(tmp_path, pixels):
    from modeling_hvit.checkpoint import CheckpointError, write_manifest

    model = save_hvit(tmp_path / "m")
    write_manifest(tmp_path / "m")
    (tmp_path / "m" / "metrics.json").write_text("{}")  # files written later (eval output) do not matter
    torch.testing.assert_close(load_model(tmp_path / "m").eval()(pixels).embeddings, model.eval()(pixels).embeddings)
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # same size, zeroed tail: loads silently without the manifest
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "m")
