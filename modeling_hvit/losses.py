# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Pairwise cross-entropy of HViT (SPEC §3) on a batch of N classes × m samples.

For every ordered pair of view slots (i, j), i ≠ j, with anchors ``a = z[:, i]`` and positives
``p = z[:, j]`` (N × d each), the logits of anchor k are

    [ s(a_k, p_0), …, s(a_k, p_{N−1}) | s(a_k, a_l) for l ≠ k ] / τ        (2N − 1 candidates)

with target ``p_k``, where ``s`` is ``distances.pairwise_similarity`` (higher = closer):
``"poincare"`` → −d_hyp (τ = 0.2), ``"sphere"`` → cos (τ = 0.1, the original's ``+cos/τ`` logits,
not the paper's ‖â − p̂‖² form, which differs by a factor 2 in τ and a constant).

Normalisation: each pair's cross-entropy is a *mean* over the N anchors; ``reduction="sum"``
(default, as the original) adds the m(m − 1) pair terms, ``reduction="mean"`` averages them (so the
loss scale does not grow with m). Everything is evaluated in float32 (float64 stays float64) with
autocast disabled, from one (Nm × Nm) similarity matrix rather than m(m − 1) separate ones.

Batch layout comes from the labels, never from positions: samples are grouped by label, each class
must occur exactly m times, and the r-th occurrence of a class (in batch order) is its view slot r.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .distances import check_geometry, pairwise_similarity
from .hyperbolic import _fp32, _no_autocast

__all__ = ["DEFAULT_TEMPERATURE", "LossOutput", "PairwiseCrossEntropyLoss", "group_by_label",
           "pairwise_cross_entropy"]

# The paper's temperatures per geometry; "euclidean" has none and needs an explicit one.
DEFAULT_TEMPERATURE = {"poincare": 0.2, "lorentz": 0.2, "sphere": 0.1}
REDUCTIONS = ("sum", "mean")


@dataclass
class LossOutput:
    """The loss (0-dim tensor with grad) and detached 0-dim statistics to log.

    ``stats`` keys (logits = similarity / τ): ``pos_logit_{mean,min,max}`` over every same-class
    pair of different views (each ordered pair once: exactly the targets of the m(m − 1)·N rows),
    ``neg_logit_{mean,min,max}`` over every ordered pair of samples from different classes (absent
    when N = 1), ``accuracy`` (fraction of the m(m − 1)·N rows whose positive beats all 2N − 2
    negatives), ``num_classes`` (N) and ``samples_per_class`` (m). Values are detached tensors, so
    logging can ``.item()`` them when it wants to (no device sync inside the step).
    """

    loss: torch.Tensor
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)


def group_by_label(embeddings: torch.Tensor, labels: torch.Tensor,
                   samples_per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrange a flat batch (B, d) as (N, m, d) by label; returns it and the N class labels (sorted).

    Slot r of a class is its r-th occurrence in batch order. Raises ``ValueError`` unless every class
    occurs exactly m times (m = ``samples_per_class`` if given, else the common count, which must
    be ≥ 2 for a pair to exist). With ``samples_per_class`` given, shapes do not depend on the data
    (a stable argsort and a reshape): on CUDA the layout check is then an asynchronous device
    assertion, so the training step has no host↔device synchronisation here.
    """
    order, classes = _group_order(embeddings, labels, samples_per_class)
    return embeddings[order], classes


def _group_order(embeddings: torch.Tensor, labels: torch.Tensor,
                 samples_per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``group_by_label``'s checks and layout: the (N, m) batch positions of class k's slot r, and the classes."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must have shape (batch, dim), got {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},) to match embeddings "
                         f"{tuple(embeddings.shape)}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    labels = labels.to(embeddings.device)
    b = labels.shape[0]
    m = samples_per_class
    if m is None:  # inferred from the data: one host sync (pass samples_per_class to avoid it)
        m = b // max(1, torch.unique(labels).numel())
    if m < 2 or b % m:
        _raise_layout(labels, m)
    order = torch.sort(labels, stable=True).indices.view(b // m, m)  # batch order kept within a class: slot r
    grid = labels.index_select(0, order.flatten()).view(b // m, m)
    bad = (grid != grid[:, :1]).any() | (grid[1:, 0] == grid[:-1, 0]).any()
    if labels.device.type == "cuda" and samples_per_class is not None:
        torch._assert_async(~bad)  # the sampler's N × m layout; failing it aborts the step
    elif bad:
        _raise_layout(labels, m)
    return order, grid[:, 0]


def _raise_layout(labels: torch.Tensor, m: int) -> None:
    classes, counts = torch.unique(labels, return_counts=True)
    bad = (counts != m).nonzero().flatten().tolist()
    shown = ", ".join(f"{int(classes[k])}: {int(counts[k])}" for k in (bad or range(len(classes)))[:8])
    more = f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""
    need = f"exactly m={m}" if m >= 2 else "the same number m ≥ 2 of"
    raise ValueError(
        f"pairwise loss: every class in the batch must have {need} samples (the class-pair sampler's "
        f"N classes × m layout; use ClassPairSampler and keep batch size a multiple of m); got "
        f"{len(classes)} classes with sample counts {{label: count}} {{{shown}}}{more} in a batch of "
        f"{labels.shape[0]}")


def _own(t: torch.Tensor) -> torch.Tensor:
    """The [i, k, i] entries of an (m, N, m) tensor [anchor slot i, class k, block j], as an (N, m) view:
    the anchor's own block j = i (written in place, it replaces boolean masks)."""
    return t.diagonal(dim1=0, dim2=2)


class _PairwiseCE(torch.autograd.Function):
    """Σ over anchors (i, k) and slots j ≠ i of CE(candidates, positive), from the slot-major similarity
    matrix (M × M, M = m·N); the candidates of anchor (i, k) for pair j are block j and block i without
    itself. Works in one (M × M) buffer: the logits; then E = exp(logit − the block's best negative)
    with the positives and self at 0 (each block's negative mass, ≥ 1, kept apart from its positive:
    p − 1 = −(negative mass)/Z without cancellation); then, in the backward, the gradient in place.
    Full passes: scale, sum, min, max, subtract, exp, block sums; one multiply in the backward. The
    rest is (m, N, m) arithmetic on block statistics, indexed [anchor slot i, class k, block j]; the
    detached statistics come from them (no boolean indexing: no host↔device sync)."""

    @staticmethod
    def forward(ctx, sim: torch.Tensor, m: int, n: int, inv_tau: float, weight: float):
        big, count = m * n, m * (m - 1) * n
        e = sim * inv_tau  # the logits; becomes E, then the gradient, in place
        same = e.view(m, n, m, n).diagonal(dim1=1, dim2=3)  # (m, m, N) view: [i, j, k] = (i, k) vs (j, k)
        pos = same.transpose(1, 2).clone()  # (m, N, m) [i, k, j]: the positive's logit in block j (j = i: self)
        stats: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            off = pos.clone()
            _own(off).fill_(0)
            stats["pos_logit_mean"] = off.sum() / count
            _own(off).fill_(torch.inf)
            stats["pos_logit_min"] = off.amin()
            _own(off).fill_(-torch.inf)
            stats["pos_logit_max"] = off.amax()
        ctx.shape, ctx.scale, ctx.inv_tau = (m, n), inv_tau * weight, inv_tau
        if n == 1:  # no negatives: every pair's only candidate is its positive (loss 0, gradient 0)
            stats["accuracy"] = e.new_ones(())
            ctx.mark_non_differentiable(*stats.values())
            return (e.new_zeros(()), *(stats[k] for k in sorted(stats)))
        same.fill_(0)  # the negatives' statistics: every pair of samples from different classes
        stats["neg_logit_mean"] = e.sum() / (big * m * (n - 1))
        same.fill_(torch.inf)
        stats["neg_logit_min"] = e.amin()
        same.fill_(-torch.inf)
        e3 = e.view(big, m, n)
        a = e3.amax(-1)  # (M, m): the best negative per block, the reference of its exponentials
        e3.sub_(a[:, :, None]).exp_()  # E ∈ [0, 1], positives and self at 0
        b = e3.sum(-1).view(m, n, m)  # each block's negative mass relative to exp(a): ≥ 1
        a = a.view(m, n, m)
        a_own, b_own = _own(a).T[:, :, None], _own(b).T[:, :, None]  # (m, N, 1): the anchor's own block i
        c = torch.maximum(torch.maximum(a, a_own), pos)  # each pair's max logit
        negmass = torch.exp(a - c) * b + torch.exp(a_own - c) * b_own
        posmass = torch.exp(pos - c)
        logz = torch.log(posmass + negmass)  # ≥ 0: the max term is exp(0)
        # CE = log Z − (pos − c) = log1p(neg/pos): the second form keeps small losses exact
        rows = torch.where(pos - c > -20, torch.log1p(negmass / posmass), logz - (pos - c))
        _own(rows).fill_(0)
        loss = rows.sum() * weight
        with torch.no_grad():
            hit = pos > torch.maximum(a, a_own)
            _own(hit).fill_(False)
            stats.update(accuracy=hit.sum(dtype=e.dtype) / count, neg_logit_max=a.amax())
        ctx.save_for_backward(sim, a, c, logz, negmass)
        ctx.e = e  # not saved_tensors: the backward overwrites it
        ctx.mark_non_differentiable(*stats.values())
        return (loss, *(stats[k] for k in sorted(stats)))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *_):
        m, n = ctx.shape
        if n == 1:
            return grad_loss.new_zeros((m, m)), None, None, None, None
        sim, a, c, logz, negmass = ctx.saved_tensors
        e, ctx.e = ctx.e, None  # E becomes the gradient in place
        if e is None:  # a second backward through a retained graph: E again, as the forward made it
            e = sim * ctx.inv_tau
            e.view(m, n, m, n).diagonal(dim1=1, dim2=3).fill_(-torch.inf)
            e.view(m * n, m, n).sub_(a.view(m * n, m, 1)).exp_()
        g = grad_loss * ctx.scale
        w = torch.exp(a - c - logz)  # (m, N, m): softmax weight per unit of E in block j of pair (i, j)
        w_own = torch.exp(_own(a).T[:, :, None] - c - logz)  # block i's, in pair (i, j); it sums over j ≠ i
        _own(w_own).fill_(0)
        _own(w).copy_(w_own.sum(-1).T)
        e.view(m * n, m, n).mul_((w * g).view(m * n, m, 1))
        pos_grad = negmass * torch.exp(-logz) * -g  # p − 1 = −neg/Z, exact
        _own(pos_grad).fill_(0)  # self: not a candidate
        e.view(m, n, m, n).diagonal(dim1=1, dim2=3).copy_(pos_grad.transpose(1, 2))
        return e, None, None, None, None


def pairwise_cross_entropy(embeddings: torch.Tensor, labels: torch.Tensor, geometry: str = "poincare",
                           temperature: float | None = None, curvature: float = 0.1,
                           reduction: str = "sum", samples_per_class: int | None = None) -> LossOutput:
    """Functional form of :class:`PairwiseCrossEntropyLoss` (see the module docstring)."""
    check_geometry(geometry)
    if temperature is None:
        if geometry not in DEFAULT_TEMPERATURE:
            raise ValueError(f"geometry {geometry!r} has no default temperature; pass temperature=")
        temperature = DEFAULT_TEMPERATURE[geometry]
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    (emb,) = _fp32(embeddings)
    if not emb.dtype.is_floating_point:
        raise ValueError(f"embeddings must be floating point, got dtype {emb.dtype}")
    order, _ = _group_order(emb, labels, samples_per_class)
    n, m = order.shape
    weight = 1 / n if reduction == "sum" else 1 / (n * m * (m - 1))  # each pair's CE: mean over anchors
    with _no_autocast(emb.device):
        views = emb[order.T.flatten()]  # slot-major: row i·N + k = class k, slot i
        sim = pairwise_similarity(views, views, geometry, curvature)
        loss, *values = _PairwiseCE.apply(sim, m, n, 1 / temperature, weight)
    keys = ["accuracy", "pos_logit_max", "pos_logit_mean", "pos_logit_min"]
    if n > 1:
        keys = sorted(keys + ["neg_logit_max", "neg_logit_mean", "neg_logit_min"])
    stats: dict[str, float | torch.Tensor] = dict(zip(keys, values))
    stats.update(num_classes=n, samples_per_class=m)
    return LossOutput(loss=loss, stats=stats)


class PairwiseCrossEntropyLoss(nn.Module):
    """HViT's pairwise cross-entropy on a batch of N classes × m samples (module docstring has the formula).

    Args:
        geometry: ``"poincare"`` (logits −d_hyp/τ; inputs must be ball points), ``"sphere"``
            (cos/τ; inputs normalised here) or ``"euclidean"`` (−‖x − y‖/τ, temperature required).
        temperature: τ; ``None`` → 0.2 for poincare, 0.1 for sphere (the paper's).
        curvature: c of the Poincaré ball (used by ``"poincare"`` only).
        reduction: ``"sum"`` over the m(m − 1) slot pairs (the original) or their ``"mean"``.
        samples_per_class: if set, every class in a batch must have exactly this many samples;
            ``None`` infers m from the batch (still requiring all counts equal).

    ``forward(embeddings (B, d), labels (B,)) -> LossOutput``. The batch may come in any order: it is
    grouped by label (the r-th occurrence of a class is its slot r). For multi-process training,
    pass the gathered global batch (``distributed.gather_with_grad`` / ``gather_without_grad``).

    Example:
        >>> loss_fn = PairwiseCrossEntropyLoss("poincare", curvature=0.1)
        >>> out = loss_fn(model(pixel_values).embeddings, labels)
        >>> out.loss.backward(); print(out.stats["accuracy"].item())
    """

    def __init__(self, geometry: str = "poincare", temperature: float | None = None,
                 curvature: float = 0.1, reduction: str = "sum", samples_per_class: int | None = None):
        super().__init__()
        check_geometry(geometry)
        if temperature is None and geometry not in DEFAULT_TEMPERATURE:
            raise ValueError(f"geometry {geometry!r} has no default temperature; pass temperature=")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if geometry in ("poincare", "lorentz") and not curvature > 0:
            raise ValueError(f"curvature must be > 0 for geometry {geometry!r}, got {curvature}")
        self.geometry = geometry
        self.temperature = DEFAULT_TEMPERATURE[geometry] if temperature is None else float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.curvature = float(curvature)
        self.reduction = reduction
        self.samples_per_class = samples_per_class

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                curvature: torch.Tensor | None = None) -> LossOutput:
        """``curvature``: a learnt c (``HViTOutput.curvature``), overriding the fixed one, with gradient."""
        return pairwise_cross_entropy(embeddings, labels, self.geometry, self.temperature,
                                      self.curvature if curvature is None else curvature,
                                      self.reduction, self.samples_per_class)

    def extra_repr(self) -> str:
        return (f"geometry={self.geometry!r}, temperature={self.temperature}, curvature={self.curvature}, "
                f"reduction={self.reduction!r}")
