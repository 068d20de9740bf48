# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""PyTorch HViT model: an image encoder and a linear head into the Poincaré ball, the hyperboloid, or the sphere."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_hvit import BACKBONE_FAMILIES, BACKBONE_TYPES, HViTConfig, backbone_width, is_distilled
from .hyperbolic import clip_features, expmap0
from .image_processing_hvit import evaluation_image_processor
from .lorentz import expmap0 as lorentz_expmap0

logger = logging.get_logger(__name__)

# Backbone parameters the forward never uses (DINOv2 builds `embeddings.mask_token` for masked-image
# pre-training): frozen, so that DDP with find_unused_parameters=False sees a gradient for every trainable one.
_UNUSED_PARAMETERS = ("mask_token",)


@dataclass
class HViTOutput(ModelOutput):
    """
    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            Head output in its geometry (a point of the Poincaré ball; the space components x_s of a point of the
            hyperboloid, whose time component √(1/c + ‖x_s‖²) is recomputed where needed; a point of the unit
            sphere; or raw), float32.
        encoder_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The encoder's feature (score with cosine): the CLS token after its final LayerNorm for ViT-likes (the
            paper's 384-d features), the pooled output for CLIP/SigLIP/ConvNeXt/Swin/ResNet (see
            `BACKBONE_FAMILIES`); for distilled DeiT in eval mode, by default the mean of the CLS and
            distillation tokens (`HViTConfig.eval_pooling`).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Encoder tokens (HF backbones).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The same tensor as `encoder_embeddings`, under the name `pipeline("image-feature-extraction",
            pool=True)` returns (as Dinov2's pooled output is its normed CLS token).
        curvature (`torch.FloatTensor` of shape `()`, *optional*):
            The learnt c the embeddings were mapped with (`HViTConfig.learn_curvature` only); the loss uses it.
    """

    embeddings: torch.FloatTensor | None = None
    encoder_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    curvature: torch.FloatTensor | None = None
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
    _keep_in_fp32_modules_strict = ["head", "log_curvature"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HViTProjection):
            init.orthogonal_(module.weight)
            init.zeros_(module.bias)


def _build_backbone(config: PreTrainedConfig) -> PreTrainedModel:
    return AutoModel.from_config(config, **dict(BACKBONE_FAMILIES[config.model_type].build_kwargs))


class HViTModel(HViTPreTrainedModel):
    def __init__(self, config: HViTConfig):
        super().__init__(config)
        self.backbone = _build_backbone(config.backbone_config)
        width = config.backbone_hidden_size
        if width is None:  # timm backbones: the width lives on the timm model
            width = self.backbone.timm_model.num_features
            config.backbone_hidden_size = width
        self.head = HViTProjection(width, config.embedding_dim)
        if config.learn_curvature:  # log space: multiplicative steps, c > 0 always
            self.log_curvature = nn.Parameter(torch.tensor(math.log(config.curvature)))
        self.image_processor = None  # saved beside the weights by `save_pretrained` when set
        self.post_init()
        self._freeze()

    # -- freezing -------------------------------------------------------------------------------
    def patch_embedding(self) -> nn.Module:
        """The patch embedding (stem for ConvNeXt/ResNet) frozen by `freeze_patch_embed`."""
        return self.backbone.get_submodule(BACKBONE_FAMILIES[self.config.backbone_config.model_type].stem)

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks (stages for hierarchical encoders) counted by `freeze_blocks`."""
        return self.backbone.get_submodule(BACKBONE_FAMILIES[self.config.backbone_config.model_type].blocks)

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

    # -- curvature ------------------------------------------------------------------------------
    @property
    def curvature(self) -> float | torch.Tensor:
        """c: `config.curvature`, or with `learn_curvature` exp(log c) as a differentiable 0-d tensor (log c is
        first pulled back into [log curvature_min, log curvature_max], so an optimiser step past a bound is undone
        before the next forward)."""
        if not self.config.learn_curvature:
            return self.config.curvature
        with torch.no_grad():
            self.log_curvature.clamp_(math.log(self.config.curvature_min), math.log(self.config.curvature_max))
        return self.log_curvature.float().exp()

    def learnt_curvature(self) -> float:
        """The current c as a float: `config.curvature`, or the learnt c within its bounds (what `save_pretrained`
        writes to the config); evaluation during training reads it."""
        if not self.config.learn_curvature:
            return float(self.config.curvature)
        c = float(self.curvature.detach())
        return min(max(c, self.config.curvature_min), self.config.curvature_max)

    # -- forward --------------------------------------------------------------------------------
    def forward_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, ModelOutput]:
        """The encoder feature (the family's, `BACKBONE_FAMILIES`; see `HViTConfig.eval_pooling` for distilled
        DeiT), and the raw backbone output."""
        out = self.backbone(pixel_values=pixel_values, **kwargs)
        tokens = out.last_hidden_state  # ViT-likes: after the final LayerNorm; distilled DeiT: [CLS, distillation, …]
        if is_distilled(self.config.backbone_config):
            if self.config.eval_pooling == "cls_distill_mean" and not self.training:
                return (tokens[:, 0] + tokens[:, 1]) / 2, out
            return tokens[:, 0], out
        if BACKBONE_FAMILIES[self.config.backbone_config.model_type].feature == "pooler":
            return out.pooler_output.flatten(1), out  # ResNet pools to (b, C, 1, 1); timm ViT: the normed CLS
        return tokens[:, 0], out

    def project(self, features: torch.Tensor, curvature: float | torch.Tensor | None = None) -> torch.Tensor:
        """Head: linear map, then clip → expmap0 (poincare, lorentz) / normalise (sphere); float32 always.

        The Lorentz head maps 2z: the ball's expmap0(z) lies at distance 2‖z‖ from the origin, the
        hyperboloid's expmap0(v) at ‖v‖, so with 2z the two heads are the same map up to the isometry
        (``lorentz.ball_to_hyperboloid``), and c and clip_radius keep their meaning (c = 0.1, r = 2.3 reach
        distance 4.6 from the origin in both).
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = self.head(features.to(self.head.weight.dtype)).float()
            geometry = self.config.geometry
            if geometry in ("poincare", "lorentz"):
                c = self.curvature if curvature is None else curvature
                if self.config.clip_radius is not None:
                    z = clip_features(z, self.config.clip_radius)
                if geometry == "lorentz":
                    return lorentz_expmap0(2 * z, c)
                return expmap0(z, c)
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
        if interpolate_pos_encoding is not None and BACKBONE_FAMILIES[self.config.backbone_config.model_type].interpolate:
            extra["interpolate_pos_encoding"] = interpolate_pos_encoding
        features, out = self.forward_features(pixel_values, **extra)
        c = self.curvature
        return HViTOutput(
            embeddings=self.project(features, c),
            curvature=c if torch.is_tensor(c) else None,
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

        Any family of `BACKBONE_TYPES` (ViT/DeiT without their pooler); the backbone's image processor, when it
        has one, is kept so that `save_pretrained` writes it beside the model. `config_kwargs` go to `HViTConfig`.
        The weights are cast to `dtype`, float32 by default whatever the checkpoint stores: these are
        training master weights (a bf16 checkpoint would otherwise give bf16 ones, where most small
        updates round away); mixed precision runs on top of them. The head is float32 always.
        """
        name = str(pretrained_backbone_name_or_path)
        backbone_config = AutoConfig.from_pretrained(name)
        if backbone_config.model_type not in BACKBONE_TYPES:
            raise ValueError(f"{name}: backbone model_type {backbone_config.model_type!r} is not supported "
                             f"(expected one of {', '.join(BACKBONE_TYPES)}; for a full CLIP/SigLIP checkpoint "
                             "save its vision tower, e.g. CLIPVisionModel.from_pretrained(...).save_pretrained(dir))")
        kwargs = dict(BACKBONE_FAMILIES[backbone_config.model_type].build_kwargs)
        backbone, info = AutoModel.from_pretrained(name, dtype=dtype, output_loading_info=True, **kwargs)
        absent = sorted(set(info.get("missing_keys", ())) | {str(k) for k in info.get("mismatched_keys", ())})
        if absent:  # those would train from random init; unexpected keys (pooler, classifier) are dropped on purpose
            raise ValueError(f"{name}: backbone weights missing from the checkpoint or of another shape: "
                             f"{', '.join(absent[:8])}{' …' if len(absent) > 8 else ''}")
        config_kwargs.setdefault("backbone_hidden_size", backbone_width(backbone_config)
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
        model._freeze()  # loading replaces the parameters, and with them the requires_grad set in __init__
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, **{k: kwargs[k] for k in ("cache_dir", "revision", "token") if k in kwargs}
            )
        except (OSError, ValueError):
            model.image_processor = None
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """Weights and config as usual, plus the evaluation image processor (from the one the model holds); a
        learnt c is written into `config.curvature` (retrieval, search and the card read it there)."""
        if self.config.learn_curvature:
            self.config.curvature = self.learnt_curvature()
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:  # the evaluation preprocessing, as a standard processor (image_processing_hvit)
            evaluation_image_processor(self.image_processor, self.config).save_pretrained(save_directory)


def default_image_processor(config: HViTConfig):
    """The evaluation processor of a model built from config: its input size (timm: its pretrained_cfg),
    shorter side = crop, bicubic, mean = std = 0.5."""
    return evaluation_image_processor(None, config)


__all__ = ["HViTModel", "HViTOutput", "HViTPreTrainedModel", "HViTProjection", "default_image_processor"]
