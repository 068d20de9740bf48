"""train_hvit.py under `accelerate launch` with two real CPU processes (gloo): training is distributed.

Each run goes through tests/scripts/train_record.py, which calls `training.main` and records, per
rank, whether `compute_loss` got the DDP-wrapped model, the labels of each rank's batches and the
parameters after `train()`. Two processes must (a) train the DDP-wrapped model, (b) end with
identical parameters on both ranks and (c) match one process trained on the same global batches.
The runs use plain SGD: its update is linear in the gradient, so (c) compares the gradients actually
applied; AdamW divides each update by the gradient's running RMS, which turns the float-rounding
noise of mathematically zero gradients (e.g. attention key biases) into lr-sized steps.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_record.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mp") / "data"
    rng = np.random.default_rng(0)
    for c in range(8):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((20, 20, 3)) * 60 + c * 24).astype("uint8")
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _run(data: Path, out: Path, processes: int, extra: list[str]) -> list[dict]:
    out.mkdir(parents=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(out / "hf"), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port())]
    flags = ["--dataset", "folder", "--data_dir", str(data), "--image_size", "16", "--global_batch_size", "8",
             "--samples_per_class", "2", "--max_steps", "3", "--output_dir", str(out / "model"), "--recall_ks", "1,2",
             "--disable_tqdm", "true", "--report_to", "none", "--dataloader_num_workers", "0",
             "--optim", "sgd", "--learning_rate", "0.1", *extra]
    proc = subprocess.run([*launch, str(SCRIPT), str(out), *flags], env=env, cwd=out, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "model" / "metrics.json").read_text())
    assert summary["world_size"] == processes and summary["global_step"] == 3
    assert (out / "model" / "model.safetensors").exists()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--curvature", "auto", "--delta_n", "12", "--delta_draws", "3"],
                                   ["--gradient_checkpointing", "true"]],
                         ids=["fixed_c", "curvature_auto", "gradient_checkpointing"])
def test_two_processes_train_distributed_and_match_one_process(folder_data, tmp_path, extra):
    two = _run(folder_data, tmp_path / "two", 2, extra)
    one = _run(folder_data, tmp_path / "one", 1, extra)[0]

    # (a) every training step of every rank ran the DDP-wrapped model (the before-training evaluation,
    # and the δ prediction of --curvature auto, used to leave it unwrapped)
    for rank in two:
        assert rank["world_size"] == 2 and len(rank["ddp"]) == 3 and all(rank["ddp"]), rank["ddp"]
    assert one["world_size"] == 1 and one["ddp"] == [False] * 3
    # the two ranks' batches are the halves of the single process's global batches
    for step in range(3):
        torch.testing.assert_close(torch.cat([two[0]["labels"][step], two[1]["labels"][step]]), one["labels"][step])
    # (b) identical replicas, and (c) equal to one process on the same global batches
    assert two[0]["curvature"] == two[1]["curvature"] == pytest.approx(one["curvature"], rel=1e-6)
    assert two[0]["params"].keys() == one["params"].keys()
    for name, want in one["params"].items():
        torch.testing.assert_close(two[0]["params"][name], two[1]["params"][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(two[0]["params"][name], want, rtol=0, atol=1e-6, msg=name)
    # and training moved the weights far more than that tolerance (the comparison is not vacuous)
    moved = max((one["params"][n] - p).abs().max().item() for n, p in one["initial_params"].items())
    assert moved > 1e-3
