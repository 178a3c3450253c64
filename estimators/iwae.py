"""Importance-weighted bound (IWAE), reparameterized.

Identity (Burda, Grosse & Salakhutdinov 2016, eqs. 8 and 14): with K samples
z_k = mu + sigma eps_k from q(z|x) and log weights
``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``,

    L_K(x) = E[log (1/K) sum_k w_k] <= log p(x),
    grad L_K = E_eps[sum_k w~_k grad log w_k(z_k(eps_k))],  w~_k = w_k / sum_j w_j,

i.e. the pathwise gradient of ``logmeanexp_k log w_k``. K = 1 is the ELBO with a
Monte Carlo KL. The bound needs ``log q`` per sample: ``kl="mc"`` only.
"""

from __future__ import annotations

import kernels

from .base import Estimator, log_likelihood, log_prior, logmeanexp
from .registry import register


def log_weights(model, x, z, mu, logvar):
    """``log w = log p(x|z) + log p(z) - log q(z; mu, logvar)``: z ``[K, ..., B, Dz]`` -> ``[K, ..., B]``."""
    return log_likelihood(model, x, z) + log_prior(z) - kernels.normal_log_prob(z, mu, logvar)


class MultiSample(Estimator):
    """Base of the VAE-only importance-weighted estimators."""

    vae_only = True
    multi_sample = True
    default_kl = "mc"
    kl_modes = ("mc",)


@register
class IWAE(MultiSample):
    """Pathwise gradient of ``logmeanexp_k log w_k`` (Burda et al. 2016)."""

    name = "iwae"

    def _vae_objective(self, model, x, mu, logvar, eps, kl):
        z = kernels.normal_rsample(mu, logvar, eps)  # [K, *mu.shape]
        surr = logmeanexp(log_weights(model, x, z, mu, logvar), 0)
        return surr, surr.detach()
