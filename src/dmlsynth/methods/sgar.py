"""``sgar``: intra-class ranking over synthetic samples at graded intensities (Liu et al., "Deep Metric
Learning Assisted by Intra-variance in A Semi-supervised View of Learning", EAAI 2024; docs/methods.md §6).

Three variants (method param ``variant``; docs/methods.md §6 marks each rule as the code's, the paper's or a
[project definition]):

``official`` — the loss of the official code, Liuzt1999/SCAR as released (``losses.py:33-299``, the
``Proxy_Anchor`` module with ``get_gen_loss3``; defaults from ``train.py:99-125``). With X the L2-normalised
embeddings, P the Proxy-Anchor proxies and ``fc`` the loss's projection head (Linear, L2-normalise, ReLU;
:class:`dmlsynth.losses.ProjectionHead`), the batch loss is

    PA(fc(X), P) + λ · Σ_classes c with selected samples [ ρ_m · pull_c + ρ_g · (1/n_c) Σ_k rank_k ]

* the base loss through the head (``losses.py:258,264``): the loss param ``projection_head`` of proxy_anchor,
  so the control (``baseline+projection_head=true``) trains the same head;
* selection (``losses.py:287-295``): sample k of class c takes part when P_c · X_k >= ``gate`` (raw proxy,
  normalised embedding; ``gen_mrg`` 0.05);
* perturbations (``losses.py:192-201``): the N = ``steps`` learnable directions D (shared by every sample,
  Kaiming-initialised like ``losses.py:53-54``, from ``context.generator``) in an order permuted anew for
  every class with selected samples (``np.random.shuffle``; here ``torch.randperm`` on ``context.generator``),
  each L2-normalised, scaled by (i+1)·r, and **L2-normalised again** (line 201): as released, every
  perturbation u_i has norm 1 and the intensities are normalised away;
* ranking (``losses.py:203-238``), per selected sample with c_i = fc(X_k + u_i) · fc(X_k):
  rank_k = L_left + L_right, each (1/s)·log(1 + Σ_{i<j} exp(s·(c_j − c_i + δ))) (the two loops run over the
  same ordered pairs, so they are equal), s = ``scale`` 32, δ = ``margin`` 0.11;
* proxy pull (``losses.py:240-248``): log(1 + Σ_i exp(α_p·(m_p − fc(X_k + u_i) · P'_c))), α_p = ``pull_scale``
  32, m_p = ``pull_margin`` 0.1. **As released** the loop over the selected samples keeps only the last
  sample's term (``metric_loss`` is rebuilt on every pass and read after the loop), and P'_c is the proxy
  passed through ``fc`` once per pass (``P = fc(P)`` reassigns it: fc applied n_c times);
* λ = ``weight`` 0.23, ρ_g = ``rank_ratio`` 0.9, ρ_m = ``pull_ratio`` 0.9 (``losses.py:249-253,298``).

``paper`` — the same, except the two places where the released code contradicts its own design: the
perturbations keep their graded norms (i+1)·r (the paper's "several intensities"; the code's unused
``get_gen_loss1`` keeps them, line 78 commented out), and the pull term is the mean over every selected sample
with the proxy projected once [project definition: the paper's equations were not read here].

``project`` — [project definition], the rule benchmarked before the code was read: for every sample k of
the batch with backbone features r_k (before the embedding layer), J graded features

    r_{k,j} = r_k + j·α·‖r_k‖·u_{k,j},   j = 1..J,

with a fresh random unit direction u_{k,j} for every level (from ``context.generator`` each step), sent
through the model's embedding layer: g_{k,j} = embedding_layer(r_{k,j}); g_{k,0} is the sample's own
embedding. For every same-class pair (a, k), a ≠ k, of the batch the similarities to the anchor must fall
with the intensity, by a margin m:

    L_rank = mean over (a, k) of Σ_{j=0..J−1} [ s(e_a, g_{k,j+1}) − s(e_a, g_{k,j}) + m ]₊

(s: cosine similarity), and the training loss is base loss + w·L_rank. ‖r_k‖ is taken without gradient;
the directions are uniform on the unit sphere of the feature space. It uses only the batch's labels, so it
works with every base loss; ``official`` and ``paper`` need proxy_anchor (its proxies and head).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dmlsynth.methods.base import Method, MethodContext


def graded_features(
    features: torch.Tensor, steps: int = 5, alpha: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(steps, N, F)``: r + j·α·‖r‖·u_j for j = 1..steps, a fresh unit direction u_j per row and level.

    The directions come from ``generator`` on the CPU (the same draws on
    every device) and carry no gradient; ‖r‖ is taken without gradient.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be an (N, F) tensor, got shape {tuple(features.shape)}")
    if steps < 1 or alpha <= 0:
        raise ValueError(f"steps must be >= 1 and alpha > 0, got steps={steps}, alpha={alpha}")
    n, width = features.shape
    directions = torch.randn((steps, n, width), generator=generator, dtype=torch.float32)
    directions = F.normalize(directions, dim=2).to(features.device, features.dtype)
    scale = features.detach().norm(dim=1)[None, :, None]
    levels = torch.arange(1, steps + 1, device=features.device, dtype=features.dtype)[:, None, None] * alpha
    return features[None] + levels * scale * directions


def graded_similarities(embeddings: torch.Tensor, graded: torch.Tensor) -> torch.Tensor:
    """``(J + 1, N, N)``: entry [j, a, k] = cos(e_a, g_{k,j}), with g_{k,0} = e_k and ``graded`` ``(J, N, D)``."""
    anchors = F.normalize(embeddings, dim=1)
    samples = F.normalize(torch.cat([embeddings[None], graded]), dim=2)
    return torch.einsum("ad,jkd->jak", anchors, samples)


def ranking_loss(similarities: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over columns of Σ_j [s_{j+1} − s_j + margin]₊ for ``(J + 1, P)`` similarities (row 0: the real sample)."""
    if similarities.shape[1] == 0:
        return similarities.sum()
    return F.relu(similarities[1:] - similarities[:-1] + margin).sum(dim=0).mean()


def perturbations(directions: torch.Tensor, order: torch.Tensor, strength: float, graded: bool) -> torch.Tensor:
    """``(N, D)``: the directions in ``order``, unit length, times (i+1)·``strength``; unless ``graded``, unit
    length again (the released code, ``losses.py:197-201``)."""
    units = F.normalize(directions[order], dim=1)
    levels = strength * torch.arange(1, len(order) + 1, device=directions.device, dtype=directions.dtype)
    scaled = units * levels[:, None]
    return scaled if graded else F.normalize(scaled, dim=1)


def soft_ranking(similarities: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """``(n,)``: per row of ``(n, N)`` similarities c (level order), L_left + L_right of ``losses.py:215-235``:
    2 · (1/s)·log(1 + Σ_{i<j} exp(s·(c_j − c_i + δ))), as both loops sum the same ordered pairs."""
    n, levels = similarities.shape
    later, earlier = torch.triu_indices(levels, levels, offset=1, device=similarities.device).flip(0)
    exponents = scale * (similarities[:, later] - similarities[:, earlier] + margin)
    with_one = torch.cat([exponents.new_zeros(n, 1), exponents], dim=1)  # log(1 + Σ e^z) = logsumexp(0, z)
    return 2 * torch.logsumexp(with_one, dim=1) / scale


class GradedRanking(Method):
    """Base loss + ``weight`` × the SGAR term of the ``variant`` (module docstring)."""

    def __init__(self, base_loss, params: Mapping[str, Any], context: MethodContext):
        super().__init__(base_loss, params, context)
        self.variant = str(self.params.get("variant", "project"))
        self.steps = int(self.params["steps"])
        self.alpha = float(self.params["alpha"])
        self.margin = float(self.params["margin"])
        self.weight = float(self.params["weight"])
        if self.variant == "project":
            if self.weight and context.embedding_layer is None:
                raise ValueError("method 'sgar' synthesises before the embedding layer: the MethodContext needs embedding_layer")
            return
        if getattr(base_loss, "head", None) is None or not isinstance(getattr(base_loss.loss, "proxies", None), torch.Tensor):
            raise ValueError(
                f"method 'sgar' with variant {self.variant} computes its loss through the proxy_anchor loss's projection head "
                "and gates on its proxies: use loss proxy_anchor with loss param projection_head: true (the registry's "
                "variant_loss_params give it), or variant: project"
            )
        for key in ("scale", "gate", "pull_scale", "pull_margin", "rank_ratio", "pull_ratio"):
            setattr(self, key, float(self.params[key]))
        # Kaiming normal with fan_out = N, as losses.py:53-54; from the method's own stream, so a run with
        # the synthesis off draws nothing the control does not.
        gain = math.sqrt(2.0 / self.steps)
        initial = torch.randn((self.steps, context.embedding_dim), generator=context.generator, dtype=torch.float32) * gain
        self.directions = nn.Parameter(initial.to(context.device))

    # -- project ---------------------------------------------------------------------------------------

    def rank_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """L_rank over every same-class pair (a, k), a ≠ k, of the batch."""
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        if not same.any():
            return embeddings.sum() * 0.0
        graded = self.context.embedding_layer(graded_features(features, self.steps, self.alpha, self.context.generator))
        similarities = graded_similarities(embeddings, graded.to(embeddings.dtype))
        anchors, samples = torch.nonzero(same, as_tuple=True)
        return ranking_loss(similarities[:, anchors, samples], self.margin)

    # -- official / paper ----------------------------------------------------------------------------

    def class_term(self, points: torch.Tensor, proxy: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """ρ_m · pull + ρ_g · mean rank of one class's selected embeddings ``points`` ``(n, D)`` (L2-normalised)."""
        project = self.base_loss.head.project
        graded = self.variant == "paper"
        u = perturbations(self.directions.to(points.dtype), order, self.alpha, graded)
        n, levels = points.shape[0], u.shape[0]
        synthetic = project((points[:, None, :] + u[None]).reshape(n * levels, -1)).reshape(n, levels, -1)
        similarities = torch.einsum("nid,nd->ni", synthetic, project(points))
        ranking = soft_ranking(similarities, self.scale, self.margin).sum() / n
        if graded:  # every selected sample, the proxy projected once
            pulled, anchor = synthetic, project(proxy[None])[0]
        else:  # as released: the last sample's term, the proxy through fc once per pass (losses.py:241-248)
            pulled, anchor = synthetic[-1:], proxy
            for _ in range(n):
                anchor = project(anchor[None])[0]
        exponents = self.pull_scale * (self.pull_margin - pulled @ anchor)
        pull = torch.logsumexp(torch.cat([exponents.new_zeros(len(pulled), 1), exponents], dim=1), dim=1).mean()
        return self.pull_ratio * pull + self.rank_ratio * ranking

    def synthesis_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Σ over the classes with selected samples of :meth:`class_term` (None when no sample is selected)."""
        points = F.normalize(embeddings, dim=1)
        proxies = self.base_loss.loss.proxies.to(points.dtype)
        with torch.no_grad():
            selected = (points * proxies[labels]).sum(dim=1) >= self.gate
        terms = []
        for label in torch.unique(labels[selected]).tolist():  # ascending, like losses.py:287
            order = torch.randperm(self.steps, generator=self.context.generator).to(points.device)
            terms.append(self.class_term(points[selected & (labels == label)], proxies[label], order))
        return torch.stack(terms).sum() if terms else None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.base_loss(embeddings, labels)
        if self.weight == 0:
            return loss
        if self.variant != "project":
            extra = self.synthesis_loss(embeddings, labels)
            return loss if extra is None else loss + self.weight * extra
        if features is None:
            raise ValueError("method 'sgar' needs the backbone features of the batch: call it as method(embeddings, labels, features=...)")
        return loss + self.weight * self.rank_loss(embeddings, labels, features)
