"""Discrete-latent problems with exact ground truths.

* **Bernoulli toy** (the toy of Tucker et al. 2017, REBAR, sec. 6.1, and
  Grathwohl et al. 2018, RELAX, sec. 6.1): ``f(b) = sum_d (b_d - t)^2`` under
  ``b ~ Bernoulli(sigmoid(phi))``. ``E[f] = sum_d p_d (1 - t)^2 + (1 - p_d) t^2``, so
  ``dE/dphi_d = p_d (1 - p_d) (1 - 2 t)``. ``t = 0.499`` is the papers' hard case
  (a gradient ~ 0.001 p(1-p) that the noise swamps); tests use ``t = 0.45``.
* **Enumeration** (:func:`enumerate_expectation`): for D <= 16 Bernoulli latents,
  ``E[f] = sum_b prod_d p_d^{b_d} (1 - p_d)^{1 - b_d} f(b)`` over the ``2^D`` states;
  autograd through the sum is the exact gradient of any f.
* **Gaussian mixture** (:class:`MixtureVAE`): ``z ~ Categorical(pi)``,
  ``x | z = k ~ N(mu_k, sigma_k^2 I)``, amortized ``q(z|x) = Categorical(encoder(x))``.
  ``log p(x) = logsumexp_k (log pi_k + log N(x; mu_k, sigma_k^2 I))``, the posterior
  is the softmax of the same terms, and the ELBO of ``q = r`` is
  ``sum_k r_k (log pi_k + log N(x; mu_k, sigma_k^2 I) - log r_k)``: exact by summing
  over K (Bishop 2006, "Pattern recognition and machine learning", sec. 9.2 and
  9.4). :func:`fit_em` runs EM (E-step: r = posterior, the bound is tight; M-step:
  weighted means, variances and weights, ibid. eqs. 9.24-9.26) as the reference
  optimum a VI run can be compared with.
* **Small-latent Bernoulli VAE** (:class:`BernoulliVAE`, D <= 12): the exact ELBO
  ``sum_b q(b|x) (log p(x|b) + log p(b) - log q(b|x))`` by enumerating the ``2^D``
  states (:func:`exact_elbo`), and its gradient by autograd through it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import kernels

__all__ = [
    "MAX_ENUMERATED_DIM",
    "BernoulliVAE",
    "MixtureVAE",
    "bernoulli_toy",
    "binary_states",
    "enumerate_expectation",
    "exact_elbo",
    "exact_log_marginal",
    "fit_em",
    "mixture_data",
]

#: Largest D whose 2^D states :func:`enumerate_expectation` sums.
MAX_ENUMERATED_DIM = 16
#: Largest latent dim of :class:`BernoulliVAE` (its exact ELBO decodes 2^D states per example).
MAX_VAE_LATENTS = 12


def _check_dim(dim: object, most: int, what: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= most:
        raise ValueError(f"{what} must be an int in [1, {most}] (the 2^D states are enumerated), got {dim!r}")
    return dim


def binary_states(dim: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """All ``2^dim`` binary vectors ``[2^dim, dim]`` (row i is the bits of i, most significant first)."""
    _check_dim(dim, MAX_ENUMERATED_DIM, "dim")
    idx = torch.arange(2**dim, device=device).unsqueeze(-1)
    bits = 2 ** torch.arange(dim - 1, -1, -1, device=device)
    return ((idx & bits) > 0).to(dtype)


def enumerate_expectation(f, logits: torch.Tensor) -> torch.Tensor:
    """Exact ``E_{b ~ Bernoulli(sigmoid(logits))}[f(b)]`` by summing over the ``2^D`` states.

    Args:
        f: maps b ``[N, *batch, D]`` to ``[N, *batch]`` (as ``Estimator.surrogate``'s f).
        logits: ``[*batch, D]`` with D <= 16.

    Returns:
        ``[*batch]``, differentiable in ``logits`` (and f's parameters): its gradient is exact.
    """
    dim = _check_dim(logits.shape[-1], MAX_ENUMERATED_DIM, "logits.shape[-1]")
    states = binary_states(dim, logits.dtype, logits.device)  # [N, D]
    shape = (states.shape[0],) + (1,) * (logits.dim() - 1) + (dim,)
    b = states.reshape(shape).expand(states.shape[0], *logits.shape)
    log_q = kernels.bernoulli_log_prob(b, logits)  # [N, *batch]
    return (log_q.exp() * f(b)).sum(0)


def bernoulli_toy(dim: int = 1, t: float = 0.45, seed: int = 0, dtype=torch.float64):
    """``(f, logits [dim], exact_grad [dim])`` of the Bernoulli toy (module docstring).

    Logits are drawn N(0, 1) for ``seed``; the exact gradient is in float64.
    """
    _check_dim(dim, 1 << 20, "dim")
    if not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be a number in [0, 1], got {t!r}")
    gen = torch.Generator().manual_seed(int(seed) + 211)
    logits = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype)

    def f(b):
        return ((b - t) ** 2).sum(-1)

    p = torch.sigmoid(logits.double())
    return f, logits, p * (1 - p) * (1 - 2 * t)


# --------------------------------------------------------------------------- Gaussian mixture
def mixture_data(n: int, components: int = 3, dim: int = 2, seed: int = 0, spread: float = 3.0):
    """``(x [n, dim], true labels [n])`` drawn from a random Gaussian mixture (float32).

    Means ~ N(0, spread^2 I), standard deviations in [0.5, 1.5], weights ~ Dirichlet(2).
    """
    for arg, v in (("n", n), ("components", components), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"mixture_data: {arg} must be a positive int, got {v!r}")
    gen = torch.Generator().manual_seed(int(seed) + 307)
    means = spread * torch.randn(components, dim, generator=gen, dtype=torch.float64)
    sd = 0.5 + torch.rand(components, generator=gen, dtype=torch.float64)
    w = -torch.log(torch.rand(components, generator=gen, dtype=torch.float64)) - torch.log(
        torch.rand(components, generator=gen, dtype=torch.float64)
    )  # Gamma(2, 1) as a sum of two exponentials, so only gen is used
    labels = torch.multinomial(w / w.sum(), n, replacement=True, generator=gen)
    x = means[labels] + sd[labels, None] * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return x.float(), labels


class MixtureVAE(nn.Module):
    """A Gaussian mixture with an amortized categorical posterior (module docstring).

    Model protocol: ``latent = "categorical"``, ``likelihood = "gaussian"``;
    ``encode(x [B, Dx]) -> logits [B, 1, K]``; ``decode(z [..., B, 1, K])`` (one-hot or
    relaxed) ``-> (mean, logvar) [..., B, Dx]`` (``z @ mu`` and ``z @ log sigma^2``);
    ``prior_logits [1, K]`` the mixing weights' logits (learned).

    Args:
        x_dim: Dx.
        components: K.
        hidden: width of the encoder's hidden layer (0: a linear encoder).
        seed: initialisation seed (means from the data when ``init_x`` is given).
    """

    latent = "categorical"
    likelihood = "gaussian"

    def __init__(self, x_dim: int, components: int, hidden: int = 32, seed: int = 0, init_x=None) -> None:
        super().__init__()
        if components < 2:
            raise ValueError(f"components must be >= 2, got {components}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers = (
                [nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, components)]
                if hidden
                else [nn.Linear(x_dim, components)]
            )
            self.encoder = nn.Sequential(*layers)
            if init_x is not None:
                idx = torch.randperm(init_x.shape[0])[:components]
                means = init_x[idx].clone().float()
            else:
                means = torch.randn(components, x_dim)
        self.means = nn.Parameter(means)
        self.log_var = nn.Parameter(torch.zeros(components))
        self.prior_logits = nn.Parameter(torch.zeros(1, components))
        self.components = components

    def encode(self, x):
        return self.encoder(x).unsqueeze(-2)

    def decode(self, z):
        z = z.squeeze(-2)  # [..., B, K]
        mean = z @ self.means
        logvar = (z @ self.log_var.unsqueeze(-1)).expand_as(mean)
        return mean, logvar

    def component_log_joint(self, x):
        """``log pi_k + log N(x; mu_k, sigma_k^2 I)`` ``[B, K]``."""
        log_pi = torch.log_softmax(self.prior_logits, -1)  # [1, K]
        lv = self.log_var.unsqueeze(-1).expand_as(self.means)
        return log_pi + kernels.normal_log_prob(x.unsqueeze(-2), self.means, lv)

    def log_marginal(self, x):
        """Exact ``log p(x)`` ``[B]``."""
        return torch.logsumexp(self.component_log_joint(x), -1)

    def exact_elbo(self, x):
        """Exact ELBO ``[B]`` of the amortized q (sum over the K components), differentiable in every parameter."""
        log_r = torch.log_softmax(self.encode(x).squeeze(-2), -1)
        return (log_r.exp() * (self.component_log_joint(x) - log_r)).sum(-1)


def fit_em(x: torch.Tensor, components: int, iters: int = 200, seed: int = 0, tol: float = 1e-8):
    """EM for an isotropic Gaussian mixture; returns ``(params, log-likelihood per iteration)``.

    ``params`` holds ``log_pi [K]``, ``means [K, Dx]``, ``log_var [K]`` (float64) and
    the final mean log-likelihood per example under ``"log_lik"``. The log-likelihood
    never decreases (a property of EM, Dempster et al. 1977), which the tests check.
    """
    x = x.double()
    n, d = x.shape
    gen = torch.Generator().manual_seed(int(seed) + 401)
    means = x[torch.randperm(n, generator=gen)[:components]].clone()
    log_var = torch.full((components,), float(torch.log(x.var(0).mean())), dtype=torch.float64)
    log_pi = torch.full((components,), -math.log(components), dtype=torch.float64)
    trace = []
    for _ in range(iters):
        sq = ((x.unsqueeze(1) - means) ** 2).sum(-1)  # [n, K]
        joint = log_pi - 0.5 * (d * (math.log(2 * math.pi) + log_var) + sq / log_var.exp())
        ll = torch.logsumexp(joint, -1)
        trace.append(float(ll.mean()))
        r = torch.softmax(joint, -1)  # E-step
        nk = r.sum(0).clamp_min(1e-12)  # M-step
        means = (r.T @ x) / nk[:, None]
        sq = ((x.unsqueeze(1) - means) ** 2).sum(-1)
        log_var = torch.log(((r * sq).sum(0) / (d * nk)).clamp_min(1e-6))
        log_pi = torch.log(nk / n)
        if len(trace) > 1 and abs(trace[-1] - trace[-2]) < tol:
            break
    sq = ((x.unsqueeze(1) - means) ** 2).sum(-1)
    joint = log_pi - 0.5 * (d * (math.log(2 * math.pi) + log_var) + sq / log_var.exp())
    final = float(torch.logsumexp(joint, -1).mean())
    trace.append(final)
    return {"log_pi": log_pi, "means": means, "log_var": log_var, "log_lik": final}, trace


# --------------------------------------------------------------------------- small Bernoulli VAE
class BernoulliVAE(nn.Module):
    """A VAE with D Bernoulli latents and a Bernoulli decoder (one hidden layer each side).

    Model protocol: ``latent = "bernoulli"``, ``likelihood = "bernoulli"``;
    ``encode(x [B, Dx]) -> logits [B, D]``, ``decode(b [..., B, D]) -> logits [..., B, Dx]``,
    ``prior_logits [D]`` learned. ``hidden=0`` gives linear maps (the "linear" model
    of Yin & Zhou 2019 and Dong et al. 2020).

    Args:
        x_dim: Dx.
        latent_dim: D (at most 12 for :func:`exact_elbo`).
        hidden: hidden width (0: linear).
        seed: initialisation seed.
    """

    latent = "bernoulli"
    likelihood = "bernoulli"

    def __init__(self, x_dim: int, latent_dim: int = 8, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if hidden:
                self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.LeakyReLU(0.3), nn.Linear(hidden, latent_dim))
                self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.3), nn.Linear(hidden, x_dim))
            else:
                self.encoder = nn.Linear(x_dim, latent_dim)
                self.decoder = nn.Linear(latent_dim, x_dim)
        self.prior_logits = nn.Parameter(torch.zeros(latent_dim))
        self.latent_dim = latent_dim

    def encode(self, x):
        return self.encoder(x)

    def decode(self, b):
        return self.decoder(b)


def exact_elbo(model: BernoulliVAE, x: torch.Tensor) -> torch.Tensor:
    """The exact ELBO ``[B]`` of a Bernoulli-latent VAE by enumerating the ``2^D`` latent states.

    ``sum_b q(b|x) (log p(x|b) + log p(b) - log q(b|x))``; autograd through it is the
    exact gradient in every parameter (encoder, decoder, prior).
    """
    dim = _check_dim(int(model.latent_dim), MAX_VAE_LATENTS, "model.latent_dim")
    logits = model.encode(x)  # [B, D]
    states = binary_states(dim, logits.dtype, logits.device)  # [N, D]
    b = states.unsqueeze(1).expand(states.shape[0], x.shape[0], dim)  # [N, B, D]
    log_q = kernels.bernoulli_log_prob(b, logits)  # [N, B]
    prior = model.prior_logits.expand(dim)
    log_prior = kernels.bernoulli_log_prob(states, prior).unsqueeze(1)  # [N, 1]
    log_lik = kernels.bernoulli_log_prob(x, model.decode(b))  # [N, B]
    return (log_q.exp() * (log_lik + log_prior - log_q)).sum(0)


def exact_log_marginal(model: BernoulliVAE, x: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(x)`` ``[B]`` of a Bernoulli-latent VAE (logsumexp over the ``2^D`` states)."""
    dim = _check_dim(int(model.latent_dim), MAX_VAE_LATENTS, "model.latent_dim")
    states = binary_states(dim, x.dtype, x.device)
    b = states.unsqueeze(1).expand(states.shape[0], x.shape[0], dim)
    log_prior = kernels.bernoulli_log_prob(states, model.prior_logits.expand(dim)).unsqueeze(1)
    return torch.logsumexp(kernels.bernoulli_log_prob(x, model.decode(b)) + log_prior, 0)
