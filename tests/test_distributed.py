# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""gather_with_grad: a real 2-process DDP run must reproduce one process's gradients on the global batch."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_hvit.distributed import gather_batch, gather_with_grad, gather_without_grad, is_distributed
from modeling_hvit.losses import PairwiseCrossEntropyLoss

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "dist_grad.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("dist_grad", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_is_identity():
    assert not is_distributed()
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_with_grad(x) is x and gather_without_grad(x) is x
    emb, lab = gather_batch(x, torch.arange(4))
    assert emb is x and lab.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="4 embeddings but 3 labels"):
        gather_batch(x, torch.arange(3))


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_grad")
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for attempt in range(2):  # a second try on a fresh port: the free port can be taken by another job meanwhile
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(SCRIPT), str(out)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _reference(module, case: str) -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    """One process, whole global batch, no gather."""
    geometry, num_classes, m = module.CASES[case]
    model = module.make_model()
    x, labels = module.make_batch(num_classes, m)
    out = PairwiseCrossEntropyLoss(geometry, curvature=module.CURVATURE)(module.embed(model, x, geometry), labels)
    out.loss.backward()
    return out.loss.item(), {n: p.grad for n, p in model.named_parameters()}, labels


@pytest.mark.parametrize("case", ["poincare_m2", "sphere_m3"])
def test_two_process_gradients_equal_single_process(two_process_results, case):
    module = _load_script()
    loss, grads, labels = _reference(module, case)
    for rank, res in enumerate(two_process_results):
        assert res["world_size"] == 2 and "MULTI_CPU" in res["distributed_type"]
        got = res[case]
        assert got["labels"].tolist() == labels.tolist(), rank  # gathered in rank order
        assert got["loss"] == pytest.approx(loss, abs=1e-6, rel=1e-6), rank
        assert got["grads"].keys() == grads.keys()
        for name, g in grads.items():
            assert g.abs().max() > 1e-3  # a real gradient, not a vanishing one
            torch.testing.assert_close(got["grads"][name], g, atol=1e-6, rtol=1e-6, msg=f"rank {rank} {name}")


def test_detached_gather_would_fail_the_check(two_process_results):
    """The original's detached gather gives 1/W of the gradient: the comparison above detects it."""
    module = _load_script()
    _, grads, _ = _reference(module, "poincare_m2")
    got = two_process_results[0]["poincare_m2_detached"]["grads"]
    for name, g in grads.items():
        assert not torch.allclose(got[name], g, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got[name], g / 2, atol=1e-6, rtol=1e-5)


def test_unequal_batch_sizes_raise_on_every_rank(two_process_results):
    for res in two_process_results:
        msg = res["unequal_error"]
        assert msg is not None and "same shape" in msg
        assert "rank 0: (3, 8)" in msg and "rank 1: (4, 8)" in msg
