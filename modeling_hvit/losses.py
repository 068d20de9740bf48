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
    be ≥ 2 for a pair to exist).
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must have shape (batch, dim), got {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},) to match embeddings "
                         f"{tuple(embeddings.shape)}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    labels = labels.to(embeddings.device)
    classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    m = int(counts[0]) if samples_per_class is None else samples_per_class
    bad = (counts != m).nonzero().flatten().tolist()
    if bad or m < 2:
        shown = ", ".join(f"{int(classes[k])}: {int(counts[k])}" for k in (bad or range(len(classes)))[:8])
        more = f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""
        need = f"exactly m={m}" if m >= 2 else "the same number m ≥ 2 of"
        raise ValueError(
            f"pairwise loss: every class in the batch must have {need} samples (the class-pair sampler's "
            f"N classes × m layout; use ClassPairSampler and keep batch size a multiple of m); got "
            f"{len(classes)} classes with sample counts {{label: count}} {{{shown}}}{more} in a batch of "
            f"{labels.shape[0]}")
    # Stable sort by class index keeps batch order within a class: position r of class k → slot r.
    order = torch.sort(inverse, stable=True).indices
    return embeddings[order].reshape(len(classes), m, embeddings.shape[1]), classes


def _pair_losses(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropies (m, N, m) and the positive logits (m, N, m) from sim (m, N, m, N).

    ``sim[i, k, j, l]`` is the logit of class k slot i against class l slot j. Row (i, k) of pair j
    has candidates ``sim[i, k, j, :]`` (target l = k) and ``sim[i, k, i, l ≠ k]``; its log-partition is
    ``logaddexp(lse_j, lse_i)`` of per-block log-sum-exps, so no (pairs × N × 2N) tensor is built.
    Only the (i, k, i, k) self-similarities are masked; entries with j = i are not a pair and are
    ignored by the caller.
    """
    m, n = sim.shape[:2]
    diag = torch.eye(m * n, dtype=torch.bool, device=sim.device).reshape(m, n, m, n)
    lse = sim.masked_fill(diag, float("-inf")).logsumexp(-1)  # (m, N, m): per (anchor, block)
    self_lse = lse.diagonal(dim1=0, dim2=2).T  # (m, N): lse[i, k, i]
    pos = sim.diagonal(dim1=1, dim2=3)  # (m, m, N): pos[i, j, k] = sim[i, k, j, k]
    pos = pos.permute(0, 2, 1)  # (m, N, m)
    return torch.logaddexp(lse, self_lse[:, :, None]) - pos, pos


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
    with _no_autocast(z.device):
        views = z.transpose(0, 1).reshape(m * n, z.shape[2])  # slot-major: row i·N + k = class k, slot i
        sim = pairwise_similarity(views, views, geometry, curvature) / temperature
        sim = sim.reshape(m, n, m, n)  # sim[i, k, j, l] = s(z[k, i], z[l, j]) / τ
        rows, pos = _pair_losses(sim)
        pair = ~torch.eye(m, dtype=torch.bool, device=z.device)  # (i, j) with i ≠ j
        per_pair = rows.mean(1)[pair]  # each pair's CE: mean over the N anchors; (m(m−1),)
        loss = per_pair.sum() if reduction == "sum" else per_pair.mean()
    with torch.no_grad():
        same_class = torch.eye(n, dtype=torch.bool, device=z.device)[None, :, None, :]
        neg_inf = sim.masked_fill(same_class, float("-inf"))
        neg_max = neg_inf.amax(-1)  # (m, N, m): best negative of anchor (i, k) in block j
        best_neg = torch.maximum(neg_max, neg_max.diagonal(dim1=0, dim2=2).T[:, :, None])
        hits = (pos > best_neg).permute(0, 2, 1)[pair]  # positive above all 2N − 2 negatives
        pos = pos.permute(0, 2, 1)[pair]  # (m(m−1), N): every same-class pair of different views
        stats: dict[str, float | torch.Tensor] = {
            "pos_logit_mean": pos.mean(), "pos_logit_min": pos.min(), "pos_logit_max": pos.max(),
            "accuracy": hits.to(sim.dtype).mean(),
            "num_classes": n, "samples_per_class": m,
        }
        if n > 1:  # negatives: every pair of samples from different classes
            neg_sum = sim.sum() - sim.masked_fill(~same_class, 0).sum()
            stats.update(neg_logit_mean=neg_sum / (m * m * n * (n - 1)), neg_logit_max=neg_inf.amax(),
                         neg_logit_min=sim.masked_fill(same_class, float("inf")).amin())
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
