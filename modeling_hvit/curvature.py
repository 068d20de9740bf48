# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Training a learnable curvature (``HViTConfig.learn_curvature``): its optimiser group and its monitor.

c is parameterised as log c (``HViTModel.log_curvature``), kept within [curvature_min, curvature_max] by the
model. It gets its own learning rate and no weight decay (decay would pull log c towards 0, i.e. c towards 1,
whatever the data say). A learnt curvature can collapse onto a bound (reported for MERU); the monitor logs c
every logging step and warns once c has sat at a bound for ``patience`` consecutive logging windows.
"""

from __future__ import annotations

import math

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["CurvatureMonitor", "add_curvature_param_group"]

AT_BOUND = 1e-3  # |log c − log bound| below this counts as sitting at the bound


def add_curvature_param_group(optimizer: torch.optim.Optimizer, model: torch.nn.Module, lr: float) -> None:
    """Move ``model.log_curvature`` out of the optimiser's groups into its own (``lr``, weight decay 0). Call
    before any step and before the LR scheduler is built (so the schedule scales it like every group)."""
    param = model.log_curvature
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if p is not param]
    optimizer.add_param_group({"params": [param], "lr": lr, "weight_decay": 0.0})


class CurvatureMonitor:
    """Per logging window: ``{"curvature": c}`` for the logs, and a warning when c sits at a bound."""

    def __init__(self, patience: int = 5):
        if patience < 1:
            raise ValueError(f"curvature bound patience must be >= 1 logging windows, got {patience}")
        self.patience = patience
        self.windows_at_bound = 0

    def logs(self, model: torch.nn.Module) -> dict[str, float]:
        c, cfg = model.learnt_curvature(), model.config
        bound = next((b for b in (cfg.curvature_min, cfg.curvature_max) if abs(math.log(c / b)) < AT_BOUND), None)
        self.windows_at_bound = self.windows_at_bound + 1 if bound is not None else 0
        if self.windows_at_bound == self.patience:
            logger.warning(f"learnt curvature c = {c:.4g} has sat at its bound {bound:g} for {self.patience} logging "
                           "windows: widen HViTConfig.curvature_min/curvature_max, lower the curvature learning "
                           "rate, or fix c (learn_curvature=False)")
        return {"curvature": round(c, 6)}
