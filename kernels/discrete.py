"""Kernels of the discrete latent families: uniform noise, Bernoulli and categorical ops.

Re-exported by :mod:`kernels`; every op validates its inputs here and runs on the
backend resolved at call time (a backend that lacks an op is refused by name
with the reason, and ``auto`` skips it). Conventions:

* **Bernoulli** with logits ``l`` ``[..., D]``, ``sigmoid(l) = P(b = 1)``; samples are
  0/1 floats of the logits' dtype.
* **Categorical** with logits ``[..., D, K]`` (D variables of K categories);
  samples are one-hot ``[..., D, K]`` (as ``torch.distributions.OneHotCategorical``);
  log-probabilities and KLs reduce the last two dims.
* **Noise**: uniforms from the shared Philox stream (:func:`uniform_noise`,
  element ``i`` is ``tl.rand(seed, i)`` clamped to ``[2**-24, 1 - 2**-24]``), or
  passed in as ``u``. A sample compares ``u`` with a probability computed in
  float64, so it is the same on every backend.

Formulas:

* ``bernoulli_sample``: ``b = 1[u < sigmoid(l)]``.
* ``bernoulli_antithetic`` (Yin & Zhou 2019, "ARM: augment-REINFORCE-merge
  gradient for stochastic binary networks", eq. 5; Dong, Mnih & Tucker 2020,
  "DisARM: an antithetic gradient estimator for binary latent variables", eq. 7):
  from one ``u``, ``b1 = 1[u > sigmoid(-l)]``, ``b2 = 1[u < sigmoid(l)]`` and
  DisARM's weight ``w = 1[b1 != b2] (-1)^b2 sigmoid(|l|)``.
* ``bernoulli_kl``: ``KL(Bern(sigmoid(l)) || Bern(sigmoid(l0)))
  = sum p (l - l0) + softplus(l0) - softplus(l)`` with ``p = sigmoid(l)``.
* ``categorical_sample``: Gumbel-max, ``one_hot(argmax_k (l_k - log(-log u_k)))``
  (Gumbel 1954; Maddison, Tarlow & Minka 2014).
* ``categorical_log_prob``: ``sum_{d,k} x_dk log_softmax(l_d)_k``.
* ``categorical_kl``: ``sum_{d,k} p_dk (log p_dk - log p0_dk)``, softmaxes of l, l0.
* ``gumbel_softmax`` (Jang, Gu & Poole 2017, eq. 1; Maddison, Mnih & Teh 2017):
  ``softmax((l - log(-log u)) / tau)`` over K.
* ``binary_concrete`` (Maddison et al. 2017, sec. 3.3): ``sigmoid((l + logit u) / tau)``.
* ``bernoulli_conditional_relaxed`` (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein
  2017, "REBAR", appendix; Grathwohl et al. 2018, "RELAX"): the relaxed sample
  ``sigmoid(z~ / tau)`` with ``z~ = l + logit(u~)`` and ``u~ ~ U(0, 1)`` conditioned
  on ``1[z~ > 0] = b``: ``u~ = 1 - sigmoid(l) (1 - v)`` when ``b = 1``,
  ``u~ = v sigmoid(-l)`` when ``b = 0`` (v uniform), differentiable in ``l`` and ``tau``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import FLOAT_DTYPES, _check_inputs, _expand, _noise_args, _seed, registry, resolve_backend


def _load(op: str, backend: str | None, device, dtype):
    return registry.load(resolve_backend(backend, device, dtype, op=op))


def _temperature(op: str, temperature, like: torch.Tensor) -> torch.Tensor:
    """A positive temperature as a 0-dim tensor of ``like``'s dtype and device (differentiable if given so)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0 or not temperature.is_floating_point():
            raise ValueError(
                f"{op}: temperature must be a positive number or a 0-dim floating tensor, "
                f"got a {temperature.dtype} tensor of shape {list(temperature.shape)}"
            )
        if not bool(temperature.detach() > 0):
            raise ValueError(f"{op}: temperature must be > 0, got {float(temperature)}")
        return temperature.to(dtype=like.dtype, device=like.device)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"{op}: temperature must be a positive number, got {type(temperature).__name__}")
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature!r}")
    return torch.tensor(float(temperature), dtype=like.dtype, device=like.device)


def _categorical(op: str, arg: str, t: torch.Tensor) -> None:
    if t.dim() < 2 or t.shape[-1] < 2:
        raise ValueError(f"{op}: {arg} must have shape [..., D, K] with K >= 2 categories, got {list(t.shape)}")


def _with_noise(op, logits, u, seed, backend):
    """``(module, logits, u or None, seed)`` of a sampling op, broadcast to one shape."""
    extra = {} if u is None else {"u": u}
    shape, dtype, device = _check_inputs(op, logits=logits, **extra)
    mod = _load(op, backend, device, dtype)
    return mod, _expand(logits, shape), _expand(u, shape), _seed(seed, u)


# --------------------------------------------------------------------------- noise
def uniform_noise(
    shape: Sequence[int] | int,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Uniforms on the open interval from the shared Philox4x32-10 stream.

    Element ``i`` (row-major) is ``tl.rand(seed, i)`` clamped to
    ``[2**-24, 1 - 2**-24]``: the same on every backend and thread count.

    Returns:
        a new tensor of ``shape`` on ``device`` with ``dtype``.
    """
    if isinstance(shape, int):
        shape = (shape,)
    shape, seed = _noise_args("uniform_noise", shape, dtype, seed)
    device = torch.device(device)
    return _load("uniform_noise", backend, device, dtype).uniform_noise(shape, seed, device, dtype)


# --------------------------------------------------------------------------- Bernoulli
def bernoulli_sample(
    logits: torch.Tensor, u: torch.Tensor | None = None, *, seed: int | None = None, backend: str | None = None
) -> torch.Tensor:
    """Bernoulli samples ``1[u < sigmoid(logits)]`` as 0/1 floats (no gradient).

    Args:
        logits: ``[..., D]``.
        u: optional uniforms broadcastable with ``logits``; else drawn for ``seed``.
    """
    mod, logits, u, seed = _with_noise("bernoulli_sample", logits, u, seed, backend)
    return mod.bernoulli_sample(logits, u, seed)


def bernoulli_antithetic(
    logits: torch.Tensor, u: torch.Tensor | None = None, *, seed: int | None = None, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ARM's antithetic pair and DisARM's weight from one uniform, in one pass (no gradient).

    Returns:
        ``(b1, b2, w)``, each of the broadcast shape: ``b1 = 1[u > sigmoid(-l)]``,
        ``b2 = 1[u < sigmoid(l)]``, ``w = 1[b1 != b2] (-1)^b2 sigmoid(|l|)``.
    """
    mod, logits, u, seed = _with_noise("bernoulli_antithetic", logits, u, seed, backend)
    return mod.bernoulli_antithetic(logits, u, seed)


def bernoulli_kl(logits: torch.Tensor, prior_logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``KL(Bernoulli(logits) || Bernoulli(prior_logits))`` summed over the last dim: ``[..., D] -> [...]``.

    Differentiable in both arguments.
    """
    shape, dtype, device = _check_inputs("bernoulli_kl", logits=logits, prior_logits=prior_logits)
    mod = _load("bernoulli_kl", backend, device, dtype)
    return mod.bernoulli_kl(_expand(logits, shape), _expand(prior_logits, shape))


def binary_concrete(
    logits: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor,
    seed: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Relaxed Bernoulli sample ``sigmoid((logits + logit u) / temperature)`` (binary Concrete).

    Differentiable in ``logits`` and a tensor ``temperature``; ``1[. > 1/2]`` of it
    is :func:`bernoulli_antithetic`'s ``b1`` for the same ``u``.
    """
    mod, logits, u, seed = _with_noise("binary_concrete", logits, u, seed, backend)
    tau = _temperature("binary_concrete", temperature, logits)
    return mod.binary_concrete(logits, u, tau, seed)


def bernoulli_conditional_relaxed(
    logits: torch.Tensor,
    b: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor,
    seed: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """REBAR's conditional relaxed sample ``sigmoid(z~ / temperature)`` given ``b`` (module docstring).

    Args:
        logits: ``[..., D]``.
        b: 0/1 samples broadcastable with ``logits``.
        v: optional uniforms; else drawn for ``seed``.
        temperature: positive number or 0-dim tensor (differentiable).

    Returns:
        the relaxed sample, differentiable in ``logits`` and ``temperature`` (not in b or v).
    """
    extra = {} if v is None else {"v": v}
    shape, dtype, device = _check_inputs("bernoulli_conditional_relaxed", logits=logits, b=b, **extra)
    mod = _load("bernoulli_conditional_relaxed", backend, device, dtype)
    tau = _temperature("bernoulli_conditional_relaxed", temperature, logits)
    return mod.bernoulli_conditional_relaxed(
        _expand(logits, shape), _expand(b, shape).detach(), _expand(v, shape), tau, _seed(seed, v)
    )


# --------------------------------------------------------------------------- categorical
def categorical_sample(
    logits: torch.Tensor, u: torch.Tensor | None = None, *, seed: int | None = None, backend: str | None = None
) -> torch.Tensor:
    """One-hot categorical samples by Gumbel-max (no gradient).

    Args:
        logits: ``[..., D, K]``.
        u: optional uniforms of the same shape (one per category).

    Returns:
        one-hot ``[..., D, K]`` of the logits' dtype.
    """
    _categorical("categorical_sample", "logits", logits)
    mod, logits, u, seed = _with_noise("categorical_sample", logits, u, seed, backend)
    return mod.categorical_sample(logits, u, seed)


def categorical_log_prob(x: torch.Tensor, logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``sum_{d,k} x_dk log softmax(logits_d)_k``: ``[..., D, K] -> [...]``.

    ``x`` one-hot gives the log-probability of the sample; differentiable in both.
    """
    _categorical("categorical_log_prob", "logits", logits)
    shape, dtype, device = _check_inputs("categorical_log_prob", x=x, logits=logits)
    _categorical("categorical_log_prob", "x", x)
    mod = _load("categorical_log_prob", backend, device, dtype)
    return mod.categorical_log_prob(_expand(x, shape), _expand(logits, shape))


def categorical_kl(logits: torch.Tensor, prior_logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``KL(Cat(logits) || Cat(prior_logits))`` summed over the D variables: ``[..., D, K] -> [...]``."""
    _categorical("categorical_kl", "logits", logits)
    _categorical("categorical_kl", "prior_logits", prior_logits)
    shape, dtype, device = _check_inputs("categorical_kl", logits=logits, prior_logits=prior_logits)
    mod = _load("categorical_kl", backend, device, dtype)
    return mod.categorical_kl(_expand(logits, shape), _expand(prior_logits, shape))


def gumbel_softmax(
    logits: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor,
    seed: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Relaxed one-hot sample ``softmax((logits - log(-log u)) / temperature)`` over the last dim.

    Differentiable in ``logits`` and a tensor ``temperature``. Its argmax is
    :func:`categorical_sample`'s category for the same ``u``.
    """
    _categorical("gumbel_softmax", "logits", logits)
    mod, logits, u, seed = _with_noise("gumbel_softmax", logits, u, seed, backend)
    tau = _temperature("gumbel_softmax", temperature, logits)
    return mod.gumbel_softmax(logits, u, tau, seed)


__all__ = [
    "FLOAT_DTYPES",
    "bernoulli_antithetic",
    "bernoulli_conditional_relaxed",
    "bernoulli_kl",
    "bernoulli_sample",
    "binary_concrete",
    "categorical_kl",
    "categorical_log_prob",
    "categorical_sample",
    "gumbel_softmax",
    "uniform_noise",
]
