"""Reparameterization (pathwise) gradient.

Identity (Kingma & Welling 2014, sec. 2.4; Rezende et al. 2014; the
"reparameterization trick"): with z = mu + sigma * eps, eps ~ N(0, I),

    grad E_{N(z; mu, sigma^2)}[f(z)] = E_eps[grad f(mu + sigma * eps)],

so the estimate is the gradient of ``mean_s f(mu + sigma * eps_s)``; with respect
to ``logvar`` the chain rule gives ``d z / d logvar = sigma * eps / 2``.
For the VAE with ``kl="analytic"`` the sample and the KL come from one fused
kernel call (:func:`kernels.normal_rsample_kl`).
"""

from __future__ import annotations

import kernels

from .base import Estimator, log_likelihood
from .registry import register


@register
class Reparam(Estimator):
    """Pathwise gradient ``mean_s grad f(mu + exp(logvar/2) * eps_s)`` (Kingma & Welling 2014)."""

    name = "reparam"

    def _expectation(self, f, mu, logvar, eps, context):
        z = kernels.normal_rsample(mu, logvar, eps)  # [S, *mu.shape]
        return f(z).mean(0)

    def _vae_objective(self, model, x, mu, logvar, eps, kl):
        if kl != "analytic":
            return super()._vae_objective(model, x, mu, logvar, eps, kl)
        z, kl_rows = kernels.normal_rsample_kl(mu, logvar, eps)  # z [S, *mu.shape], kl [S, *batch] (equal rows)
        surr = log_likelihood(model, x, z).mean(0) - kl_rows.mean(0)
        return surr, surr.detach()
