# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""HViTTrainer: the HF Trainer with the class-pair sampler, the pairwise loss on the global batch,
the original optimiser settings and retrieval metrics as evaluation."""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from .checkpoint import CheckpointCallback, resume_checkpoint, verify_manifest
from .curvature import CurvatureMonitor, add_curvature_param_group
from .distributed import gather_batch
from .losses import PairwiseCrossEntropyLoss
from .evaluation import evaluate_embeddings
from .metrics import DEFAULT_RECALL_KS
from .sampling import ClassPairSampler

__all__ = ["HViTTrainer", "HViTTrainingArguments", "make_compute_metrics"]


@dataclass
class HViTTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults (SPEC §5) and the loss/sampler settings."""

    output_dir: str | None = field(default="outputs/hvit-demo", metadata={"help": "Where to write the model."})
    learning_rate: float = field(default=3e-5, metadata={"help": "3e-5 for ViT-S/DeiT-S, 1e-5 for DINO."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay, on all parameters."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Constant, no warm-up (SPEC §5)."})
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient-norm clip (SPEC §5)."})
    per_device_train_batch_size: int = field(default=900, metadata={"help": "Images per device (classes × m)."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Images per device when embedding."})
    samples_per_class: int = field(default=2, metadata={"help": "m: images per class in a batch."})
    temperature: float | None = field(default=None, metadata={"help": "τ; default 0.2 (poincare, lorentz), 0.1 (sphere)."})
    curvature_learning_rate: float = field(default=1e-2, metadata={"help": "LR of log c with a learnt curvature "
                                           "(HViTConfig.learn_curvature; no weight decay)."})
    curvature_bound_patience: int = field(default=5, metadata={"help": "Warn when a learnt c sits at a bound this "
                                          "many logging windows."})
    loss_reduction: str = field(default="sum", metadata={"help": "'sum' over view pairs (original) or 'mean'."})
    recall_ks: str | None = field(default=None, metadata={"help": "Comma-separated K for Recall@K; default by dataset."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep `image` for the lazy transform."})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Batch key of the labels."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "No unused parameters."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "'no', 'steps' or 'epoch' checkpoints."})
    dataloader_num_workers: int = field(default=min(8, os.cpu_count() or 1), metadata={"help": "Decoding workers."})
    report_to: None | str | list[str] = field(
        default="tensorboard" if importlib.util.find_spec("tensorboard") else "none",
        metadata={"help": "Loggers: TensorBoard when it is installed (logs under output_dir/runs), else none."})
    allow_partial_resume: bool = field(default=False, metadata={"help": "Resume from a checkpoint without its "
                                       "optimizer/scheduler/RNG state or saved with another model head or batch size "
                                       "(not exact; warned and recorded)."})

    def __post_init__(self):
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.per_device_train_batch_size % self.samples_per_class:
            raise ValueError(f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple "
                             f"of samples_per_class={self.samples_per_class}")

    def __getstate__(self):
        """Pickles (the Trainer's `training_args.bin`) never hold the Hub token; it stays in memory."""
        return {**self.__dict__, "hub_token": None}

    @property
    def ks(self) -> tuple[int, ...] | None:
        return None if not self.recall_ks else tuple(int(k) for k in str(self.recall_ks).split(","))


def make_compute_metrics(geometry: str, curvature: float | Callable[[], float], ks: Sequence[int] | None = None):
    """`compute_metrics` for the Trainer: Recall@K, P@1, R-Precision, MAP@R of the head embeddings
    (in their geometry) and of the encoder features (cosine, keys prefixed ``encoder_``), through
    `evaluation.evaluate_embeddings`. With ``gallery`` (a second `EvalPrediction`), queries are
    scored against it (In-Shop); otherwise every item against all the others. ``curvature`` may be a callable
    read at each evaluation (a learnt c: ``HViTModel.learnt_curvature``)."""

    def compute_metrics(pred: EvalPrediction, gallery: EvalPrediction | None = None) -> dict[str, float]:
        emb, enc = (torch.as_tensor(np.asarray(a)) for a in pred.predictions)
        labels = np.asarray(pred.label_ids)
        ks_ = tuple(k for k in (ks or DEFAULT_RECALL_KS) if k < len(labels)) or (1,)
        ref = None
        if gallery is not None:
            ref = (*(torch.as_tensor(np.asarray(a)) for a in gallery.predictions), np.asarray(gallery.label_ids))
        c = curvature() if callable(curvature) else curvature
        return evaluate_embeddings(emb, enc, labels, geometry, c, ks_, gallery=ref)

    return compute_metrics


class HViTTrainer(Trainer):
    """Trainer for HViT metric learning.

    - the train sampler is a `ClassPairSampler` over `train_labels` (the same global stream on every
      rank; accelerate gives rank r the batches r, r + W, …), so each global batch holds distinct classes;
    - the loss is `PairwiseCrossEntropyLoss` on the embeddings of *all* ranks, gathered with gradient:
      parameter gradients equal a single process on the global batch;
    - AdamW with weight decay on every parameter (the original), constant LR, clip 3 (the arguments);
    - evaluation embeds the eval split and reports retrieval metrics (`make_compute_metrics`);
    - loss statistics (positive/negative logits, in-batch accuracy) are averaged into the logs.
    """

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let the Trainer divide by GA steps

    def __init__(self, *args, train_labels: Sequence[int] | None = None,
                 loss_fn: PairwiseCrossEntropyLoss | None = None, gallery_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gallery_dataset = gallery_dataset
        model_config = self.accelerator.unwrap_model(self.model).config
        self.loss_fn = loss_fn or PairwiseCrossEntropyLoss(
            model_config.geometry, getattr(self.args, "temperature", None), model_config.curvature,
            reduction=getattr(self.args, "loss_reduction", "sum"))
        self.train_labels = list(train_labels) if train_labels is not None else None
        if self.train_dataset is not None and self.train_labels is None:
            raise ValueError("HViTTrainer needs train_labels (collect them before attaching the transform)")
        if self.train_labels is not None:
            self._train_sampler = ClassPairSampler(
                self.train_labels, getattr(self.args, "samples_per_class", 2), self.args.per_device_train_batch_size,
                world_size=self.args.world_size, seed=self.args.seed)
        self._loss_stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._curvature = (CurvatureMonitor(getattr(self.args, "curvature_bound_patience", 5))
                           if model_config.learn_curvature else None)
        self.add_callback(CheckpointCallback())  # checksums.sha256 in every checkpoint

    def _get_train_sampler(self, train_dataset=None):
        return self._train_sampler

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, _ in model.named_parameters()]  # the original decays every parameter

    def create_optimizer(self, *args, **kwargs):
        """As the Trainer's, plus a learnt curvature's own group (its LR, no weight decay)."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(*args, **kwargs)
        if created and self._curvature is not None:
            add_curvature_param_group(optimizer, self.accelerator.unwrap_model(self.model),
                                      getattr(self.args, "curvature_learning_rate", 1e-2))
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(pixel_values=inputs["pixel_values"])
        embeddings, global_labels = gather_batch(outputs.embeddings.float(), labels)
        c = getattr(outputs, "curvature", None)  # a learnt c: the loss is differentiable in it
        result = self.loss_fn(embeddings, global_labels, **({} if c is None else {"curvature": c}))
        if model.training:
            for key, value in result.stats.items():
                if key not in ("num_classes", "samples_per_class"):
                    self._loss_stats[key].append(value)  # detached tensors: no sync inside the step
        return (result.loss, outputs) if return_outputs else result.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            out = model(pixel_values=inputs["pixel_values"])
        return None, (out.embeddings.float(), out.encoder_embeddings.float()), labels

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """As `Trainer.evaluate`; with a `gallery_dataset`, the eval split is the query set scored
        against the gallery (both embedded through the distributed prediction loop)."""
        if self.gallery_dataset is None or self.compute_metrics is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        compute, self.compute_metrics = self.compute_metrics, None
        try:
            queries = self.predict(eval_dataset if eval_dataset is not None else self.eval_dataset)
            gallery = self.predict(self.gallery_dataset)
        finally:
            self.compute_metrics = compute
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in compute(queries, gallery).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Weights through `from_pretrained`, which maps the legacy on-disk ViT key names back to the
        in-memory ones (the base Trainer's plain `load_state_dict` silently misses them all)."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=next(target.parameters()).dtype)
        target.load_state_dict(loaded.state_dict())

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`, after checking the checkpoint to resume from (`checkpoint.resume_checkpoint`)."""
        return super().train(resume_checkpoint(self, resume_from_checkpoint), *args, **kwargs)

    def _load_best_model(self) -> None:
        verify_manifest(self.state.best_model_checkpoint)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._curvature is not None and "loss" in logs:
            logs.update(self._curvature.logs(self.accelerator.unwrap_model(self.model)))
        if self._loss_stats and "loss" in logs:
            reduce = {"min": torch.min, "max": torch.max}  # extremes over the logging window, means otherwise
            logs.update({f"train_{k}": round(reduce.get(k.rsplit("_", 1)[-1], torch.mean)(torch.stack(v).float()).item(), 4)
                         for k, v in self._loss_stats.items()})
            self._loss_stats.clear()
        super().log(logs, *args, **kwargs)
