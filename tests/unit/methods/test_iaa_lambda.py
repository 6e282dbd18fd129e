"""IAA's λ scales the variance of the synthetic samples the base loss is given (docs/methods.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.methods import backbone, batch, build


class Spy(torch.nn.Module):
    """Records the reference set (originals, then the synthetic copies) the method hands the pml loss."""

    def __init__(self, loss):
        super().__init__()
        self.inner, self.ref_emb = loss, None

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        self.ref_emb = ref_emb
        return self.inner(embeddings, labels, indices_tuple, ref_emb, ref_labels)


def synthetic_offsets(lam: float) -> torch.Tensor:
    """The synthetic copies minus their originals, for one batch, as the training loop drives IAA."""
    inputs, labels = batch()
    with torch.no_grad():
        statistics = backbone()(inputs)
    method = build("iaa", "multi_similarity", {"lambda": lam}, embed_training_set=lambda **_: (statistics, labels))
    method.on_epoch_start(1)  # after the warm-up: statistics estimated, synthesis on (λ not yet annealed)
    method.base_loss.loss = Spy(method.base_loss.loss)
    embeddings = backbone()(inputs)
    method(embeddings, labels)
    n, m = len(labels), method.num_synthetic
    copies = method.base_loss.loss.ref_emb[n:].detach()
    return copies - embeddings.detach().repeat_interleave(m, dim=0)


@pytest.mark.parametrize("small,large", [(0.2, 0.8), (0.05, 1.25)])
def test_lambda_scales_the_synthetic_variance(small, large):
    # The same seeded draws: the offsets of every copy scale by exactly √(λ_large / λ_small).
    a, b = synthetic_offsets(small), synthetic_offsets(large)
    assert a.abs().sum() > 0
    # (copy − original is computed in float32: allow its rounding, far below the offsets themselves)
    assert torch.allclose(b, a * math.sqrt(large / small), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(b, a, rtol=1e-2)
