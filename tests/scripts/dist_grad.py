# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""2-process check of gather_with_grad under DDP, launched by tests/test_distributed.py.

    ACCELERATE_USE_CPU=1 python -m accelerate.commands.launch --multi_gpu --num_processes 2 \
        --main_process_port PORT tests/scripts/dist_grad.py OUT_DIR

Each rank takes its half of a fixed global batch, runs a small model wrapped in DDP by
``Accelerator.prepare``, gathers the embeddings (with gradient) and labels, computes the pairwise
loss on the global batch and backpropagates. Every rank writes ``OUT_DIR/rank{r}.pt`` with its loss,
parameter gradients and gathered labels per case; the test compares them with one process on the
same global batch. ``make_model`` / ``make_batch`` / ``embed`` are imported by the test too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from modeling_hvit.distributed import exit_launched_process
from modeling_hvit.hyperbolic import clip_features, expmap0
from modeling_hvit.losses import PairwiseCrossEntropyLoss

# case name → (geometry, classes in the global batch, samples per class m)
CASES = {"poincare_m2": ("poincare", 8, 2), "sphere_m3": ("sphere", 4, 3)}
IN_DIM, EMB_DIM, CURVATURE = 16, 8, 0.1


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_DIM, 32), nn.GELU(), nn.Linear(32, EMB_DIM))


def make_batch(num_classes: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed global batch, class-major ([c0]*m, [c1]*m, …) as ClassPairSampler lays it out."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(num_classes, 1, IN_DIM, generator=g)
    x = (centres + 0.5 * torch.randn(num_classes, m, IN_DIM, generator=g)).reshape(-1, IN_DIM)
    labels = torch.arange(100, 100 + num_classes).repeat_interleave(m)
    return x, labels


def embed(model: nn.Module, x: torch.Tensor, geometry: str) -> torch.Tensor:
    z = model(x)
    return expmap0(clip_features(z), CURVATURE) if geometry == "poincare" else z


def detached_gather(x: torch.Tensor) -> torch.Tensor:
    """The original / PML trick: gather without grad, put the local slice back (1/W gradients)."""
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, 0)


def main(out_dir: Path) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    from modeling_hvit.distributed import gather_batch, gather_with_grad, gather_without_grad

    accelerator = Accelerator()
    assert accelerator.num_processes == 2, f"expected 2 processes, got {accelerator.num_processes}"
    assert dist.is_initialized() and dist.get_world_size() == 2, "no 2-rank process group"
    rank, world = accelerator.process_index, accelerator.num_processes
    results: dict = {"world_size": dist.get_world_size(), "distributed_type": str(accelerator.distributed_type)}

    runs = [(name, name, gather_batch) for name in CASES]
    runs.append(("poincare_m2_detached", "poincare_m2", None))
    for key, case, gather in runs:
        geometry, num_classes, m = CASES[case]
        model = accelerator.prepare(make_model())
        x, labels = make_batch(num_classes, m)
        rows = x.shape[0] // world
        local = slice(rank * rows, (rank + 1) * rows)
        emb = embed(model, x[local], geometry)
        if gather is None:
            emb_all, lab_all = detached_gather(emb), gather_without_grad(labels[local])
        else:
            emb_all, lab_all = gather(emb, labels[local])
        out = PairwiseCrossEntropyLoss(geometry, curvature=CURVATURE)(emb_all, lab_all)
        accelerator.backward(out.loss)
        results[key] = {
            "loss": out.loss.item(),
            "labels": lab_all.clone(),
            "grads": {n: p.grad.clone() for n, p in accelerator.unwrap_model(model).named_parameters()},
        }

    # Unequal per-rank sizes must raise the same clear error on every rank (not hang).
    try:
        gather_with_grad(torch.zeros(3 + rank, EMB_DIM, requires_grad=True))
        results["unequal_error"] = None
    except ValueError as err:
        results["unequal_error"] = str(err)

    torch.save(results, out_dir / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroy the process group before exiting


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_launched_process(0)  # as the CLIs end: no interpreter finalization under the launcher
