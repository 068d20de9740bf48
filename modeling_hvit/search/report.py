# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Pictures of search and dedup results: a PNG contact sheet and an HTML page with thumbnails.

A *row* is an anchor image (a query, or a duplicate group's first member) followed by its
neighbours, each with a caption (its distance). Images are paths or PIL images; one that cannot be
read becomes a grey tile captioned "unreadable". PIL only.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["Row", "contact_sheet", "html_page", "rows_from_groups", "rows_from_search"]

PAD, CAPTION = 6, 16
BACKGROUND, PLACEHOLDER = (255, 255, 255), (200, 200, 200)


@dataclass
class Row:
    anchor: Any  # path or PIL image
    anchor_caption: str
    neighbours: list[tuple[Any, str]]  # (path or PIL image, caption)


def _thumb(image: Any, size: int) -> tuple[Image.Image, bool]:
    try:
        im = image if isinstance(image, Image.Image) else Image.open(image)
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return im, True
    except Exception:  # an unreadable picture must not stop the report
        return Image.new("RGB", (size, size), PLACEHOLDER), False


def rows_from_search(queries: Sequence[Any], results: list[list[dict]], index: Any = None) -> list[Row]:
    """Rows for ``semantic_search`` / ``range_search`` results (hits need ``path``, or an ``index``)."""
    rows = []
    for q, hits in zip(queries, results):
        nb = [(h.get("path") or (index.paths[h["corpus_id"]] if index is not None else None),
               f"d={h['distance']:.4g}") for h in hits]
        rows.append(Row(q, "query" if not isinstance(q, (str, os.PathLike)) else f"query: {Path(q).name}", nb))
    return rows


def rows_from_groups(groups: list[list[int]], index: Any, max_per_group: int = 12) -> list[Row]:
    """Rows for duplicate groups: the first member, then the others with their distance to it."""
    from .scoring import distance

    rows = []
    for g, members in enumerate(groups):
        first = members[0]
        nb = []
        for m in members[1:max_per_group]:
            d = float(distance(index.embeddings[first], index.embeddings[m], index.geometry, index.curvature))
            nb.append((index.paths[m], f"d={d:.4g}"))
        rows.append(Row(index.paths[first], f"group {g} ({len(members)})", nb))
    return rows


def contact_sheet(rows: Sequence[Row], path: str | os.PathLike | None = None, thumb: int = 128) -> Image.Image:
    """One line per row: the anchor tile, then the neighbour tiles, each captioned; saved as PNG
    when ``path`` is given. Tile (r, t) has its top-left corner at ``(PAD + t·(thumb + PAD),
    PAD + r·(thumb + CAPTION + PAD))`` and its picture centred in the ``thumb``-square."""
    if not rows:
        raise ValueError("nothing to draw: no rows")
    cols = 1 + max(len(r.neighbours) for r in rows)
    cell_w, cell_h = thumb + PAD, thumb + CAPTION + PAD
    sheet = Image.new("RGB", (PAD + cols * cell_w, PAD + len(rows) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        for t, (image, caption) in enumerate([(row.anchor, row.anchor_caption)] + list(row.neighbours)):
            x, y = PAD + t * cell_w, PAD + r * cell_h
            im, ok = _thumb(image, thumb)
            sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
            text = caption if ok else f"{caption} (unreadable)"
            draw.text((x + 2, y + thumb + 2), text[: max(4, thumb // 6)], fill=(0, 0, 0), font=font)
            if t == 0:  # frame the anchor
                draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline=(220, 60, 60), width=2)
    if path is not None:
        sheet.save(path, format="PNG")
    return sheet


def _src(image: Any, html_dir: Path, embed: bool, thumb: int) -> str:
    if embed or isinstance(image, Image.Image) or image is None:
        im, _ = _thumb(image, thumb)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return Path(os.path.relpath(Path(image).resolve(), html_dir.resolve())).as_posix()


def html_page(rows: Sequence[Row], path: str | os.PathLike, title: str = "hvit search results", *,
              embed: bool = True, thumb: int = 160) -> Path:
    """An HTML page, one ``<section class="row">`` per row with one ``<figure>`` (image + caption) per
    tile. ``embed=True`` inlines JPEG thumbnails (a single self-contained file); ``False`` links the
    images by paths relative to the page."""
    path = Path(path)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>section{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0;border-bottom:1px solid #ddd}"
           f"figure{{margin:0;width:{thumb}px;font:12px sans-serif;overflow-wrap:anywhere}}"
           f"img{{max-width:{thumb}px;max-height:{thumb}px}}figure.anchor img{{outline:3px solid #d33}}</style>",
           f"</head><body><h1>{html.escape(title)}</h1>"]
    for row in rows:
        out.append("<section class='row'>")
        for t, (image, caption) in enumerate([(row.anchor, row.anchor_caption)] + list(row.neighbours)):
            name = "" if image is None or isinstance(image, Image.Image) else Path(image).name
            out.append(f"<figure class='{'anchor' if t == 0 else 'hit'}'><img src='{_src(image, path.parent, embed, thumb)}'"
                       f" alt='{html.escape(name, quote=True)}'><figcaption>{html.escape(caption)}<br>"
                       f"{html.escape(name)}</figcaption></figure>")
        out.append("</section>")
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path
