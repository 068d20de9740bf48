"""HViTConfig / HViTModel: tiny backbones, head init, geometry, freezing, save/load, remote code, pipeline."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, ViTConfig, ViTModel, pipeline

from modeling_hvit import HViTConfig, HViTModel
from conftest import BLOCK_HVIT_IMPORT

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
        "image_size": 32, "patch_size": 8}
BACKBONES = {
    "vit": dict(model_type="vit", **TINY),
    "deit": dict(model_type="deit", **TINY),
    "dinov2": dict(model_type="dinov2", **{k: v for k, v in TINY.items() if k != "intermediate_size"}),
}


def tiny_model(backbone="vit", **kw) -> HViTModel:
    torch.manual_seed(0)
    kw.setdefault("embedding_dim", 16)
    return HViTModel(HViTConfig(backbone_config=dict(BACKBONES[backbone]), **kw)).eval()


@pytest.fixture
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_output_shapes_and_cls_feature(backbone, pixels):
    model = tiny_model(backbone)
    out = model(pixels)
    assert out.embeddings.shape == (3, 16) and out.embeddings.dtype == torch.float32
    assert out.encoder_embeddings.shape == (3, 32)
    # encoder_embeddings is the CLS token after the final LayerNorm of the backbone run on its own
    # (distilled DeiT in eval mode: the mean of the CLS and distillation tokens, test below)
    tokens = model.backbone(pixel_values=pixels).last_hidden_state
    ref = (tokens[:, 0] + tokens[:, 1]) / 2 if backbone == "deit" else tokens[:, 0]
    torch.testing.assert_close(out.encoder_embeddings, ref)
    # the head: Linear → clip(2.3) → expmap0(c = 0.1), written out independently
    z = ref @ model.head.weight.T + model.head.bias
    z = z * torch.clamp(2.3 / z.norm(dim=-1, keepdim=True), max=1.0)
    n = z.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out.embeddings, torch.tanh(0.1**0.5 * n) * z / (0.1**0.5 * n))


def test_distilled_deit_averages_cls_and_distillation_tokens_in_eval_mode(pixels):
    """Issue 11.3: the original's timm DeiT returns CLS in train mode and (CLS + distillation) / 2 in eval
    mode, for head embeddings, encoder features and δ features alike (all computed in eval mode)."""
    from modeling_hvit.evaluation import embed_dataset

    model = tiny_model("deit")
    assert model.config.eval_pooling == "cls_distill_mean"
    with torch.no_grad():  # both tokens start at 0; a pretrained DeiT has them apart
        model.backbone.embeddings.distillation_token.normal_(generator=torch.Generator().manual_seed(2))
    assert tiny_model("vit").config.eval_pooling == "cls" and tiny_model("dinov2").config.eval_pooling == "cls"
    with torch.no_grad():
        tokens = model.backbone(pixel_values=pixels).last_hidden_state.double()
        cls, dist = tokens[:, 0], tokens[:, 1]
        assert (cls - dist).abs().max() > 1e-2  # the two tokens differ, so the choice matters
        mean = ((cls + dist) / 2).float()
        out = model(pixels)
        torch.testing.assert_close(out.encoder_embeddings, mean)
        z = mean.double() @ model.head.weight.double().T + model.head.bias.double()
        z = z * torch.clamp(2.3 / z.norm(dim=-1, keepdim=True), max=1.0)
        n = z.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(out.embeddings, (torch.tanh(0.1**0.5 * n) * z / (0.1**0.5 * n)).float())
        # the evaluation / δ path (embed_dataset puts the model in eval mode)
        rows = [{"pixel_values": p, "labels": i} for i, p in enumerate(pixels)]
        emb, enc, _ = embed_dataset(model.train(), rows, batch_size=2)
        torch.testing.assert_close(enc, mean)
        torch.testing.assert_close(emb, out.embeddings)
        # training mode: CLS (dropout is 0 in the tiny config, so train mode is deterministic)
        torch.testing.assert_close(model.train()(pixels).encoder_embeddings, cls.float())
        # the original's behaviour is one option away
        plain = tiny_model("deit", eval_pooling="cls")
        plain.load_state_dict(model.state_dict())
        plain.eval()
        torch.testing.assert_close(plain(pixels).encoder_embeddings, cls.float())
    with pytest.raises(Exception, match="HViTConfig.eval_pooling='cls_distill_mean' needs a distilled DeiT"):
        HViTConfig(backbone_config=dict(BACKBONES["vit"]), eval_pooling="cls_distill_mean")
    with pytest.raises(Exception, match="HViTConfig.eval_pooling must be one of"):
        HViTConfig(eval_pooling="mean")


def test_timm_distilled_deit_pooling_when_available(pixels):
    """timm's own pooled output averages the two tokens in train mode too; HViT follows the original: CLS in
    train mode, the mean in eval mode."""
    require_timm()
    torch.manual_seed(0)
    model = HViTModel(HViTConfig(backbone_config=dict(TIMM_DEIT), embedding_dim=16))
    assert model.config.eval_pooling == "cls_distill_mean"
    with torch.no_grad():
        model.backbone.timm_model.dist_token.normal_()
        tokens = model.backbone.timm_model.eval().forward_features(pixels)  # normed; [CLS, distillation, ...]
        torch.testing.assert_close(model.eval()(pixels).encoder_embeddings, (tokens[:, 0] + tokens[:, 1]) / 2)
        torch.testing.assert_close(model.train()(pixels).encoder_embeddings, tokens[:, 0])


def test_vit_and_deit_built_without_pooler():
    for bb in ("vit", "deit"):
        assert not any("pooler" in n for n, _ in tiny_model(bb).named_parameters())


@pytest.mark.parametrize("geometry", ["sphere", "euclidean", "lorentz"])
def test_other_geometries(geometry, pixels):
    model = tiny_model(geometry=geometry)
    out = model(pixels)
    z = out.encoder_embeddings @ model.head.weight.T + model.head.bias
    if geometry == "sphere":
        torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(3))
        z = z / z.norm(dim=-1, keepdim=True)
    if geometry == "lorentz":  # clip(2.3), then the hyperboloid's expmap0 of 2z: sinh(√c‖2z‖)·2z/(√c‖2z‖)
        z = 2 * z * torch.clamp(2.3 / z.norm(dim=-1, keepdim=True), max=1.0)
        n = 0.1**0.5 * z.norm(dim=-1, keepdim=True)
        z = torch.sinh(n) * z / n
    torch.testing.assert_close(out.embeddings, z)


def test_head_orthogonal_init_and_zero_bias():
    for dim, hidden in ((16, 32), (64, 32)):  # semi-orthogonal both ways
        w = tiny_model(embedding_dim=dim).head.weight.detach()
        gram = w @ w.T if dim <= hidden else w.T @ w
        torch.testing.assert_close(gram, torch.eye(min(dim, hidden)), atol=1e-5, rtol=0)
    assert torch.count_nonzero(tiny_model().head.bias) == 0


def test_save_load_identical_and_head_not_reinitialised(tmp_path, pixels):
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.mul_(1.7).add_(0.01)  # no longer orthogonal: a re-init on load would show
        model.head.bias.fill_(0.25)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_hvit.py", "modeling_hvit.py", "hyperbolic.py", "lorentz.py",
            "preprocessor_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_hvit.HViTConfig", "AutoModel": "modeling_hvit.HViTModel"}
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HViTModel)
    torch.testing.assert_close(loaded.head.weight, model.head.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.head.bias, model.head.bias, rtol=0, atol=0)
    torch.testing.assert_close(loaded(pixels).embeddings, model(pixels).embeddings, rtol=0, atol=0)
    assert loaded.config.geometry == "poincare" and loaded.config.curvature == 0.1


def test_freezing(pixels):
    model = tiny_model(freeze_blocks=1).train()
    model(pixels).embeddings.sum().backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.embeddings.patch_embeddings", "backbone.layers.0."))
                          for n in frozen)
    assert any(n.startswith("backbone.layers.0.") for n in frozen)
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n in frozen), n
    # class token, positions, later blocks and the head train (the paper freezes only the patch embedding)
    default = tiny_model()
    trainable = {n for n, p in default.named_parameters() if p.requires_grad}
    assert {"backbone.embeddings.cls_token", "backbone.embeddings.position_embeddings", "head.weight"} <= trainable
    assert not any("patch_embeddings" in n for n in trainable)
    dinov2 = tiny_model("dinov2", freeze_blocks=2)
    assert all(not p.requires_grad for p in dinov2.backbone.encoder.parameters())
    with pytest.raises(ValueError, match="freeze_blocks"):
        tiny_model(freeze_blocks=3)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_freezing_survives_save_and_load(tmp_path, backbone):
    """from_pretrained used to return every parameter trainable (loading replaces them): a model fine-tuned from
    an HViT checkpoint then trained its patch embedding, and DINOv2's unused mask_token broke DDP."""
    model = tiny_model(backbone, freeze_blocks=1)
    model.save_pretrained(tmp_path)
    for back in (HViTModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert [(n, p.requires_grad) for n, p in back.named_parameters()] == \
            [(n, p.requires_grad) for n, p in model.named_parameters()]


TIMM_VIT = {"model_type": "timm_wrapper", "architecture": "vit_tiny_patch16_224", "num_classes": 0,
            "model_args": {"img_size": 32, "patch_size": 8, "depth": 2}}
TIMM_DEIT = {"model_type": "timm_wrapper", "architecture": "deit_tiny_distilled_patch16_224", "num_classes": 0,
             "model_args": {"img_size": 32, "patch_size": 8, "depth": 2}}


def require_timm():
    try:
        import timm  # noqa: F401
    except Exception:
        pytest.skip("timm cannot be imported here (it needs a working torchvision)")


@pytest.mark.parametrize("backbone", [*BACKBONES, "timm_vit", "timm_deit"])
def test_every_trainable_parameter_gets_a_gradient(backbone, pixels):
    """DDP with find_unused_parameters=False needs a gradient for every trainable parameter (issue 10.2:
    DINOv2's mask_token is never used)."""
    from modeling_hvit.losses import PairwiseCrossEntropyLoss

    if backbone.startswith("timm"):
        require_timm()
        cfg = TIMM_VIT if backbone == "timm_vit" else TIMM_DEIT
        torch.manual_seed(0)
        model = HViTModel(HViTConfig(backbone_config=dict(cfg), embedding_dim=16))
    else:
        model = tiny_model(backbone)
    model.train()
    x = torch.cat([pixels, pixels.flip(-1)])  # 3 classes × 2 views
    loss = PairwiseCrossEntropyLoss("poincare")(model(x).embeddings, torch.tensor([0, 1, 2, 0, 1, 2])).loss
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing}"
    assert sum(p.requires_grad for p in model.parameters()) > 0


def test_config_validation_names_the_field():
    nan, inf = float("nan"), float("inf")
    for kw, field in [({"geometry": "hyperboloid"}, "geometry"), ({"curvature": -1.0}, "curvature"),
                      ({"curvature": nan}, "curvature"), ({"curvature": inf}, "curvature"),
                      ({"clip_radius": nan}, "clip_radius"), ({"clip_radius": inf}, "clip_radius"),
                      ({"clip_radius": 0.0}, "clip_radius"), ({"delta_rel": nan}, "delta_rel"),
                      ({"backbone_config": {"model_type": "bert"}}, "model_type")]:
        with pytest.raises(Exception, match=rf"HViTConfig\.(backbone_config\.)?{field} must"):
            HViTConfig(**kw)
    assert HViTConfig(curvature=1).curvature == 1  # ints accepted for float fields


def test_config_round_trip_keeps_backbone(tmp_path):
    cfg = HViTConfig(backbone_config=dict(BACKBONES["dinov2"]), embedding_dim=8, delta_rel=0.28, curvature=0.26)
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert back.backbone_config.model_type == "dinov2" and back.backbone_hidden_size == 32
    assert (back.delta_rel, back.curvature, back.embedding_dim) == (0.28, 0.26, 8)


def test_sdpa_default_and_eager_selectable(tmp_path):
    model = tiny_model()
    assert model.config._attn_implementation == "sdpa"
    assert model.backbone.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    eager = HViTModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.backbone.config._attn_implementation == "eager"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_kept_fp32_in_half_precision(tmp_path, pixels, dtype):
    tiny_model().save_pretrained(tmp_path)
    model = HViTModel.from_pretrained(tmp_path, dtype=dtype).eval()
    assert model.head.weight.dtype == torch.float32
    assert model.backbone.embeddings.cls_token.dtype == dtype
    out = model(pixels.to(dtype))
    assert out.embeddings.dtype == torch.float32 and torch.isfinite(out.embeddings).all()
    # and under autocast the geometry still runs in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = tiny_model()(pixels).embeddings
    assert emb.dtype == torch.float32 and torch.isfinite(emb).all()


def test_from_backbone_loads_pretrained_weights(tmp_path, pixels):
    torch.manual_seed(3)
    vit = ViTModel(ViTConfig(**TINY))  # with a pooler, as Hub ViT checkpoints have
    vit.save_pretrained(tmp_path / "vit")
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3]).save_pretrained(tmp_path / "vit")
    model = HViTModel.from_backbone(tmp_path / "vit", embedding_dim=8, curvature=0.05).eval()
    assert model.config.curvature == 0.05 and model.config.backbone_config.model_type == "vit"
    assert not any("pooler" in n for n in model.state_dict())
    torch.testing.assert_close(model(pixels).encoder_embeddings, vit.eval()(pixels).last_hidden_state[:, 0])
    assert not model.backbone.embeddings.patch_embeddings.projection.weight.requires_grad
    model.save_pretrained(tmp_path / "hvit")
    proc = json.loads((tmp_path / "hvit" / "preprocessor_config.json").read_text())
    assert proc["image_mean"] == [0.1, 0.2, 0.3]  # the backbone's processor, not a default


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_from_backbone_builds_float32_from_a_bf16_checkpoint(tmp_path, backbone, pixels):
    """Issue 10.6: transformers 5 loads with dtype="auto"; bf16 master weights would round lr-1e-5 updates away."""
    cfg = dict(BACKBONES[backbone])
    torch.manual_seed(4)
    src = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).to(torch.bfloat16)
    src.save_pretrained(tmp_path / "bb")
    assert json.loads((tmp_path / "bb" / "config.json").read_text())["dtype"] == "bfloat16"
    model = HViTModel.from_backbone(tmp_path / "bb", embedding_dim=8)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ref = src.state_dict()
    for name, value in model.backbone.state_dict().items():  # the weights are the checkpoint's, upcast
        torch.testing.assert_close(value, ref[name].float(), rtol=0, atol=0)
    model.save_pretrained(tmp_path / "hvit")
    back = HViTModel.from_pretrained(tmp_path / "hvit")
    assert {p.dtype for p in back.parameters()} == {torch.float32}


def test_pipeline_returns_embeddings(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    img = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    out = np.asarray(extractor(img))
    assert out.shape == (1, 16)
    inputs = extractor.image_processor(img, return_tensors="pt")
    torch.testing.assert_close(torch.from_numpy(out).float(), model(**inputs).embeddings, atol=1e-5, rtol=1e-5)


REMOTE_SCRIPT = BLOCK_HVIT_IMPORT + textwrap.dedent("""
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    x = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(x).embeddings, sys.argv[3])
""")


@pytest.mark.parametrize("backbone,geometry", [("vit", "poincare"), ("dinov2", "sphere"), ("deit", "poincare"),
                                               ("vit", "lorentz")])
def test_remote_code_load_in_fresh_process(tmp_path, pixels, backbone, geometry):
    model = tiny_model(backbone, geometry=geometry)
    model.save_pretrained(tmp_path / "model")
    if geometry == "lorentz":  # modeling_hvit.py imports lorentz.py, which must travel as remote code
        assert (tmp_path / "model" / "lorentz.py").is_file()
    torch.save(pixels, tmp_path / "x.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "model"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, env=env, cwd=tmp_path, timeout=300)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(pixels).embeddings, rtol=0, atol=0)


def test_timm_backbone_when_available(pixels):
    require_timm()
    model = HViTModel(HViTConfig(backbone_config=dict(TIMM_VIT), embedding_dim=16)).eval()
    out = model(pixels)
    assert out.embeddings.shape == (3, 16)
    assert not any(p.requires_grad for p in model.backbone.timm_model.patch_embed.parameters())


def test_timm_config_round_trips_without_timm(tmp_path):
    cfg = HViTConfig(backbone_config={"model_type": "timm_wrapper", "architecture": "vit_small_patch16_224"},
                     backbone_hidden_size=384)
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert back.backbone_config.model_type == "timm_wrapper" and back.backbone_hidden_size == 384
