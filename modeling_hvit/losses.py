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
import torch.nn.functional as F
from torch import nn

from .distances import check_geometry, pairwise_similarity
from .hyperbolic import _fp32, _no_autocast

__all__ = ["DEFAULT_TEMPERATURE", "LossOutput", "PairwiseCrossEntropyLoss", "group_by_label",
           "pairwise_cross_entropy"]

# The paper's temperatures per geometry; "euclidean" has none and needs an explicit one.
DEFAULT_TEMPERATURE = {"poincare": 0.2, "sphere": 0.1}
REDUCTIONS = ("sum", "mean")


@dataclass
class LossOutput:
    """The loss (0-dim tensor with grad) and detached 0-dim statistics to log.

    ``stats`` keys: ``pos_logit_{mean,min,max}`` (the positive's logit), ``neg_logit_{mean,min,max}``
    (every other candidate), ``accuracy`` (fraction of (anchor, pair) rows whose positive has the
    highest of its 2N − 1 logits), ``num_classes`` (N), ``samples_per_class`` (m). Values are tensors
    so logging can ``.item()`` them when it wants to (no device sync inside the step).
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


def _pair_logits(z: torch.Tensor, geometry: str, temperature: float,
                 curvature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (P, N, 2N) for the P = m(m−1) ordered pairs, diagonal of the self block masked to −inf.

    Column k of the first block is the target of row k. Also returns the (P, N, 2N) candidate mask
    (False at the masked self-similarity).
    """
    n, m, d = z.shape
    views = z.transpose(0, 1).reshape(m * n, d)  # slot-major: row i·N + k is class k, slot i
    sim = pairwise_similarity(views, views, geometry, curvature) / temperature
    sim = sim.reshape(m, n, m, n)  # sim[i, k, j, l] = s(z[k, i], z[l, j]) / τ
    ii, jj = zip(*[(i, j) for i in range(m) for j in range(m) if i != j])
    ii, jj = list(ii), list(jj)
    cross = sim[ii, :, jj, :]  # (P, N, N): anchors of slot i against views of slot j
    self_ = sim[ii, :, ii, :]  # (P, N, N): anchors of slot i against each other
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = torch.cat([cross, self_.masked_fill(eye, float("-inf"))], dim=-1)
    valid = torch.cat([torch.ones_like(eye), ~eye], dim=-1).repeat(len(ii), 1, 1)
    return logits, valid


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
        logits, valid = _pair_logits(z, geometry, temperature, curvature)
        p = logits.shape[0]
        target = torch.arange(n, device=z.device).repeat(p)
        per_pair = F.cross_entropy(logits.reshape(p * n, 2 * n), target, reduction="none").reshape(p, n)
        per_pair = per_pair.mean(1)  # each pair's CE: mean over the N anchors
        loss = per_pair.sum() if reduction == "sum" else per_pair.mean()
    with torch.no_grad():
        pos = logits.diagonal(dim1=1, dim2=2)  # (P, N): column k of the cross block for anchor k
        neg_mask = valid.clone()
        neg_mask[:, torch.arange(n), torch.arange(n)] = False
        neg = logits[neg_mask]
        pos_beats_all = pos > logits.masked_fill(~neg_mask, float("-inf")).amax(-1)
        stats: dict[str, float | torch.Tensor] = {
            "pos_logit_mean": pos.mean(), "pos_logit_min": pos.min(), "pos_logit_max": pos.max(),
            "accuracy": pos_beats_all.float().mean(),
            "num_classes": n, "samples_per_class": m,
        }
        if neg.numel():  # N = 1 leaves no negatives
            stats.update(neg_logit_mean=neg.mean(), neg_logit_min=neg.min(), neg_logit_max=neg.max())
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
        if geometry == "poincare" and not curvature > 0:
            raise ValueError(f"curvature must be > 0 for the Poincaré ball, got {curvature}")
        self.geometry = geometry
        self.temperature = DEFAULT_TEMPERATURE[geometry] if temperature is None else float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.curvature = float(curvature)
        self.reduction = reduction
        self.samples_per_class = samples_per_class

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        return pairwise_cross_entropy(embeddings, labels, self.geometry, self.temperature, self.curvature,
                                      self.reduction, self.samples_per_class)

    def extra_repr(self) -> str:
        return (f"geometry={self.geometry!r}, temperature={self.temperature}, curvature={self.curvature}, "
                f"reduction={self.reduction!r}")
