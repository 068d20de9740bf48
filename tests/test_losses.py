# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Pairwise cross-entropy against a float64 NumPy oracle written from SPEC §3 with explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling_hvit.losses import LossOutput, PairwiseCrossEntropyLoss, group_by_label, pairwise_cross_entropy


# ---------------------------------------------------------------- oracle (NumPy float64, no torch)
def _mobius_add(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    xy, x2, y2 = x @ y, x @ x, y @ y
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def _d_hyp(x: np.ndarray, y: np.ndarray, c: float) -> float:
    return 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * np.linalg.norm(_mobius_add(-x, y, c)))


def _sim(x: np.ndarray, y: np.ndarray, geometry: str, c: float) -> float:
    if geometry == "poincare":
        return -_d_hyp(x, y, c)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def oracle(z: np.ndarray, geometry: str, tau: float, c: float) -> tuple[float, dict]:
    """z: (N, m, d). Σ_{i≠j} mean_k CE(logits_k, target k); plus positive logits and top-1 accuracy."""
    n, m, _ = z.shape
    total, pos_logits, hits, rows = 0.0, [], 0, 0
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            pair = 0.0
            for k in range(n):
                cands = [_sim(z[k, i], z[l, j], geometry, c) / tau for l in range(n)]
                cands += [_sim(z[k, i], z[l, i], geometry, c) / tau for l in range(n) if l != k]
                top = max(cands)
                lse = top + math.log(sum(math.exp(v - top) for v in cands))
                pair += lse - cands[k]
                pos_logits.append(cands[k])
                hits += int(cands[k] > max(cands[:k] + cands[k + 1:]))
                rows += 1
            total += pair / n
    negs = [_sim(z[k, i], z[l, j], geometry, c) / tau
            for k in range(n) for l in range(n) if k != l for i in range(m) for j in range(m)]
    return total, {"pos_logit_mean": float(np.mean(pos_logits)), "pos_logit_min": min(pos_logits),
                   "pos_logit_max": max(pos_logits), "accuracy": hits / rows, "neg_logit_mean": float(np.mean(negs)),
                   "neg_logit_min": min(negs), "neg_logit_max": max(negs)}


def _ball_points(n: int, m: int, d: int, c: float, rng: np.random.Generator, scale: float = 0.8) -> np.ndarray:
    """Random points inside the ball, with views of a class clustered so accuracy is not trivial."""
    centres = rng.normal(size=(n, 1, d))
    v = centres + scale * rng.normal(size=(n, m, d))
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    r = np.tanh(math.sqrt(c) * norm) / math.sqrt(c)  # expmap0 radius, textbook form
    return v / norm * np.minimum(r, 0.9 / math.sqrt(c))


def _flatten_class_major(z: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    n, m, d = z.shape
    return torch.from_numpy(z.reshape(n * m, d).copy()), torch.arange(n).repeat_interleave(m)


# ---------------------------------------------------------------- value tests
@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
@pytest.mark.parametrize("m", [2, 3])
def test_matches_oracle_float64(geometry, m):
    rng = np.random.default_rng(10 * m + len(geometry))
    c, n, d = 0.1, 5, 6
    z = _ball_points(n, m, d, c, rng)
    emb, labels = _flatten_class_major(z)
    out = PairwiseCrossEntropyLoss(geometry, curvature=c)(emb, labels)
    tau = 0.2 if geometry == "poincare" else 0.1
    want, stats = oracle(z, geometry, tau, c)
    assert isinstance(out, LossOutput) and out.loss.dtype == torch.float64
    assert out.loss.item() == pytest.approx(want, rel=1e-9)
    for key in ("pos_logit_mean", "pos_logit_min", "pos_logit_max", "neg_logit_mean", "neg_logit_min",
                "neg_logit_max", "accuracy"):
        assert out.stats[key].item() == pytest.approx(stats[key], rel=1e-9), key
    assert (out.stats["num_classes"], out.stats["samples_per_class"]) == (n, m)
    assert 0 < stats["accuracy"] < 1  # the data is neither trivial nor hopeless
    mean = PairwiseCrossEntropyLoss(geometry, curvature=c, reduction="mean")(emb, labels).loss
    assert mean.item() == pytest.approx(want / (m * (m - 1)), rel=1e-9)


@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
def test_float32_and_half_inputs_computed_in_fp32(geometry):
    rng = np.random.default_rng(3)
    z = _ball_points(6, 3, 8, 0.1, rng)
    emb, labels = _flatten_class_major(z)
    want, _ = oracle(z, geometry, 0.2 if geometry == "poincare" else 0.1, 0.1)
    loss_fn = PairwiseCrossEntropyLoss(geometry)
    out32 = loss_fn(emb.float(), labels)
    assert out32.loss.dtype == torch.float32
    assert out32.loss.item() == pytest.approx(want, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = loss_fn(emb.bfloat16(), labels)
    assert out16.loss.dtype == torch.float32  # upcast, not bf16 arithmetic
    want16, _ = oracle(emb.bfloat16().double().numpy().reshape(z.shape), geometry,
                       0.2 if geometry == "poincare" else 0.1, 0.1)
    assert out16.loss.item() == pytest.approx(want16, rel=1e-5)


def test_custom_temperature_and_curvature():
    rng = np.random.default_rng(4)
    c = 0.3
    z = _ball_points(4, 2, 5, c, rng)
    emb, labels = _flatten_class_major(z)
    out = pairwise_cross_entropy(emb, labels, "poincare", temperature=0.5, curvature=c)
    assert out.loss.item() == pytest.approx(oracle(z, "poincare", 0.5, c)[0], rel=1e-9)


@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
def test_gradcheck(geometry):
    rng = np.random.default_rng(5)
    emb, labels = _flatten_class_major(_ball_points(3, 3, 4, 0.1, rng))
    emb.requires_grad_(True)
    loss_fn = PairwiseCrossEntropyLoss(geometry)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels).loss, (emb,), eps=1e-6, atol=1e-5)


def test_gradient_finite_for_identical_views():
    """Two views of a class at the same point (d = 0) must not give NaN gradients."""
    x = torch.randn(4, 8) * 0.3
    emb = x.repeat_interleave(2, dim=0).requires_grad_(True)
    out = PairwiseCrossEntropyLoss("poincare")(emb, torch.arange(4).repeat_interleave(2))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(emb.grad).all()


def test_single_class_batch_is_zero_loss_with_finite_gradient():
    emb = (torch.randn(3, 4) * 0.2).requires_grad_(True)
    out = PairwiseCrossEntropyLoss("poincare")(emb, torch.tensor([5, 5, 5]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(emb.grad).all()
    assert out.stats["accuracy"].item() == 1.0 and "neg_logit_mean" not in out.stats


# ---------------------------------------------------------------- layout from labels
def test_any_order_that_keeps_within_class_order_gives_same_loss():
    """Slots come from the labels: class-major, interleaved and shuffled batches agree with the oracle."""
    rng = np.random.default_rng(6)
    n, m, d = 5, 3, 6
    z = _ball_points(n, m, d, 0.1, rng)
    want, _ = oracle(z, "poincare", 0.2, 0.1)
    loss_fn = PairwiseCrossEntropyLoss("poincare")
    label_values = rng.permutation(1000)[:n]  # arbitrary, unsorted, non-contiguous label ids
    for trial in range(4):
        pos = rng.permutation(n * m).reshape(n, m)
        pos.sort(axis=1)  # slot r of class k goes to the r-th position of that class in the batch
        emb = torch.zeros(n * m, d, dtype=torch.float64)
        labels = torch.zeros(n * m, dtype=torch.long)
        for k in range(n):
            for r in range(m):
                emb[pos[k, r]] = torch.from_numpy(z[k, r])
                labels[pos[k, r]] = int(label_values[k])
        assert loss_fn(emb, labels).loss.item() == pytest.approx(want, rel=1e-9), trial


def test_group_by_label_layout():
    emb = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    labels = torch.tensor([7, 3, 7, 3, 9, 9])
    z, classes = group_by_label(emb, labels)
    assert classes.tolist() == [3, 7, 9]
    assert z[:, :, 0].tolist() == [[2.0, 6.0], [0.0, 4.0], [8.0, 10.0]]


@pytest.mark.parametrize("labels, match", [
    ([0, 0, 1, 1, 1, 2], r"exactly m=2 samples.*1: 3, 2: 1"),
    ([0, 0, 0, 1, 1, 1], r"exactly m=2 samples.*0: 3, 1: 3"),  # samples_per_class=2 given below
    ([0, 1, 2, 3, 4, 5], r"m ≥ 2"),
])
def test_wrong_layout_raises(labels, match):
    emb = torch.randn(6, 4) * 0.1
    m = 2 if labels == [0, 0, 0, 1, 1, 1] else None
    with pytest.raises(ValueError, match=match):
        PairwiseCrossEntropyLoss(samples_per_class=m)(emb, torch.tensor(labels))


def test_bad_arguments_raise():
    emb = torch.randn(4, 3) * 0.1
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="labels must have shape"):
        PairwiseCrossEntropyLoss()(emb, labels[:3])
    with pytest.raises(ValueError, match="integer"):
        PairwiseCrossEntropyLoss()(emb, labels.float())
    with pytest.raises(ValueError, match=r"shape \(batch, dim\)"):
        PairwiseCrossEntropyLoss()(emb[None], labels)
    with pytest.raises(ValueError, match="geometry must be one of"):
        PairwiseCrossEntropyLoss("hyperbolic")
    with pytest.raises(ValueError, match="no default temperature"):
        PairwiseCrossEntropyLoss("euclidean")
    with pytest.raises(ValueError, match="reduction"):
        PairwiseCrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PairwiseCrossEntropyLoss(temperature=0.0)
    with pytest.raises(ValueError, match="curvature must be > 0"):
        PairwiseCrossEntropyLoss(curvature=0.0)


def test_euclidean_geometry_with_explicit_temperature():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(3, 2, 4))
    emb, labels = _flatten_class_major(z)
    out = PairwiseCrossEntropyLoss("euclidean", temperature=1.0)(emb, labels)
    # Brute force with explicit loops and −‖x − y‖ similarities.
    want = 0.0
    for i, j in [(0, 1), (1, 0)]:
        for k in range(3):
            cands = [-np.linalg.norm(z[k, i] - z[l, j]) for l in range(3)]
            cands += [-np.linalg.norm(z[k, i] - z[l, i]) for l in range(3) if l != k]
            want += (math.log(sum(math.exp(v) for v in cands)) - cands[k]) / 3
    assert out.loss.item() == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------- float32 gradient precision (issue 12.20)
def _analytic_grad64(s: torch.Tensor, m: int, n: int, tau: float) -> torch.Tensor:
    """d loss / d similarity in float64 from the textbook gradient: each candidate gets its softmax
    weight, the target −(the weight of all others), per pair (i, j), averaged over the N anchors."""
    s = s.double().view(m, n, m, n) / tau
    grad = torch.zeros_like(s)
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            for k in range(n):
                others = torch.arange(n) != k
                cand = torch.cat([s[i, k, j], s[i, k, i, others]])
                p = torch.exp(cand - torch.logsumexp(cand, 0))
                grad[i, k, j] += p[:n]
                grad[i, k, i, others] += p[n:]
                grad[i, k, j, k] = -torch.cat([p[:k], p[k + 1:]]).sum()
    return (grad / (n * tau)).view(m * n, m * n)


@pytest.mark.parametrize("geometry, base", [("poincare", -20.0), ("sphere", 0.0)])
@pytest.mark.parametrize("margin", [2.0, 6.0])
def test_float32_positive_pair_gradients_are_accurate(geometry, base, margin, monkeypatch):
    """Positives well above the negatives (a trained model): the positive logits' gradient p − 1 must
    not drown in float32 rounding of p (today's loss: 1e-5 relative error at margin 2, 100% at 6)."""
    import modeling_hvit.losses as losses

    m, n, tau = 3, 40, losses.DEFAULT_TEMPERATURE[geometry]
    g = torch.Generator().manual_seed(1)
    sim = base + 0.5 * torch.randn(m * n, m * n, generator=g, dtype=torch.float64)
    sim = (sim + sim.T) / 2
    cls = torch.arange(m * n) % n  # slot-major: row i·N + k is class k
    sim[cls[:, None] == cls[None, :]] += margin
    sim = sim.float().requires_grad_(True)
    # feed this similarity matrix to the loss in place of the one computed from embeddings
    monkeypatch.setattr(losses, "pairwise_similarity", lambda *args, **kwargs: sim)
    losses.pairwise_cross_entropy(torch.zeros(m * n, 2), torch.arange(n).repeat(m), geometry).loss.backward()
    want = _analytic_grad64(sim.detach(), m, n, tau)
    pos = (cls[:, None] == cls[None, :]) & ~torch.eye(m * n, dtype=torch.bool)
    err = (sim.grad.double() - want)[pos].norm() / want[pos].norm()
    assert err < 5e-6, f"positive-pair gradient relative error {err:.1e}"
    assert torch.allclose(sim.grad.double()[~pos], want[~pos], rtol=1e-4, atol=1e-12)


# ---------------------------------------------------------------- float32 loss and gradient vs a float64 autograd reference (issue 17)
def _sim64(a: torch.Tensor, b: torch.Tensor, geometry: str, c: float) -> torch.Tensor:
    """Textbook float64 similarities, (n, n') from (n, d) and (n', d), differentiable by autograd."""
    if geometry == "poincare":
        xy, x2, y2 = -a @ b.T, (a * a).sum(-1)[:, None], (b * b).sum(-1)[None, :]
        num = (1 + 2 * c * xy + c * y2)[..., None] * -a[:, None] + (1 - c * x2)[..., None] * b[None]
        norm = (num.pow(2).sum(-1) + 1e-300).sqrt() / (1 + 2 * c * xy + c * c * x2 * y2)  # ‖(−a) ⊕ b‖
        return -2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * norm)
    if geometry == "lorentz":
        a0, b0 = (1 / c + a.pow(2).sum(-1)).sqrt(), (1 / c + b.pow(2).sum(-1)).sqrt()
        return -torch.acosh((c * (a0[:, None] * b0[None] - a @ b.T)).clamp_min(1 + 1e-15)) / math.sqrt(c)
    if geometry == "sphere":
        return (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T
    return -((a[:, None] - b[None]).pow(2).sum(-1) + 1e-300).sqrt()


def _reference_loss64(z: torch.Tensor, geometry: str, tau: float, c: float, mean: bool) -> torch.Tensor:
    """The original's loop (SPEC §3) in float64 autograd: z is (N, m, d); Σ (or mean) over pairs i ≠ j of the
    mean over anchors of CE over [block j | block i without self]."""
    n, m, _ = z.shape
    loss, eye = z.new_zeros(()), torch.eye(n, dtype=torch.bool)
    for i in range(m):
        for j in range(m):
            if i != j:
                own = _sim64(z[:, i], z[:, i], geometry, c).masked_fill(eye, -torch.inf)
                logits = torch.cat([_sim64(z[:, i], z[:, j], geometry, c), own], 1) / tau
                loss = loss + torch.nn.functional.cross_entropy(logits, torch.arange(n))
    return loss / (m * (m - 1)) if mean else loss


@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "sphere", "euclidean"])
@pytest.mark.parametrize("m, n", [(2, 30), (9, 6)])
@pytest.mark.parametrize("options", [{}, {"reduction": "mean", "temperature": 0.5, "curvature": 0.3}])
def test_float32_loss_and_gradient_match_float64_reference(geometry, m, n, options):
    """Issue 17: the fused, in-place forward/backward against plain float64 autograd, every geometry, m = 2 and 9,
    default and non-default options, a batch in shuffled order; statistics from the same reference logits."""
    c = options.get("curvature", 0.1)
    tau = options.get("temperature", {"poincare": 0.2, "lorentz": 0.2, "sphere": 0.1}.get(geometry, 0.3))
    rng = np.random.default_rng(100 * m + len(geometry))
    z = torch.from_numpy(_ball_points(n, m, 8, c, rng, scale=0.5))
    perm = torch.from_numpy(rng.permutation(n * m))  # a shuffled batch
    labels = torch.arange(n).repeat_interleave(m)[perm] * 7 + 3
    emb = z.reshape(n * m, -1)[perm].float().requires_grad_(True)
    loss_fn = PairwiseCrossEntropyLoss(geometry, temperature=tau, curvature=c,
                                       reduction=options.get("reduction", "sum"), samples_per_class=m)
    out = loss_fn(emb, labels)
    out.loss.backward()
    ref_emb = z.reshape(n * m, -1)[perm].clone().requires_grad_(True)
    # slot r of a class is its r-th occurrence in batch order
    grouped = torch.stack([ref_emb[(labels == label).nonzero().flatten()] for label in labels.unique()])
    ref = _reference_loss64(grouped, geometry, tau, c, options.get("reduction") == "mean")
    ref.backward()
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.item(), rel=2e-5)
    assert 0.05 < out.stats["accuracy"].item() < 0.95  # neither trivial nor hopeless: the gradient is not ~0
    torch.testing.assert_close(emb.grad.double(), ref_emb.grad, rtol=2e-4, atol=2e-5 * ref_emb.grad.abs().max().item())
    # statistics against the reference logits
    with torch.no_grad():
        zz = grouped.transpose(0, 1).reshape(n * m, -1)  # slot-major
        logits = _sim64(zz, zz, geometry, c) / tau
        cls = torch.arange(n * m) % n
        same, self_ = cls[:, None] == cls[None, :], torch.eye(n * m, dtype=torch.bool)
        pos, neg = logits[same & ~self_], logits[~same]
    for key, want in [("pos_logit_mean", pos.mean()), ("pos_logit_min", pos.min()), ("pos_logit_max", pos.max()),
                      ("neg_logit_mean", neg.mean()), ("neg_logit_min", neg.min()), ("neg_logit_max", neg.max())]:
        assert out.stats[key].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
@pytest.mark.parametrize("m", [2, 4])
def test_gradcheck_and_repeated_backward(geometry, m):
    """Issue 17: the backward computes the gradient in place in the forward's buffer; gradcheck in float64 (it
    also runs the backward twice), and a second backward through a retained graph gives the same gradient."""
    rng = np.random.default_rng(7 + m)
    emb, labels = _flatten_class_major(_ball_points(3, m, 4, 0.1, rng))
    emb.requires_grad_(True)
    loss_fn = PairwiseCrossEntropyLoss(geometry, reduction="mean")
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels).loss, (emb,), eps=1e-6, atol=1e-5)
    x = emb.detach().float().requires_grad_(True)
    loss = loss_fn(x, labels).loss
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    second = torch.autograd.grad(loss, x)[0]
    assert torch.equal(first, second) and first.abs().sum() > 0


def test_single_class_gradient_is_exactly_zero():
    emb = (torch.randn(4, 3) * 0.2).requires_grad_(True)
    out = PairwiseCrossEntropyLoss("sphere", samples_per_class=4)(emb, torch.tensor([1, 1, 1, 1]))
    (out.loss + emb.sum() * 0).backward()
    assert out.loss.item() == 0 and torch.equal(emb.grad, torch.zeros_like(emb))
    e = emb.detach().double()
    cos = [float(e[a] @ e[b] / (e[a].norm() * e[b].norm())) for a in range(4) for b in range(4) if a != b]
    assert out.stats["pos_logit_max"].item() == pytest.approx(10 * max(cos), rel=1e-5)
    assert out.stats["pos_logit_min"].item() == pytest.approx(10 * min(cos), rel=1e-5)
