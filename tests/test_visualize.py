# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The Poincaré-disk plot: a real PNG, the unit circle drawn, one point per embedding."""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from modeling_hvit.visualize import disk_coordinates, hyperboloid_to_disk, plot_poincare_disk  # noqa: E402


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_hyperboloid_to_disk_formula():
    xy = np.array([[0.0, 0.0], [3.0, 4.0], [-1e6, 0.0]])
    got = hyperboloid_to_disk(xy)
    np.testing.assert_allclose(got[:2], [[0, 0], [3 / (1 + np.sqrt(26)), 4 / (1 + np.sqrt(26))]])
    assert np.linalg.norm(got, axis=1).max() < 1  # far hyperboloid points stay inside the disk


def test_2d_poincare_plot_is_direct(tmp_path):
    c = 0.1
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(57, 2))
    pts = pts / np.linalg.norm(pts, axis=1, keepdims=True) * rng.uniform(0, 0.99, (57, 1)) / np.sqrt(c)
    labels = rng.integers(0, 5, 57)
    out = tmp_path / "disk.png"
    fig = plot_poincare_disk(pts, labels, "poincare", c, path=out, dpi=50)
    assert _png_size(out) == (250, 250)
    (ax,) = fig.axes
    (scatter,) = ax.collections
    np.testing.assert_allclose(scatter.get_offsets(), pts * np.sqrt(c), rtol=1e-6)
    circles = [p for p in ax.patches if type(p).__name__ == "Circle"]
    assert len(circles) == 1 and circles[0].get_radius() == 1.0 and tuple(circles[0].center) == (0, 0)
    np.testing.assert_array_equal(np.asarray(scatter.get_array()), np.unique(labels, return_inverse=True)[1])


def test_hierarchy_adds_a_second_panel(tmp_path):
    pts = np.random.default_rng(1).uniform(-1, 1, (20, 2))
    fig = plot_poincare_disk(pts, np.arange(20) % 4, "poincare", 0.5, hierarchy=np.arange(20) % 2,
                             path=tmp_path / "h.png", dpi=40)
    assert len(fig.axes) == 2
    assert _png_size(tmp_path / "h.png") == (400, 200)
    for ax in fig.axes:
        assert len(ax.collections[0].get_offsets()) == 20


def test_bad_inputs():
    pts = np.zeros((5, 2))
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        plot_poincare_disk(pts, [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        disk_coordinates(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="geometry"):
        disk_coordinates(pts, "hyperboloid")


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
def test_umap_to_disk_for_high_dim(geometry, tmp_path):
    pytest.importorskip("umap")
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 16))
    x = (np.repeat(centres, 30, 0) + 0.1 * rng.normal(size=(120, 16))) * 0.3
    xy = disk_coordinates(x, geometry, 0.1, seed=0)
    assert xy.shape == (120, 2) and (np.linalg.norm(xy, axis=1) < 1).all()
    fig = plot_poincare_disk(x, np.repeat(np.arange(4), 30), geometry, 0.1, coords=xy,
                             path=tmp_path / "u.png", dpi=40)
    assert len(fig.axes[0].collections[0].get_offsets()) == 120
    _png_size(tmp_path / "u.png")


def test_hierarchy_panel_has_a_legend_of_its_super_classes():
    """Issue 15: the hierarchy panel names each super-class with its colour (matplotlib objects)."""
    from matplotlib.colors import to_rgba

    rng = np.random.default_rng(3)
    pts = rng.uniform(-1, 1, (30, 2)) * 0.6
    groups = np.arange(30) % 3
    names = ["Latin", "Greek", "Korean"]
    fig = plot_poincare_disk(pts, np.arange(30) % 6, "poincare", 1.0, hierarchy=groups, hierarchy_name="alphabet",
                             hierarchy_names=names)
    class_ax, hier_ax = fig.axes
    assert class_ax.get_legend() is None  # classes are too many to name
    legend = hier_ax.get_legend()
    assert legend is not None and legend.get_title().get_text() == "alphabet"
    assert [t.get_text() for t in legend.get_texts()] == names
    scatter = hier_ax.collections[0]
    colours = scatter.to_rgba(np.asarray(scatter.get_array()))  # the points' colours, as drawn
    for handle, k in zip(legend.legend_handles, range(3)):
        np.testing.assert_allclose(to_rgba(handle.get_color()), colours[np.flatnonzero(groups == k)[0]])


def test_many_super_classes_are_labelled_at_their_points():
    from modeling_hvit.visualize import LEGEND_MAX

    rng = np.random.default_rng(4)
    n_groups = LEGEND_MAX + 3
    groups = np.array([f"g{k:02d}" for k in np.arange(90) % n_groups])
    pts = rng.uniform(-1, 1, (90, 2)) * 0.6
    fig = plot_poincare_disk(pts, np.arange(90), "poincare", 1.0, hierarchy=groups)
    ax = fig.axes[1]
    assert ax.get_legend() is None
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert sorted(texts) == sorted(set(groups))
    for name, pos in texts.items():
        np.testing.assert_allclose(pos, pts[groups == name].mean(0))  # at the mean of its points
