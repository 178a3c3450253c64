"""The torch backend: every op in plain eager PyTorch, the oracle of every test.

Formulas (D = size of the last dim, sigma^2 = exp(logvar)):

* rsample (Kingma & Welling 2014, sec. 2.4): ``z = mu + exp(logvar / 2) * eps``;
* KL to the standard normal (ibid., appendix B):
  ``KL = 0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)``;
* Gaussian log density: ``-0.5 * sum(log(2 pi) + logvar + (x - mu)^2 exp(-logvar))``;
* Bernoulli with logits l: ``sum(x * l - softplus(l))``, stable for any l
  (equals ``torch.distributions.Bernoulli(logits=l).log_prob(x)`` summed).

The discrete ops (formulas and citations in :mod:`kernels.discrete`) compare
uniforms with probabilities in float64, so that a sample is the same on every
backend unless a uniform falls within float64 rounding of its threshold.

Inputs arrive validated and broadcast by :mod:`kernels`; autograd is torch's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .philox import normal_noise_torch, uniform_noise_torch

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


# --------------------------------------------------------------------------- discrete
def uniform_noise(shape, seed, device, dtype):
    return uniform_noise_torch(shape, seed, device=device, dtype=dtype)


def _u(like, u, seed):
    return uniform_noise(like.shape, seed, like.device, like.dtype) if u is None else u


def bernoulli_sample(logits, u, seed):
    u = _u(logits, u, seed)
    return (u.double() < torch.sigmoid(logits.detach().double())).to(logits.dtype)


def bernoulli_antithetic(logits, u, seed):
    u = _u(logits, u, seed)
    l64, u64 = logits.detach().double(), u.double()
    b1 = u64 > torch.sigmoid(-l64)
    b2 = u64 < torch.sigmoid(l64)
    sign = 1.0 - 2.0 * b2.double()
    w = torch.where(b1 != b2, sign * torch.sigmoid(l64.abs()), 0.0)
    dt = logits.dtype
    return b1.to(dt), b2.to(dt), w.to(dt)


def bernoulli_kl(logits, prior_logits):
    p = torch.sigmoid(logits)
    return (p * (logits - prior_logits) + F.softplus(prior_logits) - F.softplus(logits)).sum(-1)


def categorical_sample(logits, u, seed):
    u = _u(logits, u, seed)
    g = logits.detach().double() - torch.log(-torch.log(u.double()))
    k = g.argmax(-1, keepdim=True)
    return torch.zeros_like(logits, requires_grad=False).detach().scatter_(-1, k, 1.0)


def categorical_log_prob(x, logits):
    return (x * torch.log_softmax(logits, -1)).sum((-2, -1))


def categorical_kl(logits, prior_logits):
    logp = torch.log_softmax(logits, -1)
    return (logp.exp() * (logp - torch.log_softmax(prior_logits, -1))).sum((-2, -1))


def gumbel_softmax(logits, u, temperature, seed):
    u = _u(logits, u, seed)
    g = -torch.log(-torch.log(u))
    return torch.softmax((logits + g) / temperature, -1)


def binary_concrete(logits, u, temperature, seed):
    u = _u(logits, u, seed)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def bernoulli_conditional_relaxed(logits, b, v, temperature, seed):
    v = _u(logits, v, seed)
    log_v, log_1mv = torch.log(v), torch.log1p(-v)
    # b = 1: u = 1 - sigmoid(l) (1 - v);  b = 0: u = v sigmoid(-l)  (z~ = l + logit(u))
    z1 = logits + torch.log1p(-torch.sigmoid(logits) * (1.0 - v)) + F.softplus(-logits) - log_1mv
    z0 = logits + log_v - F.softplus(logits) - torch.log1p(-v * torch.sigmoid(-logits))
    z = torch.where(b > 0.5, z1, z0)
    return torch.sigmoid(z / temperature)
