# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The `hvit` command: dispatch, help, defaults and their sources, user errors, quiet runs."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_hvit import cli
from modeling_hvit.training import parse_args

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "delta", "push", "card"):
        assert f"\n  {name} " in out
    assert cli.main([]) == 2 and cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(name, ["--help"])
    assert exc.value.code == 0
    assert f"usage: hvit {name}" in capsys.readouterr().out


def test_python_m_modeling_hvit_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "modeling_hvit", "--help"], capture_output=True, text=True,
                          env=_env(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage: hvit <command>" in proc.stdout and "train" in proc.stdout and proc.stderr == ""


def _sections(text: str) -> list[str]:
    return [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]


def test_train_help_is_grouped_with_default_sources(capsys):
    with pytest.raises(SystemExit):
        cli.run("train", ["--help"])
    short = capsys.readouterr().out
    assert _sections(short) == ["recipe", "model", "data", "loss and sampler", "evaluation",
                                "optimisation and run (TrainingArguments)"]
    assert "[default: 32 (demo recipe; paper: 128)]" in " ".join(short.split())  # embedding_dim
    assert "[default: 2.3 (paper)]" in short and "--adam_beta1" not in short and "--help-all" in short
    recall = " ".join(short.split("--recall_ks RECALL_KS")[1].split("\n\n")[0].split())
    assert "by dataset: cub 1,2,4,8,16,32; cars 1,2,4,8,16,32; sop 1,10,100,1000" in recall and "1,2,4,8 with --dataset demo" in recall
    with pytest.raises(SystemExit):
        cli.run("train", ["--help-all"])
    full = capsys.readouterr().out
    assert _sections(full)[-1] == "other transformers TrainingArguments" and "--adam_beta1" in full
    adam = re.search(r"--adam_beta1 ADAM_BETA1.*?\]", full, flags=re.S).group(0)
    assert "[default: 0.9 (transformers)]" in " ".join(adam.split())


def test_train_help_shows_the_config_in_effect(capsys):
    with pytest.raises(SystemExit):
        cli.run("train", ["--config", str(ROOT / "configs" / "cub-dino-hyp.yaml"), "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "cub-dino-hyp.yaml" in out and "[default: cub (--config" in out


def test_recall_ks_defaults_by_dataset_not_from_the_demo_recipe(caplog):
    _, dargs, targs = parse_args([])
    assert dargs.dataset == "demo" and targs.ks == (1, 2, 4, 8)  # the demo recipe, on the demo
    with caplog.at_level(logging.WARNING):
        _, dargs, targs = parse_args(["--dataset", "cub", "--data_dir", "x"])
    assert targs.recall_ks is None  # → metrics.recall_ks_for("cub") = 1..32 in training.main
    warning = " ".join(r.getMessage() for r in caplog.records)
    for inherited in ("image_size=32 (paper: 224)", "embedding_dim=32 (paper: 128)", "learning_rate=0.001 (paper: 3e-05)"):
        assert inherited in warning
    assert "--config" in warning and "samples_per_class" not in warning  # the demo's m = 2 is the paper's
    _, _, targs = parse_args(["--dataset", "cub", "--recall_ks", "1,2"])
    assert targs.ks == (1, 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        margs, _, targs = parse_args(["--config", str(ROOT / "configs" / "cub-dino-hyp.yaml"), "--bf16", "false"])
    assert not [r for r in caplog.records if "demo recipe" in r.getMessage()] and margs.image_size == 224


def test_user_errors_are_one_line(tmp_path, capsys):
    assert cli.run("train", ["--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"hvit train: error: --config {tmp_path / 'nope.yaml'}: no such file\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1\n")
    assert cli.run("train", ["--config", str(bad)]) == 2
    assert "unknown keys ['learning_rat']" in capsys.readouterr().err
    assert cli.run("train", ["--dataset", "cub", "--data_dir", str(tmp_path / "missing"), "--report_to", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hvit train: error: ") and "missing: no such file or directory" in err
    assert err.count("\n") == 1
    # an unknown flag, and a value the arguments' own checks reject: one line each, no traceback
    assert cli.run("train", ["--bogus_flag", "1"]) == 2
    assert capsys.readouterr().err == "hvit train: error: unknown arguments ['--bogus_flag', '1']; see `hvit train --help-all`\n"
    # an abbreviated flag is not silently taken for the flag it abbreviates
    assert cli.run("train", ["--learning_rat", "0.1"]) == 2
    assert "unknown arguments ['--learning_rat', '0.1']" in capsys.readouterr().err
    assert cli.run("train", ["--lr_scheduler_type", "sideways"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hvit train: error: sideways is not a valid SchedulerType") and err.count("\n") == 1


def _traceback_after_error(stderr: str) -> None:
    lines = stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("hvit train: error: "))
    assert "no such file or directory" in lines[first]
    assert not any("Traceback" in line for line in lines[:first]), stderr  # nothing of ours before it
    assert sum("Traceback" in line for line in lines) <= 1  # at most the launcher's own


def test_script_user_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train_hvit.py"), "--dataset", "cub", "--data_dir",
                           str(tmp_path / "missing")], capture_output=True, text=True, env=_env(tmp_path),
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("hvit train: error: ") == 1
    _traceback_after_error(proc.stderr)


@pytest.mark.slow  # accelerate launch starts a second interpreter
@pytest.mark.parametrize("target", [["train_hvit.py"], ["-m", "modeling_hvit", "train"]])
def test_accelerate_launch_user_error_comes_first(tmp_path, target):
    accelerate = Path(sys.executable).with_name("accelerate")
    script = [str(ROOT / target[0])] if target[0].endswith(".py") else target
    proc = subprocess.run([str(accelerate), "launch", "--num_processes", "1", *script, "--dataset", "cub",
                           "--data_dir", str(tmp_path / "missing")], capture_output=True, text=True,
                          env=_env(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    _traceback_after_error(proc.stderr)


# One process: `hvit train` needs no launcher; `accelerate launch` is quiet when given its values.
LAUNCHERS = {"python": [sys.executable],
             "accelerate": [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", "1",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]}


@pytest.mark.slow  # a few training steps in a fresh interpreter
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_tiny_run_is_quiet(tmp_path, launcher):
    proc = subprocess.run([*LAUNCHERS[launcher], "-m", "modeling_hvit", "train", "--max_steps", "2", "--max_eval_samples",
                           "32", "--per_device_train_batch_size", "16", "--disable_tqdm", "true", "--report_to",
                           "none", "--output_dir", str(tmp_path / "out")], capture_output=True, text=True,
                          env=_env(tmp_path), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines() if line.strip()]
    assert noise == [], "\n".join(noise)
    assert "Saved to" in proc.stdout and (tmp_path / "out" / "model.safetensors").is_file()


def test_metric_ships_inside_the_package():
    import evaluate

    import modeling_hvit

    path = Path(modeling_hvit.metric_path())
    assert path.parent == Path(modeling_hvit.__file__).parent and (path / "hvit_retrieval.py").is_file()
    metric = evaluate.load(str(path))
    out = metric.compute(predictions=[[0.0, 0.1], [0.0, 0.2], [0.3, 0.0], [0.05, 0.3]], references=[0, 0, 1, 1], ks=[1])
    assert out["recall@1"] == 0.5  # float64 Poincaré distances: items 2 and 3 (class 1) have class-0 nearest neighbours


@pytest.mark.parametrize("name, argv", [
    ("eval", ["--model", "m", "--datase", "cub"]),
    ("index", ["build", "src", "ix", "--model", "m", "--shard", "4"]),
    ("search", ["ix", "q.jpg", "--max-dist", "1"]),
    ("data", ["cache", "--datase", "demo"]),
])
def test_abbreviated_flags_are_refused(name, argv, capsys):
    """`--datase` is not taken for `--dataset` (argparse's default): one line naming it, exit status 2."""
    try:
        code = cli.run(name, argv)
    except SystemExit as exc:  # argparse's own error exit
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and argv[-2] in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"hvit {name}") and "error" in err.strip().splitlines()[-1]


def test_diverged_run_is_one_line(tmp_path, capsys):
    """A step with a non-finite loss stops the run (`--on_nonfinite error`) with one line naming the step
    and what to change, not a traceback: a learning rate of 1e30 makes step 2's loss NaN."""
    argv = ["--max_steps", "4", "--learning_rate", "1e30", "--report_to", "none", "--disable_tqdm", "true",
            "--output_dir", str(tmp_path / "out")]
    assert cli.run("train", argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("hvit train: error: step 2: the training loss is not finite; stopped before the update")
    assert "--learning_rate" in err[-1] and not any("Traceback" in line for line in err)
