# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""PyTorch HViT model: a ViT-family encoder and a linear head into the Poincaré ball (or the sphere)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_hvit import HViTConfig, is_distilled
from .hyperbolic import clip_features, expmap0
from .image_processing_hvit import evaluation_image_processor

logger = logging.get_logger(__name__)

# Backbones built without their pooler: ViT/DeiT `pooler_output` is tanh(dense(CLS)), never trained here.
_NO_POOLER = ("vit", "deit")
# Backbone parameters the forward never uses (DINOv2 builds `embeddings.mask_token` for masked-image
# pre-training): frozen, so that DDP with find_unused_parameters=False sees a gradient for every trainable one.
_UNUSED_PARAMETERS = ("mask_token",)


@dataclass
class HViTOutput(ModelOutput):
    """
    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            Head output in its geometry (a point of the Poincaré ball, of the unit sphere, or raw), float32.
        encoder_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The encoder's CLS token after its final LayerNorm (the paper's 384-d features; score with cosine);
            for distilled DeiT in eval mode, by default the mean of the CLS and distillation tokens
            (`HViTConfig.eval_pooling`).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Encoder tokens (HF backbones).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The same tensor as `encoder_embeddings`, under the name `pipeline("image-feature-extraction",
            pool=True)` returns (as Dinov2's pooled output is its normed CLS token).
    """

    embeddings: torch.FloatTensor | None = None
    encoder_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    pooler_output: torch.FloatTensor | None = None


class HViTProjection(nn.Linear):
    """The head's linear map; its own type so `_init_weights` can give it a (semi-)orthogonal init."""


class HViTPreTrainedModel(PreTrainedModel):
    config: HViTConfig
    config_class = HViTConfig
    base_model_prefix = "hvit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _keep_in_fp32_modules_strict = ["head"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HViTProjection):
            init.orthogonal_(module.weight)
            init.zeros_(module.bias)


def _build_backbone(config: PreTrainedConfig) -> PreTrainedModel:
    kwargs = {"add_pooling_layer": False} if config.model_type in _NO_POOLER else {}
    return AutoModel.from_config(config, **kwargs)


class HViTModel(HViTPreTrainedModel):
    def __init__(self, config: HViTConfig):
        super().__init__(config)
        self.backbone = _build_backbone(config.backbone_config)
        width = config.backbone_hidden_size
        if width is None:  # timm backbones: the width lives on the timm model
            width = self.backbone.timm_model.num_features
            config.backbone_hidden_size = width
        self.head = HViTProjection(width, config.embedding_dim)
        self.image_processor = None  # saved beside the weights by `save_pretrained` when set
        self.post_init()
        self._freeze()

    # -- freezing -------------------------------------------------------------------------------
    def patch_embedding(self) -> nn.Module:
        bb = self.backbone
        return bb.timm_model.patch_embed if hasattr(bb, "timm_model") else bb.embeddings.patch_embeddings

    def blocks(self) -> nn.ModuleList:
        bb = self.backbone
        if hasattr(bb, "timm_model"):
            return bb.timm_model.blocks
        return bb.encoder.layer if hasattr(bb, "encoder") else bb.layers

    def _freeze(self) -> None:
        for name, param in self.backbone.named_parameters():
            if name.rsplit(".", 1)[-1] in _UNUSED_PARAMETERS:
                param.requires_grad_(False)
        if self.config.freeze_patch_embed:
            self.patch_embedding().requires_grad_(False)
        blocks = self.blocks()
        if self.config.freeze_blocks > len(blocks):
            raise ValueError(f"HViTConfig.freeze_blocks={self.config.freeze_blocks} but the backbone has {len(blocks)} blocks")
        for block in blocks[: self.config.freeze_blocks]:
            block.requires_grad_(False)

    # -- forward --------------------------------------------------------------------------------
    def forward_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, ModelOutput]:
        """The encoder feature (normed CLS; see `HViTConfig.eval_pooling` for distilled DeiT), and the raw
        backbone output."""
        out = self.backbone(pixel_values=pixel_values, **kwargs)
        tokens = out.last_hidden_state  # after the final LayerNorm; distilled DeiT: [CLS, distillation, patches]
        if is_distilled(self.config.backbone_config):
            if self.config.eval_pooling == "cls_distill_mean" and not self.training:
                return (tokens[:, 0] + tokens[:, 1]) / 2, out
            return tokens[:, 0], out
        if hasattr(self.backbone, "timm_model"):
            return out.pooler_output, out  # token pooling of a timm ViT = the normed CLS
        return tokens[:, 0], out

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Head: linear map, then clip → expmap0 (poincare) / normalise (sphere); float32 always."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = self.head(features.to(self.head.weight.dtype)).float()
            if self.config.geometry == "poincare":
                if self.config.clip_radius is not None:
                    z = clip_features(z, self.config.clip_radius)
                return expmap0(z, self.config.curvature)
            if self.config.geometry == "sphere":
                return F.normalize(z, dim=-1)
            return z

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> HViTOutput:
        extra = {}
        if output_hidden_states is not None:
            extra["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            extra["output_attentions"] = output_attentions
        if interpolate_pos_encoding is not None and self.config.backbone_config.model_type in _NO_POOLER:
            extra["interpolate_pos_encoding"] = interpolate_pos_encoding
        features, out = self.forward_features(pixel_values, **extra)
        return HViTOutput(
            embeddings=self.project(features),
            encoder_embeddings=features,
            last_hidden_state=getattr(out, "last_hidden_state", None),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
            pooler_output=features,
        )

    def encode(self, inputs, **kwargs):
        """Embed images (PIL images, paths, a folder or a `datasets.Dataset`) in batches, streaming:
        `modeling_hvit.encoding.encode` (batch_size, device, precision, output="embeddings" | "encoder"
        | "both", num_workers, show_progress_bar, skip_bad). Needs the hvit package installed."""
        try:
            from modeling_hvit.encoding import encode
        except ImportError:
            raise ImportError("HViTModel.encode needs the hvit package (`pip install hvit`); this model was loaded "
                              "as remote code without it. Without hvit, use pipeline('image-feature-extraction', "
                              "model=...) (pool=True for the encoder features).") from None
        return encode(self, inputs, **kwargs)

    # -- construction and saving ----------------------------------------------------------------
    @classmethod
    def from_backbone(cls, pretrained_backbone_name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                      **config_kwargs) -> "HViTModel":
        """A fresh head on pretrained backbone weights (a Hub id or a local directory).

        ViT/DeiT are loaded without their pooler; the backbone's image processor, when it has one, is
        kept so that `save_pretrained` writes it beside the model. `config_kwargs` go to `HViTConfig`.
        The weights are cast to `dtype`, float32 by default whatever the checkpoint stores: these are
        training master weights (a bf16 checkpoint would otherwise give bf16 ones, where most small
        updates round away); mixed precision runs on top of them. The head is float32 always.
        """
        name = str(pretrained_backbone_name_or_path)
        backbone_config = AutoConfig.from_pretrained(name)
        if backbone_config.model_type not in ("vit", "deit", "dinov2", "timm_wrapper"):
            raise ValueError(f"{name}: backbone model_type {backbone_config.model_type!r} is not supported "
                             "(expected vit, deit, dinov2 or timm_wrapper)")
        kwargs = {"add_pooling_layer": False} if backbone_config.model_type in _NO_POOLER else {}
        backbone, info = AutoModel.from_pretrained(name, dtype=dtype, output_loading_info=True, **kwargs)
        absent = sorted(set(info.get("missing_keys", ())) | {str(k) for k in info.get("mismatched_keys", ())})
        if absent:  # those would train from random init; unexpected keys (pooler, classifier) are dropped on purpose
            raise ValueError(f"{name}: backbone weights missing from the checkpoint or of another shape: "
                             f"{', '.join(absent[:8])}{' …' if len(absent) > 8 else ''}")
        config_kwargs.setdefault("backbone_hidden_size", getattr(backbone_config, "hidden_size", None)
                                 or backbone.timm_model.num_features)
        model = cls(HViTConfig(backbone_config=backbone.config, **config_kwargs))
        model.backbone = backbone
        model._freeze()
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(name)
        except (OSError, ValueError) as err:
            logger.warning(f"{name} has no image processor ({err}); a default one will be saved")
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, **{k: kwargs[k] for k in ("cache_dir", "revision", "token") if k in kwargs}
            )
        except (OSError, ValueError):
            model.image_processor = None
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """Weights and config as usual, plus the evaluation image processor (from the one the model holds)."""
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:  # the evaluation preprocessing, as a standard processor (image_processing_hvit)
            evaluation_image_processor(self.image_processor, self.config).save_pretrained(save_directory)


def default_image_processor(config: HViTConfig):
    """The evaluation processor of a model built from config: its input size (timm: its pretrained_cfg),
    shorter side = crop, bicubic, mean = std = 0.5."""
    return evaluation_image_processor(None, config)


__all__ = ["HViTModel", "HViTOutput", "HViTPreTrainedModel", "HViTProjection", "default_image_processor"]
