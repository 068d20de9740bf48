# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""hvit: Hyperbolic Vision Transformers (Ermolov et al., CVPR 2022), native to the Hugging Face stack.

Importing the package registers `HViTConfig` / `HViTModel` with `AutoConfig` / `AutoModel`, so
`AutoModel.from_pretrained(dir)` works without `trust_remote_code`; `save_pretrained` also writes
the code files, so the same directory loads with `trust_remote_code=True` where hvit is not installed.
`HViTModel.encode(images)` embeds images, folders or datasets (`encoding`); `hvit` is the command line
(`cli`); `evaluate.load(metric_path())` loads the retrieval metric.
"""

import logging as _logging
from pathlib import Path as _Path

from transformers import AutoConfig, AutoModel

from .configuration_hvit import HViTConfig
from .distances import pairwise_similarity
from .encoding import EncodeResult
from .hyperbolic import clip_features, distance, expmap0, logmap0, pairwise_distance, to_lorentz
from .modeling_hvit import HViTModel, HViTOutput, HViTPreTrainedModel

__version__ = "0.1.0"


def metric_path() -> str:
    """Folder of the `evaluate` metric shipped with the package: `evaluate.load(modeling_hvit.metric_path())`."""
    return str(_Path(__file__).with_name("hvit_retrieval"))


class _NoTorchvisionFallbackWarning(_logging.Filter):
    """hvit preprocesses with PIL and never needs torchvision: drop transformers' warning that the PIL
    image processor stands in for the torchvision one (it is the one we want)."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackWarning())

AutoConfig.register("hvit", HViTConfig, exist_ok=True)
AutoModel.register(HViTConfig, HViTModel, exist_ok=True)
HViTConfig.register_for_auto_class()
HViTModel.register_for_auto_class("AutoModel")

__all__ = ["EncodeResult", "HViTConfig", "HViTModel", "HViTOutput", "HViTPreTrainedModel", "__version__",
           "clip_features", "distance", "expmap0", "logmap0", "metric_path", "pairwise_distance",
           "pairwise_similarity", "to_lorentz"]
# Heavier pieces import on use: modeling_hvit.{losses, sampling, trainer, training, data, transforms,
# retrieval, metrics, evaluation, delta, hub, cli}. `HViTModel.encode` is `encoding.encode`.
