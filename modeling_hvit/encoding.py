# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`HViTModel.encode`: images in, embeddings out — the `SentenceTransformer.encode` of this package.

    result = model.encode("photos/", batch_size=64, num_workers=2, output="both")
    result.embeddings          # (N, embedding_dim) float32: points of the ball, score with d_hyp
    result.encoder_embeddings  # (N, hidden) float32: encoder CLS features, score with cosine
    result.ids                 # what row i is: the file path, or the index in the list / dataset

Inputs: PIL images, file paths, a folder (its image files, recursively, sorted by path), or a
`datasets.Dataset` with an image column (``Image`` feature or path strings), mixed lists too. Images
are decoded and preprocessed lazily, per batch, by a `DataLoader` (``num_workers`` processes), so
memory holds one batch of pixels at a time, never the decoded set. Preprocessing is the model's
evaluation transform, the one ``eval_hvit.py`` applies (`image_transform`): on CPU in fp32 the
embeddings are bit-identical to the evaluation's. ``precision`` fp16/bf16 autocasts the encoder;
the head and all hyperbolic math stay fp32 (`HViTModel.project`).

An unreadable image raises `ImageReadError` naming the file (or dataset row); with ``skip_bad=True``
it is left out, listed in ``result.skipped`` and counted in a warning. An empty list gives empty
(0, d) tensors; an empty folder, a missing path or an unknown input type is an error.

Remote code: this file is not shipped to the Hub. A model loaded with ``trust_remote_code=True``
where hvit is not installed has ``encode`` raise an ImportError saying ``pip install hvit``; its
``pipeline("image-feature-extraction")`` (``pool=True`` for the encoder features) works anywhere.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image, ImageOps

from .errors import UserError
from .evaluation import PRECISIONS

__all__ = ["EncodeResult", "ImageReadError", "encode", "image_transform", "list_image_files"]

OUTPUTS = ("embeddings", "encoder", "both")
ImageInput = Union[str, os.PathLike, Image.Image]


class ImageReadError(UserError, ValueError):
    """An input image that cannot be opened or decoded; the message names the file or row."""


@dataclass
class EncodeResult:
    """What `encode` returns, rows in input order (skipped inputs left out).

    Attributes:
        embeddings: ``(N, embedding_dim)`` float32 head embeddings (None with ``output="encoder"``).
        encoder_embeddings: ``(N, hidden)`` float32 encoder CLS features (None with ``output="embeddings"``).
        ids: per row, the path read (``str``) or the position in the input list / dataset row (``int``).
        skipped: ``(id, reason)`` of every input left out by ``skip_bad=True``.
    """

    embeddings: torch.Tensor | None
    encoder_embeddings: torch.Tensor | None
    ids: list[str | int]
    skipped: list[tuple[str | int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


# -- inputs -------------------------------------------------------------------------------------------
def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursively, by suffix, hidden files left out), sorted by path."""
    from .data.sources import IMAGE_SUFFIXES

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"{folder}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return [str(p) for p in files]


def open_image(source: Any) -> Image.Image:
    """A decoded PIL image from a path, a ``datasets`` image dict (``bytes``/``path``) or an image,
    oriented by its EXIF tag as ``datasets.Image`` decodes it (so training data and `encode` agree)."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):
        data, path = source.get("bytes"), source.get("path")
        if data is None and not path:
            raise ValueError("the dataset row holds neither image bytes nor a path")
        import io

        image = Image.open(io.BytesIO(data) if data is not None else path)
    else:
        image = Image.open(source)
    image.load()
    if image.getexif().get(Image.ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)
    return image


class _Items(torch.utils.data.Dataset):
    """Input ``i`` → ``(i, pixel_values or None, error or None)``; decodes and transforms on access."""

    def __init__(self, sources: Sequence[Any], ids: list[str | int], transform: Callable):
        self.sources, self.ids, self.transform = sources, ids, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(open_image(self.sources[i])), None
        except Exception as err:  # PIL raises a zoo of types; reported by the caller, naming the input
            return i, None, f"{type(err).__name__}: {err}"


class _DatasetColumn(Sequence):
    """A `datasets.Dataset` image column read row by row, undecoded (bytes/path dicts or path strings)."""

    def __init__(self, dataset, column: str):
        import datasets

        if column not in dataset.column_names:
            raise UserError(f"dataset has no column {column!r} (columns: {dataset.column_names}); pass image_column=")
        ds = dataset.select_columns([column]).with_format(None)
        if isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        elif ds.features[column] != datasets.Value("string"):
            raise UserError(f"dataset column {column!r} is {ds.features[column]}, expected an Image feature or paths")
        self.dataset, self.column = ds, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[int(i)][self.column]


def _resolve(inputs: Any, image_column: str) -> tuple[Sequence[Any], list[str | int]]:
    """Sources to decode and their ids, from any accepted input."""
    try:
        import datasets

        if isinstance(inputs, datasets.Dataset):
            return _DatasetColumn(inputs, image_column), list(range(len(inputs)))
    except ImportError:
        pass
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if path.is_dir():
            files = list_image_files(path)
            return files, list(files)
        if not path.exists():
            raise UserError(f"{inputs}: no such file or folder")
        inputs = [inputs]
    if isinstance(inputs, Image.Image):
        inputs = [inputs]
    if not isinstance(inputs, Iterable):
        raise UserError(f"encode() takes images, paths, a folder or a datasets.Dataset, got {type(inputs).__name__}")
    sources = list(inputs)
    ids: list[str | int] = []
    for i, src in enumerate(sources):
        if isinstance(src, (str, os.PathLike)):
            ids.append(os.fspath(src))
        elif isinstance(src, Image.Image):
            ids.append(i)
        else:
            raise UserError(f"input #{i} is a {type(src).__name__}; expected a PIL image or a file path")
    return sources, ids


def _collate(rows: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """``(indices read, their pixels stacked, [(index, error)])``: one tensor per batch crosses from
    a worker process, not one per image."""
    good = [(i, pixels) for i, pixels, error in rows if error is None]
    bad = [(i, error) for i, _, error in rows if error is not None]
    return [i for i, _ in good], torch.stack([p for _, p in good]) if good else None, bad


# -- encoding -----------------------------------------------------------------------------------------
def image_transform(model) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image → uint8 pixels through the model's saved evaluation processor: the transform
    ``eval_hvit.py`` and training-time evaluation apply to the same model (`transforms.eval_transform_for`),
    so they cannot drift apart; `transforms.pixel_values_for` normalises on the device."""
    from .data.transforms import eval_transform_for

    return eval_transform_for(model)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encode(model, inputs: Any, batch_size: int = 32, device: str | torch.device | None = None,
           precision: str = "fp32", output: str = "embeddings", num_workers: int = 0,
           show_progress_bar: bool | None = None, skip_bad: bool = False,
           image_column: str = "image") -> EncodeResult:
    """Embed images with an HViT model; see the module docstring.

    Args:
        inputs: a PIL image, a path, a folder, a list of images/paths, or a `datasets.Dataset`.
        batch_size: images per forward pass.
        device: ``"cuda"``, ``"cpu"``, … ; None: CUDA when available (the model is moved there).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` autocast for the encoder (head stays fp32).
        output: ``"embeddings"`` (head), ``"encoder"`` (CLS features) or ``"both"``.
        num_workers: `DataLoader` processes decoding images (0: in this process).
        show_progress_bar: a tqdm bar; None: when stderr is a terminal.
        skip_bad: leave unreadable images out (listed in ``skipped``, one warning) instead of raising.
        image_column: the image column of a `datasets.Dataset` input.
    """
    if output not in OUTPUTS:
        raise UserError(f"output must be one of {OUTPUTS}, got {output!r}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if batch_size < 1:
        raise UserError(f"batch_size must be ≥ 1, got {batch_size}")
    from .data.transforms import pixel_values_for

    sources, ids = _resolve(inputs, image_column)
    device, dtype = _device(device), PRECISIONS[precision]
    was_training = model.training
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(_Items(sources, ids, image_transform(model)), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate,
                                         pin_memory=device.type == "cuda")
    if show_progress_bar is None:
        show_progress_bar = sys.stderr.isatty() and len(loader) > 1
    if show_progress_bar:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="encode", unit="batch")
    want_head, want_encoder = output in ("embeddings", "both"), output in ("encoder", "both")
    heads, encoders, kept, skipped = [], [], [], []
    try:
        with torch.inference_mode():
            for read, pixels, bad in loader:
                for i, error in bad:
                    if not skip_bad:
                        raise ImageReadError(f"{_describe(ids[i], sources)}: cannot read the image ({error}); "
                                             "pass skip_bad=True to leave unreadable images out")
                    skipped.append((ids[i], error))
                if pixels is None:
                    continue
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = model(pixel_values=pixel_values_for(model, pixels.to(device, non_blocking=True)))
                if want_head:
                    heads.append(out.embeddings.float().cpu())
                if want_encoder:
                    encoders.append(out.encoder_embeddings.float().cpu())
                kept.extend(ids[i] for i in read)
    finally:
        model.train(was_training)
    if skipped:
        warnings.warn(f"encode: skipped {len(skipped)} unreadable image(s) of {len(ids)}, first "
                      f"{_describe(skipped[0][0], sources)}: {skipped[0][1]} (all listed in result.skipped)",
                      stacklevel=3)  # the caller of HViTModel.encode
    config = model.config
    return EncodeResult(
        embeddings=_cat(heads, config.embedding_dim) if want_head else None,
        encoder_embeddings=_cat(encoders, config.backbone_hidden_size) if want_encoder else None,
        ids=kept, skipped=skipped)


def _describe(id_: str | int, sources: Sequence[Any]) -> str:
    if isinstance(id_, str):
        return id_
    if isinstance(sources, _DatasetColumn):
        src = sources[id_]
        path = src.get("path") if isinstance(src, dict) else src
        return f"dataset row {id_}" + (f" ({path})" if path else "")
    return f"input #{id_}"


def _cat(chunks: list[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat(chunks) if chunks else torch.empty(0, dim)
