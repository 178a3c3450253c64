"""DisARM: ARM Rao-Blackwellized over the uniform given the antithetic pair.

Identity (Dong, Mnih & Tucker 2020, "DisARM: an antithetic gradient estimator
for binary latent variables", NeurIPS, eq. 7): with ARM's pair from one uniform
per latent (:mod:`estimators.arm`),

    grad_phi E[f(b)] = E[1/2 (f(b1) - f(b2)) 1[b1 != b2] (-1)^{b2} sigmoid(|phi|)],

f evaluated at the full vectors and the indicator taken per coordinate. It is
the conditional expectation of ARM's estimate given (b1, b2), so per coordinate
its variance is at most ARM's (their theorem 1). S pairs are averaged (2S
evaluations of f); the weight comes from :func:`kernels.bernoulli_antithetic`.
"""

from __future__ import annotations

from .arm import _Antithetic
from .registry import register


@register
class DisARM(_Antithetic):
    """``mean_s 1/2 (f(b1_s) - f(b2_s)) w_s``, ``w = 1[b1 != b2] (-1)^b2 sigmoid(|phi|)`` (Dong et al. 2020)."""

    name = "disarm"

    def _coefficient(self, df, u, w):
        return 0.5 * df * w
