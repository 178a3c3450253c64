"""Gaussian toys: expectations ``E_{z ~ N(mu, diag exp(logvar))}[f(z)]`` in D dims with exact gradients.

They exercise ``est.surrogate`` (the generic-expectation API of the estimators)
with a known truth, so the variance benchmark measures bias exactly:

* ``gauss_quadratic``: ``f(z) = log N(z; a, I)`` through :func:`kernels.normal_log_prob`;
  ``dE/dmu = a - mu``, ``dE/dlogvar = -exp(logvar) / 2``;
* ``gauss_cosine``: ``f(z) = sum_d cos z_d``; ``E = sum cos(mu) exp(-s2/2)``, so
  ``dE/dmu = -sin(mu) exp(-s2/2)``, ``dE/dlogvar = -s2/2 cos(mu) exp(-s2/2)``.
"""

from __future__ import annotations

import torch

import kernels

__all__ = ["TOYS", "toy_problem"]

#: The toy problems' names (``--dataset`` of ``elbobench variance`` takes them).
TOYS = ("gauss_quadratic", "gauss_cosine")


def toy_problem(name: str, dim: int, seed: int):
    """``(f, mu [D], logvar [D], exact_grad {"mu", "logvar"})`` of a Gaussian toy (see module doc)."""
    gen = torch.Generator().manual_seed(int(seed) + 101)
    mu = torch.randn(dim, generator=gen, dtype=torch.float64).float()
    logvar = (0.5 * torch.randn(dim, generator=gen, dtype=torch.float64) - 0.5).float()
    s2 = logvar.double().exp()
    if name == "gauss_quadratic":
        a = torch.randn(dim, generator=gen, dtype=torch.float64).float()

        zero = torch.zeros(())

        def f(z):
            # a and the zero log variance broadcast against z [..., D] (read in place, not materialised)
            return kernels.normal_log_prob(z, a, zero.expand(dim))

        exact = {"mu": a.double() - mu.double(), "logvar": -0.5 * s2}
    elif name == "gauss_cosine":

        def f(z):
            return torch.cos(z).sum(-1)

        damp = torch.exp(-0.5 * s2)
        exact = {"mu": -torch.sin(mu.double()) * damp, "logvar": -0.5 * s2 * torch.cos(mu.double()) * damp}
    else:
        raise ValueError(f"toy problem must be one of {list(TOYS)}, got {name!r}")
    return f, mu, logvar, exact
