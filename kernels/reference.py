"""The torch backend: every op in plain eager PyTorch, the oracle of every test.

Formulas (D = size of the last dim, sigma^2 = exp(logvar)):

* rsample (Kingma & Welling 2014, sec. 2.4): ``z = mu + exp(logvar / 2) * eps``;
* KL to the standard normal (ibid., appendix B):
  ``KL = 0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)``;
* Gaussian log density: ``-0.5 * sum(log(2 pi) + logvar + (x - mu)^2 exp(-logvar))``;
* Bernoulli with logits l: ``sum(x * l - softplus(l))``, stable for any l
  (equals ``torch.distributions.Bernoulli(logits=l).log_prob(x)`` summed).

Inputs arrive validated and broadcast by :mod:`kernels`; autograd is torch's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .philox import normal_noise_torch

LOG_2PI = math.log(2.0 * math.pi)


def availability(device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    return None


def normal_noise(shape, seed, device, dtype):
    """The shared Philox stream; uses the fast numba filler on CPU when it imports."""
    if torch.device(device).type == "cpu":
        try:
            from .philox import normal_noise_numba

            return normal_noise_numba(shape, seed, dtype)
        except RuntimeError:  # pragma: no cover - numba missing
            pass
    return normal_noise_torch(shape, seed, device=device, dtype=dtype)


def _eps(mu, eps, seed):
    if eps is None:
        eps = normal_noise(mu.shape, seed, mu.device, mu.dtype)
    return eps


def normal_rsample(mu, logvar, eps, seed):
    eps = _eps(mu, eps, seed)
    return mu + torch.exp(0.5 * logvar) * eps


def normal_kl_std(mu, logvar):
    return 0.5 * (torch.exp(logvar) + mu * mu - 1.0 - logvar).sum(-1)


def normal_rsample_kl(mu, logvar, eps, seed):
    return normal_rsample(mu, logvar, eps, seed), normal_kl_std(mu, logvar)


def normal_log_prob(x, mu, logvar):
    d = x - mu
    return -0.5 * (LOG_2PI + logvar + d * d * torch.exp(-logvar)).sum(-1)


def bernoulli_log_prob(x, logits):
    return (x * logits - F.softplus(logits)).sum(-1)
