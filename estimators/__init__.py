"""Monte Carlo gradient estimators of Gaussian expectations and of VAE bounds.

One estimator per module, one registry::

    import estimators
    estimators.available()    # ['reparam', 'stl', 'score_function', ..., 'vimco', 'arm', 'disarm', 'rebar', 'relax', 'gumbel_softmax']
    est = estimators.get("score_function", control_variate="leave_one_out")
    s = est.surrogate(f, mu, logvar, num_samples=8, seed=0)   # value: MC estimate of E[f]
    s.sum().backward()                                        # gradient estimate in mu.grad, logvar.grad
    loss, elbo = est.vae_loss(model, x, num_samples=8)        # the VAE objective
    grads = estimators.per_sample_grads(est, model, x, R=1024, num_samples=8, seed=0)

    q = estimators.Bernoulli(logits)                          # discrete latents (also Categorical)
    s = estimators.get("disarm").surrogate(f, q, num_samples=4, seed=0)

Estimators call only the public kernel API (:mod:`kernels`), so the kernel
backend choice (``kernels.use_backend``, ``ELBOBENCH_BACKEND``) swaps what they
run on. See :mod:`estimators.base` for the protocols.
"""

from . import control_variates
from .base import Estimator, attach, log_likelihood, log_prior
from .registry import available, estimator_class, get, option_names, register, takes_control_variate

# registration order is the order of available()
from . import reparam, stl, score_function, measure_valued, iwae, dreg, vimco  # noqa: E402, I001  isort: skip
from . import arm, disarm, rebar, gumbel_softmax  # noqa: E402, I001  isort: skip
from .families import FAMILIES, Bernoulli, Categorical, Family, Normal  # noqa: E402
from .per_sample import (  # noqa: E402
    per_sample_grads,
    per_sample_grads_expectation,
    per_sample_grads_loop,
    replicate_noise,
)

__all__ = [
    "FAMILIES",
    "Bernoulli",
    "Categorical",
    "Estimator",
    "Family",
    "Normal",
    "arm",
    "disarm",
    "gumbel_softmax",
    "rebar",
    "attach",
    "available",
    "control_variates",
    "dreg",
    "estimator_class",
    "get",
    "iwae",
    "log_likelihood",
    "log_prior",
    "measure_valued",
    "option_names",
    "per_sample_grads",
    "per_sample_grads_expectation",
    "per_sample_grads_loop",
    "register",
    "replicate_noise",
    "reparam",
    "score_function",
    "stl",
    "takes_control_variate",
    "vimco",
]
