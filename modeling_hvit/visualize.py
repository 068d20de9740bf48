# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Embeddings drawn in the Poincaré disk (SPEC §10; ``viz`` extra: umap-learn, matplotlib).

2-d Poincaré embeddings are drawn as they are (scaled by √c onto the unit disk). Anything else goes
through UMAP with ``output_metric="hyperboloid"``; its 2-d hyperboloid point (x, y) maps to the disk as
``(x, y) / (1 + √(1 + x² + y²))``, as in the paper. The UMAP input metric follows the geometry:
``poincare`` and ``lorentz`` (mapped to the ball first; umap's unit-ball Poincaré distance on √c-scaled points; same neighbour order as curvature
c), ``cosine`` for sphere, ``euclidean``. Colours are by class, with a second panel coloured by the
hierarchy column (SOP super-class, In-Shop category, Omniglot alphabet) when given; that panel names
its super-classes: a legend for up to ``LEGEND_MAX`` of them, else each name written at the mean
position of its points. Figures are built without pyplot, so nothing depends on a display or global
backend state.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distances import check_geometry

__all__ = ["LEGEND_MAX", "hyperboloid_to_disk", "disk_coordinates", "plot_poincare_disk"]

LEGEND_MAX = 12  # super-classes named in a legend; more are labelled at their points' mean position


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def hyperboloid_to_disk(xy: np.ndarray) -> np.ndarray:
    """UMAP's 2-d hyperboloid coordinates (n, 2) → points of the unit Poincaré disk."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy / (1 + np.sqrt(1 + (xy**2).sum(1, keepdims=True)))


def disk_coordinates(embeddings: Any, geometry: str = "poincare", curvature: float = 0.1, *,
                     seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """(n, 2) coordinates in the unit disk: direct for 2-d Poincaré points, hyperbolic UMAP otherwise."""
    check_geometry(geometry)
    x = _numpy(embeddings).astype(np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"embeddings must be (n ≥ 2, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN/inf; cannot plot them")
    if geometry == "lorentz":  # hyperboloid space components → the isometric Poincaré ball
        from .lorentz import hyperboloid_to_ball

        x, geometry = hyperboloid_to_ball(torch.from_numpy(x), curvature).numpy(), "poincare"
    if geometry == "poincare":
        x = x * math.sqrt(curvature)  # the ball of radius 1/√c → the unit ball
        if x.shape[1] == 2:
            return x
    try:
        import umap
    except ImportError as e:
        raise ImportError("the Poincaré-disk plot of >2-d embeddings needs the viz extra: "
                          "pip install 'hvit[viz]'") from e
    metric = {"poincare": "poincare", "sphere": "cosine", "euclidean": "euclidean"}[geometry]
    reducer = umap.UMAP(n_components=2, output_metric="hyperboloid", metric=metric,
                        n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist, random_state=seed)
    with warnings.catch_warnings():  # inverse_transform / n_jobs notices irrelevant to a plot
        warnings.filterwarnings("ignore", message=".*(inverse_transform|n_jobs).*", category=UserWarning)
        return hyperboloid_to_disk(reducer.fit_transform(x))


def _codes(values: Any, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(code per point, the distinct values in code order)."""
    v = _numpy(values)
    if v.shape != (n,):
        raise ValueError(f"{name} must have one entry per embedding ({n}), got shape {v.shape}")
    uniq, codes = np.unique(v, return_inverse=True)
    return codes, uniq


def _name_groups(ax, xy: np.ndarray, codes: np.ndarray, names: list[str], cmap, norm, title: str) -> None:
    """A legend of the groups' colours (≤ ``LEGEND_MAX`` groups), else each name at its points' mean."""
    from matplotlib.lines import Line2D

    if len(names) <= LEGEND_MAX:
        handles = [Line2D([], [], linestyle="", marker="o", markersize=5, markeredgewidth=0,
                          color=cmap(norm(k)), label=name) for k, name in enumerate(names)]
        ax.legend(handles=handles, title=title, loc="upper right", fontsize=6, title_fontsize=7,
                  framealpha=0.8, borderaxespad=0.0)
        return
    for k, name in enumerate(names):
        x, y = xy[codes == k].mean(0)
        ax.text(x, y, name, fontsize=6, ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0})


def plot_poincare_disk(embeddings: Any, labels: Any, geometry: str = "poincare", curvature: float = 0.1,
                       *, hierarchy: Any | None = None, hierarchy_name: str = "hierarchy",
                       hierarchy_names: Any | None = None, path: str | Path | None = None,
                       title: str | None = None, seed: int = 0, coords: np.ndarray | None = None,
                       point_size: float | None = None, dpi: int = 150):
    """Scatter the embeddings in the Poincaré disk coloured by ``labels`` (and ``hierarchy`` in a
    second panel, whose super-classes are named: a legend, or labels at their points); returns the
    matplotlib ``Figure`` and writes a PNG to ``path`` when given. ``hierarchy_names`` maps integer
    hierarchy values to names (a ``ClassLabel``'s ``names``); otherwise the values are the names.
    Pass ``coords`` (from ``disk_coordinates``) to reuse an embedding of the points."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    xy = disk_coordinates(embeddings, geometry, curvature, seed=seed) if coords is None else np.asarray(coords)
    n = len(xy)
    panels = [("class", *_codes(labels, n, "labels"))]
    if hierarchy is not None:
        panels.append((hierarchy_name, *_codes(hierarchy, n, "hierarchy")))
    fig = Figure(figsize=(5.0 * len(panels), 5.0))
    size = point_size if point_size is not None else max(1.0, min(20.0, 4000.0 / n))
    for j, (name, codes, values) in enumerate(panels):
        n_colors = len(values)
        ax = fig.add_subplot(1, len(panels), j + 1)
        cmap = colormaps["tab10" if n_colors <= 10 else "tab20" if n_colors <= 20 else "turbo"]
        norm = Normalize(vmin=0, vmax=max(n_colors - 1, 1))
        ax.add_patch(Circle((0.0, 0.0), 1.0, fill=False, color="black", linewidth=1.0))
        ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap=cmap, norm=norm, s=size, linewidths=0)
        if j == 1:
            names = [str(hierarchy_names[int(v)]) if hierarchy_names is not None else str(v) for v in values]
            _name_groups(ax, xy, codes, names, cmap, norm, hierarchy_name)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"coloured by {name} ({n_colors})" if title is None else f"{title}: {name}")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
