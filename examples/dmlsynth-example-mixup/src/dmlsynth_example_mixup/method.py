"""``example_mixup`` — AN EXAMPLE plugin method, not one of dmlsynth's benchmarked methods.

For each real embedding, ``num_synthetic`` synthetic ones: a convex mix ``w·e_i + (1−w)·e_j`` of it and a
random other sample ``j`` of its class, ``w ~ U(min_weight, 1)``, labelled with the class; the base loss
sees the real and synthetic embeddings together. Every random draw comes from ``context.generator``
(checkpointed with the run), so a resumed run draws the same mixes; with ``num_synthetic: 0`` it calls the
base loss on the batch alone, which makes it exactly its control.
"""

from __future__ import annotations

import torch

from dmlsynth.methods import Method


class SameClassMixup(Method):
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        copies = int(self.params["num_synthetic"])
        if copies == 0:
            return self.base_loss(embeddings, labels)
        generator = self.context.generator
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        # A partner of each sample's class (itself when it is alone in the batch), drawn per copy.
        weights = same.float() + (~same.any(dim=1)).float().diag()
        partners = torch.multinomial(weights.cpu(), copies, replacement=True, generator=generator).T.reshape(-1)
        low = float(self.params["min_weight"])
        mix = (low + (1 - low) * torch.rand(copies * len(labels), generator=generator)).to(embeddings.device)[:, None]
        originals = embeddings.repeat(copies, 1)
        synthetic = mix * originals + (1 - mix) * embeddings[partners.to(embeddings.device)]
        return self.base_loss(torch.cat([embeddings, synthetic]), torch.cat([labels, labels.repeat(copies)]))
