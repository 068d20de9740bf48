# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""What to index: a folder tree, a file list, or an HF dataset, as an ordered list of items.

An item has a unique string ``id`` (the resolved file path, or ``<dataset>:<split>:<row>``), an
optional ``path``/``label``/``metadata``, and loads its image on demand, so a build streams: only
one batch of decoded images is alive at a time. The order is deterministic (sorted paths, row
order), which lets an interrupted build resume where it stopped.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

__all__ = ["IMAGE_EXTENSIONS", "Item", "UnreadableImage", "items_from", "load_image"]


class UnreadableImage(ValueError):
    """An image that PIL cannot decode; the message names it."""


@dataclass
class Item:
    id: str
    path: str | None = None
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[], Any] | None = field(default=None, repr=False)

    def load(self) -> Image.Image:
        """The image as RGB; raises ``UnreadableImage`` naming the item."""
        try:
            value = self.loader() if self.loader is not None else self.path
            return load_image(value)
        except UnreadableImage:
            raise
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise UnreadableImage(f"{self.path or self.id}: not a readable image ({err})") from err


def load_image(value: Any) -> Image.Image:
    """A path, bytes, ``{"bytes"|"path"}`` dict (HF Image feature) or PIL image → a decoded RGB image."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        data = value.get("bytes")
        image = Image.open(io.BytesIO(data)) if data is not None else Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        try:
            image = Image.open(value)
        except Exception as err:
            raise UnreadableImage(f"{value}: not a readable image ({err})") from err
    else:
        raise UnreadableImage(f"cannot read an image from a {type(value).__name__}")
    image.load()  # decode now: truncated files fail here, not in the middle of a batch
    return image.convert("RGB")


def _folder_items(root: Path, labels_from_folders: bool) -> list[Item]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    out = []
    for p in files:
        path = str(p.resolve())
        label = p.parent.name if labels_from_folders and p.parent != root else None
        out.append(Item(id=path, path=path, label=label))
    return out


def _list_items(paths: Iterable[str | os.PathLike], origin: str) -> list[Item]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise ValueError(f"{origin}: {p} is a folder; give folders as sources, not inside file lists")
        out.append(Item(id=str(p.resolve()), path=str(p.resolve())))
    return out


def _dataset_items(spec: str, split: str | None, image_column: str, label_column: str | None) -> list[Item]:
    import datasets

    name = spec[4:] if spec.startswith("hub:") else spec
    if not spec.startswith("hub:") and Path(name).is_dir():
        ds = datasets.load_from_disk(name)
    else:
        ds = datasets.load_dataset(name)
    if isinstance(ds, datasets.DatasetDict):
        split = split or ("test" if "test" in ds else next(iter(ds)))
        if split not in ds:
            raise ValueError(f"{spec}: no split {split!r} (splits: {list(ds)})")
        ds = ds[split]
    split = split or "data"
    if image_column not in ds.column_names:
        raise ValueError(f"{spec}: no image column {image_column!r} (columns: {ds.column_names})")
    raw = ds.cast_column(image_column, datasets.Image(decode=False))
    label_names = None
    if label_column and label_column in ds.column_names:
        feature = ds.features[label_column]
        label_names = getattr(feature, "names", None)
        labels = ds[label_column]
    else:
        labels = [None] * len(ds)
    out = []
    for i, lab in enumerate(labels):
        label = None if lab is None else (label_names[lab] if label_names else str(lab))
        out.append(Item(id=f"{spec}:{split}:{i}", label=label,
                        loader=lambda i=i: raw[i][image_column]))
    return out


def items_from(source: str | os.PathLike | Sequence[Any], *, split: str | None = None,
               image_column: str = "image", label_column: str | None = "label",
               labels_from_folders: bool = False) -> list[Item]:
    """Items of a folder (recursive, sorted), a ``.txt`` file list (one path a line), a list of
    paths / ``Item`` s, or an HF dataset (``hub:org/name`` or a ``save_to_disk`` folder holding
    ``dataset_info.json``/``dataset_dict.json``). Duplicate ids are kept once."""
    if isinstance(source, (str, os.PathLike)):
        s = str(source)
        p = Path(s)
        if s.startswith("hub:") or (p.is_dir() and ((p / "dataset_dict.json").exists()
                                                    or (p / "dataset_info.json").exists())):
            items = _dataset_items(s, split, image_column, label_column)
        elif p.is_dir():
            items = _folder_items(p, labels_from_folders)
        elif p.is_file() and p.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            items = _list_items([(p.parent / ln) if not os.path.isabs(ln) else ln for ln in lines], str(p))
        elif p.is_file():
            items = _list_items([p], s)
        else:
            raise FileNotFoundError(f"{s}: no such folder, file list, image or dataset")
    else:
        items = [x if isinstance(x, Item) else _list_items([x], "items")[0] for x in source]
    seen, unique = set(), []
    for it in items:
        if it.id not in seen:
            seen.add(it.id)
            unique.append(it)
    return unique
