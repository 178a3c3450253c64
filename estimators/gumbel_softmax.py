"""Gumbel-softmax (Concrete) relaxation: a pathwise gradient through relaxed samples.

A categorical sample is ``one_hot(argmax_k (logits_k + g_k))`` with Gumbel noise
``g = -log(-log u)``; replacing the argmax by a softmax at temperature tau,

    y = softmax((logits + g) / tau)

(Jang, Gu & Poole 2017, eq. 1; Maddison, Mnih & Teh 2017, the Concrete
distribution) gives a differentiable sample, and the estimate is the gradient of
``mean_s f(y_s)``. For Bernoulli latents the binary Concrete
``sigmoid((phi + logit u) / tau)`` (Maddison et al. 2017, sec. 3.3) plays the same
role. With ``hard=True`` (straight-through Gumbel-softmax, Jang et al. 2017,
sec. 2.2) f is evaluated at the discrete sample ``b`` and differentiated as if at
y: ``b + y - stopgrad(y)``.

It is **biased by design**: f is differentiated (and, with ``hard=False``,
evaluated) at relaxed points; the bias vanishes as tau -> 0 while the variance
grows. f must accept real inputs. The value of the surrogate is always the
estimate of E_q[f] at the discrete samples (argmax of the same noise): with
``hard=False`` f is evaluated at both the relaxed and the discrete points (2S
evaluations, one call).
"""

from __future__ import annotations

import torch

import kernels

from .base import Estimator
from .registry import register


@register
class GumbelSoftmax(Estimator):
    """Relaxed pathwise gradient through ``softmax((logits + g) / temperature)`` (Jang et al. 2017).

    Args:
        temperature: tau > 0.
        hard: straight-through (f at the discrete sample, gradient through the relaxation).
    """

    name = "gumbel_softmax"
    families = ("bernoulli", "categorical")

    def __init__(self, temperature: float = 0.5, *, hard: bool = False) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise TypeError(f"temperature must be a positive number, got {type(temperature).__name__}")
        if not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not isinstance(hard, bool):
            raise TypeError(f"hard must be a bool, got {type(hard).__name__} {hard!r}")
        self.temperature, self.hard = float(temperature), hard

    @property
    def options(self) -> dict:
        return {"temperature": self.temperature, "hard": self.hard}

    @property
    def label(self) -> str:
        return f"{self.name}[{'hard' if self.hard else 'soft'},tau={self.temperature:g}]"

    def evaluations(self, num_samples, dim):
        return int(num_samples) * (1 if self.hard else 2)

    def _relaxed(self, q, u):
        """``(relaxed y, discrete b)`` from the same uniforms."""
        if q.name == "bernoulli":
            y = kernels.binary_concrete(q.logits, u, temperature=self.temperature)
            b = kernels.bernoulli_antithetic(q.logits.detach(), u)[0]  # 1[u > sigmoid(-phi)] = 1[y > 1/2]
        else:
            y = kernels.gumbel_softmax(q.logits, u, temperature=self.temperature)
            b = kernels.categorical_sample(q.logits.detach(), u)
        return y, b

    def _family_expectation(self, f, q, noise, context):
        s = noise.shape[0]
        y, b = self._relaxed(q, noise)
        if self.hard:
            fy = f(b + (y - y.detach()))
            return fy.mean(0)
        f_all = f(torch.cat([y, b]))
        relaxed, at_b = f_all[:s].mean(0), f_all[s:].mean(0)
        return at_b.detach() + (relaxed - relaxed.detach())
