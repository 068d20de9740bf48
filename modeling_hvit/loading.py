# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""One way to load a model for evaluation, δ, encode and search: an HViT checkpoint or a plain backbone.

``load_model`` reads the checkpoint's config first and then

- ``model_type == "hvit"``: loads it strictly — a weight missing from the checkpoint, an extra one, or a
  shape mismatch is an error naming the keys (``from_pretrained`` alone only logs them and leaves random
  weights in place);
- a supported backbone (``vit``/DINO, ``deit``, ``dinov2``, ``timm_wrapper``): builds
  ``HViTModel.from_backbone`` (the pretrained encoder, a fresh head), as ``train_hvit.py --curvature auto``
  does; a backbone weight missing from the checkpoint is an error there too;
- anything else: an error naming the model type.

A name that looks like a local path (starts with ``.``, ``/`` or ``~``, has an OS separator but is not
``org/name``, or sits in an existing local folder) and does not exist is reported as "no such directory"
instead of the Hub's "Repo id must be in the form…".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import logging

from .configuration_hvit import BACKBONE_TYPES
from .modeling_hvit import HViTModel

logger = logging.get_logger(__name__)

__all__ = ["check_local_path", "load_model"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name: one separator, Hub-safe characters
_LOAD_KEYS = ("missing_keys", "unexpected_keys", "mismatched_keys")


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or os.path.isabs(name):
        return True
    if "/" not in name and "\\" not in name:  # covers os.sep and os.altsep on every OS
        return False
    if not _REPO_ID.match(name):  # a/b/c, runs\x (a backslash is never in a Hub id)
        return True
    return Path(name).parent.is_dir()  # runs/cub where ./runs exists


def check_local_path(name: str | os.PathLike, what: str = "model") -> str:
    """``name`` as a string; raises ``FileNotFoundError`` ("no such directory") when it looks like a local
    path that does not exist, or names a file where a folder is expected."""
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{what} {name}: not a directory (expected a save_pretrained folder)")
        return str(path)
    if _looks_like_path(name):
        hint = ""
        if _REPO_ID.match(name):
            hint = f" (if you meant the Hub repo {name!r}, the local folder {str(Path(name).parent)!r} hides it)"
        raise FileNotFoundError(f"{what} {name}: no such directory{hint}")
    return name


def _format_keys(keys: Any, limit: int = 8) -> str:
    keys = sorted(str(k) for k in keys)
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_loading_info(name: str, info: dict[str, Any]) -> None:
    problems = [f"{kind.replace('_', ' ')}: {_format_keys(info[kind])}" for kind in _LOAD_KEYS if info.get(kind)]
    if problems:
        raise ValueError(f"{name}: the checkpoint's weights do not match the model ({'; '.join(problems)}); "
                         "refusing to run with randomly initialised weights")


def _verify_files(folder: Path) -> None:
    """Weights, config and processor against the folder's sha256 manifest, when it has one (a folder saved
    by training): a corrupted file is an error naming it, not a silently different model."""
    from .checkpoint import verify_manifest

    verify_manifest(folder, files=[p.name for p in folder.iterdir() if p.name.startswith("model")
                                   or p.name in ("config.json", "preprocessor_config.json")])


def load_model(name_or_path: str | os.PathLike, *, what: str = "model", dtype: torch.dtype | None = None,
               trust_remote_code: bool = False, revision: str | None = None, token: str | bool | None = None,
               **backbone_head_kwargs: Any) -> PreTrainedModel:
    """An HViT model from an HViT checkpoint or a plain backbone (Hub id or local folder); see the module doc.

    Args:
        name_or_path: Hub id or local directory.
        what: how the argument is named in error messages (e.g. ``"--model"``).
        dtype: parameter dtype; ``None`` keeps the checkpoint's for HViT checkpoints and float32 for
            backbones (``HViTModel.from_backbone``'s default).
        trust_remote_code: load an HViT checkpoint through its own saved code (``AutoModel``).
        backbone_head_kwargs: ``HViTConfig`` fields for the fresh head of a plain backbone
            (``embedding_dim``, ``geometry``, ``curvature``, …); ignored for HViT checkpoints.
    """
    name = check_local_path(name_or_path, what)
    hub = {k: v for k, v in (("revision", revision), ("token", token)) if v is not None}  # HViT checkpoints
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise FileNotFoundError(f"{what} {name}: no config.json there (expected a save_pretrained folder)")
    if Path(name).is_dir():
        _verify_files(Path(name))
    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **hub)
    if config.model_type == "hvit":
        kwargs = {**hub, **({"dtype": dtype} if dtype is not None else {})}
        if trust_remote_code:
            model, info = AutoModel.from_pretrained(name, trust_remote_code=True, output_loading_info=True, **kwargs)
        else:
            model, info = HViTModel.from_pretrained(name, output_loading_info=True, **kwargs)
        _check_loading_info(f"{what} {name}", info)
        return model
    if config.model_type in BACKBONE_TYPES:
        logger.warning(f"{what} {name} is a plain {config.model_type} backbone, not an HViT model: its encoder "
                       "features are the pretrained ones; the head (embeddings) is freshly initialised")
        return HViTModel.from_backbone(name, dtype=dtype or torch.float32, **backbone_head_kwargs)
    raise ValueError(f"{what} {name}: model_type {config.model_type!r} is neither an HViT model ('hvit') nor a "
                     f"supported backbone {BACKBONE_TYPES}")
