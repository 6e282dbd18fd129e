"""``symm``: Symmetrical Synthesis (Gu & Ko, AAAI 2020, arXiv 2001.11658; docs/methods.md §4).

For a same-class pair (a, p) two synthetic points are made by reflecting
each point about the axis (line through the origin) of the other::

    s1 = 2 (p·â) â − p      (p reflected about the a-axis)
    s2 = 2 (a·p̂) p̂ − a      (a reflected about the p-axis)

A reflection keeps the norm and the similarity to the axis point, so the
synthetic points lie on the class's "ring" around the pair. For every pair
of classes in the batch, the negative term of the base loss uses the
hardest negative pair among the originals *and* synthetics of the two
units; positive terms use the original pairs.

How an M-per-class batch becomes the paper's N-pair units is a
**[project definition]** (:func:`dmlsynth.losses.pair_units`): within each
class the samples are paired in batch order (1st with 2nd, 3rd with 4th,
...); an odd sample left over is a unit of one point without synthetics.
Every unit's point set is {a, p, s1, s2}; for every ordered pair of units
(u, v) of different classes the hardest pair (i*, j*) (largest cosine
similarity) among the ``candidates`` is one negative pair of the base loss.
``candidates``:

- ``official`` (the official code's ``itertools.combinations``): the 6 slot
  pairs (a,p) (a,s1) (a,s2) (p,s1) (p,s2) (s1,s2), the first point from u,
  the second from v (for angular its 12 ordered pairs X ≠ Y);
- ``all``: the 16 pairs of u's and v's points (the paper's text);
- ``anchor`` (the paper's figure of the triplet loss): u's anchor against
  v's four points;
- ``by_loss`` (default): ``anchor`` for triplet, ``official`` for the others
  (the official code has N-pair and angular only; for multi-similarity and
  contrastive, which neither the paper nor the code runs, this is a
  [project definition]).

The negative pairs go to the base loss as follows:

- multi_similarity / contrastive: negative pairs (i*, j*) over the
  collection [originals; s1; s2]; positive pairs are the original pairs
  the base loss would use (the MultiSimilarityMiner's positives for
  multi_similarity, all same-class pairs for contrastive).
- triplet: triplets (i*, partner(i*), j*) where partner is the point whose
  similarity to i* equals the original pair's (a↔p, s1→a, s2→p), so the
  positive term has the value of the original pair.
- n_pairs / angular: their unit form (loss param ``pairs: units``,
  :class:`dmlsynth.losses.PairUnitSoftmaxLoss`, which symm's registry
  ``loss_params`` select for its runs and its control) with the synthetic
  points in every unit: the logit of units (u, v) is the largest over the
  slot pairs, as the official ``symm_npair_loss`` / ``symm_angular_loss``.
  Synthesis switched off, it is that base loss itself, i.e. the control.

The hardest pair must become the loss's negative term, so ``symm`` works
with the losses whose negative terms are the negative pairs they are given
(registry ``negative_pairs``) and with the unit form of N-pair and angular.
Proxy-Anchor and Potential-Field are rejected at config validation.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from dmlsynth import registry
from dmlsynth.losses import PairUnitSoftmaxLoss, pair_units, slot_pair_mask
from dmlsynth.methods.base import Method, MethodContext

__all__ = ["SymmetricalSynthesis", "candidate_mask", "hardest_negative_pairs", "pair_units", "symmetric_points"]

# Slots of a unit's point table: a, p, s1, s2.
UNIT_SIZE = 4


def symmetric_points(a: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflect ``p`` about the a-axis and ``a`` about the p-axis (rows of ``(N, D)`` tensors).

    Returns ``(s1, s2)`` with ``‖s1‖ = ‖p‖``, ``s1·a = p·a`` and
    ``‖s2‖ = ‖a‖``, ``s2·p = a·p``; reflecting ``s1`` about the a-axis again
    gives back ``p``. (Official code: ``Q = β(αR − P)`` with α = 2, β = 1.)
    """
    if a.shape != p.shape or a.dim() != 2:
        raise ValueError(f"a and p must be (N, D) tensors of the same shape, got {tuple(a.shape)} and {tuple(p.shape)}")
    a_hat = F.normalize(a, dim=1)
    p_hat = F.normalize(p, dim=1)
    s1 = 2 * (p * a_hat).sum(dim=1, keepdim=True) * a_hat - p
    s2 = 2 * (a * p_hat).sum(dim=1, keepdim=True) * p_hat - a
    return s1, s2


# Which (slot in unit u, slot in unit v) pairs the hardest-negative search compares; slots a, p, s1, s2.
CANDIDATE_SLOTS = {
    # every point of u against every point of v: 16 pairs
    "all": [(i, j) for i in range(UNIT_SIZE) for j in range(UNIT_SIZE)],
    # the official code's itertools.combinations([a, p, s1, s2], 2): (a,p) (a,s1) (a,s2) (p,s1) (p,s2) (s1,s2)
    "official": [(i, j) for i in range(UNIT_SIZE) for j in range(i + 1, UNIT_SIZE)],
    # the paper's figure: the anchor of u against the four points of v
    "anchor": [(0, j) for j in range(UNIT_SIZE)],
}
# `candidates: by_loss`: the paper's figure for triplet, the official code's combinations for the others.
CANDIDATES_BY_LOSS = {"triplet": "anchor"}


def candidate_mask(candidates: str, device: torch.device | None = None) -> torch.Tensor:
    """``(4, 4)`` boolean: entry [i, j] says slot i of one unit is compared with slot j of the other."""
    if candidates not in CANDIDATE_SLOTS:
        raise ValueError(f"candidates must be one of {', '.join(CANDIDATE_SLOTS)}, got {candidates!r}")
    return slot_pair_mask(CANDIDATE_SLOTS[candidates], UNIT_SIZE, device)


def resolve_candidates(candidates: str, loss: str) -> str:
    """The search ``candidates`` names for base loss ``loss`` (``by_loss``: :data:`CANDIDATES_BY_LOSS`, else official)."""
    return CANDIDATES_BY_LOSS.get(loss, "official") if candidates == "by_loss" else candidates


def hardest_negative_pairs(
    similarity: torch.Tensor, units: torch.Tensor, unit_labels: torch.Tensor, slot_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The most similar pair of points between every two units of different classes.

    ``similarity`` is ``(P, P)`` over all points; ``units`` is ``(U, S)``
    holding each unit's point indices (−1 pads a shorter unit);
    ``unit_labels`` is ``(U,)``; ``slot_mask`` ``(S, S)`` says which slot
    of u is compared with which slot of v (default: all). For every ordered
    pair of units (u, v) with different labels it returns ``(i, j)``: ``i``
    a point of u and ``j`` a point of v maximising ``similarity[i, j]``
    among the allowed slot pairs (ties: the first in slot order).
    **[project definition]**: where no allowed slot pair exists because a
    unit is a single sample, every pair of its points with the other unit's
    is searched.
    """
    u, s = units.shape
    valid = units >= 0
    slots = units.clamp(min=0).reshape(-1)
    block = similarity[slots][:, slots].reshape(u, s, u, s).permute(0, 2, 1, 3)  # (U, U, S, S)
    usable = valid[:, None, :, None] & valid[None, :, None, :]
    if slot_mask is not None:
        allowed = usable & slot_mask[None, None]
        usable = torch.where(allowed.flatten(2).any(dim=2)[:, :, None, None], allowed, usable)
    block = block.masked_fill(~usable, float("-inf")).reshape(u, u, s * s)
    best = block.argmax(dim=2)
    unit_u, unit_v = torch.nonzero(unit_labels[:, None] != unit_labels[None, :], as_tuple=True)
    best = best[unit_u, unit_v]
    return units[unit_u, best // s], units[unit_v, best % s]


# The N-pair and angular losses compare every pair of units in one softmax; the official code takes, for
# units u and v, the largest logit over these (slot of u, slot of v) pairs (`candidates: official`).
SOFTMAX_SLOTS = {
    "n_pairs": CANDIDATE_SLOTS["official"],  # symm_npair_loss: itertools.combinations([a, p, s1, s2], 2)
    "angular": [(i, j) for i in range(UNIT_SIZE) for j in range(UNIT_SIZE) if i != j],  # symm_angular_loss: its 12
}


class SymmetricalSynthesis(Method):
    """Symmetrical Synthesis with hardest-negative-pair mining over originals and synthetics."""

    def __init__(self, base_loss, params: Mapping[str, Any], context: MethodContext):
        super().__init__(base_loss, params, context)
        self.softmax = base_loss.name in SOFTMAX_SLOTS
        if not (registry.LOSSES[base_loss.name].negative_pairs or self.softmax):
            raise ValueError(
                f"method 'symm' needs a loss whose negative terms are given negative pairs "
                f"({', '.join(sorted(registry.NEGATIVE_PAIR_LOSSES))}) or {' or '.join(SOFTMAX_SLOTS)}, got {base_loss.name!r}"
            )
        if self.softmax and not isinstance(base_loss.loss, PairUnitSoftmaxLoss):
            raise ValueError(
                f"method 'symm' with {base_loss.name} needs its unit form: loss param pairs: units (symm's registry "
                f"loss_params set it; remove method_loss_params.symm.{base_loss.name}.pairs)"
            )
        self.enabled = bool(self.params.get("synthesis", True))
        candidates = resolve_candidates(str(self.params.get("candidates", "by_loss")), base_loss.name)
        if self.softmax and candidates == "official":
            mask = slot_pair_mask(SOFTMAX_SLOTS[base_loss.name], UNIT_SIZE)
        else:
            mask = candidate_mask(candidates)
        self.register_buffer("slot_mask", mask, persistent=False)

    def softmax_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """N-pair / angular in their unit form with s1 and s2 in every unit, each logit the largest over the slot pairs.

        The base loss normalises the pairs first where its ``normalize`` says so, and its L2 penalty
        is on the paired originals as given, as the official code's (``l2_norm`` before the
        reflections, ``with_l2reg`` on the features).
        """
        return self.base_loss.loss.loss_with_synthesis(embeddings, labels, symmetric_points, self.slot_mask)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if not self.enabled:
            return self.base_loss(embeddings, labels)
        if self.softmax:
            return self.softmax_loss(embeddings, labels)
        n = embeddings.shape[0]
        anchors, positives, singles = pair_units(labels)
        num_pairs = anchors.numel()
        s1, s2 = symmetric_points(embeddings[anchors], embeddings[positives])
        points = torch.cat([embeddings, s1, s2])
        point_labels = torch.cat([labels, labels[anchors], labels[anchors]])

        pair_slots = torch.arange(num_pairs, device=labels.device)
        units = torch.cat(
            [
                torch.stack([anchors, positives, n + pair_slots, n + num_pairs + pair_slots], dim=1),
                torch.cat([singles[:, None], singles.new_full((singles.numel(), UNIT_SIZE - 1), -1)], dim=1),
            ]
        )
        unit_labels = labels[units[:, 0]]
        with torch.no_grad():
            normalised = F.normalize(points.detach(), dim=1)
            neg_i, neg_j = hardest_negative_pairs(normalised @ normalised.T, units, unit_labels, self.slot_mask)

        if self.base_loss.name == "triplet":
            # Each point's partner has the original pair's similarity to it: a<->p, s1->a, s2->p.
            partner = torch.full((points.shape[0],), -1, dtype=torch.long, device=labels.device)
            partner[anchors] = positives
            partner[positives] = anchors
            partner[n + pair_slots] = anchors
            partner[n + num_pairs + pair_slots] = positives
            keep = partner[neg_i] >= 0
            indices = (neg_i[keep], partner[neg_i[keep]], neg_j[keep])
        else:
            mined = self.base_loss.mine(embeddings, labels)
            if mined is not None:
                pos_a, pos_p = mined[0], mined[1]
            else:
                same = labels[:, None] == labels[None, :]
                same.fill_diagonal_(False)
                pos_a, pos_p = torch.nonzero(same, as_tuple=True)
            indices = (pos_a, pos_p, neg_i, neg_j)
        return self.base_loss(points, point_labels, indices_tuple=indices)
