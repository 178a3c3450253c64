"""Doubly reparameterized gradient (DReG) of the importance-weighted bound.

Identity (Tucker, Lawson, Gu & Maddison 2019, "Doubly reparameterized gradient
estimators for Monte Carlo objectives", eq. 8): for the IWAE bound the encoder
gradient can be written without score terms,

    grad_phi L_K = E[sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi)],

where ``d log w_k / d z_k`` is taken with q's parameters held fixed. The decoder
keeps the IWAE gradient ``sum_k w~_k grad_theta log p(x, z_k)`` at fixed z. With
K = 1 this is STL (Roeder et al. 2017); when q is the exact posterior the encoder
gradient is zero for every sample.
"""

from __future__ import annotations

import torch

import kernels

from .base import attach, logmeanexp
from .iwae import MultiSample, log_weights
from .registry import register


@register
class DReG(MultiSample):
    """``sum_k w~_k^2 dlog w_k/dz_k dz_k/dphi`` for the encoder; IWAE's gradient for the decoder (Tucker et al. 2019)."""

    name = "dreg"

    def _vae_objective(self, model, x, mu, logvar, eps, kl):
        z = kernels.normal_rsample(mu, logvar, eps)  # [K, *mu.shape], path to (mu, logvar)
        zd = z.detach()
        if not torch.is_grad_enabled():
            value = logmeanexp(log_weights(model, x, zd, mu, logvar), 0)
            return value, value
        zd.requires_grad_(True)
        lw = log_weights(model, x, zd, mu.detach(), logvar.detach())  # [K, *batch], graph: decoder + zd
        (g_z,) = torch.autograd.grad(lw.sum(), zd, retain_graph=True)  # d log w_k / d z_k, q fixed
        lwd = lw.detach()
        w = torch.softmax(lwd, 0)  # normalized weights w~_k
        decoder = (w * lw).sum(0)  # IWAE gradient of the decoder at fixed z
        encoder = ((w * w).unsqueeze(-1) * g_z * z).sum(-1).sum(0)  # gradient reaches mu, logvar through z only
        surr = decoder + (encoder - encoder.detach())
        value = logmeanexp(lwd, 0)
        return attach(value, surr), value
