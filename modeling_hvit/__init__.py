# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""hvit: Hyperbolic Vision Transformers (Ermolov et al., CVPR 2022), native to the Hugging Face stack.

Importing the package registers `HViTConfig` / `HViTModel` with `AutoConfig` / `AutoModel`, so
`AutoModel.from_pretrained(dir)` works without `trust_remote_code`; `save_pretrained` also writes
the code files, so the same directory loads with `trust_remote_code=True` where hvit is not installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_hvit import HViTConfig
from .distances import pairwise_similarity
from .hyperbolic import clip_features, distance, expmap0, logmap0, pairwise_distance, to_lorentz
from .modeling_hvit import HViTModel, HViTOutput, HViTPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register("hvit", HViTConfig, exist_ok=True)
AutoModel.register(HViTConfig, HViTModel, exist_ok=True)
HViTConfig.register_for_auto_class()
HViTModel.register_for_auto_class("AutoModel")

__all__ = ["HViTConfig", "HViTModel", "HViTOutput", "HViTPreTrainedModel", "__version__", "clip_features", "distance",
           "expmap0", "logmap0", "pairwise_distance", "pairwise_similarity", "to_lorentz"]
# Heavier pieces import on use: modeling_hvit.{losses, sampling, trainer, training, data, transforms,
# retrieval, metrics, evaluation, delta, hub}.
