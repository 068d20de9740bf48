"""A learnt curvature under `accelerate launch` with two CPU processes (issue 16.1: one c across ranks, resume).

`train_hvit.py --learn_curvature` on the demo data, a few plain-SGD steps, through
tests/scripts/train_curvature_record.py (per-rank parameters after training, deterministic transforms):

- both ranks end with the same c (and the same parameters, bit for bit), c moved from its initial value,
  and it equals one process trained on the same global batches within 1e-6 (Poincaré and Lorentz heads);
- the negative control hides log c from DDP (its gradient is then not averaged: each rank learns its own c),
  and the same checks must catch it;
- a 2-process resume from the step-2 checkpoint loads exactly the saved log c and ends bit-identical to the
  uninterrupted run.

Why SGD: its update is linear in the gradient, so the 1- vs 2-process comparison checks the averaged gradient
(see tests/test_train_multiprocess.py). The curvature LR is large so that c moves far beyond the tolerances.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_curvature_record.py"
C0 = 0.1
FLAGS = ["--dataset", "demo", "--image_size", "16", "--embedding_dim", "16", "--global_batch_size", "8",
         "--samples_per_class", "2", "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2",
         "--optim", "sgd", "--learning_rate", "0.1", "--learn_curvature", "true", "--curvature", str(C0),
         "--curvature_learning_rate", "0.5", "--max_eval_samples", "16", "--recall_ks", "1",
         "--disable_tqdm", "true", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, processes: int, *extra: str, per_rank_c: bool = False) -> list[dict]:
    """One launch (a second try on a fresh port if the first fails: the port can be taken meanwhile)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(out / "hf"), "HVIT_TEST_PER_RANK_CURVATURE": "1" if per_rank_c else "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for _ in range(2):
        out.mkdir(parents=True, exist_ok=True)
        launch = [sys.executable]
        if processes > 1:
            launch += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(_free_port())]
        cmd = [*launch, str(SCRIPT), str(out), *FLAGS, "--output_dir", str(out / "model"), *extra]
        proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 or processes == 1:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "model" / "metrics.json").read_text())["world_size"] == processes
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]


def _c(rank: dict, key: str = "params") -> float:
    return math.exp(float(rank[key]["log_curvature"]))


def _one_c_across_ranks(two: list[dict], one: dict) -> None:
    """The checks of this file, shared by the run and its negative control."""
    assert [r["ddp"] for r in two] == [[True] * 3] * 2
    for step in range(3):  # the two ranks' batches are the halves of the single process's global batches
        torch.testing.assert_close(torch.cat([two[0]["labels"][step], two[1]["labels"][step]]), one["labels"][step])
    assert _c(two[0]) == _c(two[1]), "the ranks learnt different curvatures"
    for name, p in two[0]["params"].items():
        torch.testing.assert_close(two[1]["params"][name], p, rtol=0, atol=0, msg=name)
    assert _c(two[0]) == pytest.approx(_c(one), rel=1e-6, abs=0)
    for name, want in one["params"].items():
        torch.testing.assert_close(two[0]["params"][name], want, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("curvature_mp")
    return root, _run(root / "two", 2), _run(root / "one", 1)[0]


@pytest.mark.slow
def test_one_learnt_c_across_two_processes_equal_to_one_process(runs):
    root, two, one = runs
    assert _c(one, "initial_params") == pytest.approx(C0, rel=1e-6)
    assert abs(math.log(_c(one) / C0)) > 1e-3  # c moved, by far more than the tolerances below
    _one_c_across_ranks(two, one)
    # the saved model carries the learnt c (rank 0 writes it)
    assert json.loads((root / "two" / "model" / "config.json").read_text())["curvature"] == pytest.approx(_c(two[0]),
                                                                                                          rel=1e-6)


@pytest.mark.slow
def test_one_learnt_c_across_two_processes_lorentz_head(tmp_path):
    """The same on the hyperboloid (its c enters the loss through the Lorentz distance only)."""
    two, one = _run(tmp_path / "two", 2, "--geometry", "lorentz"), _run(tmp_path / "one", 1, "--geometry", "lorentz")[0]
    assert abs(math.log(_c(one) / C0)) > 1e-3
    _one_c_across_ranks(two, one)


@pytest.mark.slow
def test_a_per_rank_c_would_fail_the_check(runs, tmp_path):
    """log c hidden from DDP: nothing averages its gradient, and the ranks' c drift apart."""
    _, _, one = runs
    per_rank = _run(tmp_path / "per_rank", 2, per_rank_c=True)
    assert _c(per_rank[0]) != _c(per_rank[1])
    with pytest.raises(AssertionError, match="different curvatures"):
        _one_c_across_ranks(per_rank, one)


@pytest.mark.slow
def test_two_process_resume_restores_the_learnt_c_exactly(runs, tmp_path):
    root, two, _ = runs
    ckpt = root / "two" / "model" / "checkpoint-2"
    saved = load_file(ckpt / "model.safetensors")["log_curvature"]
    assert json.loads((ckpt / "config.json").read_text())["curvature"] == pytest.approx(math.exp(float(saved)), rel=1e-6)
    resumed = _run(tmp_path / "resumed", 2, "--resume_from_checkpoint", str(ckpt))
    for r in range(2):
        loaded = torch.load(tmp_path / "resumed" / f"loaded_rank{r}.pt", weights_only=False)
        assert torch.equal(loaded["log_curvature"], saved), r
        assert not torch.equal(saved, two[r]["params"]["log_curvature"])  # step 3 still changed it
        for name, p in two[r]["params"].items():
            torch.testing.assert_close(resumed[r]["params"][name], p, rtol=0, atol=0, msg=f"rank {r} {name}")
