# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Publish a trained HViT folder on the Hugging Face Hub with our model card (issue 7).

`render_model_card(folder)` fills `hub_cards/model_card.md.jinja` from the folder's `config.json`,
`metrics.json` and `train_args.json` (what `train_hvit.py` / `eval_hvit.py` write). `prepare_upload`
validates the folder and lists the files worth publishing: weights (safetensors), config with
`auto_map`, the remote-code files, the image processor config, metrics, the recipe and plots; never
training checkpoints or pickles. `push_to_hub` sends exactly those plus the rendered card in one
commit. Nothing here touches the network before `push_to_hub` has checked the folder, offline mode
and the token; the token is never printed, logged or uploaded.

CLI: `python -m modeling_hvit.hub push <dir> <org/name> [--private]` and
`python -m modeling_hvit.hub card <dir> [--repo-id org/name] [--output README.md]` (offline preview).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.dynamic_module_utils import get_relative_imports
from transformers.utils import logging

from .checkpoint import CheckpointError, verify_manifest
from .hub_card import HubFolderError, build_card, read_json

logger = logging.get_logger(__name__)

__all__ = ["HubFolderError", "HubPushError", "REMOTE_CODE_FILES", "prepare_upload", "push_to_hub",
           "render_model_card", "main"]

REMOTE_CODE_FILES = ("configuration_hvit.py", "modeling_hvit.py", "hyperbolic.py", "lorentz.py",
                     "image_processing_hvit.py")
PROCESSOR_FILE = "preprocessor_config.json"
# Uploaded when present, beside the weights, config, code and processor config.
OPTIONAL_FILES = ("metrics.json", "train_args.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
DEFAULT_COMMIT_MESSAGE = "Upload HViT model"
LOGIN_HELP = ("log in with `hf auth login` (or set the HF_TOKEN environment variable, or pass token=...); "
              "create a token with write access at https://huggingface.co/settings/tokens")


class HubPushError(RuntimeError):
    """Pushing is impossible before any upload starts: offline mode, no token, a token in a file."""


# -- the folder ---------------------------------------------------------------------------------------
def _weight_files(folder: Path, problems: list[str]) -> list[str]:
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (HubFolderError, KeyError, TypeError, AttributeError) as err:
            problems.append(f"{index.name}: expected a JSON object with a 'weight_map' ({err})")
            return []
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            problems.append(f"{index.name} lists shards that are missing: {', '.join(missing)}")
        return [index.name, *shards]
    problems.append("model.safetensors is missing (save the model with `save_pretrained`; "
                    "*.bin / *.pt weights are never uploaded)")
    return []


def _code_files(folder: Path, auto_map: dict, problems: list[str]) -> list[str]:
    """The remote-code files: the required three, the `auto_map` modules, and everything they import
    relatively (transitively), as `trust_remote_code` will look for them."""
    wanted = list(REMOTE_CODE_FILES) + [f"{ref.split('.')[0]}.py" for ref in auto_map.values()
                                        if isinstance(ref, str) and "." in ref]
    seen: list[str] = []
    while wanted:
        name = wanted.pop(0)
        if name in seen:
            continue
        seen.append(name)
        path = folder / name
        if not path.is_file():
            problems.append(f"remote-code file {name} is missing (needed for trust_remote_code=True; "
                            "`save_pretrained` of an HViTModel writes it)")
            continue
        wanted.extend(f"{mod}.py" for mod in get_relative_imports(str(path)))
    return [n for n in seen if (folder / n).is_file()]


def _links(folder: Path, files: list[str]) -> list[str]:
    """Listed files that are symbolic links, or sit below one, or resolve outside `folder`: a link can
    point anywhere (a token file, a home directory), so none is uploaded."""
    root = folder.resolve()
    bad = []
    for name in files:
        parts = Path(name).parts
        linked = [Path(*parts[:i]) for i in range(1, len(parts) + 1) if (folder / Path(*parts[:i])).is_symlink()]
        inside = (folder / name).resolve().is_relative_to(root)
        if linked or not inside:
            target = os.path.realpath(folder / name)
            bad.append(f"{name} is a symbolic link or leaves the folder (it resolves to {target}); links are never "
                       "uploaded: replace it with a copy of the file, or remove it")
    return bad


def prepare_upload(folder: str | os.PathLike) -> list[str]:
    """Validate a saved HViT folder and list the files to upload (relative POSIX paths, sorted).

    Required: `config.json` (model_type "hvit", an `auto_map` with AutoConfig and AutoModel),
    `model.safetensors` (or a safetensors index and its shards), the remote-code files
    (`configuration_hvit.py`, `modeling_hvit.py`, `hyperbolic.py`, `lorentz.py` and their relative imports) and
    `preprocessor_config.json`. Also listed when present: `metrics.json`, `train_args.json` and top-level
    images (the Poincaré-disk plot). Everything else — `training_args.bin`, optimizer/scheduler/RNG
    state, `checkpoint-*/`, `runs/`, any `*.bin`/`*.pt`/`*.pth` — is left out, and so is an existing
    `README.md` (the push writes our rendered card instead). A listed file that is a symbolic link (or
    resolves outside the folder) is an error, and so is one that differs from the folder's
    `checksums.sha256` (written by train_hvit.py). All problems are reported at once.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f"{folder}: not a directory (expected the output_dir of a training run)")
    problems: list[str] = []
    files: list[str] = []
    config_path = folder / "config.json"
    auto_map: dict = {}
    if not config_path.is_file():
        problems.append("config.json is missing")
    else:
        config = read_json(config_path)
        if config.get("model_type") != "hvit":
            problems.append(f"config.json: model_type is {config.get('model_type')!r}, expected 'hvit'")
        auto_map = config.get("auto_map") or {}
        if not isinstance(auto_map, dict) or not {"AutoConfig", "AutoModel"} <= set(auto_map):
            problems.append("config.json: 'auto_map' must name AutoConfig and AutoModel (save with hvit's "
                            "`HViTModel.save_pretrained`, which registers both) — without it "
                            "trust_remote_code cannot load the model")
            auto_map = auto_map if isinstance(auto_map, dict) else {}
        files.append("config.json")
    files += _weight_files(folder, problems)
    files += _code_files(folder, auto_map, problems)
    if (folder / PROCESSOR_FILE).is_file():
        files.append(PROCESSOR_FILE)
    else:
        problems.append(f"{PROCESSOR_FILE} is missing (HViTModel.save_pretrained writes it; without it "
                        "AutoImageProcessor.from_pretrained(repo) fails)")
    for name in OPTIONAL_FILES:
        if (folder / name).is_file():
            read_json(folder / name)  # malformed JSON is an error naming the file and line
            files.append(name)
    files += [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    problems += _links(folder, files)
    if not problems:
        try:
            verify_manifest(folder, files)
        except CheckpointError as err:
            problems.append(str(err))
    if problems:
        raise HubFolderError(f"{folder} cannot be pushed:\n  - " + "\n  - ".join(problems))
    if not (folder / "metrics.json").is_file():
        logger.warning(f"{folder}: no metrics.json; the model card will have no evaluation results")
    return sorted(set(files))


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, *, license: str = "apache-2.0",
                      template_path: str | os.PathLike | None = None) -> ModelCard:
    """Our model card for a saved folder: YAML metadata (base model, datasets, tags, license and a
    `model-index` with every final metric of `metrics.json`, head and encoder) and a body with the model,
    usage with and without hvit installed, retrieval code, the metrics table, the training recipe, the
    Poincaré-disk image when present, and the citation. Works offline."""
    return build_card(Path(folder), repo_id, license=license, template_path=template_path)


# -- the push -----------------------------------------------------------------------------------------
def _offline() -> bool:
    """Offline mode as huggingface_hub reads it (HF_HUB_OFFLINE, alias TRANSFORMERS_OFFLINE), re-read now."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or (env or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _contains(path: Path, needles: list[bytes], chunk_size: int = 1 << 22) -> bool:
    """Whether the bytes of `path` hold any of `needles`, read in overlapping chunks (weights are large)."""
    overlap = max(map(len, needles)) - 1
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            window = tail + block
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:] if overlap else b""
    return False


def _check_token_not_in(folder: Path, files: list[str], card_text: str, token: str) -> None:
    """Every uploaded file's bytes (weights and images too) and the card must hold neither the push token
    nor the locally stored one (HF_TOKEN / `hf auth login`)."""
    needles = [t.encode() for t in {token, get_token()} if t]
    leaked = ["README.md"] if any(n.decode() in card_text for n in needles) else []
    leaked += [name for name in files if _contains(folder / name, needles)]
    if leaked:
        raise HubPushError(f"refusing to push: {', '.join(leaked)} contain(s) your Hugging Face token; "
                           "remove it from the file(s) first")


def check_can_push(repo_id: str, token: str | None = None, api: HfApi | None = None) -> str:
    """Fail early, without a network call, when a push could not work: an invalid repo id, offline
    mode, or no token. Returns the token to use (never logged)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubPushError(f"repo id {repo_id!r} is not valid (expected 'org/name' or 'name'): {err}") from None
    if _offline():
        raise HubPushError("cannot push to the Hub in offline mode: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is "
                           "set; unset it and run again (`python -m modeling_hvit.hub push <dir> <repo>`)")
    token = token or getattr(api, "token", None) or get_token()
    if not token:
        raise HubPushError(f"no Hugging Face token found to push {repo_id}: {LOGIN_HELP}")
    return token


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = DEFAULT_COMMIT_MESSAGE, api: HfApi | None = None,
                card: ModelCard | None = None, license: str = "apache-2.0") -> str:
    """Upload a trained HViT folder to the Hub repo `repo_id` (created if needed) and return its URL.

    One commit holds the files of `prepare_upload(folder)` plus `README.md` = `card` (default:
    `render_model_card(folder, repo_id, license=license)`). Before any network call: the folder is
    validated, offline mode (HF_HUB_OFFLINE) and a missing token are clear errors, and every byte of the
    uploaded files and the card is checked not to contain the token. `api` defaults to `HfApi()`; the
    token is taken from `token`, else `api.token`, else `huggingface_hub.get_token()` (login / HF_TOKEN).
    """
    folder = Path(folder)
    files = prepare_upload(folder)
    card = card if card is not None else render_model_card(folder, repo_id, license=license)
    api = api if api is not None else HfApi()
    token = check_can_push(repo_id, token, api)
    card_text = str(card)
    _check_token_not_in(folder, files, card_text, token)
    repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    full_id = getattr(repo_url, "repo_id", None) or repo_id
    operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode("utf-8"))]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    skipped = sorted(p.relative_to(folder).as_posix() for p in folder.iterdir() if p.name not in files)
    logger.info(f"uploading {len(operations)} files to {full_id}: README.md (model card), {', '.join(files)}"
                + (f"; left out: {', '.join(skipped)}" if skipped else ""))
    api.create_commit(full_id, operations=operations, commit_message=commit_message, token=token)
    return str(repo_url)


# -- CLI ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, prog: str = "python -m modeling_hvit.hub") -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog=prog,
                                     description="Publish a trained HViT folder on the Hugging Face Hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", allow_abbrev=False, help="validate the folder, render the card, upload (needs `hf auth login`)")
    push.add_argument("folder", help="output_dir of train_hvit.py (config.json, model.safetensors, ...)")
    push.add_argument("repo_id", help="Hub repo, e.g. org/hvit-dino-cub")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE)
    push.add_argument("--license", default="apache-2.0", help="license metadata of the card")
    card = sub.add_parser("card", allow_abbrev=False, help="render the model card only (offline); print it or write --output")
    card.add_argument("folder")
    card.add_argument("--repo_id", default=None, help="repo id shown in the usage snippets")
    card.add_argument("--license", default="apache-2.0")
    card.add_argument("--output", default=None, help="write here instead of printing")
    args = parser.parse_args(argv)
    try:
        if args.command == "card":
            text = str(render_model_card(args.folder, args.repo_id, license=args.license))
            if args.output:
                Path(args.output).write_text(text, encoding="utf-8")
            else:
                print(text)
            return 0
        url = push_to_hub(args.folder, args.repo_id, private=args.private or None,
                          commit_message=args.commit_message, license=args.license)
        print(f"pushed {args.folder} to {url}")
        return 0
    except (HubFolderError, HubPushError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
