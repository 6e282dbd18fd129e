"""Base losses with the papers' defaults (docs/methods.md §3): pytorch-metric-learning's, and the Potential-Field loss."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from pytorch_metric_learning import distances, losses, miners, reducers, regularizers
from torch import nn

from dmlsynth import registry


class BaseLoss(nn.Module):
    """A pml loss plus its optional miner, called like a pml loss.

    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``:
    when no ``indices_tuple`` is given and the loss has a miner, the miner
    picks the pairs. Methods wrap this object (see :mod:`dmlsynth.methods`).
    """

    def __init__(
        self, name: str, loss: nn.Module, miner: nn.Module | None, lr_multiplier: float = 1.0, per_anchor_sum: bool = False
    ):
        super().__init__()
        self.name = name
        self.loss = loss
        self.miner = miner
        self.pair_based = registry.LOSSES[name].pair_based
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
        if indices_tuple is None:
            indices_tuple = self.mine(embeddings, labels, ref_emb, ref_labels)
        loss = self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return loss / embeddings.shape[0] if self.per_anchor_sum else loss


def build_loss(name: str, params: Mapping[str, Any], num_classes: int, embedding_dim: int) -> BaseLoss:
    if name not in registry.LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(registry.LOSSES))}")
    p = dict(registry.LOSSES[name].defaults)
    p.update(params)
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
        regulariser = {"embedding_regularizer": regularizers.LpRegularizer(p=2, power=2), "embedding_reg_weight": p["l2_reg"] / 2}
        return BaseLoss(name, losses.NPairsLoss(**(regulariser if p["l2_reg"] > 0 else {})), None)
    if name == "angular":
        return BaseLoss(name, losses.AngularLoss(alpha=p["alpha"]), None)
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
        self, num_classes: int, embedding_size: int, proxies_per_class: int = 1, alpha: float = 4.0,
        delta: float = 0.2, **kwargs,
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
