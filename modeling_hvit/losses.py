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
    order = torch.sort(labels, stable=True).indices  # batch order kept within a class: slot r
    grid = labels[order].view(b // m, m)
    bad = (grid != grid[:, :1]).any() | (grid[1:, 0] == grid[:-1, 0]).any()
    if labels.device.type == "cuda" and samples_per_class is not None:
        torch._assert_async(~bad)  # the sampler's N × m layout; failing it aborts the step
    elif bad:
        _raise_layout(labels, m)
    return embeddings[order].view(b // m, m, embeddings.shape[1]), grid[:, 0]


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


class _PairwiseCE(torch.autograd.Function):
    """Σ over anchors (i, k) and slots j ≠ i of CE(candidates, positive), from the slot-major similarity
    matrix (M × M, M = m·N); the candidates of anchor (i, k) for pair j are block j and block i without
    itself. Each block is exponentiated against its own maximum (the row max subtracted before the
    log-sum-exp, so float32 gradients keep their precision for logits far from 0); the gradient is
    one pass: ``E · weights`` and, at the positives, p − 1 = −(negative mass)/Z without cancellation.
    Also returns the detached statistics (no boolean indexing: no host↔device sync)."""

    @staticmethod
    def forward(ctx, sim: torch.Tensor, m: int, n: int, inv_tau: float, weight: float):
        big = m * n
        s = sim * inv_tau  # the logits; becomes E in place below
        same = s.view(m, n, m, n).diagonal(dim1=1, dim2=3)  # (m, m, N): [i, j, k] = (i,k) vs (j,k)
        pos = same.clone()
        off = ~torch.eye(m, dtype=torch.bool, device=s.device)
        slot = torch.arange(m, device=s.device).repeat_interleave(n)[:, None]  # (M, 1): anchor's slot i
        own = slot == torch.arange(m, device=s.device)  # (M, m): block j is the anchor's own block
        stats: dict[str, torch.Tensor] = {}
        if n > 1:  # negatives: every pair of samples from different classes
            same.fill_(0)
            neg_sum = s.sum()
            same.fill_(torch.inf)
            stats.update(neg_logit_mean=neg_sum / (big * m * (n - 1)), neg_logit_min=s.amin())
        same.fill_(-torch.inf)
        s3 = s.view(big, m, n)
        mneg = s3.amax(-1)  # (M, m): the best negative of anchor r in block j (−inf when N = 1)
        same.copy_(torch.where(off[:, :, None], pos, -torch.inf))  # positives back; self stays −inf
        posr = pos.permute(0, 2, 1).reshape(big, m)  # [r = (i, k), j]: logit of the positive in block j
        mb = torch.maximum(mneg, posr.masked_fill(own, -torch.inf))  # block maxima (self excluded)
        s3.sub_(torch.where(torch.isfinite(mb), mb, 0)[:, :, None]).exp_()  # E, ≤ 1; self → 0
        same.fill_(0)  # E without the positives: their mass is kept apart (no 1 − p cancellation)
        bneg = s3.sum(-1)  # (M, m): negatives' mass per block, relative to the block max
        m_own, b_own = mb.gather(1, slot), bneg.gather(1, slot)  # (M, 1): the anchor's own block i
        c = torch.maximum(mb, m_own)  # each pair's max logit
        negmass = torch.exp(mb - c) * bneg + torch.exp(m_own - c) * b_own
        posmass = torch.exp(posr - c)
        logz = torch.log(posmass + negmass)  # ≥ 0: the max term is exp(0)
        # CE = log Z − (pos − c) = log1p(neg/pos): the second form keeps small losses exact
        rows = torch.where(posr - c > -20, torch.log1p(negmass / posmass), logz - (posr - c))
        loss = rows.masked_fill(own, 0).sum() * weight
        ctx.save_for_backward(s, mb, c, logz, negmass, own, off, slot)
        ctx.shape, ctx.scale = (m, n), inv_tau * weight
        with torch.no_grad():
            best_neg = torch.maximum(mneg, mneg.gather(1, slot))
            pos_pairs = pos.masked_fill(~off[:, :, None], 0)
            count = m * (m - 1) * n
            stats.update(pos_logit_mean=pos_pairs.sum() / count,
                         pos_logit_min=pos.masked_fill(~off[:, :, None], torch.inf).amin(),
                         pos_logit_max=pos.masked_fill(~off[:, :, None], -torch.inf).amax(),
                         accuracy=((posr > best_neg) & ~own).to(s.dtype).sum() / count)
            if n > 1:
                stats["neg_logit_max"] = mneg.amax()
        ctx.mark_non_differentiable(*stats.values())
        return (loss, *(stats[k] for k in sorted(stats)))

    @staticmethod
    def backward(ctx, grad_loss, *_):
        e, mb, c, logz, negmass, own, off, slot = ctx.saved_tensors
        m, n = ctx.shape
        g = grad_loss * ctx.scale
        w = torch.exp(mb - c - logz)  # (M, m): softmax weight per unit of E, block j in pair j
        w_own = torch.exp(mb.gather(1, slot) - c - logz).masked_fill(own, 0).sum(1)  # block i, every pair
        grad = e.view(m * n, m, n) * (torch.where(own, w_own[:, None], w) * g)[:, :, None]
        pos_grad = -(negmass * torch.exp(-logz)).masked_fill(own, 0) * g  # p − 1 = −neg/Z, exact
        grad.view(m, n, m, n).diagonal(dim1=1, dim2=3).copy_(pos_grad.view(m, n, m).transpose(1, 2))
        return grad.view(m * n, m * n), None, None, None, None


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
    z, _ = group_by_label(emb, labels, samples_per_class)
    n, m, _ = z.shape
    weight = 1 / n if reduction == "sum" else 1 / (n * m * (m - 1))  # each pair's CE: mean over anchors
    with _no_autocast(z.device):
        views = z.transpose(0, 1).reshape(m * n, z.shape[2])  # slot-major: row i·N + k = class k, slot i
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
