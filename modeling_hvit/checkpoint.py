# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Checkpoints that resume exactly or not at all, and files that are what was saved (issue 12.13, 12.14).

- `write_manifest(folder)` writes `checksums.sha256` (the `sha256sum` format, so `sha256sum -c
  checksums.sha256` checks it too) beside every Trainer checkpoint and the final model;
- `verify_manifest(folder)` re-hashes the listed files and raises `CheckpointError` naming each one that
  is missing or differs (a same-size file with zeroed bytes included); a folder without a manifest (saved
  by an older hvit or by a bare `save_pretrained`) passes with a one-line note;
- `resume_checkpoint(trainer, resume_from_checkpoint)` refuses a checkpoint without its optimizer,
  scheduler, scaler or RNG state — the Trainer would silently start those afresh and end with weights an
  uninterrupted run never reaches — or saved with another model head or batch size, unless
  `--allow_partial_resume` is set, which is warned about and recorded in `trainer_state.json` (log
  history) and `metrics.json`;
- `CheckpointCallback` writes the manifest after each save and records a partial resume.

CLI: `python -m modeling_hvit.checkpoint verify|write <dir>`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["MANIFEST_NAME", "CheckpointCallback", "CheckpointError", "missing_resume_files", "resume_checkpoint",
           "verify_manifest", "write_manifest"]

MANIFEST_NAME = "checksums.sha256"
_TMP_NAME = f".{MANIFEST_NAME}.tmp"  # written, then renamed: a manifest is whole or absent
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class CheckpointError(ValueError):
    """A checkpoint or saved model that is incomplete or whose files differ from what was saved."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path, recursive: bool) -> list[str]:
    """Regular files (not links) under `folder`, relative POSIX paths, the manifest itself left out."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p.relative_to(folder).as_posix() for p in paths
                  if p.is_file() and not p.is_symlink() and p.name not in (MANIFEST_NAME, _TMP_NAME))


def write_manifest(folder: str | os.PathLike, *, recursive: bool = False) -> Path:
    """Write `folder/checksums.sha256`: the sha256 of every regular file in `folder` (and below it with
    `recursive`: a checkpoint; the final output_dir holds checkpoints with their own manifests, so not
    there). Written to a temporary name and renamed, so a manifest is either whole or absent."""
    folder = Path(folder)
    lines = [f"{sha256_file(folder / name)}  {name}\n" for name in _files(folder, recursive)]
    tmp = folder / _TMP_NAME
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    return folder / MANIFEST_NAME


def read_manifest(folder: str | os.PathLike) -> dict[str, str] | None:
    """{relative path: sha256} of `folder/checksums.sha256`, or None when there is none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _LINE.match(line)
        name = match.group(2) if match else ""
        if not match or name.startswith("/") or ".." in name.split("/"):
            raise CheckpointError(f"{path}: line {number} is not '<sha256>  <file in the folder>': {line[:80]!r}")
        entries[name] = match.group(1)
    return entries


def verify_manifest(folder: str | os.PathLike, files: list[str] | None = None) -> bool:
    """Check the files of `folder` against its `checksums.sha256` (only `files` of them when given; names
    the manifest does not list are not checked). True when verified; False, with a one-line note, when
    the folder has no manifest. Raises `CheckpointError` naming every listed file missing or changed."""
    folder = Path(folder)
    entries = read_manifest(folder)
    if entries is None:
        logger.info(f"{folder}: no {MANIFEST_NAME} (saved by an older hvit or a bare save_pretrained); "
                    "file integrity not checked")
        return False
    names = sorted(entries) if files is None else [f for f in files if f in entries]
    missing = [n for n in names if not (folder / n).is_file()]
    changed = [n for n in names if n not in missing and sha256_file(folder / n) != entries[n]]
    if missing or changed:
        problems = [f"{n} is missing" for n in missing] + [f"{n} differs from the saved file (sha256 mismatch)"
                                                           for n in changed]
        raise CheckpointError(f"{folder}: {'; '.join(problems)} — corrupted or modified after saving, per "
                              f"{MANIFEST_NAME}. Use another copy or an earlier checkpoint (if a file was changed "
                              f"on purpose, re-record it: python -m modeling_hvit.checkpoint write {folder})")
    return True


# -- resuming -----------------------------------------------------------------------------------------
def _weights_present(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json",
                                                 "pytorch_model.bin", "pytorch_model.bin.index.json"))


def missing_resume_files(checkpoint: str | os.PathLike, world_size: int = 1, scaler: bool = False) -> list[str]:
    """The state files the Trainer restores on resume that `checkpoint` lacks. `rng_state.pth` is
    per process (`rng_state_<rank>.pth`) when `world_size` > 1, as the Trainer saves it."""
    folder = Path(checkpoint)
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    wanted = ["trainer_state.json", "optimizer.pt", "scheduler.pt", *rng] + (["scaler.pt"] if scaler else [])
    return [n for n in wanted if not (folder / n).is_file()] + ([] if _weights_present(folder) else ["model.safetensors"])


def _complete_siblings(folder: Path, world_size: int, scaler: bool) -> list[Path]:
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = [(int(m.group(1)), p) for p in folder.parent.iterdir() if p != folder and p.is_dir()
             and (m := pattern.match(p.name)) and not missing_resume_files(p, world_size, scaler)]
    return [p for _, p in sorted(found)]


# Model settings that must match the checkpoint's config.json for the resumed run to be the same run.
HEAD_SETTINGS = ("embedding_dim", "geometry", "curvature", "clip_radius", "freeze_patch_embed", "freeze_blocks",
                 "learn_curvature", "curvature_min", "curvature_max")


def changed_settings(checkpoint: str | os.PathLike, trainer) -> list[str]:
    """Settings of `trainer` that differ from the ones `checkpoint` was trained with: the head of the
    model (config.json) and the batch size (trainer_state.json); floats compared to 1e-3 relative."""
    folder, changed = Path(checkpoint), []
    config = trainer.accelerator.unwrap_model(trainer.model).config
    saved = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    for key in HEAD_SETTINGS:
        if key == "curvature" and getattr(config, "learn_curvature", False):
            continue  # a learnt c moves by design (config.json holds its value then); it resumes from the weights
        then, now = saved.get(key), getattr(config, key, None)
        same = (math.isclose(then, now, rel_tol=1e-3) if isinstance(then, float) and isinstance(now, (int, float))
                else then == now)
        if key in saved and not same:
            changed.append(f"{key} {then!r} in the checkpoint, {now!r} now")
    state = json.loads((folder / "trainer_state.json").read_text())
    batch = getattr(trainer, "_train_batch_size", None)
    if state.get("train_batch_size") and batch and state["train_batch_size"] != batch:
        changed.append(f"train batch size {state['train_batch_size']} in the checkpoint, {batch} now")
    return changed


def resume_checkpoint(trainer, resume_from_checkpoint: str | bool | None) -> str | None:
    """What `HViTTrainer.train` resumes from: `resume_from_checkpoint` (True: the last checkpoint of
    output_dir, as the Trainer picks it), after checking that it is complete, intact, and saved with the
    same model head and batch size. Missing optimizer/scheduler/scaler/RNG state or changed settings are
    errors unless `args.allow_partial_resume`, then a warning recorded by the trainer's
    `CheckpointCallback`. Missing weights or trainer_state.json and corrupted files are always errors."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
        last = get_last_checkpoint(trainer.args.output_dir) if os.path.isdir(trainer.args.output_dir) else None
        if last is None:
            raise CheckpointError(f"resume_from_checkpoint=True: no checkpoint-* folder in {trainer.args.output_dir}")
        resume_from_checkpoint = last
    folder = Path(resume_from_checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"resume_from_checkpoint {folder}: no such directory")
    allowed = getattr(trainer.args, "allow_partial_resume", False)
    world_size, scaler = trainer.args.world_size, getattr(trainer.accelerator, "scaler", None) is not None
    missing = missing_resume_files(folder, world_size, scaler)
    hard = [n for n in missing if n in ("trainer_state.json", "model.safetensors")]
    if missing and (hard or not allowed):
        earlier = _complete_siblings(folder, world_size, scaler)
        hint = f"resume from {earlier[-1]} (complete) instead" if earlier else "start the run again"
        raise CheckpointError(
            f"cannot resume from {folder}: {', '.join(missing)} missing"
            + (f" (saved with another number of processes than {world_size}?)" if any("rng" in n for n in missing) else "")
            + " — the run would continue with a fresh optimizer/scheduler/random state and end with other weights "
            f"than an uninterrupted run (was the run killed while saving?). Either {hint}"
            + ("." if hard else ", or pass --allow_partial_resume true to continue anyway (recorded in the logs)."))
    entries = read_manifest(folder)
    if entries is None:
        logger.warning(f"resuming from {folder}, which has no {MANIFEST_NAME} (older hvit): integrity not checked")
    else:
        verify_manifest(folder, [n for n in entries if n not in missing])
    changed = changed_settings(folder, trainer)
    if changed and not allowed:
        raise CheckpointError(f"cannot resume from {folder}: {'; '.join(changed)} — pass the same settings as the "
                              "interrupted run, or --allow_partial_resume true to continue anyway (recorded in the logs)")
    record = {"checkpoint": str(folder), "missing": missing, **({"changed": changed} if changed else {})}
    if missing or changed:
        logger.warning(f"--allow_partial_resume: resuming from {folder} "
                       + "; ".join(([f"without {', '.join(missing)}"] if missing else []) + changed)
                       + ": not an exact continuation (recorded in trainer_state.json and metrics.json)")
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, CheckpointCallback):
            callback.partial_resume = record if missing or changed else None
    return str(folder)


class CheckpointCallback(TrainerCallback):
    """Writes `checksums.sha256` into each checkpoint once every process has saved its part, and records a
    partial resume (`resume_checkpoint`) in the log history, so later checkpoints and metrics carry it."""

    def __init__(self):
        self.partial_resume: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.partial_resume:
            state.log_history.append({"partial_resume": self.partial_resume, "step": state.global_step})

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank has written its rng_state_<rank>.pth
        folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and folder.is_dir():
            write_manifest(folder, recursive=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m modeling_hvit.checkpoint",
                                     description=f"Check or (re)write the {MANIFEST_NAME} of a saved model or checkpoint.")
    parser.add_argument("command", choices=("verify", "write"))
    parser.add_argument("folder")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: {args.folder}: no such directory", file=sys.stderr)
        return 2
    if args.command == "write":
        print(f"wrote {write_manifest(args.folder, recursive=Path(args.folder).name.startswith(PREFIX_CHECKPOINT_DIR))}")
        return 0
    try:
        ok = verify_manifest(args.folder)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.folder}: {'all files match ' + MANIFEST_NAME if ok else 'no ' + MANIFEST_NAME + ' (nothing checked)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
