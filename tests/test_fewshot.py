# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Few-shot episodes and prototypes against float64 textbook formulas and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling_hvit.fewshot import einstein_midpoint, fewshot_accuracy, prototypes, sample_episodes


# ---------------------------------------------------------------- oracle (NumPy float64)
def mobius_add(x, y, c):
    xy, x2, y2 = x @ y, x @ x, y @ y
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def d_hyp(x, y, c):
    return 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * np.linalg.norm(mobius_add(-x, y, c)))


def gyromidpoint(points, c):
    """Ungar's Möbius gyromidpoint: ½ ⊗ (Σ γ_i² a_i / Σ (γ_i² − ½)), γ_i = 1/√(1 − c‖a_i‖²)."""
    g2 = np.array([1 / (1 - c * p @ p) for p in points])
    y = sum(g * p for g, p in zip(g2, points)) / sum(g2 - 0.5)
    r = math.sqrt(c) * np.linalg.norm(y)
    return math.tanh(0.5 * math.atanh(r)) * y / r


def ball(n, d, c, rng, radius=0.8):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True) * rng.uniform(0, radius, (n, 1)) / math.sqrt(c)


def brute_force_hierarchy(d: np.ndarray, labels, groups, ks=(1,)) -> dict[str, float]:
    """Coarse Recall@K, coarse MAP@R and mistake severity@1 from a distance matrix, one query at a time
    (ties to the lower index, self excluded)."""
    n = len(labels)
    hits = {k: [] for k in ks}
    aps, wrong, mild = [], 0, 0
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j))
        rel = [groups[j] == groups[i] for j in order]
        for k in ks:
            hits[k].append(any(rel[:k]))
        r, found, ap = sum(rel), 0, 0.0
        for j in range(r):
            if rel[j]:
                found += 1
                ap += found / (j + 1)
        aps.append(ap / r)
        if labels[order[0]] != labels[i]:
            wrong += 1
            mild += groups[order[0]] == groups[i]
    out = {f"coarse_recall@{k}": float(np.mean(v)) for k, v in hits.items()}
    return {**out, "coarse_map@r": float(np.mean(aps)), "mistake_severity@1": mild / wrong}


# ---------------------------------------------------------------- midpoint
@pytest.mark.parametrize("c", [0.1, 1.0])
def test_einstein_midpoint_is_the_gyromidpoint_and_isometry_invariant(c):
    rng = np.random.default_rng(0)
    for n in (1, 2, 5):
        pts = ball(n, 4, c, rng)
        got = einstein_midpoint(torch.from_numpy(pts), c, dim=0).numpy()
        np.testing.assert_allclose(got, gyromidpoint(pts, c), rtol=1e-10, atol=1e-12)
        a = ball(1, 4, c, rng)[0]  # the gyrotranslation x ↦ a ⊕ x is an isometry of the ball
        moved = np.stack([mobius_add(a, p, c) for p in pts])
        np.testing.assert_allclose(einstein_midpoint(torch.from_numpy(moved), c, dim=0).numpy(),
                                   mobius_add(a, got, c), rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- episodes
def test_episodes_are_seeded_balanced_and_class_disjoint():
    labels = np.repeat(np.arange(12), [20] * 10 + [5, 3])  # the last two classes are too small for 2 + 4
    s, q = sample_episodes(labels, n_way=5, k_shot=2, n_query=4, episodes=50, seed=3)
    assert s.shape == (50, 5, 2) and q.shape == (50, 5, 4)
    for e in range(50):
        rows = [set(labels[np.concatenate([s[e, r], q[e, r]])]) for r in range(5)]
        assert all(len(r) == 1 for r in rows)  # one class per row
        assert len(set.union(*rows)) == 5 and not set.union(*rows) & {10, 11}  # 5 distinct eligible classes
        assert len(set(s[e].ravel()) | set(q[e].ravel())) == 30  # support and queries never share an item
    s2, q2 = sample_episodes(labels, 5, 2, 4, 50, seed=3)
    assert (s2 == s).all() and (q2 == q).all()
    assert not (sample_episodes(labels, 5, 2, 4, 50, seed=4)[0] == s).all()
    used = np.bincount(labels[s[:, :, 0].ravel()], minlength=12)
    assert used[:10].min() > 0  # every eligible class is drawn


def test_within_superclass_episodes():
    labels = np.repeat(np.arange(9), 6)
    groups = np.repeat([0, 0, 0, 0, 1, 1, 1, 2, 2], 6)  # super-class 2 has only 2 classes: never used for 3-way
    s, q = sample_episodes(labels, 3, 1, 2, 40, seed=0, groups=groups)
    for e in range(40):
        assert len(set(groups[s[e].ravel()]) | set(groups[q[e].ravel()])) == 1
        assert groups[s[e, 0, 0]] in (0, 1)
    with pytest.raises(ValueError, match="no super-class has 5 classes"):
        sample_episodes(labels, 5, 1, 2, 3, groups=groups)
    bad = groups.copy()
    bad[0] = 1
    with pytest.raises(ValueError, match="spans several super-classes"):
        sample_episodes(labels, 3, 1, 2, 3, groups=bad)


# ---------------------------------------------------------------- prototype classification
@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_nearest_prototype_accuracy_matches_brute_force(geometry):
    c = 0.5
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(8), 7)
    centres = ball(8, 3, c, rng, radius=0.6)
    x = np.clip(centres[labels] + 0.5 * rng.normal(size=(len(labels), 3)), -1, 1)
    x = x / np.maximum(1, np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(c) / 0.9)  # inside the ball
    got = fewshot_accuracy(x, labels, geometry, c, n_way=4, k_shot=3, n_query=2, episodes=30, seed=5, chunk=7)
    s, q = sample_episodes(labels, 4, 3, 2, 30, seed=5)
    accs = []
    for e in range(30):
        if geometry == "poincare":
            protos = [gyromidpoint(x[s[e, r]], c) for r in range(4)]
            dist = lambda a, b: d_hyp(a, b, c)  # noqa: E731
        elif geometry == "sphere":
            protos = [x[s[e, r]].mean(0) / np.linalg.norm(x[s[e, r]].mean(0)) for r in range(4)]
            dist = lambda a, b: 1 - a @ b / np.linalg.norm(a)  # noqa: E731
        else:
            protos = [x[s[e, r]].mean(0) for r in range(4)]
            dist = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
        hits = [int(np.argmin([dist(x[i], p) for p in protos]) == r) for r in range(4) for i in q[e, r]]
        accs.append(np.mean(hits))
    assert got["accuracy"] == pytest.approx(np.mean(accs), abs=1e-12)
    assert got["ci95"] == pytest.approx(1.96 * np.std(accs, ddof=1) / math.sqrt(30), rel=1e-9)
    assert 0.2 < got["accuracy"] < 1  # neither chance nor trivial


def test_prototypes_shapes():
    sup = torch.rand(6, 5, 3, 4) * 0.3
    for geometry in ("poincare", "sphere", "euclidean"):
        assert prototypes(sup, geometry).shape == (6, 5, 4)


# ---------------------------------------------------------------- hierarchy metrics
def test_hierarchy_metrics_match_a_brute_force_loop():
    from modeling_hvit.hierarchy_metrics import hierarchy_metrics

    c = 0.1
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(12), 4)
    groups = labels // 4  # 3 super-classes of 4 classes
    centres = ball(3, 4, c, rng, 0.5)[groups] + 0.6 * rng.normal(size=(48, 4))
    x = ball(48, 4, c, rng, 0.3) + centres * 0.5
    x = x / np.maximum(1, np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(c) / 0.9)
    got = hierarchy_metrics(torch.from_numpy(x), labels, groups, "poincare", c, ks=(1, 5), exact=True)
    want = brute_force_hierarchy(np.array([[d_hyp(a, b, c) for b in x] for a in x]), labels, groups, (1, 5))
    assert 0 < want["mistake_severity@1"] < 1
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# ---------------------------------------------------------------- real Omniglot (slow)
@pytest.mark.slow
def test_fewshot_on_real_omniglot(tmp_path, monkeypatch):
    """`hvit eval --fewshot` with 20 episodes per setting on the Omniglot evaluation alphabets, with a tiny
    random-init model: accuracies in [0, 1] and above chance (random features of the pixels), sensible
    95% CIs, and within-alphabet episodes whose N characters all come from one alphabet."""
    from conftest import real_data
    from modeling_hvit import HViTConfig, HViTModel
    from modeling_hvit.data import build_dataset, dataset_labels
    from modeling_hvit.evaluation import main

    data = real_data("omniglot")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    HViTModel(HViTConfig(backbone_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
                                          "num_attention_heads": 4, "intermediate_size": 64, "image_size": 28,
                                          "patch_size": 7}, embedding_dim=16)).save_pretrained(model_dir)
    got = main(["--model", str(model_dir), "--dataset", "omniglot", "--data_dir", str(data), "--output_dir",
                str(tmp_path / "eval"), "--fewshot", "--fewshot_episodes", "20", "--batch_size", "512",
                "--recall_ks", "1", "--progress", "false", "--device", "cpu"])
    assert got["num_queries"] == 13180 and got["hierarchy_column"] == "alphabet" and got["fewshot_episodes"] == 20
    for n_way in (5, 20):
        for k_shot in (1, 5):
            for suffix in ("", "_within"):
                key = f"fewshot_{n_way}way_{k_shot}shot{suffix}"
                acc, ci = got[key], got[f"{key}_ci95"]
                assert 1 / n_way < acc <= 1, key  # above chance
                # 20 episodes of N·15 queries: 1.96·std/√20 with 0 < std ≤ 0.5
                assert 0 < ci < 1.96 * 0.5 / math.sqrt(20) and acc - ci > 0, key

    # the within-alphabet episodes, as fewshot_accuracy draws them (same seed): one alphabet each
    test = build_dataset("omniglot", data_dir=str(data))["test"]
    labels, alphabets = np.asarray(dataset_labels(test)), np.asarray(dataset_labels(test, "alphabet"))
    char_names, alpha_names = test.features["label"].names, test.features["alphabet"].names
    support, query = sample_episodes(labels, 20, 1, 15, 20, 0, alphabets)
    for s, q in zip(support, query):
        items = np.concatenate([s, q], axis=1)  # (N, K + Q): row n is one character
        chars = labels[items]
        assert (chars == chars[:, :1]).all() and len(set(chars[:, 0])) == 20  # 20 distinct characters
        (alphabet,) = set(alphabets[items.ravel()])  # all from one alphabet
        # independently of the alphabet column: the character's folder lies in that alphabet's folder
        assert {char_names[c].split("/")[0] for c in chars[:, 0]} == {alpha_names[alphabet]}
    # and the unconstrained 20-way episodes do mix alphabets
    free, _ = sample_episodes(labels, 20, 1, 15, 20, 0)
    assert all(len(set(alphabets[e.ravel()])) > 1 for e in free)
