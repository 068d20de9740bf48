"""Every encoder family of `BACKBONE_FAMILIES`, as transformers' model testers do: a tiny config builds, gives the
family's standard feature (checked against the backbone's own modules), freezes its stem and first blocks/stages,
gets a gradient on every trainable parameter, saves and reloads (also as remote code in a process where hvit is
not importable), loads through `from_backbone`, and trains 2 steps with HViTTrainer."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import BLOCK_HVIT_IMPORT
from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit.configuration_hvit import BACKBONE_FAMILIES, BACKBONE_TYPES

VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
       "image_size": 32, "patch_size": 8}
STAGES = {"hidden_sizes": [8, 16], "depths": [1, 1]}
# model_type → tiny config; (stem prefix, prefix of block 0) as parameter names under `backbone.`
FAMILIES = {
    "dinov2_with_registers": ({**VIT, "num_register_tokens": 2}, "embeddings.patch_embeddings.", "encoder.layer.0."),
    "dinov3_vit": ({**VIT, "num_register_tokens": 2}, "embeddings.patch_embeddings.", "model.layer.0."),
    "clip_vision_model": (VIT, "embeddings.patch_embedding.", "encoder.layers.0."),
    "siglip_vision_model": (VIT, "embeddings.patch_embedding.", "encoder.layers.0."),
    "convnext": ({**STAGES, "num_stages": 2, "image_size": 32}, "embeddings.", "encoder.stages.0."),
    "convnextv2": ({**STAGES, "num_stages": 2, "image_size": 32}, "embeddings.", "encoder.stages.0."),
    "swin": ({"image_size": 32, "patch_size": 4, "embed_dim": 8, "depths": [1, 1], "num_heads": [2, 2],
              "window_size": 4}, "embeddings.patch_embeddings.", "encoder.layers.0."),
    "resnet": ({**STAGES, "embedding_size": 8}, "embedder.", "encoder.stages.0."),
}
AVAILABLE = [t for t in FAMILIES if t in BACKBONE_TYPES]


def tiny(model_type, **kw) -> HViTModel:
    torch.manual_seed(0)
    kw.setdefault("embedding_dim", 8)
    return HViTModel(HViTConfig(backbone_config={"model_type": model_type, **FAMILIES[model_type][0]}, **kw))


def family_feature(model_type: str, backbone, pixels: torch.Tensor) -> torch.Tensor:
    """The family's standard image feature, recomputed from the backbone's hidden states and its own modules."""
    out = backbone(pixel_values=pixels, output_hidden_states=True)
    last = out.hidden_states[-1]
    if model_type.startswith("dinov2"):
        return backbone.layernorm(last)[:, 0]  # CLS after the final norm (registers follow it)
    if model_type == "dinov3_vit":
        return backbone.norm(last)[:, 0]
    if model_type == "clip_vision_model":
        return backbone.post_layernorm(last[:, 0])
    if model_type == "siglip_vision_model":
        return backbone.head(backbone.post_layernorm(last))  # attention-pool head
    if model_type.startswith("convnext"):
        return backbone.layernorm(last.mean([-2, -1]))
    if model_type == "swin":
        return backbone.layernorm(last).mean(1)
    return last.mean([-2, -1])  # resnet: global average pool of the last stage


@pytest.fixture
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_table_covers_the_issue_families():
    assert {"vit", "deit", "dinov2", "timm_wrapper", *FAMILIES} - {"dinov3_vit"} <= set(BACKBONE_FAMILIES)
    assert set(BACKBONE_TYPES) <= set(BACKBONE_FAMILIES)


@pytest.mark.parametrize("model_type", AVAILABLE)
def test_feature_freezing_and_gradients(model_type, pixels):
    from modeling_hvit.losses import PairwiseCrossEntropyLoss

    model = tiny(model_type, freeze_blocks=1).eval()
    width = model.config.backbone_hidden_size
    with torch.no_grad():
        out = model(pixels)
        ref = family_feature(model_type, model.backbone, pixels)
    assert out.encoder_embeddings.shape == (3, width) == ref.shape and out.embeddings.shape == (3, 8)
    torch.testing.assert_close(out.encoder_embeddings, ref)
    # freezing: exactly the stem and the first block/stage (plus never-used mask tokens)
    _, stem, block0 = FAMILIES[model_type]
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert any(n.startswith(stem) for n in frozen) and any(n.startswith(block0) for n in frozen)
    assert all(n.startswith((stem, block0)) or n.endswith("mask_token") for n in frozen), frozen
    # every trainable parameter gets a gradient (DDP with find_unused_parameters=False)
    model.train()
    x = torch.cat([pixels, pixels.flip(-1)])
    PairwiseCrossEntropyLoss("poincare")(model(x).embeddings, torch.tensor([0, 1, 2, 0, 1, 2])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing}"
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="freeze_blocks"):
        tiny(model_type, freeze_blocks=3)


REMOTE_SCRIPT = BLOCK_HVIT_IMPORT + textwrap.dedent("""
    import torch
    from transformers import AutoModel
    x = torch.load(sys.argv[1])
    for folder in sys.argv[2:]:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            torch.save(model(x).embeddings, folder + "/remote.pt")
""")


def test_save_reload_and_remote_code_for_every_family(tmp_path, pixels):
    folders, expected = [], {}
    for model_type in AVAILABLE:
        model = tiny(model_type, geometry="lorentz" if model_type == "swin" else "poincare").eval()
        folder = tmp_path / model_type
        model.save_pretrained(folder)
        back = AutoModel.from_pretrained(folder).eval()
        assert isinstance(back, HViTModel) and back.config.backbone_config.model_type == model_type
        with torch.no_grad():
            expected[model_type] = model(pixels).embeddings
            torch.testing.assert_close(back(pixels).embeddings, expected[model_type], rtol=0, atol=0)
        assert [p.requires_grad for p in back.parameters()] == [p.requires_grad for p in model.parameters()]
        folders.append(str(folder))
    torch.save(pixels, tmp_path / "x.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "x.pt"), *folders], check=True, env=env,
                   cwd=tmp_path, timeout=600)
    for model_type in AVAILABLE:
        torch.testing.assert_close(torch.load(tmp_path / model_type / "remote.pt"), expected[model_type],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("model_type", AVAILABLE)
def test_from_backbone(tmp_path, model_type, pixels):
    cfg = dict(FAMILIES[model_type][0])
    torch.manual_seed(5)
    src = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg)).eval()
    src.save_pretrained(tmp_path / "bb")
    model = HViTModel.from_backbone(tmp_path / "bb", embedding_dim=8, freeze_blocks=1).eval()
    ref = src.state_dict()
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, ref[name], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).encoder_embeddings, family_feature(model_type, src, pixels))
    assert model.config.backbone_hidden_size == model.head.in_features
    assert not any(p.requires_grad for p in model.patch_embedding().parameters())


def test_from_backbone_rejects_an_unknown_family(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=10)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="backbone model_type 'bert' is not supported"):
        HViTModel.from_backbone(tmp_path / "bert")


def train_two_steps(model: HViTModel, out_dir) -> list[dict]:
    """2 HViTTrainer steps on the demo data (32 px); returns the 2 training log entries."""
    from modeling_hvit.data import build_dataset, dataset_labels
    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments
    from modeling_hvit.data.transforms import TrainTransform, with_image_transform

    dsd = build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 2, "images_per_class": 4,
                                             "image_size": 32})
    args = HViTTrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=8, samples_per_class=2,
                                 learning_rate=1e-3, max_steps=2, use_cpu=True, report_to="none", seed=0,
                                 dataloader_num_workers=0, logging_steps=1, disable_tqdm=True)
    train = dsd["train"]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = HViTTrainer(model=model, args=args, train_dataset=with_image_transform(train, TrainTransform(32)),
                          train_labels=dataset_labels(train))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor([h["loss"] for h in logged])))
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert "head.weight" in moved and any(n.startswith("backbone.") for n in moved)
    return logged


@pytest.mark.parametrize("model_type", [*AVAILABLE, "lorentz"])
def test_trains_two_steps(tmp_path, model_type):
    model = tiny("dinov2_with_registers", geometry="lorentz") if model_type == "lorentz" else tiny(model_type)
    train_two_steps(model.train(), tmp_path)
