"""The realism term: the GAN's own critic keeps an optimised image at least as real as a typical prior draw.

LCO's target loss can be met by images the generator never drew (above all with feature offsets,
``lco.feature_res``). The WGAN critic trained with the generator scores how real an image looks; the term
``realism_weight * relu(floor - D(x))`` charges an image only for falling below ``floor``, the median critic
score of prior draws, so it pulls back what drifted off the generator's range without pushing every image
towards the critic's favourite.

The critic has a minibatch standard-deviation layer: its score for an image depends on the images grouped
with it. Each image is therefore scored in a group with the same fixed reference renders (seeded prior
draws), so its score, and LCO's trajectory, never depend on which other latents share its batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .starts import initial_latents


class CriticTerm:
    """``weight * relu(floor - score(x))`` per image; ``score`` is the critic's, in a group with fixed references."""

    def __init__(self, D: nn.Module, refs: torch.Tensor, weight: float, floor: float | None = None):
        self.D, self.refs, self.weight = D, refs, float(weight)
        self.floor = float("nan") if floor is None else float(floor)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``[n]`` critic scores of images ``x``, each scored beside the references (its minibatch-stddev group)."""
        n = len(x)
        refs = self.refs.to(device=x.device, dtype=x.dtype)
        # the critic groups with stride: sample i with rows i + n, i + 2n, ... (pggan.layers.minibatch_stddev)
        batch = torch.cat([x, *(r.expand(n, *r.shape) for r in refs)])
        return self.D(batch)[:n, 0].float()

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.relu(self.floor - self.score(x))


@torch.no_grad()
def critic_term(G: nn.Module, D: nn.Module, weight: float, seed: int, n_prior: int = 256, chunk: int = 64) -> CriticTerm:
    """The term for generator ``G`` and its critic ``D``: references and floor from prior draws seeded by ``seed``."""
    group = int(getattr(next((m for m in D.modules() if hasattr(m, "group_size")), None), "group_size", 4) or 4)
    dev = next(G.parameters()).device
    z = initial_latents([seed], int(G.latent_dim), group - 1 + n_prior)[0].to(dev)
    term = CriticTerm(D, G(z[: group - 1]), weight)
    scores = torch.cat([term.score(G(z[s : s + chunk])) for s in range(group - 1, len(z), chunk)])
    term.floor = float(scores.median())
    return term
