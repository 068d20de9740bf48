# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The radius–correct correlation (issue 15, item 5) against SciPy and float64 textbook radii."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from modeling_hvit.hierarchy_metrics import embedding_radius, radius_correct_correlation, radius_metrics


def _ball(n, d, c, rng, lo=0.0, hi=0.9):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True) * rng.uniform(lo, hi, (n, 1)) / math.sqrt(c)


def _d_hyp(x, y, c):
    """Poincaré distance of all pairs, float64 (arcosh form)."""
    sq = ((x[:, None] - y[None]) ** 2).sum(-1)
    return np.arccosh(1 + 2 * c * sq / np.outer(1 - c * (x**2).sum(1), 1 - c * (y**2).sum(1))) / math.sqrt(c)


@pytest.mark.parametrize("seed", range(4))
def test_correlation_is_scipys_point_biserial(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    radius = rng.gamma(2.0, size=n)
    correct = rng.random(n) < 0.4
    correct[:2] = [True, False]  # neither constant
    want = stats.pointbiserialr(correct, radius).statistic
    assert radius_correct_correlation(radius, correct) == pytest.approx(want, abs=1e-12)
    assert radius_correct_correlation(radius, correct) == pytest.approx(stats.pearsonr(radius, correct).statistic,
                                                                        abs=1e-12)


def test_correlation_undefined_or_malformed():
    assert math.isnan(radius_correct_correlation([1.0, 2.0, 3.0], [1, 1, 1]))  # every top-1 right
    assert math.isnan(radius_correct_correlation([2.0, 2.0, 2.0], [1, 0, 1]))  # one radius
    with pytest.raises(ValueError, match="1-d of equal length"):
        radius_correct_correlation([1.0, 2.0], [1, 0, 1])


def test_every_point_at_the_clip_radius_is_no_signal():
    """A trained Hyp- model with the paper's r = 2.3 can put every embedding at the clip: radius 2r up to float32
    rounding. That rounding must not be reported as a correlation (it was: r ≈ ±0.02 of pure noise)."""
    c, r_clip, n = 0.1, 2.3, 400
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.normal(size=(n, 16))).float()
    z = z / z.norm(dim=-1, keepdim=True) * r_clip  # every feature clipped
    from modeling_hvit.hyperbolic import expmap0

    radius = embedding_radius(expmap0(z, c), "poincare", c)
    assert float(radius.std()) > 0  # float32 rounding leaves a spread...
    correct = rng.random(n) < 0.5
    correct[np.argsort(np.asarray(radius))[n // 2:]] ^= True  # ...even one that would correlate
    assert math.isnan(radius_correct_correlation(radius, correct))
    assert radius_metrics(expmap0(z, c), np.repeat(np.arange(n // 4), 4), "poincare", c) == {}
    spread = np.linspace(4.0, 4.6, n)  # a genuine spread still counts
    assert not math.isnan(radius_correct_correlation(spread, correct))


def test_radius_per_geometry_is_the_textbook_distance_to_the_origin():
    c = 0.3
    rng = np.random.default_rng(0)
    x = _ball(20, 5, c, rng)
    got = embedding_radius(torch.from_numpy(x), "poincare", c).numpy()
    np.testing.assert_allclose(got, _d_hyp(np.zeros((1, 5)), x, c)[0], rtol=1e-10)
    # Lorentz: the space components of the same points on the hyperboloid (x0 = (1 + c|x|²)/(√c(1 − c|x|²))),
    # distance to the apex o = (1/√c, 0): arcosh(−c⟨o, p⟩_L)/√c = arcosh(√c p0)/√c
    n2 = (x**2).sum(1, keepdims=True)
    space = 2 * x / (1 - c * n2)
    p0 = np.sqrt(1 / c + (space**2).sum(1))
    want = np.arccosh(math.sqrt(c) * p0) / math.sqrt(c)
    np.testing.assert_allclose(embedding_radius(space, "lorentz", c).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(want, got, rtol=1e-9)  # an isometry keeps the distance to the origin
    lin = rng.normal(size=(20, 5)) * 3
    np.testing.assert_allclose(embedding_radius(lin, "euclidean").numpy(), np.linalg.norm(lin, axis=1))
    unit = lin / np.linalg.norm(lin, axis=1, keepdims=True)
    np.testing.assert_allclose(embedding_radius(unit, "sphere", head_output=lin).numpy(), np.linalg.norm(lin, axis=1))
    with pytest.raises(ValueError, match="sphere's radius is the norm of the head's linear output"):
        embedding_radius(unit, "sphere")


def _planted(c, rng, far_correct=True):
    """Tight same-class pairs far from the origin (top-1 right) and mixed-class clutter near it (top-1
    mostly wrong), or the reverse."""
    d = 4
    centres = _ball(10, d, c, rng, 0.8, 0.85)
    far = np.repeat(centres, 3, 0) * (1 + 0.002 * rng.normal(size=(30, 1)))
    near = _ball(30, d, c, rng, 0.0, 0.3)
    far_labels = np.repeat(np.arange(10), 3)
    near_labels = 100 + np.arange(30) % 15  # same-class partners scattered in the clutter
    if not far_correct:  # far pairs: different classes; near: tight same-class triples
        far_labels = 200 + np.arange(30)
        near = np.repeat(_ball(10, d, c, rng, 0.05, 0.3), 3, 0) * (1 + 0.002 * rng.normal(size=(30, 1)))
        near_labels = np.repeat(np.arange(10), 3)
    return np.concatenate([far, near]), np.concatenate([far_labels, near_labels])


@pytest.mark.parametrize("far_correct, sign", [(True, 1), (False, -1)])
def test_planted_sign_and_brute_force(far_correct, sign):
    c = 0.1
    x, y = _planted(c, np.random.default_rng(3), far_correct)
    got = radius_metrics(torch.from_numpy(x), y, "poincare", c, exact=True)["radius_correct_correlation"]
    d = _d_hyp(x, x, c)
    np.fill_diagonal(d, np.inf)
    correct = y[d.argmin(1)] == y
    radius = _d_hyp(np.zeros((1, x.shape[1])), x, c)[0]
    assert got == pytest.approx(stats.pearsonr(radius, correct).statistic, abs=1e-9)
    assert np.sign(got) == sign and abs(got) > 0.5


def test_sphere_uses_the_head_output_norm_and_a_gallery():
    rng = np.random.default_rng(5)
    lin = rng.normal(size=(25, 6))
    lin[:12] *= 4  # long vectors ...
    labels = rng.integers(0, 5, 25)
    gallery = rng.normal(size=(40, 6))
    g_labels = rng.integers(0, 5, 40)
    unit = lin / np.linalg.norm(lin, axis=1, keepdims=True)
    got = radius_metrics(torch.from_numpy(unit), labels, "sphere", head_output=torch.from_numpy(lin),
                         gallery=torch.from_numpy(gallery), gallery_labels=g_labels)
    gu = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    correct = g_labels[(unit @ gu.T).argmax(1)] == labels
    want = stats.pointbiserialr(correct, np.linalg.norm(lin, axis=1)).statistic
    assert got["radius_correct_correlation"] == pytest.approx(want, abs=1e-9)
