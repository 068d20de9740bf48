# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The pluggable embedding step of an index, and the fingerprint that ties an index to it.

An ``Embedder`` turns a batch of items into rows of embeddings and says which geometry they live
in. ``Embedder.from_model`` wraps an ``HViTModel``: it calls ``model.encode(images)`` when the model
has the image-level ``encode`` (the sentence-transformers-style one), else decodes with PIL and
runs the model's evaluation transform and forward itself. Any ``embed_fn(list_of_PIL) -> (n, d)``
works too, with the geometry given by the caller.

The fingerprint is a SHA-256 of the weights, the config and the preprocessing, kept separately so a
mismatch can name what differs; an index refuses queries and additions from anything else.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..configuration_hvit import GEOMETRIES
from .sources import Item, UnreadableImage

__all__ = ["Embedder", "model_fingerprint"]

# Config fields that change with saving/loading, not with what the model computes.
_VOLATILE_CONFIG = ("transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype",
                    "_attn_implementation_autoset", "output_hidden_states", "output_attentions", "return_dict")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config_dict(config) -> dict:
    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in _VOLATILE_CONFIG}
    return strip(config.to_dict())


def model_fingerprint(model: torch.nn.Module, processor: dict) -> dict[str, str]:
    """``{"weights", "config", "processor"}`` SHA-256 digests (weights: names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too (a learnt log c)
    config = json.dumps(_config_dict(model.config), sort_keys=True, default=str).encode()
    return {"weights": h.hexdigest(), "config": _sha(config),
            "processor": _sha(json.dumps(processor, sort_keys=True, default=str).encode())}


def _has_image_encode(model) -> bool:
    """True for an ``encode`` that takes images (issue 13), not the old ``encode(pixel_values)``."""
    enc = getattr(model, "encode", None)
    if enc is None:
        return False
    params = list(inspect.signature(enc).parameters)
    return bool(params) and params[0] != "pixel_values"


def _first_tensor(out: Any) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    if isinstance(out, dict) or hasattr(out, "embeddings"):
        return out["embeddings"] if isinstance(out, dict) else out.embeddings
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    return torch.as_tensor(out)


@dataclass
class Embedder:
    """``embed_fn(list of RGB PIL images) -> (n, d)``, and the space its rows live in."""

    embed_fn: Callable[[list], Any]
    geometry: str
    curvature: float | None = None
    fingerprint: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None
    processor: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.geometry == "poincare" and not (self.curvature and self.curvature > 0):
            raise ValueError(f"geometry 'poincare' needs a curvature > 0, got {self.curvature!r}")
        if self.geometry != "poincare":
            self.curvature = None
        if not self.fingerprint:  # a bare function: identify it by name (the caller may pass a better one)
            fn = getattr(self.embed_fn, "__qualname__", type(self.embed_fn).__name__)
            self.fingerprint = {"embed_fn": _sha(f"{getattr(self.embed_fn, '__module__', '')}.{fn}".encode())}

    @classmethod
    def from_model(cls, model: Any, *, device: str | torch.device | None = None,
                   model_id: str | None = None) -> "Embedder":
        """Wrap an ``HViTModel`` (or a local directory / Hub id of one)."""
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from pathlib import Path

            from ..loading import load_model

            local = Path(str(model))  # a local directory is recorded absolute (the manifest may be read elsewhere)
            model_id = model_id or (str(local.resolve()) if local.is_dir() else str(model))
            model = load_model(str(model))  # strict: a checkpoint whose weights do not load is refused
        from ..data.transforms import eval_transform_for, model_preprocessing, pixel_values_for

        transform = eval_transform_for(model)  # the evaluation preprocessing saved with the model (uint8 out)
        prep = model_preprocessing(model)
        processor = {"image_size": prep.crop_size, "resize_size": prep.resize_size, "resample": int(prep.resample),
                     "image_mean": list(prep.image_mean), "image_std": list(prep.image_std)}
        if device is not None:
            model = model.to(device)
        model.eval()
        dev = next(model.parameters()).device
        image_encode = _has_image_encode(model)
        cfg = model.config
        # A Lorentz model's points are stored as their Poincaré-ball images (the isometry of SPEC §1): the
        # same distances, so the index, search and dedup work in one hyperbolic model.
        to_ball = cfg.geometry == "lorentz"

        @torch.inference_mode()
        def embed(images: list) -> torch.Tensor:
            if image_encode:
                z = _first_tensor(model.encode(images, batch_size=len(images), device=dev)).float().cpu()
            else:
                pixels = pixel_values_for(model, torch.stack([transform(im) for im in images]).to(dev))
                z = model(pixel_values=pixels).embeddings.float().cpu()
            if to_ball:
                from ..lorentz import hyperboloid_to_ball

                z = hyperboloid_to_ball(z, float(cfg.curvature))
            return z

        geometry = "poincare" if to_ball else cfg.geometry
        return cls(embed, geometry, float(cfg.curvature) if geometry == "poincare" else None,
                   model_fingerprint(model, processor),
                   model_id or getattr(cfg, "_name_or_path", None) or None, processor)

    def embed_items(self, items: Sequence[Item]) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
        """(embeddings of the readable items, their positions in ``items``, [(position, reason)] skipped)."""
        images, ok, skipped = [], [], []
        for i, it in enumerate(items):
            try:
                images.append(it.load())
                ok.append(i)
            except UnreadableImage as err:
                skipped.append((i, str(err)))
        if not images:
            return torch.empty(0, 0), ok, skipped
        emb = torch.as_tensor(_first_tensor(self.embed_fn(images))).detach().float().cpu()
        if emb.ndim != 2 or emb.shape[0] != len(images):
            raise ValueError(f"embed_fn returned shape {tuple(emb.shape)} for {len(images)} images; expected (n, dim)")
        bad = ~torch.isfinite(emb).all(1)
        if bad.any():
            first = items[ok[int(torch.nonzero(bad)[0])]]
            raise ValueError(f"embedding of {first.path or first.id} is not finite (NaN/inf): check the model")
        if self.geometry == "poincare":
            outside = (self.curvature * emb.double().pow(2).sum(1)) >= 1
            if outside.any():
                first = items[ok[int(torch.nonzero(outside)[0])]]
                raise ValueError(f"embedding of {first.path or first.id} lies outside the Poincaré ball of "
                                 f"curvature {self.curvature} (c·‖x‖² ≥ 1): wrong geometry/curvature for embed_fn?")
        return emb, ok, skipped

    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Embed query images (paths or PIL); an unreadable one raises ``UnreadableImage`` naming it."""
        items = [im if isinstance(im, Item) else
                 Item(id=str(im), path=str(im)) if not hasattr(im, "convert") else Item(id="<image>", loader=lambda im=im: im)
                 for im in images]
        emb, _, skipped = self.embed_items(items)
        if skipped:
            raise UnreadableImage(skipped[0][1])
        return emb

    def describe(self) -> dict:
        return {"model_id": self.model_id, "fingerprint": self.fingerprint, "geometry": self.geometry,
                "curvature": self.curvature, "processor": self.processor}
