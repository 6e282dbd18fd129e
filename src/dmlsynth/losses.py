"""Base losses with the papers' defaults (docs/methods.md §3): pytorch-metric-learning's, the N-pair / angular
softmax over the pair units of a batch, and the Potential-Field loss."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners, reducers, regularizers
from pytorch_metric_learning.utils import common_functions as c_f
from torch import nn

from dmlsynth import registry


class BaseLoss(nn.Module):
    """A pml loss plus its optional miner, called like a pml loss.

    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``:
    when no ``indices_tuple`` is given and the loss has a miner, the miner
    picks the pairs. Methods wrap this object (see :mod:`dmlsynth.methods`).
    """

    def __init__(
        self,
        name: str,
        loss: nn.Module,
        miner: nn.Module | None,
        lr_multiplier: float = 1.0,
        per_anchor_sum: bool = False,
        pair_based: bool | None = None,
        head: "ProjectionHead | None" = None,
    ):
        super().__init__()
        self.name = name
        self.loss = loss
        self.miner = miner
        # The loss is computed on head(embeddings) where a projection head is given (loss param
        # projection_head; SGAR's official code); its parameters train with the proxies' lr multiplier.
        self.head = head
        # Whether it takes mined pairs against a reference set: the registry's answer for the loss, unless the
        # built form says otherwise (angular with `pairs: units` forms its own pairs and takes no reference set).
        self.pair_based = registry.LOSSES[name].pair_based if pair_based is None else pair_based
        # Learning rate of the loss's own parameters (proxies) relative to the backbone's.
        self.lr_multiplier = lr_multiplier
        # The loss sums its terms (pml SumReducer) and is divided here by the number of anchors
        # (``embeddings``, not the reference set): IAA's official contrastive reduction.
        self.per_anchor_sum = per_anchor_sum

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None):
        if self.miner is None:
            return None
        return self.miner(embeddings, labels, ref_emb, ref_labels)

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None) -> torch.Tensor:
        if self.head is not None:
            embeddings = self.head(embeddings)
            ref_emb = None if ref_emb is None else self.head(ref_emb)
        if indices_tuple is None:
            indices_tuple = self.mine(embeddings, labels, ref_emb, ref_labels)
        loss = self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return loss / embeddings.shape[0] if self.per_anchor_sum else loss


def build_loss(name: str, params: Mapping[str, Any], num_classes: int, embedding_dim: int) -> BaseLoss:
    if name not in registry.LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(registry.LOSSES))}")
    p = dict(registry.LOSSES[name].defaults)
    p.update(params)
    if registry.LOSSES[name].build is not None:  # a plugin's loss (dmlsynth.plugins)
        return registry.load_object(registry.LOSSES[name].build)(p, num_classes, embedding_dim)
    if "pairs" in p and p["pairs"] not in registry.PAIR_FORMS[name]:
        raise ValueError(f"loss {name!r}: pairs must be one of {', '.join(registry.PAIR_FORMS[name])}, got {p['pairs']!r}")
    if name == "multi_similarity":
        return BaseLoss(
            name,
            losses.MultiSimilarityLoss(alpha=p["alpha"], beta=p["beta"], base=p["base"]),
            miners.MultiSimilarityMiner(epsilon=p["miner_epsilon"]),
        )
    if name == "proxy_anchor":
        return BaseLoss(
            name,
            losses.ProxyAnchorLoss(num_classes, embedding_dim, margin=p["margin"], alpha=p["alpha"]),
            None,
            lr_multiplier=p["proxy_lr_multiplier"],
            head=ProjectionHead(embedding_dim) if p["projection_head"] else None,
        )
    if name == "contrastive":
        # mean_nonzero: pml's default reducer; batch_sum: Σ[0.8 − s_pos]₊ + Σ[s_neg − 0.5]₊ over the pairs,
        # divided by the number of anchors (IAA's official ContrastiveLoss).
        batch_sum = p["reduction"] == "batch_sum"
        return BaseLoss(
            name,
            losses.ContrastiveLoss(
                pos_margin=p["pos_margin"],
                neg_margin=p["neg_margin"],
                distance=distances.CosineSimilarity(),
                **({"reducer": reducers.SumReducer()} if batch_sum else {}),
            ),
            None,
            per_anchor_sum=batch_sum,
        )
    if name == "triplet":
        return BaseLoss(name, losses.TripletMarginLoss(margin=p["margin"]), None)
    if name == "n_pairs":
        # The N-pair paper's penalty λ·¼(mean‖a‖² + mean‖p‖²) is λ/2 times the mean ‖x‖² over the pairs' samples.
        if p["pairs"] == "units":
            return BaseLoss(name, PairUnitSoftmaxLoss("n_pairs", normalize=p["normalize"], l2_reg=p["l2_reg"]), None)
        regulariser = {"embedding_regularizer": regularizers.LpRegularizer(p=2, power=2), "embedding_reg_weight": p["l2_reg"] / 2}
        similarity = distances.DotProductSimilarity(normalize_embeddings=p["normalize"])
        return BaseLoss(name, losses.NPairsLoss(distance=similarity, **(regulariser if p["l2_reg"] > 0 else {})), None)
    if name == "angular":
        if p["pairs"] == "units":
            unit_form = PairUnitSoftmaxLoss("angular", alpha=p["alpha"], normalize=p["normalize"], l2_reg=p["l2_reg"])
            return BaseLoss(name, unit_form, None, pair_based=False)
        if not p["normalize"]:
            raise ValueError(
                "loss 'angular' with pairs: every_pair is pytorch-metric-learning's AngularLoss, which works on "
                "L2-normalised embeddings: set normalize: true, or pairs: units for un-normalised features"
            )
        regulariser = {"embedding_regularizer": regularizers.LpRegularizer(p=2, power=2), "embedding_reg_weight": p["l2_reg"] / 2}
        return BaseLoss(name, losses.AngularLoss(alpha=p["alpha"], **(regulariser if p["l2_reg"] > 0 else {})), None)
    if name == "semihard_triplet":
        # FaceNet's semi-hard negatives (Schroff et al. 2015): d(a,p) < d(a,n) < d(a,p) + margin, chosen by the
        # miner among the batch's triplets; the loss is the triplet margin loss over them.
        return BaseLoss(
            name,
            losses.TripletMarginLoss(margin=p["margin"]),
            miners.TripletMarginMiner(margin=p["margin"], type_of_triplets="semihard"),
        )
    if name == "lifted_structure":
        return BaseLoss(name, losses.LiftedStructureLoss(neg_margin=p["neg_margin"], pos_margin=p["pos_margin"]), None)
    if name == "potential_field":
        return BaseLoss(
            name,
            PotentialFieldLoss(
                num_classes, embedding_dim, proxies_per_class=p["proxies_per_class"], alpha=p["alpha"], delta=p["delta"]
            ),
            None,
            lr_multiplier=p["proxy_lr_multiplier"],
        )
    raise AssertionError(f"loss {name!r} is registered but has no builder")


class ProjectionHead(nn.Module):
    """SGAR's projection head (loss param ``projection_head``): ``project(x) = ReLU(normalise(W x + b))``, W
    ``(D, D)`` orthogonal and b zero at the start (Liuzt1999/SCAR ``losses.py:55-60``, its ``fc``).

    ``forward`` projects the L2-normalised embedding, which is what the official model hands the loss
    (``net/bn_inception.py:528-529``, ``train.py:93`` ``--l2-norm 1``); the Proxy-Anchor loss is then
    computed on the projection (``losses.py:258,264``). Evaluation uses the embedding, not the projection.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.orthogonal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The official ``fc`` on ``x`` as it is (synthetic points and raw proxies are not normalised first)."""
        return F.relu(F.normalize(self.linear(x), dim=-1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.project(F.normalize(embeddings, dim=-1))


def pair_units(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a batch into same-class pairs ("units"), in batch order within each class.

    Returns ``(anchors, positives, singles)``: index tensors of the paired samples
    (``labels[anchors] == labels[positives]``; the 1st sample of a class with the 2nd, the 3rd with
    the 4th, ...) and of the samples left over (one per class with an odd count). **[project
    definition]**: the official Symmetrical Synthesis code is fed (anchor, positive) image pairs by its
    loader; an M-per-class batch is cut into pairs this way (docs/methods.md §3, §4).
    """
    n = labels.numel()
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    position = torch.arange(n, device=labels.device)
    is_first = torch.ones(n, dtype=torch.bool, device=labels.device)
    is_first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    class_start = torch.cummax(torch.where(is_first, position, torch.zeros_like(position)), dim=0).values
    rank = position - class_start
    has_next = torch.zeros(n, dtype=torch.bool, device=labels.device)
    has_next[:-1] = sorted_labels[1:] == sorted_labels[:-1]
    starts = (rank % 2 == 0) & has_next
    anchors = order[starts]
    positives = order[torch.nonzero(starts).squeeze(1) + 1]
    paired = torch.zeros(n, dtype=torch.bool, device=labels.device)
    paired[anchors] = True
    paired[positives] = True
    singles = torch.nonzero(~paired).squeeze(1)
    return anchors, positives, singles


# The units' own (anchor, positive) pair: slot 0 of u against slot 1 of v, the only logit without synthesis.
ORIGINAL_PAIR = ((0, 1),)


def slot_pair_mask(slot_pairs, slots: int, device: torch.device | None = None) -> torch.Tensor:
    """``(slots, slots)`` boolean: entry [i, j] says slot i of unit u is paired with slot j of unit v."""
    mask = torch.zeros(slots, slots, dtype=torch.bool, device=device)
    for i, j in slot_pairs:
        mask[i, j] = True
    return mask


def unit_logits(points: torch.Tensor, form: str, slot_mask: torch.Tensor, sq_tan_alpha: float = 1.0) -> torch.Tensor:
    """``(U, U)`` logits of the N-pair / angular softmax over units ``points`` ``(U, S, D)`` (slot 0 the anchor,
    1 the positive, further slots e.g. synthetic points).

    For a slot pair (X, Y): N-pair's logit of units (u, v) is X_u·Y_v (the official code's ``npairs_loss`` and
    ``symm_npair_loss``); angular's is 2(1 + tan²α) X_u·Y_u on the diagonal and 4 tan²α (X_u + Y_u)·Y_v off it
    (its ``get_angular_sim_mat``). Each entry is the largest over the slot pairs of ``slot_mask`` ``(S, S)``.
    """
    if form == "n_pairs":
        pair = torch.einsum("uid,vjd->uvij", points, points)
    elif form == "angular":
        u = points.shape[0]
        both = points[:, :, None, :] + points[:, None, :, :]  # (U, X, Y, D): X_u + Y_u
        pair = 4 * sq_tan_alpha * torch.einsum("uijd,vjd->uvij", both, points)
        own = 2 * (1 + sq_tan_alpha) * torch.einsum("uid,ujd->uij", points, points)
        diagonal = torch.eye(u, dtype=torch.bool, device=points.device)[:, :, None, None]
        pair = torch.where(diagonal, own[:, None], pair)
    else:
        raise ValueError(f"no unit softmax for loss {form!r}; it is for n_pairs and angular")
    return pair.masked_fill(~slot_mask, float("-inf")).flatten(2).amax(dim=2)


class PairUnitSoftmaxLoss(losses.BaseMetricLossFunction):
    """N-pair or angular loss as a softmax over the pair units of a batch (loss param ``pairs: units``;
    docs/methods.md §3).

    The batch is cut into same-class pairs (:func:`pair_units`); every unit u = (a_u, p_u) is one row
    of a softmax over all units v of the batch, whose target spreads evenly over the units of u's
    class (the official Symmetrical Synthesis code's ``labels_remapped``, TensorFlow's
    ``npairs_loss``)::

        n_pairs:  logit(u, v) = a_u·p_v
        angular:  logit(u, u) = 2(1 + tan²α) a_u·p_u,   logit(u, v) = 4 tan²α (a_u + p_u)·p_v  (v ≠ u)
        loss = mean_u CE(logits_u, targets_u) + (l2_reg / 2) · mean ‖x‖² over the paired samples

    which is the official code's ``npairs_loss`` (``reg_lambda`` 0.002) and ``angular_loss`` (with
    ``with_l2reg``) on its (anchor, positive) batches. ``normalize`` L2-normalises a and p before
    the logits (the L2 penalty is on the features as given, as in the official code). Every pair of a
    class takes part, where pytorch-metric-learning's ``NPairsLoss`` keeps one pair per class.

    :meth:`loss_with_synthesis` is the same loss with further points in every unit (Symmetrical
    Synthesis's reflections) and a logit that is the largest over chosen slot pairs; with no further
    points and the slot pair (anchor of u, positive of v) it is this loss. [project definition]: a
    sample left over (odd count in its class) is not used; a batch without a pair gives zero.
    """

    def __init__(self, form: str, *, normalize: bool, l2_reg: float, alpha: float = 45.0, **kwargs):
        super().__init__(**kwargs)
        if form not in ("n_pairs", "angular"):
            raise ValueError(f"PairUnitSoftmaxLoss is the unit form of n_pairs or angular, got {form!r}")
        if not 0 < alpha < 90 or l2_reg < 0:
            raise ValueError(f"PairUnitSoftmaxLoss needs 0 < alpha < 90 (degrees) and l2_reg >= 0, got {alpha}, {l2_reg}")
        self.form, self.alpha, self.normalize, self.l2_reg = form, float(alpha), bool(normalize), float(l2_reg)
        self.sq_tan_alpha = math.tan(math.radians(self.alpha)) ** 2
        self.add_to_recordable_attributes(list_of_names=["alpha", "l2_reg"], is_stat=False)
        self.add_to_recordable_attributes(name="num_units", is_stat=True)

    def _sub_loss_names(self):
        return ["loss", "l2_penalty"]

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is not None:
            raise ValueError(f"{self.form} with pairs: units forms its own pairs of the batch; it takes no indices_tuple (miner)")
        return self.unit_loss_dict(embeddings, labels)

    def unit_loss_dict(self, embeddings, labels, synthesize=None, slot_mask=None) -> dict[str, dict[str, Any]]:
        """The loss terms (pml loss dict) over the units of ``embeddings``; ``synthesize(a, p)`` returns
        further points of every unit (a tuple of ``(U, D)`` tensors, slots 2, 3, ...), ``slot_mask`` which
        slot pairs each logit is the largest over (default: the original pair only)."""
        anchors, positives, _ = pair_units(labels)
        self.num_units = int(anchors.numel())
        if anchors.numel() == 0:
            return self.zero_losses()
        a, p = embeddings[anchors], embeddings[positives]
        penalty = self.l2_reg / 2 * torch.cat([a, p]).pow(2).sum(dim=1).mean() if self.l2_reg else 0
        if self.normalize:
            a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
        points = torch.stack([a, p, *(synthesize(a, p) if synthesize is not None else ())], dim=1)
        if slot_mask is None:
            slot_mask = slot_pair_mask(ORIGINAL_PAIR, points.shape[1], embeddings.device)
        if slot_mask.shape != (points.shape[1],) * 2:
            raise ValueError(f"slot_mask must be ({points.shape[1]}, {points.shape[1]}) for {points.shape[1]} points per unit")
        logits = unit_logits(points, self.form, slot_mask.to(embeddings.device), self.sq_tan_alpha)
        unit_labels = labels[anchors]
        targets = (unit_labels[:, None] == unit_labels[None, :]).to(logits.dtype)
        cross_entropy = F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True), reduction="none")
        return {
            "loss": {"losses": cross_entropy, "indices": anchors, "reduction_type": "element"},
            "l2_penalty": {"losses": penalty, "indices": None, "reduction_type": "already_reduced"},
        }

    def loss_with_synthesis(self, embeddings, labels, synthesize, slot_mask: torch.Tensor) -> torch.Tensor:
        """The loss with the further points ``synthesize(a, p)`` in every unit (see :meth:`unit_loss_dict`)."""
        self.reset_stats()
        c_f.check_shapes(embeddings, labels)
        labels = c_f.to_device(labels, embeddings)
        return self.reducer(self.unit_loss_dict(embeddings, labels, synthesize, slot_mask), embeddings, labels)


class PotentialFieldLoss(losses.WeightRegularizerMixin, losses.BaseMetricLossFunction):
    """Potential-Field loss (Bhatnagar & Ahuja, "Potential Field Based Deep Metric Learning", CVPR 2025,
    arXiv 2405.18560; docs/methods.md §3.1).

    Every embedding and every proxy is a charge. A charge of class ``c`` at ``z`` makes an
    attractive potential for points of class ``c`` and a repulsive one for the other classes,
    both decaying with the distance ``d = ‖r − z‖`` (Euclidean, on L2-normalised embeddings)::

        ψ_att(d) = −1 / max(d, δ)^α        flat inside δ: close same-class points feel no pull
        ψ_rep(d) = +1 / min(d, δ)^α        repels only inside δ, constant (no force) beyond

    A point of class ``y`` at ``r`` feels the class field ``Ψ_y(r)``, the sum of the potentials of
    all other charges; training minimises the total energy ``U = Σ_i Ψ_{y_i}(z_i) + Σ_{j,k}
    Ψ_j(p_{j,k})`` over the batch embeddings ``z_i`` and the ``M`` proxies ``p_{j,k}`` of every
    class ``j``. The value returned is ``U`` divided by the number of (point, charge) pairs, a
    constant for a given batch and proxy count, so the loss does not grow with the batch.
    Distances below ``δ / 100`` count as ``δ / 100`` (a numerical floor for coincident points).

    The proxies are learnable (``loss.proxies``, trained with ``proxy_lr_multiplier`` times the
    backbone's learning rate, like Proxy-Anchor's). The loss uses every pair of the batch and no
    miner, so it takes no ``indices_tuple``, and no separate ``ref_emb``.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, *, proxies_per_class: int, alpha: float, delta: float, **kwargs,
    ):
        super().__init__(**kwargs)
        if self.distance.is_inverted:
            raise ValueError("PotentialFieldLoss needs a distance (smaller = closer), not a similarity")
        if proxies_per_class < 0 or alpha < 0 or delta <= 0:
            raise ValueError(
                f"PotentialFieldLoss needs proxies_per_class >= 0, alpha >= 0 and delta > 0 "
                f"(got {proxies_per_class}, {alpha}, {delta})"
            )
        self.num_classes, self.proxies_per_class = int(num_classes), int(proxies_per_class)
        self.alpha, self.delta = float(alpha), float(delta)
        self.proxies = nn.Parameter(torch.empty(self.num_classes * self.proxies_per_class, embedding_size))
        self.weight_init_func(self.proxies)
        self.register_buffer("proxy_labels", torch.arange(self.num_classes).repeat_interleave(self.proxies_per_class))
        self.add_to_recordable_attributes(list_of_names=["num_classes", "proxies_per_class", "alpha", "delta"], is_stat=False)

    def get_default_distance(self):
        return distances.LpDistance(p=2, power=1, normalize_embeddings=True)

    def potentials(self, distance: torch.Tensor, same_class: torch.Tensor) -> torch.Tensor:
        """``ψ_att`` where ``same_class``, ``ψ_rep`` elsewhere, of a distance matrix."""
        d = distance.clamp_min(self.delta / 100)
        attract = -d.clamp_min(self.delta).pow(-self.alpha)
        repel = d.clamp_max(self.delta).pow(-self.alpha)
        return torch.where(same_class, attract, repel)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        from pytorch_metric_learning.utils import common_functions as c_f

        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is not None:
            raise ValueError("PotentialFieldLoss sums over every pair of the batch; it takes no indices_tuple (miner)")
        # The inverse powers overflow half precision: the field is computed in float32 at least.
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        points = torch.cat([embeddings.to(dtype), self.proxies.to(device=embeddings.device, dtype=dtype)])
        point_labels = torch.cat([labels, self.proxy_labels.to(labels.device)])
        n = len(points)
        if n < 2:
            return self.zero_losses()
        distance = self.distance(points)
        same_class = point_labels[:, None] == point_labels[None, :]
        others = ~torch.eye(n, dtype=torch.bool, device=points.device)
        field = torch.where(others, self.potentials(distance, same_class), torch.zeros((), dtype=dtype, device=points.device))
        felt = field.sum(dim=1) / (n - 1)  # Ψ_{y}(point) per charge, averaged over the other charges
        loss_dict = {"loss": {"losses": felt, "indices": c_f.torch_arange_from_size(felt), "reduction_type": "element"}}
        self.add_weight_regularization_to_loss_dict(loss_dict, self.proxies)
        return loss_dict
