# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""All-gather across processes that keeps the local slice's gradient (SPEC §3, HF_NOTES §3.4).

Contract of :func:`gather_with_grad` (every rank calls it on its local x of the same shape):

- forward: the concatenation along dim 0 of every rank's x, in rank order; identical on all ranks.
- backward: the gradient given to the local x is the **sum over ranks** of the gradients that every
  rank's loss sends to that slice. When every rank computes the same loss L on the gathered batch
  (the intended use), that is W·∂L/∂x_local, and DDP's gradient *averaging* (÷W) then leaves each
  rank with exactly ∂L/∂θ: the gradient one process computes on the same global batch (the
  original's detached gather gives 1/W of it). Without DDP averaging (summing gradients yourself)
  divide the loss by W.

It is a collective: call it on every rank at every step, gradient-accumulation micro-steps
included. Per-rank shapes must be equal (fixed class-pair batches guarantee it); this is checked
with one small extra all-gather and a mismatch raises ``ValueError`` on every rank instead of
hanging or silently misaligning. Uses only public ``torch.distributed`` calls (all_gather,
all_reduce), not the deprecated ``torch.distributed.nn`` functional API. With one process (or no
process group) both functions return their input unchanged.

:func:`run_on_main` runs a computation (the evaluation's neighbour search and metrics) on rank 0 only
and gives every rank its result, so W processes do not repeat the same work W times.
:func:`exit_launched_process` ends a launched process without the interpreter's finalization (the CLIs
call it), where a communication thread could otherwise abort a finished run.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["GatherWithGrad", "exit_launched_process", "gather_batch", "gather_with_grad", "gather_without_grad",
           "is_distributed", "run_on_main"]

T = TypeVar("T")

_MAX_DIMS = 8
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_same_shape(x: torch.Tensor, what: str) -> None:
    """All-gather (ndim, dtype, shape) and raise on every rank if any rank differs."""
    if x.dim() == 0 or x.dim() > _MAX_DIMS:
        raise ValueError(f"{what}: expected a tensor with 1 to {_MAX_DIMS} dims, got shape {tuple(x.shape)}")
    code = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else len(_DTYPES)
    desc = torch.full((_MAX_DIMS + 2,), -1, dtype=torch.int64, device=x.device)
    desc[0], desc[1] = x.dim(), code
    desc[2:2 + x.dim()] = torch.tensor(x.shape, dtype=torch.int64)
    everyone = [torch.empty_like(desc) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, desc)
    if any(not torch.equal(d, everyone[0]) for d in everyone):
        shapes = []
        for rank, d in enumerate(everyone):
            ndim, dt = int(d[0]), int(d[1])
            dtype = _DTYPES[dt] if dt < len(_DTYPES) else "other"
            shapes.append(f"rank {rank}: {tuple(d[2:2 + ndim].tolist())} {dtype}")
        raise ValueError(
            f"{what}: every process must contribute the same shape and dtype (equal per-device batch "
            f"sizes: use ClassPairSampler, or dataloader_drop_last=True); got " + ", ".join(shapes))


class GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces (sums) and returns the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        ctx.local_rows = x.shape[0]
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_rows
        return grad[start:start + ctx.local_rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, …) per rank → (W·B, …) on every rank; gradients flow back to each rank's own slice.

    See the module docstring for the exact gradient contract (sum over ranks, then DDP's ÷W).
    """
    if not is_distributed():
        return x
    _check_same_shape(x, "gather_with_grad")
    return GatherWithGrad.apply(x)


@torch.no_grad()
def gather_without_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, …) per rank → (W·B, …) on every rank, detached (labels, metrics)."""
    if not is_distributed():
        return x
    _check_same_shape(x, "gather_without_grad")
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch for the loss: embeddings gathered with gradient, labels without.

    Example (inside ``compute_loss``)::

        emb, lab = gather_batch(outputs.embeddings, labels)
        loss = loss_fn(emb, lab).loss   # same value on every rank; DDP's ÷W makes grads exact
    """
    emb, lab = gather_with_grad(embeddings), gather_without_grad(labels.to(embeddings.device))
    if emb.shape[0] != lab.shape[0]:  # checked after the collectives, so every rank raises alike
        raise ValueError(f"gather_batch: {embeddings.shape[0]} embeddings but {labels.shape[0]} labels per "
                         f"process")
    return emb, lab


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; every rank returns its (pickled, broadcast) result. A collective: every
    rank calls it. An exception in ``fn`` is raised on every rank (rank 0: the original; the others: the
    same exception when it pickles, else a RuntimeError with its message), so no rank waits forever."""
    if not is_distributed():
        return fn()
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn())
        except Exception as err:  # noqa: BLE001 - sent to the other ranks, then raised here too
            error = err
            try:
                pickle.dumps(err)
                box[0] = (False, err)
            except Exception:  # noqa: BLE001
                box[0] = (False, RuntimeError(f"on the main process: {type(err).__name__}: {err}"))
    dist.broadcast_object_list(box, src=0)  # NCCL: through the current CUDA device (set by the launcher)
    ok, value = box[0]
    if error is not None:
        raise error
    if not ok:
        raise value
    return value


def exit_launched_process(code: int) -> None:
    """End this process with ``code`` now, skipping the interpreter's finalization, when it is one of
    several processes started by a launcher (``WORLD_SIZE`` > 1); otherwise return and let the caller
    exit normally. Call it once the work is done, its files written and the process group destroyed.

    Why: a process group's communication threads (gloo workers, the NCCL watchdog) outlive
    ``destroy_process_group`` while a module (DDP) still holds the group, and a tensor they release may
    need the GIL; during finalization a thread cannot take it and is unwound through a ``noexcept``
    destructor, and the process aborts ("terminate called without an active exception", exit -6) after
    a complete, saved run. Seen in CI on 2-process CPU runs, about once per CI run, in different tests;
    never in 90 local runs. What finalization does that matters here is done first: logging and the
    standard streams are flushed, child processes (DataLoader workers) are stopped and joined."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    import logging
    import multiprocessing

    logging.shutdown()
    children = multiprocessing.active_children()
    for child in children:
        if child.daemon:  # as the interpreter's exit does: daemonic children (DataLoader workers) are stopped
            child.terminate()
    for child in children:
        child.join(timeout=10)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)
