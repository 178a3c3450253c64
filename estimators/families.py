"""Latent families, logits first, in the spirit of ``torch.distributions``.

``q = Normal(mu, logvar)``, ``Bernoulli(logits)`` or ``Categorical(logits)`` is the
second argument of :meth:`estimators.Estimator.surrogate`. Each family draws from
the shared Philox stream (the Gaussian from standard normals, the discrete ones
from uniforms on the open interval, :func:`kernels.uniform_noise`) and knows its
log-probability and its KL to a prior of its family, all through the public
kernel API, so the kernel backend choice swaps what they run on.

Shapes: ``q.batch_shape`` excludes the latent dims: ``mu.shape[:-1]`` for Normal
and Bernoulli (D latents in the last dim), ``logits.shape[:-2]`` for Categorical
(``[..., D, K]``: D variables of K categories, one-hot samples as
``torch.distributions.OneHotCategorical``). ``q.shape`` is the shape of one
sample; base noise of S samples is ``[S, *q.shape]``.

KL to a prior (``q.kl(prior)``): Normal to N(0, I) (``prior=None``); Bernoulli to
``Bernoulli(prior_logits)`` (fixed or learned; ``None`` is the uniform prior,
logits 0); Categorical to ``Categorical(prior_logits)`` (``None`` is uniform).
"""

from __future__ import annotations

from typing import ClassVar

import torch

import kernels

__all__ = ["FAMILIES", "Bernoulli", "Categorical", "Family", "Normal", "family_of"]

#: The family names, as ``Estimator.families`` and ``model.latent`` spell them.
FAMILIES = ("normal", "bernoulli", "categorical")


def _tensor(where: str, arg: str, t: object, min_dim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point() or t.dim() < min_dim:
        dims = "[..., D]" if min_dim == 1 else "[..., D, K]"
        raise ValueError(f"{where}: {arg} must be a floating tensor {dims}, got {t.dtype} of shape {list(t.shape)}")
    if not bool(torch.isfinite(t.detach()).all()):
        bad = "NaN" if bool(torch.isnan(t.detach()).any()) else "an infinite value"
        raise ValueError(f"{where}: {arg} has {bad}; expected finite values")
    return t


class Family:
    """Protocol of a latent family (see the module docstring).

    Attributes:
        name: ``"normal"``, ``"bernoulli"`` or ``"categorical"``.
        event_dims: trailing dims of one latent (1, or 2 for Categorical).
    """

    name: ClassVar[str] = ""
    event_dims: ClassVar[int] = 1

    @property
    def shape(self) -> torch.Size:
        """Shape of one sample (``batch_shape + event_shape``)."""
        raise NotImplementedError

    @property
    def batch_shape(self) -> torch.Size:
        return self.shape[: len(self.shape) - self.event_dims]

    def dim_batch(self) -> tuple[int, ...]:
        """``batch_shape`` as a tuple of ints."""
        return tuple(self.batch_shape)

    @property
    def event_shape(self) -> torch.Size:
        return self.shape[len(self.shape) - self.event_dims :]

    @property
    def dtype(self) -> torch.dtype:
        return self.params()[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params()[0].device

    def params(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def noise(self, num_samples: int, *, seed: int | None = None) -> torch.Tensor:
        """Base noise of ``num_samples`` samples, ``[S, *shape]``: normals, or uniforms for discrete families."""
        raise NotImplementedError

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """Samples from base noise ``[S, *shape]`` (reparameterized for Normal, detached 0/1 otherwise)."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` summed over the event dims: ``[..., *shape] -> [..., *batch_shape]``."""
        raise NotImplementedError

    def kl(self, prior: Family | None = None) -> torch.Tensor:
        """``KL(q || prior)`` ``[*batch_shape]`` (module docstring for the priors)."""
        raise NotImplementedError

    def detach(self) -> Family:
        return type(self)(*(p.detach() for p in self.params()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={list(self.shape)}, dtype={self.dtype})"


class Normal(Family):
    """``N(mu, diag exp(logvar))`` with ``mu``, ``logvar`` ``[..., D]``."""

    name = "normal"

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        from .base import check_gaussian

        check_gaussian(mu, logvar, "Normal")
        self.mu, self.logvar = mu, logvar

    @property
    def shape(self) -> torch.Size:
        return self.mu.shape

    def params(self):
        return (self.mu, self.logvar)

    def noise(self, num_samples, *, seed=None):
        return kernels.normal_noise((int(num_samples), *self.shape), seed=seed, device=self.device, dtype=self.dtype)

    def sample(self, noise):
        return kernels.normal_rsample(self.mu, self.logvar, noise)

    def log_prob(self, z):
        return kernels.normal_log_prob(z, self.mu, self.logvar)

    def kl(self, prior=None):
        if prior is not None:
            raise ValueError(f"Normal.kl: prior must be None (the standard normal N(0, I)), got {prior!r}")
        return kernels.normal_kl_std(self.mu, self.logvar)


class Bernoulli(Family):
    """Independent Bernoullis with ``P(b_d = 1) = sigmoid(logits_d)``, logits ``[..., D]``.

    Samples are 0/1 floats of the logits' dtype: ``b = 1[u < sigmoid(logits)]``.
    """

    name = "bernoulli"

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = _tensor("Bernoulli", "logits", logits, 1)

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def params(self):
        return (self.logits,)

    def noise(self, num_samples, *, seed=None):
        return kernels.uniform_noise((int(num_samples), *self.shape), seed=seed, device=self.device, dtype=self.dtype)

    def sample(self, noise):
        return kernels.bernoulli_sample(self.logits.detach(), noise)

    def log_prob(self, z):
        return kernels.bernoulli_log_prob(z, self.logits)

    def kl(self, prior=None):
        if prior is None:
            prior_logits = torch.zeros((), dtype=self.dtype, device=self.device).expand(self.shape)
        elif isinstance(prior, Bernoulli):
            prior_logits = prior.logits
        else:
            raise ValueError(f"Bernoulli.kl: prior must be a Bernoulli or None (uniform), got {prior!r}")
        return kernels.bernoulli_kl(self.logits, prior_logits)


class Categorical(Family):
    """D independent categoricals of K categories, logits ``[..., D, K]``; one-hot samples ``[..., D, K]``.

    Samples are drawn by Gumbel-max from one uniform per category.
    """

    name = "categorical"
    event_dims = 2

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = _tensor("Categorical", "logits", logits, 2)
        if logits.shape[-1] < 2:
            raise ValueError(
                f"Categorical: logits must have K >= 2 categories in the last dim [..., D, K], got {list(logits.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)

    def params(self):
        return (self.logits,)

    def noise(self, num_samples, *, seed=None):
        return kernels.uniform_noise((int(num_samples), *self.shape), seed=seed, device=self.device, dtype=self.dtype)

    def sample(self, noise):
        return kernels.categorical_sample(self.logits.detach(), noise)

    def log_prob(self, z):
        return kernels.categorical_log_prob(z, self.logits)

    def kl(self, prior=None):
        if prior is None:
            prior_logits = torch.zeros((), dtype=self.dtype, device=self.device).expand(self.shape)
        elif isinstance(prior, Categorical):
            if prior.shape[-1] != self.shape[-1]:
                raise ValueError(
                    f"Categorical.kl: prior has K = {prior.shape[-1]} categories, q has K = {self.shape[-1]}"
                )
            prior_logits = prior.logits
        else:
            raise ValueError(f"Categorical.kl: prior must be a Categorical or None (uniform), got {prior!r}")
        return kernels.categorical_kl(self.logits, prior_logits)


def family_of(name: str, params) -> Family:
    """The family ``name`` built from ``params``: ``(mu, logvar)`` for normal, logits otherwise."""
    if name == "normal":
        if not (isinstance(params, tuple | list) and len(params) == 2):
            got = type(params).__name__
            raise TypeError(f"a normal latent needs (mu, logvar) from encode(x), got {got}")
        return Normal(*params)
    if name in ("bernoulli", "categorical"):
        if not isinstance(params, torch.Tensor):
            raise TypeError(f"a {name} latent needs logits (a tensor) from encode(x), got {type(params).__name__}")
        return Bernoulli(params) if name == "bernoulli" else Categorical(params)
    raise ValueError(f"latent family must be one of {list(FAMILIES)}, got {name!r}")
