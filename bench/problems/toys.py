"""Toys: expectations ``E_q[f(z)]`` in D dims with exact gradients (Gaussian, and one Bernoulli).

They exercise ``est.surrogate`` (the generic-expectation API of the estimators)
with a known truth, so the variance benchmark measures bias exactly:

* ``gauss_quadratic``: ``f(z) = log N(z; a, I)`` through :func:`kernels.normal_log_prob`;
  ``dE/dmu = a - mu``, ``dE/dlogvar = -exp(logvar) / 2``;
* ``gauss_cosine``: ``f(z) = sum_d cos z_d``; ``E = sum cos(mu) exp(-s2/2)``, so
  ``dE/dmu = -sin(mu) exp(-s2/2)``, ``dE/dlogvar = -s2/2 cos(mu) exp(-s2/2)``;
* ``bernoulli_toy``: the toy of REBAR and RELAX, ``f(b) = sum_d (b_d - t)^2`` under
  ``b ~ Bernoulli(sigmoid(logits))`` with t = 0.45 (:func:`bench.problems.discrete.bernoulli_toy`);
  ``dE/dlogits = p (1 - p) (1 - 2t)``.
"""

from __future__ import annotations

import torch

import kernels

__all__ = ["BERNOULLI_TOY_T", "TOYS", "toy_family", "toy_problem"]

#: The toy problems' names (``--dataset`` of ``elbobench variance`` takes them).
TOYS = ("gauss_quadratic", "gauss_cosine", "bernoulli_toy")
#: t of the Bernoulli toy in the benchmark (the papers' hard case is 0.499, whose
#: gradient no estimator here resolves at benchmark budgets).
BERNOULLI_TOY_T = 0.45


def toy_family(name: str) -> str:
    """The latent family of toy ``name`` (``"normal"`` or ``"bernoulli"``)."""
    if name not in TOYS:
        raise ValueError(f"toy problem must be one of {list(TOYS)}, got {name!r}")
    return "bernoulli" if name == "bernoulli_toy" else "normal"


def toy_problem(name: str, dim: int, seed: int):
    """``(f, mu [D], logvar [D], exact_grad {"mu", "logvar"})`` of a Gaussian toy (see module doc).

    For ``bernoulli_toy``: ``(f, logits [D], None, {"logits": exact})``.
    """
    if name == "bernoulli_toy":
        from .discrete import bernoulli_toy

        f, logits, exact = bernoulli_toy(dim, t=BERNOULLI_TOY_T, seed=seed)
        return f, logits.float(), None, {"logits": exact}
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
