"""REBAR and RELAX: score function with a relaxation-based control variate, tuned to minimise variance.

For ``b ~ Bernoulli(sigmoid(phi))`` write ``b = H(z)`` with ``z = phi + logit(u)``,
u uniform. With a control variate c of the relaxed sample and ``z~ ~ p(z | b)``
(:func:`kernels.bernoulli_conditional_relaxed`, from a second uniform v),

    grad_phi E[f(b)] = E[(f(b) - c(z~)) grad log q(b) + grad c(z) - grad c(z~)]

is unbiased for any c (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017,
"REBAR", eq. 6; Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, "Backpropagation
through the void", eq. 8 and Algorithm 2). REBAR takes
``c(z) = eta f(sigmoid(z / lambda))``; RELAX adds a learned surrogate
``r_rho(sigmoid(z / lambda))``, here a one-hidden-layer MLP over the D relaxed
latents whose output starts at 0. ``grad log q(b) = b - sigmoid(phi)``.

The control variate's parameters (eta, log lambda, and rho for RELAX) take one
Adam step per estimate on the squared estimate ``sum ghat^2`` (its gradient is
that of the variance, since the mean does not depend on them), through the
gradient of c: so the relaxed path is differentiated twice and runs on the torch
backend. The estimate is the gradient in the logits; f's own parameters get the
plain Monte Carlo gradient ``mean_s grad f(b_s)`` (the relaxed evaluations never
reach them). f is evaluated at b, at ``sigmoid(z / lambda)`` and at
``sigmoid(z~ / lambda)``: 3S evaluations, and it must accept real inputs.
Inside :meth:`Estimator.frozen` (and under ``torch.no_grad``) nothing updates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import kernels

from .base import Estimator
from .registry import register


@register
class REBAR(Estimator):
    """``(f(b) - c(z~)) (b - sigmoid(phi)) + grad c(z) - grad c(z~)`` with ``c = eta f(sigma_lambda)`` (Tucker 2017).

    Args:
        temperature: initial lambda > 0.
        eta: initial scale of the control variate.
        lr: Adam step size of the control variate's parameters (0 freezes them).
    """

    name = "rebar"
    families = ("bernoulli",)

    def __init__(self, temperature: float = 0.5, eta: float = 1.0, lr: float = 1e-2) -> None:
        super().__init__()
        for arg, v, low in (("temperature", temperature, 0.0), ("lr", lr, -1e-300)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not low < v < float("inf"):
                raise ValueError(f"{arg} must be a finite number > {0 if arg == 'temperature' else '= 0'}, got {v!r}")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta):
            raise ValueError(f"eta must be a finite number, got {eta!r}")
        self.init = {"temperature": float(temperature), "eta": float(eta), "lr": float(lr)}
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature), dtype=torch.float64))
        self.eta = nn.Parameter(torch.tensor(float(eta), dtype=torch.float64))
        self.lr = float(lr)
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def options(self) -> dict:
        return dict(self.init)

    @property
    def stateful(self) -> bool:
        return self.lr > 0

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_temperature, self.eta]

    def evaluations(self, num_samples, dim):
        return 3 * int(num_samples)

    def family_noise_shape(self, num_samples, shape):
        return (2 * int(num_samples), *shape)  # u then v

    def state_dict(self) -> dict:
        state = {"parameters": [p.detach().clone() for p in self.parameters()]}
        if self._optimizer is not None:
            state["optimizer"] = self._optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for p, v in zip(self.parameters(), state["parameters"], strict=True):
                p.copy_(v)
        if "optimizer" in state:
            self._opt().load_state_dict(state["optimizer"])

    def _opt(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        return self._optimizer

    def _surrogate_net(self, relaxed: torch.Tensor) -> torch.Tensor | None:
        """RELAX's ``r_rho`` ``[...]`` of relaxed latents ``[..., D]`` (None for REBAR)."""
        return None

    def _family_expectation(self, f, q, noise, context):
        s = noise.shape[0] // 2
        u, v = noise[:s], noise[s:]
        logits = q.logits
        phi = logits.detach()
        b = kernels.bernoulli_antithetic(phi, u)[0]  # H(z) = 1[u > sigmoid(-phi)]
        fb = f(b)  # [S, *batch]: the value and f's own (plain Monte Carlo) gradient
        train = self.updates_state and self.lr > 0
        with torch.enable_grad(), kernels.use_backend("torch"):
            leaf = phi.clone().requires_grad_(True)
            dt = leaf.dtype
            tau = self.log_temperature.to(dt).exp()
            eta = self.eta.to(dt)
            z = kernels.binary_concrete(leaf, u, temperature=tau)
            zt = kernels.bernoulli_conditional_relaxed(leaf, b, v, temperature=tau)
            both = torch.cat([z, zt])
            c = eta * f(both)
            r = self._surrogate_net(both)
            if r is not None:
                c = c + r
            c_z, c_zt = c[:s], c[s:]
            dc = torch.autograd.grad((c_z - c_zt).sum(), leaf, create_graph=train)[0]  # [*shape]
            coef = (fb.detach() - c_zt).unsqueeze(-1)  # [S, *batch, 1]
            ghat = (coef * (b - torch.sigmoid(phi))).mean(0) + dc / s  # [*shape]
            if train:
                params = self.parameters()
                grads = torch.autograd.grad((ghat * ghat).sum(), params, allow_unused=True)
                opt = self._opt()
                opt.zero_grad()
                for p, g in zip(params, grads, strict=True):
                    p.grad = None if g is None else g.to(p.dtype)
                opt.step()
        score = (ghat.detach() * logits).sum(-1)
        return fb.mean(0) + (score - score.detach())


@register
class RELAX(REBAR):
    """REBAR's control variate plus a learned surrogate ``r_rho(sigma_lambda(z))`` (Grathwohl et al. 2018).

    Args:
        temperature, eta, lr: as :class:`REBAR`.
        hidden: width of r's hidden layer.
        seed: initialisation seed of r.
    """

    name = "relax"

    def __init__(
        self, temperature: float = 0.5, eta: float = 1.0, lr: float = 1e-2, hidden: int = 32, seed: int = 0
    ) -> None:
        super().__init__(temperature, eta, lr)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        self.init.update(hidden=hidden, seed=int(seed))
        self.hidden, self.seed = hidden, int(seed)
        self.net: nn.Module | None = None

    def parameters(self):
        return [*super().parameters(), *([] if self.net is None else self.net.parameters())]

    def _surrogate_net(self, relaxed):
        if self.net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = nn.Sequential(nn.Linear(relaxed.shape[-1], self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))
                nn.init.zeros_(net[-1].weight)
                nn.init.zeros_(net[-1].bias)
            self.net = net.to(dtype=relaxed.dtype, device=relaxed.device)
            self._optimizer = None  # rebuilt over every parameter
        elif self.net[0].in_features != relaxed.shape[-1]:
            raise ValueError(f"relax was built for {self.net[0].in_features} latents, got {relaxed.shape[-1]}")
        return self.net(relaxed).squeeze(-1)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.net is not None:
            state["net"] = self.net.state_dict()
            state["latents"] = int(self.net[0].in_features)
        return state

    def load_state_dict(self, state: dict) -> None:
        if "net" in state:
            weight = state["net"]["0.weight"]
            self._surrogate_net(torch.zeros(1, int(state["latents"]), dtype=weight.dtype))
            self.net.load_state_dict(state["net"])
        super().load_state_dict(state)
