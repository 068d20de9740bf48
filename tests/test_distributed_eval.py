# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The Trainer's evaluation with two processes (gloo, CPU): the super-classes stay paired with the right
items when the eval split is sharded unevenly and gathered back, and the metrics are computed once, by
rank 0 (rank 1 runs no k-NN search), every rank returning the same values."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_hvit.data import dataset_labels
from modeling_hvit.data.transforms import EvalTransform, with_image_transform
from modeling_hvit.evaluation import embed_dataset, evaluate_embeddings, head_linear_output

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "eval_hierarchy_record.py"
sys.path.insert(0, str(SCRIPT.parent))
import eval_hierarchy_record as record  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_metrics_computed_once_equal_one_process(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    proc = subprocess.run([*launch, str(SCRIPT), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["searches"] == 3 and ranks[1]["searches"] == 0  # head, encoder, coarse: on rank 0 only
    assert ranks[0]["error"] == ranks[1]["error"] == "invalid literal for int() with base 10: 'not a number'"

    # one process, no Trainer: embed the split in order and score it with its super-classes
    test = record.eval_split()
    model = record.tiny_model()
    emb, enc, lab = embed_dataset(model, with_image_transform(test, EvalTransform(16)))
    want = evaluate_embeddings(emb, enc, lab, "sphere", 0.1, (1, 2), groups=dataset_labels(test, "superclass"),
                               head_output=head_linear_output(model.head, enc))
    assert {"coarse_recall@1", "coarse_map@r", "mistake_severity@1", "radius_correct_correlation"} <= set(want)
    for key in want:  # broadcast from rank 0: bit-equal
        assert ranks[0]["metrics"][f"eval_{key}"] == ranks[1]["metrics"][f"eval_{key}"], key
    for rank in ranks:
        for key, value in want.items():
            assert rank["metrics"][f"eval_{key}"] == pytest.approx(value, abs=1e-6), key
