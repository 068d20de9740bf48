"""train_hvit.py under `accelerate launch` with two real CPU processes (gloo)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_run(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(8):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((20, 20, 3)) * 60 + c * 24).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(ROOT / "train_hvit.py"),
           "--dataset", "folder", "--data_dir", str(tmp_path / "data"), "--image_size", "16",
           "--per_device_train_batch_size", "4", "--samples_per_class", "2", "--max_steps", "3",
           "--output_dir", str(out), "--recall_ks", "1,2", "--disable_tqdm", "true", "--report_to", "none"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    assert 0 <= summary["recall@1"] <= 1
    assert (out / "model.safetensors").exists()
