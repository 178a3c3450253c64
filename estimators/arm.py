"""ARM: the augment-REINFORCE-merge gradient of Bernoulli expectations.

Identity (Yin & Zhou 2019, "ARM: augment-REINFORCE-merge gradient for stochastic
binary networks", ICLR, eq. 14): for ``b ~ Bernoulli(sigmoid(phi))`` and one
uniform ``u`` per latent,

    grad_phi E[f(b)] = E_u[(f(b1) - f(b2)) (u - 1/2)],
    b1 = 1[u > sigmoid(-phi)],  b2 = 1[u < sigmoid(phi)],

an antithetic pair (each Bernoulli(sigmoid(phi))) evaluated at the full vectors,
with the factor ``u - 1/2`` per coordinate. With S pairs the S estimates are
averaged: 2S evaluations of f per estimate. The pair and the weight come from one
fused kernel (:func:`kernels.bernoulli_antithetic`).
"""

from __future__ import annotations

import torch

import kernels

from .base import Estimator
from .registry import register


class _Antithetic(Estimator):
    """Shared by ARM and DisARM: S antithetic pairs, 2S evaluations of f."""

    families = ("bernoulli",)

    def evaluations(self, num_samples, dim):
        return 2 * int(num_samples)

    def _coefficient(self, df: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per-pair gradient in phi ``[S, *shape]`` from ``df = f(b1) - f(b2)`` ``[S, *batch, 1]``."""
        raise NotImplementedError

    def _family_expectation(self, f, q, noise, context):
        s = noise.shape[0]
        b1, b2, w = kernels.bernoulli_antithetic(q.logits.detach(), noise)
        f_all = f(torch.cat([b1, b2]))  # [2S, *batch]; graph only through f's own parameters
        fd = f_all.detach()
        df = (fd[:s] - fd[s:]).unsqueeze(-1)
        coef = self._coefficient(df, noise, w).mean(0)  # [*shape]
        score = (coef * q.logits).sum(-1)
        # value and direct path: the mean of f over both members of every pair
        return f_all.mean(0) + (score - score.detach())


@register
class ARM(_Antithetic):
    """``mean_s (f(b1_s) - f(b2_s)) (u_s - 1/2)`` (Yin & Zhou 2019, eq. 14)."""

    name = "arm"

    def _coefficient(self, df, u, w):
        return df * (u - 0.5)
