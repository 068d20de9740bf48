"""Checkpoints (issue 12.13–12.15): a resume with missing state is refused (or explicitly allowed and
recorded), every checkpoint and the final model carry a sha256 manifest that `sha256sum -c` accepts and
that catches same-size corruption, and the Hub token never reaches a file."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi, RepoUrl, constants

from modeling_hvit.checkpoint import MANIFEST_NAME, CheckpointError, main as checkpoint_cli, verify_manifest, write_manifest
from modeling_hvit.training import main
from test_training import _tiny_trainer

TOKEN = "hf_SECRETtokenNeverOnDisk0123456789ab"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """6 steps uninterrupted, a checkpoint at step 4: (output_dir, final weights)."""
    out = tmp_path_factory.mktemp("ckpt") / "full"
    trainer = _tiny_trainer(out, save_strategy="steps", save_steps=4)
    trainer.train()
    return out, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _checkpoint_copy(full_run, tmp_path) -> Path:
    return Path(shutil.copytree(full_run[0] / "checkpoint-4", tmp_path / "run" / "checkpoint-4"))


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json"])
def test_resume_refuses_a_checkpoint_missing_state(full_run, tmp_path, name):
    ckpt = _checkpoint_copy(full_run, tmp_path)
    (ckpt / name).unlink()
    trainer = _tiny_trainer(tmp_path / "resumed")
    with pytest.raises(CheckpointError, match=rf"cannot resume from .*checkpoint-4: {name} missing"):
        trainer.train(resume_from_checkpoint=str(ckpt))
    assert trainer.state.global_step == 0  # refused before any step


def test_resume_true_names_the_incomplete_last_checkpoint_and_an_earlier_complete_one(full_run, tmp_path):
    """A run killed while writing checkpoint-6: `resume_from_checkpoint=True` picks it, and is refused."""
    out = tmp_path / "run"
    shutil.copytree(full_run[0] / "checkpoint-4", out / "checkpoint-4")
    shutil.copytree(full_run[0] / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / "optimizer.pt").unlink()
    trainer = _tiny_trainer(out)
    with pytest.raises(CheckpointError, match=r"checkpoint-6: optimizer.pt missing.*resume from .*checkpoint-4"):
        trainer.train(resume_from_checkpoint=True)


def test_partial_resume_when_asked_is_warned_and_recorded(full_run, tmp_path, caplog):
    ckpt = _checkpoint_copy(full_run, tmp_path)
    (ckpt / "optimizer.pt").unlink()
    trainer = _tiny_trainer(tmp_path / "resumed", allow_partial_resume=True, save_strategy="steps", save_steps=6)
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=str(ckpt))
    assert "--allow_partial_resume" in caplog.text and "optimizer.pt" in caplog.text
    assert trainer.state.global_step == 6
    assert not _same(full_run[1], trainer.model.state_dict())  # why it must not be silent: other weights
    record = {"checkpoint": str(ckpt), "missing": ["optimizer.pt"]}
    assert {"partial_resume": record, "step": 4} in trainer.state.log_history
    saved = json.loads((tmp_path / "resumed" / "checkpoint-6" / "trainer_state.json").read_text())
    assert {"partial_resume": record, "step": 4} in saved["log_history"]


def test_partial_resume_cannot_skip_the_weights(full_run, tmp_path):
    ckpt = _checkpoint_copy(full_run, tmp_path)
    (ckpt / "model.safetensors").unlink()
    trainer = _tiny_trainer(tmp_path / "resumed", allow_partial_resume=True)
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        trainer.train(resume_from_checkpoint=str(ckpt))


@pytest.mark.parametrize("key,value,expected", [
    ("config.json", ("curvature", 0.05), "curvature 0.05 in the checkpoint, 0.1 now"),
    ("config.json", ("geometry", "sphere"), "geometry 'sphere' in the checkpoint, 'poincare' now"),
    ("trainer_state.json", ("train_batch_size", 16), "train batch size 16 in the checkpoint, 8 now"),
])
def test_resume_refuses_other_model_or_batch_settings(full_run, tmp_path, key, value, expected):
    """A checkpoint trained with another head or batch size (its config.json / trainer_state.json, manifest
    re-recorded) is not continued silently as if it were this run; allowed, it is recorded."""
    ckpt = _checkpoint_copy(full_run, tmp_path)
    saved = json.loads((ckpt / key).read_text())
    saved[value[0]] = value[1]
    (ckpt / key).write_text(json.dumps(saved))
    write_manifest(ckpt, recursive=True)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        _tiny_trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(ckpt))
    if key == "config.json":
        trainer = _tiny_trainer(tmp_path / "allowed", allow_partial_resume=True)
        trainer.train(resume_from_checkpoint=str(ckpt))
        assert {"partial_resume": {"checkpoint": str(ckpt), "missing": [], "changed": [expected]},
                "step": 4} in trainer.state.log_history


# -- integrity ----------------------------------------------------------------------------------------
def _sha256sum_check(folder: Path) -> subprocess.CompletedProcess:
    """The independent oracle: coreutils' `sha256sum -c` on our manifest."""
    return subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST_NAME], cwd=folder, capture_output=True, text=True)


def test_every_checkpoint_has_a_manifest_sha256sum_accepts(full_run):
    ckpt = full_run[0] / "checkpoint-4"
    listed = [line.split("  ", 1)[1] for line in (ckpt / MANIFEST_NAME).read_text().splitlines()]
    on_disk = sorted(p.name for p in ckpt.iterdir() if p.name != MANIFEST_NAME)
    assert listed == on_disk and {"model.safetensors", "optimizer.pt", "rng_state.pth"} <= set(listed)
    assert _sha256sum_check(ckpt).returncode == 0
    assert verify_manifest(ckpt) is True


def _zero_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 256] = bytes(256)
    assert len(data) == path.stat().st_size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_resume_refuses_a_same_size_corrupted_file(full_run, tmp_path, name):
    ckpt = _checkpoint_copy(full_run, tmp_path)
    _zero_bytes(ckpt / name)
    assert _sha256sum_check(ckpt).returncode != 0  # the oracle agrees the folder is corrupted
    trainer = _tiny_trainer(tmp_path / "resumed")
    with pytest.raises(CheckpointError, match=rf"checkpoint-4: {name} differs from the saved file"):
        trainer.train(resume_from_checkpoint=str(ckpt))


def test_loading_a_corrupted_best_checkpoint_is_refused(full_run, tmp_path):
    """`load_best_model_at_end` reads the best checkpoint's weights: verified first."""
    ckpt = _checkpoint_copy(full_run, tmp_path)
    trainer = _tiny_trainer(tmp_path / "resumed")
    trainer.state.best_model_checkpoint = str(ckpt)
    trainer._load_best_model()  # intact: loads (the weights are no longer the initial ones)
    assert not _same(trainer.model.state_dict(), _tiny_trainer(tmp_path / "init").model.state_dict())
    _zero_bytes(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors differs"):
        trainer._load_best_model()


def test_resume_without_manifest_still_works_and_matches(full_run, tmp_path, caplog):
    """A checkpoint saved before manifests existed: one warning line, and the exact resume."""
    ckpt = _checkpoint_copy(full_run, tmp_path)
    (ckpt / MANIFEST_NAME).unlink()
    trainer = _tiny_trainer(tmp_path / "resumed")
    with caplog.at_level(logging.INFO, logger="modeling_hvit.checkpoint"):
        trainer.train(resume_from_checkpoint=str(ckpt))
    notes = [r for r in caplog.records if r.name == "modeling_hvit.checkpoint" and r.levelno >= logging.WARNING]
    assert len(notes) == 1 and MANIFEST_NAME in notes[0].getMessage()
    assert _same(full_run[1], trainer.model.state_dict())


def test_verify_manifest_on_a_saved_model_folder(tmp_path, caplog):
    from modeling_hvit import HViTConfig, HViTModel

    folder = tmp_path / "model"
    HViTModel(HViTConfig(backbone_config={"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "intermediate_size": 16, "image_size": 16,
                                          "patch_size": 8}, embedding_dim=4)).save_pretrained(folder)
    with caplog.at_level(logging.DEBUG, logger="modeling_hvit.checkpoint"):
        assert verify_manifest(folder) is False  # an older folder: a note, no error
    assert len([r for r in caplog.records if r.name == "modeling_hvit.checkpoint"]) <= 1
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")
    write_manifest(folder)
    assert "checkpoint-1" not in (folder / MANIFEST_NAME).read_text()  # checkpoints carry their own
    assert verify_manifest(folder) is True and _sha256sum_check(folder).returncode == 0
    _zero_bytes(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors differs"):
        verify_manifest(folder)
    assert checkpoint_cli(["verify", str(folder)]) == 1
    assert checkpoint_cli(["write", str(folder)]) == 0  # a change made on purpose, re-recorded
    assert checkpoint_cli(["verify", str(folder)]) == 0 and _sha256sum_check(folder).returncode == 0
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        verify_manifest(folder)
    (folder / MANIFEST_NAME).write_text(f"{'0' * 64}  ../outside.txt\n")
    with pytest.raises(CheckpointError, match=f"{MANIFEST_NAME}: line 1"):
        verify_manifest(folder)


# -- the token ----------------------------------------------------------------------------------------
def _files_holding(folder: Path, secret: str) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and secret.encode() in p.read_bytes())


def test_hub_token_is_never_written_by_a_training_run(tmp_path, monkeypatch):
    """train_hvit.py with --hub_token, checkpoints and a push: no written file holds the token (before the
    fix training_args.bin in the output dir and every checkpoint did), and the push still used it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    commits = []
    with mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/org/x")), \
            mock.patch.object(HfApi, "create_commit", side_effect=lambda *a, **k: commits.append(k)):
        main(["--output_dir", str(tmp_path / "o"), "--push_to_hub", "true", "--hub_model_id", "org/x",
              "--hub_token", TOKEN, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
              "--max_eval_samples", "32", "--disable_tqdm", "true"])
    out = tmp_path / "o"
    assert (out / "checkpoint-1" / "training_args.bin").is_file() and (out / "training_args.bin").is_file()
    assert _files_holding(out, TOKEN) == []
    assert [c["token"] for c in commits] == [TOKEN]
    assert verify_manifest(out) and verify_manifest(out / "checkpoint-2")  # the final model has one too


@pytest.mark.slow
def test_train_hvit_resume_without_optimizer_state(tmp_path):
    """train_hvit.py: refused by default; with --allow_partial_resume, recorded in metrics.json."""
    out = tmp_path / "o"
    args = ["--output_dir", str(out), "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
            "--max_eval_samples", "32", "--disable_tqdm", "true"]
    main(args)
    (out / "checkpoint-1" / "optimizer.pt").unlink()
    resume = [*args, "--resume_from_checkpoint", str(out / "checkpoint-1")]
    with pytest.raises(CheckpointError, match="optimizer.pt missing"):
        main(resume)
    main([*resume, "--allow_partial_resume", "true"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["partial_resume"] == {"checkpoint": str(out / "checkpoint-1"), "missing": ["optimizer.pt"]}
    assert verify_manifest(out) and verify_manifest(out / "checkpoint-2")


def test_trainer_args_pickle_without_the_token(tmp_path):
    """Library use: HViTTrainingArguments(hub_token=...) keeps it in memory, never in training_args.bin."""
    trainer = _tiny_trainer(tmp_path, max_steps=1, hub_token=TOKEN, save_strategy="steps", save_steps=1)
    trainer.train()
    assert trainer.args.hub_token == TOKEN
    assert (tmp_path / "checkpoint-1" / "training_args.bin").is_file()
    assert _files_holding(tmp_path, TOKEN) == []
    loaded = torch.load(tmp_path / "checkpoint-1" / "training_args.bin", weights_only=False)
    assert loaded.hub_token is None and loaded.learning_rate == trainer.args.learning_rate


@pytest.mark.slow
def test_two_process_checkpoint_has_every_rank_state_and_resumes(tmp_path):
    """Under `accelerate launch` (2 CPU processes): the manifest is written after both ranks saved their
    RNG state, a resume works, and one without rank 1's RNG state (or with another world size) is refused."""
    import numpy as np
    from PIL import Image
    from test_train_multiprocess import ROOT, _free_port

    rng = np.random.default_rng(0)
    for c in range(8):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((16, 16, 3)) * 60 + c * 24).astype("uint8")).save(
                tmp_path / "data" / f"class{c}" / f"{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}

    def launch(processes: int, *extra: str) -> subprocess.CompletedProcess:
        launcher = ["-m", "accelerate.commands.launch", "--num_processes", str(processes),
                    *(["--multi_gpu", "--main_process_port", str(_free_port())] if processes > 1 else [])]
        cmd = [sys.executable, *launcher, str(ROOT / "train_hvit.py"), "--dataset", "folder",
               "--data_dir", str(tmp_path / "data"), "--image_size", "16", "--per_device_train_batch_size", "4",
               "--samples_per_class", "2", "--max_steps", "3", "--output_dir", str(out), "--recall_ks", "1,2",
               "--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "steps", "--save_steps", "2", *extra]
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    proc = launch(2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = out / "checkpoint-2"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set((ckpt / MANIFEST_NAME).read_text().split())
    assert _sha256sum_check(ckpt).returncode == 0
    proc = launch(2, "--resume_from_checkpoint", str(ckpt))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = launch(1, "--resume_from_checkpoint", str(ckpt))
    assert proc.returncode != 0 and "rng_state.pth missing" in proc.stderr
    (ckpt / "rng_state_1.pth").unlink()
    proc = launch(2, "--resume_from_checkpoint", str(ckpt))
    assert proc.returncode != 0 and "rng_state_1.pth missing" in proc.stderr
