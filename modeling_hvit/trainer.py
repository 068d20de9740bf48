# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""HViTTrainer: the HF Trainer with the class-pair sampler, the pairwise loss on the global batch,
the original optimiser settings and retrieval metrics as evaluation."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import ParallelMode
from transformers.utils import logging

from .checkpoint import CheckpointCallback, resume_checkpoint, verify_manifest
from .curvature import CurvatureMonitor, add_curvature_param_group
from .distributed import gather_batch, run_on_main
from .errors import UserError
from .losses import PairwiseCrossEntropyLoss
from .evaluation import evaluate_embeddings, head_linear_output
from .metrics import DEFAULT_RECALL_KS
from .sampling import ClassPairSampler, passes_for_workers
from .data.batched_transforms import BatchedTrainTransform, collate_padded, crop_generator
from .data.transforms import model_preprocessing, pixel_values_for

__all__ = ["HViTTrainer", "HViTTrainingArguments", "NonFiniteStepError", "default_num_workers", "make_compute_metrics",
           "resolve_train_batch"]

logger = logging.get_logger(__name__)


@dataclass
class HViTTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults (SPEC §5) and the loss/sampler settings."""

    output_dir: str | None = field(default="outputs/hvit-demo", metadata={"help": "Where to write the model."})
    learning_rate: float = field(default=3e-5, metadata={"help": "3e-5 for ViT-S/DeiT-S, 1e-5 for DINO."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay, on all parameters."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Constant, no warm-up (SPEC §5)."})
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient-norm clip (SPEC §5)."})
    global_batch_size: int | None = field(default=900, metadata={"help": (
        "Images per optimiser step over ALL processes (the paper's 900 = classes × m): with W processes each "
        "gets global_batch_size / W (must divide; the global batch must be a multiple of m), so the recipe "
        "and its step count do not change with the number of GPUs. Recipes set this.")})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": (
        "Images per process; when given it overrides --global_batch_size (global = this × processes).")})
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
    dataloader_num_workers: int | None = field(default=None, metadata={
        "help": "Decoding workers per process; default min(8, CPUs / processes on this node)."})
    dataloader_persistent_workers: bool | None = field(default=None, metadata={
        "help": "Keep the DataLoader workers alive across epochs (not re-forked each epoch); default: on with workers."})
    on_nonfinite: str = field(default="error", metadata={"help": (
        "A step whose loss or gradient norm is NaN/inf: 'error' stops the run naming the step (before the update); "
        "'skip' drops that update, warns and counts it (nonfinite_steps_skipped in the logs).")})
    report_to: None | str | list[str] = field(
        default="tensorboard" if importlib.util.find_spec("tensorboard") else "none",
        metadata={"help": "Loggers: TensorBoard when it is installed (logs under output_dir/runs), else none."})
    augment_on_device: bool = field(default=False, metadata={"help": (
        "DataLoader workers only decode the train images (uint8, own size; small with --cache_images) and the "
        "random crop + resize + flip + normalise run as batched tensor ops on the model's device "
        "(data.batched_transforms), crops drawn from (seed, step): statistically the PIL path's crops, not the "
        "same draws. Off by default, on GPU too: it pays when workers cannot keep up, and without "
        "--cache_images every batch is padded to its largest original image.")})
    allow_partial_resume: bool = field(default=False, metadata={"help": "Resume from a checkpoint without its "
                                       "optimizer/scheduler/RNG state or saved with another model head or batch size "
                                       "(not exact; warned and recorded)."})

    def __post_init__(self):
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        for flag in ("bf16_full_eval", "fp16_full_eval"):
            if getattr(self, flag):
                raise ValueError(
                    f"--{flag} casts the whole model, head included, to half precision, and training would then "
                    "continue with half-precision weights; it is not supported. Use --bf16 true (or --fp16 true): "
                    "autocast for training and evaluation alike, with float32 weights and head.")
        if self.on_nonfinite not in ("error", "skip"):
            raise ValueError(f"--on_nonfinite {self.on_nonfinite!r}: expected 'error' or 'skip'")
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_num_workers()
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        elif self.dataloader_persistent_workers and self.dataloader_num_workers == 0:
            raise ValueError("--dataloader_persistent_workers needs --dataloader_num_workers > 0 (it keeps worker "
                             "processes alive between epochs)")
        if self.per_device_train_batch_size is None and self.global_batch_size is None:
            raise ValueError("set --global_batch_size (images per step over all processes) or "
                             "--per_device_train_batch_size")
        super().__post_init__()  # sets up the device and the process group: the world size is known after it
        if self.parallel_mode == ParallelMode.NOT_DISTRIBUTED:  # several GPUs, one process: no nn.DataParallel
            self._use_one_gpu()
        self.per_device_train_batch_size, self.global_batch_size = resolve_train_batch(
            self.global_batch_size, self.per_device_train_batch_size, self.world_size, self.samples_per_class)

    def _use_one_gpu(self) -> None:
        """Train on one device instead of `nn.DataParallel`, which would multiply the batch by the GPU count."""
        logger.warning(
            f"{self.n_gpu} GPUs are visible to a single process: training on {self.device} only. To use them all "
            f"(global batch split over them): accelerate launch --multi_gpu --num_processes {self.n_gpu} train_hvit.py ...")
        self._n_gpu = 1

    def __getstate__(self):
        """Pickles (the Trainer's `training_args.bin`) never hold the Hub token; it stays in memory."""
        return {**self.__dict__, "hub_token": None}

    @property
    def ks(self) -> tuple[int, ...] | None:
        return None if not self.recall_ks else tuple(int(k) for k in str(self.recall_ks).split(","))


def resolve_train_batch(global_batch_size: int | None, per_device_batch_size: int | None, world_size: int,
                        samples_per_class: int) -> tuple[int, int]:
    """(per-process, global) train batch for W = ``world_size`` processes.

    The recipe's batch is the global one (the paper's 900 images per step, whatever the GPU count):
    each process gets ``global_batch_size / W``. An explicit ``per_device_batch_size`` wins (global =
    per-device × W). The global batch must hold whole classes (a multiple of m); the per-process
    share need not (the loss sees the gathered global batch, in stream order).
    """
    if per_device_batch_size is not None:
        if per_device_batch_size < 1:
            raise ValueError(f"--per_device_train_batch_size {per_device_batch_size}: expected ≥ 1")
        per_device, total, source = per_device_batch_size, per_device_batch_size * world_size, (
            f"--per_device_train_batch_size {per_device_batch_size} × {world_size} process(es)")
    else:
        if global_batch_size is None or global_batch_size < 1:
            raise ValueError(f"--global_batch_size {global_batch_size}: expected ≥ 1")
        if global_batch_size % world_size:
            step = math.lcm(world_size, samples_per_class)
            raise ValueError(
                f"--global_batch_size {global_batch_size} does not split evenly over {world_size} processes; use a "
                f"multiple of {step} (processes × samples_per_class), e.g. {max(step, global_batch_size // step * step)}, "
                f"or another number of processes")
        per_device, total, source = global_batch_size // world_size, global_batch_size, f"--global_batch_size {global_batch_size}"
    if total % samples_per_class:
        raise ValueError(f"the global batch ({source} = {total}) must be a multiple of --samples_per_class "
                         f"{samples_per_class} (whole classes per step), e.g. "
                         f"{max(samples_per_class, total // samples_per_class * samples_per_class)}")
    return per_device, total


def default_num_workers(cpus: int | None = None, local_processes: int | None = None) -> int:
    """Decoding workers per process: the node's CPUs shared by its training processes, at most 8."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cpus // max(1, local_processes)))


class NonFiniteStepError(UserError, FloatingPointError):
    """A training step produced a NaN/inf loss or gradient norm (`--on_nonfinite error`). A `UserError`:
    the command line prints it as one line, which says what to change (the learning rate, the data)."""


def make_compute_metrics(geometry: str, curvature: float | Callable[[], float], ks: Sequence[int] | None = None, *,
                         hierarchy: tuple[Sequence, Sequence] | None = None, head: torch.nn.Module | None = None):
    """`compute_metrics` for the Trainer: Recall@K, P@1, R-Precision, MAP@R of the head embeddings
    (in their geometry) and of the encoder features (cosine, keys prefixed ``encoder_``), through
    `evaluation.evaluate_embeddings`. With ``gallery`` (a second `EvalPrediction`), queries are
    scored against it (In-Shop); otherwise every item against all the others. ``curvature`` may be a callable
    read at each evaluation (a learnt c: ``HViTModel.learnt_curvature``).

    ``hierarchy=(labels, groups)``: the eval split's class and super-class of each item, in eval-dataset
    order, adds ``coarse_recall@K``, ``coarse_map@r`` and ``mistake_severity@1`` (self-retrieval). The
    predictions come in that order, with one process or several (accelerate's ``gather_for_metrics``
    concatenates the ranks' batches in sampler order and drops the padding of the last one), or its
    prefix with ``dataloader_drop_last``; their labels must equal (that prefix of) ``labels``, else the
    evaluation stops rather than pair items with another item's super-class.
    ``radius_correct_correlation`` is always reported, except for the sphere without ``head`` (the model's
    linear head: the sphere's radius is the norm of its output before normalisation).
    ``device``: where the neighbour search and the metrics run (`HViTTrainer` passes the model's device;
    default: the CPU)."""

    def compute_metrics(pred: EvalPrediction, gallery: EvalPrediction | None = None,
                        device: torch.device | str | None = None) -> dict[str, float]:
        emb, enc = (torch.as_tensor(np.asarray(a)) for a in pred.predictions)
        labels = np.asarray(pred.label_ids)
        ks_ = ks or DEFAULT_RECALL_KS  # K ≥ the gallery: dropped with a warning (metrics.usable_recall_ks)
        ref = None
        if gallery is not None:
            ref = (*(torch.as_tensor(np.asarray(a)) for a in gallery.predictions), np.asarray(gallery.label_ids))
        groups = None
        if hierarchy is not None and gallery is None:
            want, n = np.asarray(hierarchy[0]), len(labels)
            # a prefix with --dataloader_drop_last (the last incomplete eval batch is dropped)
            if n > len(want) or not np.array_equal(want[:n], labels):
                raise ValueError(f"the evaluation predictions ({n} items) are not in the order of the eval "
                                 f"dataset ({len(want)} labels): its hierarchy column cannot be paired with them")
            groups = np.asarray(hierarchy[1])[:n]
        head_output = head_linear_output(head, enc) if head is not None and geometry == "sphere" else None
        c = curvature() if callable(curvature) else curvature
        return evaluate_embeddings(emb, enc, labels, geometry, c, ks_, gallery=ref, groups=groups,
                                   head_output=head_output, device=device)

    return compute_metrics


class HViTTrainer(Trainer):
    """Trainer for HViT metric learning.

    - the train sampler is a `ClassPairSampler` over `train_labels` (the same global stream on every
      rank; accelerate gives rank r the batches r, r + W, …), so each global batch holds distinct classes;
    - the loss is `PairwiseCrossEntropyLoss` on the embeddings of *all* ranks, gathered with gradient:
      parameter gradients equal a single process on the global batch;
    - AdamW with weight decay on every parameter (the original), constant LR, clip 3 (the arguments);
    - evaluation embeds the eval split and reports retrieval metrics (`make_compute_metrics`), searching
      on the model's device, once (rank 0), every rank returning the same values (`distributed.run_on_main`);
    - loss statistics (positive/negative logits, in-batch accuracy) are averaged into the logs;
    - a NaN/inf loss or gradient norm stops the run at that step (or skips the update,
      ``on_nonfinite="skip"``);
    - with ``train_augment`` (``augment_on_device``) the workers only decode, batches are padded
      (`collate_padded`) and the random crops are applied to the batch on the device, drawn from
      ``(seed, step, micro-batch, rank)`` (`crop_generator`): reproducible and resume-exact;
    - an "epoch" (``num_train_epochs``, the logged epoch) is one pass of the sampler over the classes; with
      DataLoader workers a loader epoch holds several, so that every worker decodes (`passes_for_workers`; the
      workers persist across loader epochs); the logs count ``images_seen`` and
      ``train_samples_per_second`` is images (all processes) per second.

    With a train dataset the model is prepared for training (DDP-wrapped under `accelerate launch`)
    at construction, so an `evaluate()`/`predict()` before `train()` cannot leave training undistributed.
    """

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let the Trainer divide by GA steps

    def __init__(self, *args, train_labels: Sequence[int] | None = None,
                 loss_fn: PairwiseCrossEntropyLoss | None = None, gallery_dataset=None,
                 train_augment: BatchedTrainTransform | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gallery_dataset = gallery_dataset
        model_config = self.accelerator.unwrap_model(self.model).config
        if train_augment is None and getattr(self.args, "augment_on_device", False):
            prep = model_preprocessing(self.model)  # the model's input size and normalisation, scale 0.2–1
            train_augment = BatchedTrainTransform(prep.crop_size, prep.image_mean, prep.image_std)
        self.train_augment = train_augment
        self._augment_key: tuple[int, int] | None = None  # (step, micro-batch) of the last augmented batch
        self.loss_fn = loss_fn or PairwiseCrossEntropyLoss(
            model_config.geometry, getattr(self.args, "temperature", None), model_config.curvature,
            reduction=getattr(self.args, "loss_reduction", "sum"),
            samples_per_class=getattr(self.args, "samples_per_class", None))  # fixed shapes: no sync
        self.train_labels = list(train_labels) if train_labels is not None else None
        if self.train_dataset is not None and self.train_labels is None:
            raise ValueError("HViTTrainer needs train_labels (collect them before attaching the transform)")
        self._train_sampler = None
        if self.train_labels is not None:
            self._train_sampler = ClassPairSampler(
                self.train_labels, getattr(self.args, "samples_per_class", 2), self.args.per_device_train_batch_size,
                world_size=self.args.world_size, seed=self.args.seed)
            # Enough batches per loader epoch for every worker (same stream whatever the number of passes).
            self._train_sampler.passes_per_epoch = passes_for_workers(
                self._train_sampler.steps_per_pass, self.args.dataloader_num_workers, self.args.dataloader_prefetch_factor)
            if self._train_sampler.passes_per_epoch > 1 and self.args.max_steps <= 0:
                # `num_train_epochs` counts class passes, not loader epochs of several passes: fix the step count.
                per_pass = max(1, self._train_sampler.steps_per_pass // self.args.gradient_accumulation_steps)
                self.args.max_steps = math.ceil(self.args.num_train_epochs * per_pass)
        self._loss_stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._curvature = (CurvatureMonitor(getattr(self.args, "curvature_bound_patience", 5))
                           if model_config.learn_curvature else None)
        self.add_callback(CheckpointCallback())  # checksums.sha256 in every checkpoint
        self._train_dataloader = None
        self._step_loss_finite: torch.Tensor | None = None
        self._step_grad_norm: torch.Tensor | float | None = None
        self.nonfinite_steps_skipped = 0
        self._float32_forward = False
        self.add_callback(_NonFiniteGuard(self))
        if self.train_dataset is not None and self.model_wrapped is self.model:
            # The Trainer's eval loop prepares the model in evaluation mode (no DDP) and accelerate then
            # treats it as prepared, so train() after an evaluate()/predict() would train unwrapped:
            # no gradient averaging, replicas drifting apart. Prepare it for training first.
            self.model_wrapped = self.accelerator.prepare_model(self.model)

    def _get_train_sampler(self, train_dataset=None):
        return self._train_sampler

    def get_train_dataloader(self):
        collator = self.data_collator
        if self.train_augment is not None:  # decode-only items of any size: padded batches
            self.data_collator = collate_padded
        try:
            self._train_dataloader = super().get_train_dataloader()
        finally:
            self.data_collator = collator
        return self._train_dataloader

    def _train_pixel_values(self, model, inputs: dict) -> torch.Tensor:
        """The batch the model trains on: decode-only batches are augmented here, on the model's device
        (in float32, outside autocast), with crops drawn from ``(seed, step, micro-batch, rank)``."""
        if "image_sizes" not in inputs:
            if self.train_augment is not None and model.training:
                raise ValueError("augment_on_device: the train batches must be decode-only images with their sizes "
                                 "(train_dataset with transforms.DecodeTransform; the Trainer pads them)")
            return pixel_values_for(model, inputs["pixel_values"])
        if self.train_augment is None:
            raise ValueError("the batch holds decode-only images (image_sizes): pass train_augment or "
                             "--augment_on_device true to crop them on the device")
        step = self.state.global_step  # optimiser steps done: restored on resume
        micro = self._augment_key[1] + 1 if self._augment_key and self._augment_key[0] == step else 0
        self._augment_key = (step, micro)
        generator = crop_generator(self.args.seed, step, micro, self.args.process_index)
        images = inputs["pixel_values"]
        with torch.autocast(images.device.type, enabled=False):
            return self.train_augment(images, inputs["image_sizes"], generator=generator)

    def num_examples(self, dataloader) -> int:
        """Images per epoch for the train stream (all processes): an epoch is one pass over the classes,
        m images each, not over the dataset's images (the Trainer's images/s and "Num examples" use it)."""
        if dataloader is self._train_dataloader and self._train_sampler is not None:
            return len(self._train_sampler)
        return super().num_examples(dataloader)

    @contextlib.contextmanager
    def float32_forward(self) -> Iterator[None]:
        """Within it, `predict`/`evaluate` run the model in float32 without the bf16/fp16 autocast
        (`--curvature auto` measures δ on float32 features, as the original)."""
        self._float32_forward = True
        try:
            yield
        finally:
            self._float32_forward = False

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
        outputs = model(pixel_values=self._train_pixel_values(model, inputs))  # uint8 → normalised (augmented)
        embeddings, global_labels = gather_batch(outputs.embeddings.float(), labels)
        c = getattr(outputs, "curvature", None)  # a learnt c: the loss is differentiable in it
        result = self.loss_fn(embeddings, global_labels, **({} if c is None else {"curvature": c}))
        if model.training:
            finite = torch.isfinite(result.loss.detach())  # checked once per optimiser step (_NonFiniteGuard)
            self._step_loss_finite = finite if self._step_loss_finite is None else self._step_loss_finite & finite
            for key, value in result.stats.items():
                if key not in ("num_classes", "samples_per_class"):
                    self._loss_stats[key].append(value)  # detached tensors: no sync inside the step
        return (result.loss, outputs) if return_outputs else result.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        labels = inputs["labels"]
        forward = model
        if self._float32_forward:  # the class's own forward, without accelerate's autocast wrapper on the instance
            base = self.accelerator.unwrap_model(model)
            forward = functools.partial(type(base).forward, base)
        with torch.no_grad(), self.compute_loss_context_manager():
            out = forward(pixel_values=pixel_values_for(model, inputs["pixel_values"]))
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
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self._metrics_on_device(compute, queries, gallery).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def evaluation_loop(self, *args, **kwargs):
        """As the Trainer's, with `compute_metrics` searching on the model's device (`_metrics_on_device`)."""
        compute = self.compute_metrics
        if compute is not None and not self.args.batch_eval_metrics:
            self.compute_metrics = functools.partial(self._metrics_on_device, compute)
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            self.compute_metrics = compute

    def _metrics_on_device(self, compute: Callable[..., dict], *args, **kwargs) -> dict[str, float]:
        """``compute(*args)`` once, on rank 0 and the model's device (a ``compute`` with a ``device``
        parameter: `make_compute_metrics`); every rank returns rank 0's metrics (`distributed.run_on_main`)."""
        device = next(self.accelerator.unwrap_model(self.model).parameters()).device
        if "device" in inspect.signature(compute).parameters:
            kwargs.setdefault("device", device)
        return run_on_main(lambda: compute(*args, **kwargs))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Weights through `from_pretrained`, which maps the legacy on-disk ViT key names back to the
        in-memory ones (the base Trainer's plain `load_state_dict` silently misses them all)."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=next(target.parameters()).dtype)
        target.load_state_dict(loaded.state_dict())

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`, after checking the checkpoint to resume from (`checkpoint.resume_checkpoint`)."""
        self._augment_key = None  # device crops restart from (seed, step) of the run
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
        if "loss" in logs or "train_runtime" in logs:
            logs["images_seen"] = self.state.global_step * self.get_total_train_batch_size(self.args)
            if getattr(self.args, "on_nonfinite", "error") == "skip":
                logs["nonfinite_steps_skipped"] = self.nonfinite_steps_skipped
        passes = self._train_sampler.passes_per_epoch if self._train_sampler is not None else 1
        if passes > 1 and self.state.epoch is not None:  # the logged epoch counts class passes, as the arguments
            epoch, self.state.epoch = self.state.epoch, self.state.epoch * passes
            try:
                super().log(logs, *args, **kwargs)
            finally:
                self.state.epoch = epoch
            return
        super().log(logs, *args, **kwargs)

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's pre-clip gradient norm of this step, kept for `_check_finite_step` (no second pass)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._step_grad_norm = grad_norm
        return grad_norm

    def _check_finite_step(self, model) -> None:
        """Before the optimiser step: stop (or skip the update) if this step's loss or gradient norm is
        not finite. Loss and (DDP-averaged) gradients are equal on every rank, so all ranks agree."""
        loss_ok = True if self._step_loss_finite is None else bool(self._step_loss_finite)
        self._step_loss_finite = None
        # With fp16's loss scaling, inf gradients are routine (the scaler skips the step and lowers the scale).
        check_grads = loss_ok and self.accelerator.scaler is None
        grad_norm, self._step_grad_norm = self._step_grad_norm, None  # the norm the Trainer just computed
        if check_grads and not torch.is_tensor(grad_norm):  # a float (DeepSpeed) or none: compute it here
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        grad_norm = grad_norm if check_grads else None
        if loss_ok and (grad_norm is None or torch.isfinite(grad_norm)):
            return
        step = self.state.global_step + 1
        what = "the training loss is not finite" if not loss_ok else f"the gradient norm is {grad_norm.item()}"
        if getattr(self.args, "on_nonfinite", "error") == "skip":
            model.zero_grad(set_to_none=True)  # the optimiser skips parameters without a gradient
            self.nonfinite_steps_skipped += 1
            logger.warning(f"step {step}: {what}; update skipped ({self.nonfinite_steps_skipped} so far, --on_nonfinite skip)")
            return
        raise NonFiniteStepError(
            f"step {step}: {what}; stopped before the update (the weights are those after step {step - 1}). "
            f"Lower --learning_rate or check the data; --on_nonfinite skip skips such steps instead (counted in the logs).")


class _NonFiniteGuard(TrainerCallback):
    """Calls `HViTTrainer._check_finite_step` between gradient clipping and the optimiser step."""

    def __init__(self, trainer: HViTTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.trainer._check_finite_step(model if model is not None else self.trainer.model)
