# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""A Gradio app over an index: upload an image → its neighbours with distances; a threshold slider
that shows the near-duplicate groups. Needs ``gradio`` (the ``app`` extra).

As a Hugging Face Space: an ``app.py`` of ``from modeling_hvit.search.app import demo; demo.launch()``
with the index folder in the Space and ``HVIT_INDEX`` (and optionally ``HVIT_MODEL``) set; ``demo``
is built at import when ``HVIT_INDEX`` is set. Locally: ``hvit app INDEX`` (or ``python -m modeling_hvit.search.app INDEX``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .dedup import duplicate_mining
from .embedder import Embedder
from .index import HViTIndex
from .store import Manifest

__all__ = ["build_demo", "demo", "main"]


def build_demo(index_dir: str | os.PathLike, model: Any = None, *, embedder: Embedder | None = None):
    """The app (a ``gr.Blocks``) over ``index_dir``; the model defaults to the manifest's model id."""
    import gradio as gr

    if embedder is None:
        model = model or Manifest.read(index_dir).get("model_id")
        if not model:
            raise ValueError(f"{index_dir}: the manifest records no model id; pass model=")
        embedder = Embedder.from_model(model)
    index = HViTIndex.load(index_dir, embedder=embedder)
    if len(index) == 0:
        raise ValueError(f"{index_dir}: the index is empty (0 images)")

    def search(image, k):
        if image is None:
            raise gr.Error("Upload or pick an image first.")
        hits = index.search([image], int(k), embedder=embedder)[0]
        return [(h["path"], f"d = {h['distance']:.4f}  {h.get('label') or ''}".strip()) for h in hits if h["path"]]

    def duplicates(threshold):
        rep = duplicate_mining(index, float(threshold))
        tiles = [(index.paths[g[0]], f"group {i}: {len(g)} images") for i, g in enumerate(rep.groups[:60])
                 if index.paths[g[0]]]
        text = (f"**{len(rep.groups)} groups** (connected components of {len(rep.pairs)} pairs within "
                f"{float(threshold):.4g}), {sum(map(len, rep.groups))} of {len(index)} images")
        return tiles, text

    k_max = min(50, len(index))
    with gr.Blocks(title="hvit image search") as blocks:
        gr.Markdown(f"# hvit image search\n{len(index)} images, {index.geometry} geometry"
                    + (f", curvature {index.curvature}" if index.curvature else ""))
        with gr.Tab("Search"):
            with gr.Row():
                image = gr.Image(type="pil", label="query image")
                k = gr.Slider(1, k_max, value=min(10, k_max), step=1, label="neighbours")
            run = gr.Button("Search", variant="primary")
            results = gr.Gallery(label="neighbours (distance)", columns=5)
            run.click(search, [image, k], results, api_name="search")
        with gr.Tab("Duplicates"):
            threshold = gr.Slider(0.0, 2.0, value=0.05, step=0.005, label="duplicate threshold (distance)")
            summary = gr.Markdown()
            groups = gr.Gallery(label="groups (first member)", columns=6)
            threshold.release(duplicates, threshold, [groups, summary], api_name="duplicates")
    return blocks


demo = build_demo(os.environ["HVIT_INDEX"], os.environ.get("HVIT_MODEL")) if os.environ.get("HVIT_INDEX") else None

def main(argv: list[str] | None = None) -> int:
    """`hvit app INDEX [MODEL] [--port N]`: serve the app locally."""
    import argparse

    p = argparse.ArgumentParser(prog="hvit app", description=main.__doc__)
    p.add_argument("index", help="an index folder (`hvit index build`)")
    p.add_argument("model", nargs="?", default=None, help="model (default: the one recorded in the index)")
    p.add_argument("--port", type=int, default=None, help="server port (default: Gradio's)")
    args = p.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        from ..errors import UserError

        raise UserError("hvit app needs gradio: pip install 'hvit[app]'") from None
    build_demo(args.index, args.model).launch(server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
