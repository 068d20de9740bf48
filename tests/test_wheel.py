# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""A non-editable install works: build the wheel, install it into a fresh venv, run `hvit` from there.

Offline and quick: the wheel is built with this environment's setuptools, the venv is made without pip, the wheel is installed into it by this interpreter's
pip (``pip --python``, no dependencies, no index), and the dependencies are this environment's
site-packages, appended to the venv's path by a ``.pth`` file (a path listed in a ``.pth`` does not
run that folder's own ``.pth`` files, so the editable hvit of this environment stays invisible).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds a wheel and runs a few steps of training in fresh interpreters


def _run(cmd: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_EVALUATE_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path / "work", timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "work").mkdir()
    src = tmp / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "modeling_hvit", "hub_cards"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    # Offline with this environment's setuptools; where it has none (a fresh CI venv), pip fetches it.
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-q", "-w", str(tmp / "dist"), str(src)], tmp)
    wheel = next((tmp / "dist").glob("hvit-*.whl"))
    env_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], tmp)
    python = env_dir / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_hvit_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], tmp)
    return env_dir


def test_installed_package_is_the_wheel(venv):
    tmp = venv.parent
    out = _run([str(venv / "bin" / "python"), "-c", "import modeling_hvit; print(modeling_hvit.__file__)"], tmp)
    assert out.stdout.strip().startswith(str(venv)), out.stdout
    assert "hvit <command>" in _run([str(venv / "bin" / "hvit"), "--help"], tmp).stdout
    assert "hvit <command>" in _run([str(venv / "bin" / "python"), "-m", "modeling_hvit", "--help"], tmp).stdout


def test_train_eval_metric_and_encode_from_the_wheel(venv):
    tmp, hvit, python = venv.parent, str(venv / "bin" / "hvit"), str(venv / "bin" / "python")
    model = tmp / "work" / "model"
    _run([hvit, "train", "--max_steps", "3", "--max_eval_samples", "64", "--report_to", "none",
          "--disable_tqdm", "true", "--output_dir", str(model)], tmp)
    assert (model / "model.safetensors").is_file() and (model / "metrics.json").is_file()
    out = _run([hvit, "eval", "--model", str(model), "--dataset", "demo", "--max_samples", "100",
                "--output_dir", str(tmp / "work" / "eval"), "--progress", "false"], tmp)
    assert "recall@1" in out.stdout and (tmp / "work" / "eval" / "metrics.json").is_file()
    script = textwrap.dedent(f"""
        import evaluate, modeling_hvit, torch
        from PIL import Image
        from transformers import AutoModel
        assert modeling_hvit.metric_path().startswith({str(venv)!r}), modeling_hvit.metric_path()
        metric = evaluate.load(modeling_hvit.metric_path())
        r = metric.compute(predictions=[[0.0, 0.1], [0.0, 0.2], [0.3, 0.0], [0.4, 0.0]], references=[0, 0, 1, 1], ks=[1])
        assert r["recall@1"] == 1.0, r
        model = AutoModel.from_pretrained({str(model)!r})
        result = model.encode([Image.new("RGB", (40, 30), (9, 99, 199))] * 3, output="both")
        assert result.embeddings.shape == (3, 32) and result.encoder_embeddings.shape == (3, 96), result
        print("ok")
    """)
    assert _run([python, "-c", script], tmp).stdout.strip().endswith("ok")
