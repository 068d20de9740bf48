# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""A Gradio app over an index: upload or pick an image → its neighbours with distances; a threshold
slider that shows the near-duplicate groups. Needs ``gradio`` (the ``app`` extra).

Locally: ``hvit app INDEX`` (or ``python -m modeling_hvit.search.app INDEX``). As a Hugging Face
Space: the repository's ``app.py`` (``HVIT_INDEX`` names the index folder). A page opened as
``/?query=ID&k=5`` shows the neighbours of the indexed image ``ID`` straight away (a link to share).
The API (``gradio_client``): ``/search`` (image, k) and ``/duplicates`` (threshold), each returning
the gallery and a table with the exact distances.
"""

import math
import os
import sys
from typing import Any

import numpy as np

from .dedup import duplicate_mining
from .embedder import Embedder
from .index import HViTIndex
from .report import _thumb
from .store import Manifest

__all__ = ["HIT_COLUMNS", "GROUP_COLUMNS", "build_demo", "main", "nn_distance_sample", "picture_paths"]

HIT_COLUMNS = ["rank", "distance", "id", "label", "path"]
GROUP_COLUMNS = ["group", "size", "ids"]
THUMB = 256  # gallery tiles are thumbnails: no image file of the user's is served as is


def nn_distance_sample(index: HViTIndex, sample: int = 1000) -> np.ndarray:
    """Distances to the nearest other image, for up to ``sample`` evenly spaced rows (exact search)."""
    n = len(index)
    if n < 2:
        return np.zeros(0)
    rows = np.unique(np.linspace(0, n - 1, min(sample, n)).round().astype(int))
    hits = index.search(index.embeddings[rows], k=min(n, 2))
    return np.array([min(h["distance"] for h in hs if h["corpus_id"] != r) for r, hs in zip(rows, hits)])


def _round_up(x: float, digits: int = 3) -> float:
    """``x`` rounded up to ``digits`` significant digits (a slider end that reads well)."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return max(math.ceil(x / step) * step, x)


def _caption(distance: float, label: Any) -> str:
    return f"d = {distance:.4f}" + (f"  {label}" if label not in (None, "") else "")


def picture_paths(paths: list[str | None], image_root: str | os.PathLike | None) -> list[str | None]:
    """Where each row's picture is read: its recorded path, or with ``image_root`` that path relative to
    the recorded paths' common folder, under ``image_root`` (an index built on another machine, e.g.
    served from a Space with the pictures beside it)."""
    if image_root is None:
        return list(paths)
    known = [os.path.dirname(p) for p in paths if p]
    base = os.path.commonpath(known) if known else ""
    return [os.path.join(image_root, os.path.relpath(p, base)) if p else None for p in paths]


def build_demo(index_dir: str | os.PathLike, model: Any = None, *, embedder: Embedder | None = None,
               threshold: float | None = None, image_root: str | os.PathLike | None = None, picks: int = 12):
    """The app (a ``gr.Blocks``) over ``index_dir``; the model defaults to the manifest's model id.
    ``threshold``: the duplicate slider's start (e.g. from ``hvit dedup --calibrate``; default 0:
    identical images only); the slider reaches the largest nearest-neighbour distance of a sample.
    ``image_root``: read the pictures from there (see ``picture_paths``); a missing one is a grey tile."""
    import gradio as gr

    if embedder is None:
        model = model or Manifest.read(index_dir).get("model_id")
        if not model:
            raise ValueError(f"{index_dir}: the manifest records no model id; pass model=")
        if os.path.isabs(str(model)) and not os.path.exists(model):
            raise FileNotFoundError(f"{index_dir} was built with the model folder {model}, which is not here: "
                                    "give the model (`hvit app INDEX MODEL`, HVIT_MODEL on a Space)")
        embedder = Embedder.from_model(model)
    index = HViTIndex.load(index_dir, embedder=embedder)
    n = len(index)
    if n == 0:
        raise ValueError(f"{index_dir}: the index is empty (0 images)")
    if threshold is not None and not threshold >= 0:
        raise ValueError(f"threshold must be ≥ 0, got {threshold}")
    nn = nn_distance_sample(index)
    t_max = _round_up(max(float(nn.max()) if len(nn) else 0.0, threshold or 0.0, 1e-6))
    k_max = min(50, n)
    pictures = picture_paths(index.paths, image_root)
    pick_rows = np.unique(np.linspace(0, n - 1, min(picks, n)).round().astype(int)).tolist()

    def tile(row: int, caption: str):  # a grey tile when the picture cannot be read
        return _thumb(pictures[row], THUMB)[0], caption

    def show(hits: list[dict]):
        gallery = [tile(h["corpus_id"], _caption(h["distance"], h.get("label"))) for h in hits]
        table = [[r + 1, h["distance"], h["id"], h.get("label") or "", h.get("path") or ""] for r, h in enumerate(hits)]
        return gallery, table

    def search(image, k):
        if image is None:
            raise gr.Error("Upload or pick an image first.")
        return show(index.search([image], int(k), embedder=embedder)[0])

    def search_row(row: int, k) -> tuple:
        """The neighbours of indexed image ``row`` (its stored embedding: no re-embedding)."""
        path = pictures[row]
        return (_thumb(path, THUMB)[0] if path else None, *show(index.search(index.embeddings[row], int(k))[0]))

    # gradio fills the gr.SelectData / gr.Request parameters by their annotations (real classes, hence no
    # `from __future__ import annotations` in this module)
    def pick(k, evt: gr.SelectData):
        return search_row(pick_rows[evt.index], k)

    def from_url(k, request: gr.Request):
        params = dict(request.query_params) if request is not None else {}
        if "query" not in params:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            row = index.ids.index(params["query"])
        except ValueError:
            raise gr.Error(f"?query={params['query']}: no image with this id in the index") from None
        try:
            k = min(max(int(params.get("k", k)), 1), k_max)
        except ValueError:
            raise gr.Error(f"?k={params['k']}: expected a whole number") from None
        return (k, *search_row(row, k))

    def duplicates(t):
        rep = duplicate_mining(index, float(t))
        groups = rep.groups
        tiles = [tile(g[0], f"group {i}: {len(g)} images") for i, g in enumerate(groups[:60])]
        table = [[i, len(g), " ".join(index.ids[m] for m in g)] for i, g in enumerate(groups)]
        text = (f"**{len(groups)} groups** (connected components of the {len(rep.pairs)} pairs within distance "
                f"{float(t):.4g}): {sum(map(len, groups))} of {n} images")
        return tiles, text, table

    with gr.Blocks(title="hvit image search") as blocks:
        gr.Markdown(f"# hvit image search\n{n} images, {index.geometry} geometry"
                    + (f", curvature {index.curvature:g}" if index.curvature else ""))
        with gr.Tab("Search"):
            with gr.Row():
                image = gr.Image(type="pil", label="query image (upload, or pick one from the index below)", height=280)
                with gr.Column():
                    k = gr.Slider(1, k_max, value=min(10, k_max), step=1, label="neighbours")
                    run = gr.Button("Search", variant="primary")
            results = gr.Gallery(label="neighbours (distance)", columns=5, height="auto", elem_id="hvit-results")
            hits = gr.Dataframe(headers=HIT_COLUMNS, datatype=["number", "number", "str", "str", "str"],
                                label="neighbours", interactive=False, elem_id="hvit-hits")
            picked = gr.Gallery([tile(r, index.ids[r]) for r in pick_rows], label="pick an indexed image",
                                columns=6, allow_preview=False, elem_id="hvit-picks")
            run.click(search, [image, k], [results, hits], api_name="search")
            picked.select(pick, [k], [image, results, hits], api_name=False)
            blocks.load(from_url, [k], [k, image, results, hits], api_name=False, queue=False)
        with gr.Tab("Duplicates"):
            slider = gr.Slider(0.0, t_max, value=threshold or 0.0, label="duplicate threshold (distance)",
                               info="pairs within it are duplicates; `hvit dedup --calibrate` suggests one")
            summary = gr.Markdown()
            groups = gr.Gallery(label="groups (first member)", columns=6, elem_id="hvit-groups")
            group_table = gr.Dataframe(headers=GROUP_COLUMNS, datatype=["number", "number", "str"],
                                       label="groups", interactive=False)
            slider.release(duplicates, slider, [groups, summary, group_table], api_name="duplicates")
    return blocks


def main(argv: list[str] | None = None) -> int:
    """`hvit app INDEX [MODEL] [--port N]`: serve the app locally."""
    import argparse

    p = argparse.ArgumentParser(allow_abbrev=False, prog="hvit app", description=main.__doc__)
    p.add_argument("index", help="an index folder (`hvit index build`)")
    p.add_argument("model", nargs="?", default=None, help="model (default: the one recorded in the index)")
    p.add_argument("--threshold", type=float, default=None,
                   help="start of the duplicate slider (e.g. from `hvit dedup --calibrate`; default 0)")
    p.add_argument("--images", default=None, help="read the pictures from this folder (an index built elsewhere: "
                   "the recorded paths relative to their common folder)")
    p.add_argument("--host", default=None, help="server address (default: Gradio's, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="server port (default: Gradio's)")
    args = p.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        from ..errors import UserError

        raise UserError("hvit app needs gradio: pip install 'hvit[app]'") from None
    build_demo(args.index, args.model, threshold=args.threshold, image_root=args.images).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
