"""Small models and toy problems for the estimator tests (not a test module).

``TinyVAE`` follows the model protocol of :mod:`estimators.base`: an MLP encoder
and an MLP decoder (Bernoulli logits or Gaussian mean/logvar) that accept leading
sample dims, with ``encoder`` / ``decoder`` submodules.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class TinyVAE(nn.Module):
    """``Dx - H - 2Dz`` tanh encoder, ``Dz - H - Dx`` tanh decoder (Kingma & Welling 2014, app. C)."""

    def __init__(self, x_dim=6, z_dim=3, hidden=8, likelihood="bernoulli", seed=0, dtype=torch.float32):
        super().__init__()
        self.likelihood = likelihood
        self.z_dim = z_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim))
            out = x_dim if likelihood == "bernoulli" else 2 * x_dim
            self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))
        self.to(dtype)

    def encode(self, x):
        h = self.encoder(x)
        return h[..., : self.z_dim], h[..., self.z_dim :]

    def decode(self, z):
        h = self.decoder(z)
        if self.likelihood == "bernoulli":
            return h
        d = h.shape[-1] // 2
        return h[..., :d], h[..., d:]


def binary_batch(b=4, x_dim=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((b, x_dim), 0.5), generator=g).to(dtype)


# --------------------------------------------------------------------------- Gaussian toys
# Each toy: f(z [..., D]) -> [...] and the closed-form E, dE/dmu, dE/dlogvar for N(mu, diag exp(logvar)).
A = torch.tensor([0.7, -0.4, 0.3], dtype=torch.float64)
T = torch.tensor([0.2, -0.3, 0.5], dtype=torch.float64)
Q = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)


def _lin(mu, lv):
    return (A * mu).sum(-1) + 0.3, A.expand_as(mu), torch.zeros_like(mu)


def _quad(mu, lv):
    v = lv.exp()
    return (Q * ((mu - T) ** 2 + v)).sum(-1), 2 * Q * (mu - T), Q * v


def _exp(mu, lv):
    v = lv.exp()
    e = torch.exp((A * mu).sum(-1) + 0.5 * (A * A * v).sum(-1))
    return e, A * e[..., None], 0.5 * A * A * v * e[..., None]


def _cos(mu, lv):
    v = lv.exp()
    damp = torch.exp(-0.5 * (A * A * v).sum(-1))
    u = (A * mu).sum(-1)
    e = torch.cos(u) * damp
    return e, -A * (torch.sin(u) * damp)[..., None], -0.5 * A * A * v * e[..., None]


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(120)  # weight exp(-x^2/2); sum(w) = sqrt(2 pi)


def _sigmoid(mu, lv):
    """u = a.z + c ~ N(m, s2): E[sig(u)], and by Price's theorem dE/dlogvar_j = a_j^2 v_j E[sig''(u)] / 2.

    The 1-D expectations use 120-point Gauss-Hermite quadrature (error far below 1e-10 here).
    """
    v = lv.exp()
    m = ((A * mu).sum(-1) + 0.1).numpy()
    s = np.sqrt((A * A * v).sum(-1).numpy())
    u = m[..., None] + s[..., None] * _GH_X
    sg = 1.0 / (1.0 + np.exp(-u))
    d1 = sg * (1 - sg)
    d2 = d1 * (1 - 2 * sg)
    w = _GH_W / math.sqrt(2 * math.pi)
    e, e1, e2 = (torch.from_numpy((arr * w).sum(-1)) for arr in (sg, d1, d2))
    return e, A * e1[..., None], 0.5 * A * A * v * e2[..., None]


TOYS = {
    "linear": (lambda z: (A.to(z.dtype) * z).sum(-1) + 0.3, _lin),
    "quadratic": (lambda z: (Q.to(z.dtype) * (z - T.to(z.dtype)) ** 2).sum(-1), _quad),
    "exp": (lambda z: torch.exp((A.to(z.dtype) * z).sum(-1)), _exp),
    "cos": (lambda z: torch.cos((A.to(z.dtype) * z).sum(-1)), _cos),
    "sigmoid": (lambda z: torch.sigmoid((A.to(z.dtype) * z).sum(-1) + 0.1), _sigmoid),
}

MU = torch.tensor([[0.3, -0.5, 0.8], [-0.2, 0.4, 0.1]], dtype=torch.float64)
LOGVAR = torch.tensor([[-0.5, 0.2, -1.0], [0.1, -0.3, -0.6]], dtype=torch.float64)
