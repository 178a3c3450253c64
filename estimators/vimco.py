"""VIMCO: score-function gradient of the importance-weighted bound with leave-one-out baselines.

Identity (Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives",
eqs. 5-10): with ``L = log (1/K) sum_k w_k`` and samples z_k ~ q at fixed z,

    grad L = E[sum_k (L - L_{-k}) grad log q(z_k|x) + sum_k w~_k grad log w_k],

where ``L_{-k}`` replaces ``log w_k`` in L by the mean of the other log weights
(their geometric mean), a baseline independent of z_k. The second term is the
gradient at fixed samples: the decoder's ``grad log p(x|z_k)`` and the encoder's
``-grad log q(z_k|x)``. Needs K >= 2.
"""

from __future__ import annotations

import math

import torch

import kernels

from .base import attach, logmeanexp
from .iwae import MultiSample, log_weights
from .registry import register


@register
class VIMCO(MultiSample):
    """Score function for ``logmeanexp_k log w_k`` with per-sample leave-one-out signals (Mnih & Rezende 2016)."""

    name = "vimco"
    min_samples = 2

    def _vae_objective(self, model, x, mu, logvar, eps, kl):
        k = eps.shape[0]
        z = kernels.normal_rsample(mu.detach(), logvar.detach(), eps)  # [K, *mu.shape], fixed samples
        lw = log_weights(model, x, z, mu, logvar)  # [K, *batch]: graph through decoder and q's direct path
        lwd = lw.detach()
        value = logmeanexp(lwd, 0)
        # L_{-k}: log w_k replaced by the mean of the others; [K (k), K (j), *batch]
        mean_others = (lwd.sum(0, keepdim=True) - lwd) / (k - 1)
        eye = torch.eye(k, dtype=torch.bool, device=lwd.device).reshape(k, k, *([1] * (lwd.dim() - 1)))
        replaced = torch.where(eye, mean_others.unsqueeze(1), lwd.unsqueeze(0))
        l_minus = torch.logsumexp(replaced, 1) - math.log(k)
        signal = value.unsqueeze(0) - l_minus  # [K, *batch]
        log_q = kernels.normal_log_prob(z, mu, logvar)
        w = torch.softmax(lwd, 0)
        surr = (signal * log_q).sum(0) + (w * lw).sum(0)
        return attach(value, surr), value
