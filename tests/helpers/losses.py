"""Base losses written out from their papers and official code, one term at a time, for the tests to compare with."""

from __future__ import annotations

import torch


def official_multi_similarity(anchors, labels, candidates, candidate_labels, owner, alpha, beta, base, margin):
    """Multi-Similarity (Wang et al., CVPR 2019, eqs. 5-6 mining, eq. 7 loss) as the official IAA ``losses.py``
    ``MultiSimilarityLoss`` computes it, per anchor: candidates owned by the anchor (``owner == i``: itself,
    and its synthetic copies) are removed from its positives before the hard pairs are picked; the sum over
    anchors is divided by their number."""
    anchors, candidates = torch.nn.functional.normalize(anchors, dim=1), torch.nn.functional.normalize(candidates, dim=1)
    terms = []
    for i in range(len(labels)):
        similarity = candidates @ anchors[i]
        pos = similarity[(candidate_labels == labels[i]) & (owner != i)]
        neg = similarity[candidate_labels != labels[i]]
        if len(pos) == 0 or len(neg) == 0:
            continue
        hard_neg = neg[neg + margin > pos.min()]
        hard_pos = pos[pos - margin < neg.max()]
        if len(hard_neg) == 0 or len(hard_pos) == 0:
            continue
        terms.append(
            torch.log1p(torch.exp(-alpha * (hard_pos - base)).sum()) / alpha
            + torch.log1p(torch.exp(beta * (hard_neg - base)).sum()) / beta
        )
    return sum(terms) / len(labels)
