# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""HViT model configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging

logger = logging.get_logger(__name__)

GEOMETRIES = ("poincare", "lorentz", "sphere", "euclidean")
HYPERBOLIC_GEOMETRIES = ("poincare", "lorentz")  # curvature c applies; scores are −d_hyp


@dataclass(frozen=True)
class BackboneFamily:
    """How HViT uses one encoder family (paths are attribute paths inside the backbone module).

    feature: ``"cls"`` (token 0 of ``last_hidden_state``, after the final norm) or ``"pooler"``
    (``pooler_output``: the family's own pooled feature, flattened). stem: the patch embedding / stem
    frozen by ``freeze_patch_embed``. blocks: the ModuleList whose first ``freeze_blocks`` entries are
    frozen (transformer blocks, or stages for hierarchical encoders). build_kwargs: passed to
    ``AutoModel.from_config`` / ``from_pretrained``. interpolate: forward accepts ``interpolate_pos_encoding``.
    """

    feature: str
    stem: str
    blocks: str
    build_kwargs: tuple[tuple[str, bool], ...] = ()
    interpolate: bool = False


# The single table of supported encoders (model_type → family). ViT/DeiT `pooler_output` is tanh(dense(CLS)),
# never trained here, so they are built without it; CLIP/SigLIP pooler = post-LayerNorm CLS / attention-pool head.
BACKBONE_FAMILIES = {
    "vit": BackboneFamily("cls", "embeddings.patch_embeddings", "layers", (("add_pooling_layer", False),), True),
    "deit": BackboneFamily("cls", "embeddings.patch_embeddings", "layers", (("add_pooling_layer", False),), True),
    "dinov2": BackboneFamily("cls", "embeddings.patch_embeddings", "encoder.layer"),
    "dinov2_with_registers": BackboneFamily("cls", "embeddings.patch_embeddings", "encoder.layer"),
    "dinov3_vit": BackboneFamily("cls", "embeddings.patch_embeddings", "model.layer"),
    "clip_vision_model": BackboneFamily("pooler", "embeddings.patch_embedding", "encoder.layers", (), True),
    "siglip_vision_model": BackboneFamily("pooler", "embeddings.patch_embedding", "encoder.layers", (), True),
    "convnext": BackboneFamily("pooler", "embeddings", "encoder.stages"),
    "convnextv2": BackboneFamily("pooler", "embeddings", "encoder.stages"),
    "swin": BackboneFamily("pooler", "embeddings.patch_embeddings", "encoder.layers", (), True),
    "resnet": BackboneFamily("pooler", "embedder", "encoder.stages"),
    "timm_wrapper": BackboneFamily("pooler", "timm_model.patch_embed", "timm_model.blocks"),
}
# Families this transformers version knows (DINOv3 needs a recent one).
BACKBONE_TYPES = tuple(t for t in BACKBONE_FAMILIES if t in CONFIG_MAPPING)


def backbone_width(backbone_config: PreTrainedConfig) -> int | None:
    """Width of the encoder feature: `hidden_size`, or the last stage's width (ConvNeXt, ResNet); None for
    timm backbones (read from the model at build time)."""
    if backbone_config.model_type == "timm_wrapper":
        return None
    sizes = getattr(backbone_config, "hidden_sizes", None)
    return sizes[-1] if sizes else getattr(backbone_config, "hidden_size", None)
EVAL_POOLINGS = ("cls", "cls_distill_mean")


def is_distilled(backbone_config: PreTrainedConfig) -> bool:
    """Whether the backbone has a distillation token after CLS: HF `deit` (DeiTModel always builds one; plain
    DeiT checkpoints are `vit`) or a timm `*distilled*` architecture."""
    if backbone_config.model_type == "deit":
        return True
    return backbone_config.model_type == "timm_wrapper" and "distilled" in str(getattr(backbone_config, "architecture", ""))


@strict
class HViTConfig(PreTrainedConfig):
    r"""
    Configuration of an [`HViTModel`]: an image encoder and a linear head into the Poincaré ball
    (Ermolov et al., CVPR 2022), the hyperboloid (Lorentz model), the unit sphere, or plain Euclidean space.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the encoder, one of `BACKBONE_TYPES`: `vit` (also DINO checkpoints), `deit`, `dinov2`,
            `dinov2_with_registers`, `dinov3_vit`, `clip_vision_model`, `siglip_vision_model`, `convnext`,
            `convnextv2`, `swin`, `resnet` or `timm_wrapper`.
            A dict needs a `model_type` key; `None` gives a ViT-S/16 (384-d, 12 layers, 6 heads).
        embedding_dim (`int`, *optional*, defaults to 128):
            Output dimension of the head.
        geometry (`str`, *optional*, defaults to `"poincare"`):
            `"poincare"` (clip → expmap0 into the ball), `"lorentz"` (clip → expmap0 onto the hyperboloid;
            the embeddings are its space components), `"sphere"` (L2 normalise) or `"euclidean"`.
        curvature (`float`, *optional*, defaults to 0.1):
            c of the space of curvature −c (Poincaré and Lorentz geometries).
        clip_radius (`float`, *optional*, defaults to 2.3):
            Feature clipping radius r applied before expmap0; `None` disables clipping. The Lorentz head maps
            2·z (see `HViTModel.project`), so both hyperbolic heads reach the same distance range for given c, r.
        freeze_patch_embed (`bool`, *optional*, defaults to `True`):
            Freeze the patch embedding (the stem of ConvNeXt/ResNet), as in the paper's runs.
        freeze_blocks (`int`, *optional*, defaults to 0):
            Also freeze the first N transformer blocks (stages for ConvNeXt, Swin and ResNet).
        backbone_hidden_size (`int`, *optional*):
            Width of the encoder output; read from `backbone_config.hidden_size` (or `hidden_sizes[-1]`)
            when it has one (timm backbones take it from the model at build time).
        delta_rel (`float`, *optional*):
            Relative δ-hyperbolicity of the training features, recorded when the curvature was
            estimated from it (`train_hvit.py --curvature auto`).
        eval_pooling (`str`, *optional*):
            Encoder feature in eval mode: `"cls"` (the CLS token) or `"cls_distill_mean"` (the mean of the CLS
            and distillation tokens, for distilled DeiT only). Training mode always uses CLS. `None` picks
            `"cls_distill_mean"` for distilled DeiT, as the original code's timm DeiT does in eval mode (so its
            evaluation, encoder features and δ use the mean), and `"cls"` for every other backbone.
        learn_curvature (`bool`, *optional*, defaults to `False`):
            Learn c (hyperbolic geometries): a parameter log c initialised from `curvature`, kept within
            [`curvature_min`, `curvature_max`]; `save_pretrained` writes the learnt value into `curvature`, which
            retrieval, search and the model card read.
        curvature_min (`float`, *optional*, defaults to 0.001), curvature_max (`float`, *optional*, defaults to 10):
            Bounds of a learnt c.

    Example:

    ```python
    >>> from modeling_hvit import HViTConfig, HViTModel
    >>> config = HViTConfig(backbone_config={"model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12,
    ...                                      "num_attention_heads": 6, "intermediate_size": 1536})
    >>> model = HViTModel(config)
    ```
    """

    model_type = "hvit"
    sub_configs = {"backbone_config": AutoConfig}

    backbone_config: dict | PreTrainedConfig | None = None
    embedding_dim: int = 128
    geometry: str = "poincare"
    curvature: float | int = 0.1
    clip_radius: float | int | None = 2.3
    freeze_patch_embed: bool = True
    freeze_blocks: int = 0
    backbone_hidden_size: int | None = None
    delta_rel: float | int | None = None
    eval_pooling: str | None = None
    learn_curvature: bool = False
    curvature_min: float | int = 1e-3
    curvature_max: float | int = 10.0

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict):
            cfg = dict(self.backbone_config)
            model_type = cfg.pop("model_type", "vit")
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"backbone_config.model_type {model_type!r} is not a known transformers config type")
            self.backbone_config = CONFIG_MAPPING[model_type](**cfg)
        elif self.backbone_config is None:
            self.backbone_config = CONFIG_MAPPING["vit"](
                hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
            )
        if self.backbone_hidden_size is None:
            self.backbone_hidden_size = backbone_width(self.backbone_config)
        if self.eval_pooling is None:
            self.eval_pooling = "cls_distill_mean" if is_distilled(self.backbone_config) else "cls"
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Called by `@strict`: reject settings the model cannot honour, naming the field."""
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"HViTConfig.geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.backbone_config.model_type not in BACKBONE_TYPES:
            raise ValueError(
                f"HViTConfig.backbone_config.model_type must be one of {BACKBONE_TYPES}, "
                f"got {self.backbone_config.model_type!r}"
            )
        if not (math.isfinite(self.curvature) and self.curvature > 0):
            raise ValueError(f"HViTConfig.curvature must be a finite number > 0, got {self.curvature}")
        if self.clip_radius is not None and not (math.isfinite(self.clip_radius) and self.clip_radius > 0):
            raise ValueError(f"HViTConfig.clip_radius must be a finite number > 0 or None, got {self.clip_radius}")
        if not (math.isfinite(self.curvature_min) and 0 < self.curvature_min <= self.curvature_max
                and math.isfinite(self.curvature_max)):
            raise ValueError(f"HViTConfig.curvature_min/curvature_max must satisfy 0 < min <= max < inf, got "
                             f"{self.curvature_min}, {self.curvature_max}")
        if self.learn_curvature and self.geometry not in HYPERBOLIC_GEOMETRIES:
            raise ValueError(f"HViTConfig.learn_curvature needs a hyperbolic geometry {HYPERBOLIC_GEOMETRIES}, "
                             f"got {self.geometry!r}")
        if self.learn_curvature and not self.curvature_min <= self.curvature <= self.curvature_max:
            raise ValueError(f"HViTConfig.curvature must lie in [curvature_min, curvature_max] = "
                             f"[{self.curvature_min}, {self.curvature_max}] with learn_curvature, got {self.curvature}")
        if self.delta_rel is not None and not (math.isfinite(self.delta_rel) and self.delta_rel >= 0):
            raise ValueError(f"HViTConfig.delta_rel must be a finite number >= 0 or None, got {self.delta_rel}")
        if self.eval_pooling not in EVAL_POOLINGS:
            raise ValueError(f"HViTConfig.eval_pooling must be one of {EVAL_POOLINGS}, got {self.eval_pooling!r}")
        if self.eval_pooling == "cls_distill_mean" and not is_distilled(self.backbone_config):
            raise ValueError("HViTConfig.eval_pooling='cls_distill_mean' needs a distilled DeiT backbone "
                             f"(a distillation token), got model_type {self.backbone_config.model_type!r}")
        if self.embedding_dim <= 0:
            raise ValueError(f"HViTConfig.embedding_dim must be > 0, got {self.embedding_dim}")
        if self.freeze_blocks < 0:
            raise ValueError(f"HViTConfig.freeze_blocks must be >= 0, got {self.freeze_blocks}")


__all__ = ["BACKBONE_FAMILIES", "BACKBONE_TYPES", "BackboneFamily", "GEOMETRIES", "HYPERBOLIC_GEOMETRIES", "HViTConfig",
           "backbone_width", "is_distilled"]
