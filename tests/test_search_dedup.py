"""Dedup: pairs equal float64 brute force, planted duplicates grouped, connected components, calibration."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_hvit.search import (Embedder, HViTIndex, calibrate_from_edits, calibrate_from_pairs,
                                  duplicate_groups, duplicate_mining, threshold_for_recall)
from test_search_query import C, brute_distances, random_points
from test_modeling import tiny_model


@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_pairs_and_nn_equal_brute_force(geometry):
    x = random_points(700, 8, geometry, seed=11)
    ref = brute_distances(x.numpy(), x.numpy(), geometry)
    np.fill_diagonal(ref, np.inf)
    radius = float(np.quantile(ref[np.isfinite(ref)], 0.003))
    rep = duplicate_mining(x, radius, geometry=geometry, curvature=C, row_block=128, col_block=256)
    i, j = np.nonzero(np.triu(ref <= radius, 1))
    assert sorted((a, b) for _, a, b in rep.pairs) == sorted(zip(i.tolist(), j.tolist()))
    np.testing.assert_allclose([d for d, _, _ in rep.pairs], [ref[a, b] for _, a, b in rep.pairs], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rep.nn_distance, ref.min(1), rtol=1e-6, atol=1e-9)


def test_planted_duplicates_form_the_groups():
    g = torch.Generator().manual_seed(3)
    from modeling_hvit.hyperbolic import clip_features, expmap0

    base = expmap0(clip_features(torch.randn(300, 16, generator=g) * 2, 2.3), C)
    planted = {i: [300 + 2 * n, 301 + 2 * n] for n, i in enumerate(range(0, 60, 3))}  # 20 originals × 2 copies
    copies = torch.cat([base[i] + 1e-3 * torch.randn(2, 16, generator=g) for i in planted])
    rep = duplicate_mining(torch.cat([base, copies]), 0.05, geometry="poincare", curvature=C)
    assert sorted(rep.groups) == sorted([i, *c] for i, c in planted.items())


def test_groups_are_connected_components():
    pairs = [(0.1, 0, 1), (0.1, 1, 2), (0.2, 5, 6)]
    assert duplicate_groups(pairs, 8) == [[0, 1, 2], [5, 6]]  # 0 and 2 joined through 1 (not a clique)


def test_threshold_for_recall_and_pairs():
    d = np.arange(1, 101) / 100.0
    assert threshold_for_recall(d, 0.99) == pytest.approx(0.99)
    assert threshold_for_recall(d, 1.0) == pytest.approx(1.0)
    cal = calibrate_from_pairs(d, non_duplicate_distances=[0.5, 2.0, 3.0, 4.0], recall=0.99)
    assert cal.recall >= 0.99 and cal.false_positive_rate == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no duplicate distances"):
        threshold_for_recall([], 0.99)


def test_calibrated_threshold_finds_edited_copies(tmp_path):
    """Edited copies of the user's own images (the calibration's edits, on other images) are found
    at the calibrated threshold."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):  # smooth images, so edits keep them recognisable
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 64), Image.BICUBIC).save(folder / f"{i:02d}.png")
    model = tiny_model()
    emb = Embedder.from_model(model)
    files = sorted(folder.iterdir())
    cal = calibrate_from_edits(emb, files[:20], sample=20, recall=0.99)
    assert cal.recall >= 0.99 and set(cal.per_edit) >= {"resize_50", "jpeg_q60", "crop_90"}
    from modeling_hvit.search.calibrate import SYNTHETIC_EDITS

    copies = tmp_path / "copies"
    copies.mkdir()
    for p in files[20:30]:
        SYNTHETIC_EDITS["jpeg_q60"](Image.open(p)).save(copies / f"{p.stem}_copy.png")
    index = HViTIndex.build([*files, *sorted(copies.iterdir())], tmp_path / "ix", model)
    rep = duplicate_mining(index, cal.threshold)
    group_of = {index.paths[m]: gi for gi, g in enumerate(rep.groups) for m in g}
    caught = sum(group_of.get(str(p.resolve()), -1) == group_of.get(str((copies / f"{p.stem}_copy.png").resolve()), -2)
                 for p in files[20:30])
    assert caught >= 9  # ≥ 90% of 10 held-out copies (the calibration targets 99% of its own edits)


@pytest.mark.parametrize("n", [1, 2, 3, 130, 257])
def test_nearest_neighbours_small_and_uneven_blocks(n):
    """Block edges (n not a multiple of the blocks, a single item, the neighbour found as a column)."""
    x = random_points(n, 6, "poincare", seed=n)
    rep = duplicate_mining(x, 0.0, geometry="poincare", curvature=C, row_block=64, col_block=128)
    ref = brute_distances(x.numpy(), x.numpy(), "poincare")
    np.fill_diagonal(ref, np.inf)
    np.testing.assert_allclose(rep.nn_distance, ref.min(1), rtol=1e-6, atol=1e-9)
    assert (rep.nn_index != np.arange(n)).all()
