"""Control variates for the score-function estimator.

With the score ``g(z) = grad log q(z)`` and a control variate h whose Gaussian
expectation is known, the score-function estimator with that control variate is

    grad E_q[f] = E_q[(f(z) - h(z)) g(z)] + grad E_q[h]                      (*)

(Mohamed, Rosca, Figurnov & Mnih 2020, JMLR, sec. 7, "Variance reduction by
control variates"). A *baseline* is an h that does not depend on z (given
the data and the past): its ``grad E_q[h]`` term is zero because E_q[g] = 0.

Each control variate is a small object with three parts (as optax's
``control_variates.py``): its value h (per sample, either one value per row of
f, or one per element of (mu, logvar)), a surrogate whose gradient is
``grad E_q[h]`` (None for baselines), and a state update that runs after an
estimate (skipped while the estimator is frozen). The value uses only the past
and samples independent of the ones it multiplies, so (*) stays unbiased.

Registry order (the option ``control_variate=`` of ``score_function``):
``None``, ``"moving_average"``, ``"leave_one_out"``, ``"optimal"``, ``"delta"``,
``"learned"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class CVTerms:
    """What a control variate contributes to one estimate.

    Attributes:
        h_mu: value multiplying the score of ``mu``; ``[S, *batch, 1]`` (one per row
            of f) or ``[S or 1, *mu.shape]`` (one per element).
        h_logvar: the same for ``logvar``.
        expectation: ``[*batch]`` surrogate whose gradient is ``grad E_q[h]`` (its
            value is irrelevant), or None for a baseline.
    """

    h_mu: torch.Tensor
    h_logvar: torch.Tensor
    expectation: torch.Tensor | None = None

    @property
    def per_row(self) -> bool:
        return self.h_mu is self.h_logvar and self.h_mu.shape[-1] == 1


class ControlVariate:
    """Protocol: ``terms(...) -> CVTerms``, ``update(...)``, ``parameters()``.

    Attributes:
        name: option value (``None`` for the plain estimator).
        min_samples: smallest S it works with.
        extra_factor: extra f evaluations it draws, as a multiple of S (their noise
            is part of the estimator's noise tensor and counts in its cost).
        needs_context: it needs x (the VAE setting).
        stateful: it carries state that :meth:`update` changes (a running
            average, a trained network).
    """

    name: ClassVar[str | None] = None
    min_samples: ClassVar[int] = 1
    extra_factor: ClassVar[int] = 0
    needs_context: ClassVar[bool] = False
    families: ClassVar[tuple[str, ...]] = ("normal", "bernoulli", "categorical")
    stateful: ClassVar[bool] = False

    @property
    def options(self) -> dict:
        return {}

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context) -> CVTerms:
        """Value and expectation for samples ``z [S, *mu.shape]`` with ``fz = f(z)`` (detached).

        ``mu``/``logvar`` keep their graph (for ``expectation``); ``z_extra``/``f_extra``
        are the independent extra samples (``extra_factor * S`` of them) or None.
        """
        zero = fz.new_zeros(()).expand(*fz.shape, 1)
        return CVTerms(zero, zero)

    def update(self, *, fz: torch.Tensor, context: torch.Tensor | None) -> None:
        """State update after an estimate (``fz [S, *batch]`` detached)."""

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict:
        """The state :meth:`update` changes, as tensors and plain types (``torch.load(weights_only=True)`` reads it)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"control variate {self.name!r} has no state, got keys {sorted(state)}")

    def extra_evaluations(self, num_samples: int, dim: int) -> int:
        return self.extra_factor * num_samples


class NoControlVariate(ControlVariate):
    """The plain score-function estimator: h = 0."""

    name = None


class MovingAverage(ControlVariate):
    """Exponential moving average of past values of f as a constant baseline.

    ``a_t = decay * a_{t-1} + (1 - decay) * mean(f_t)``, ``a_0 = 0``; the baseline at
    step t+1 is the bias-corrected ``a_t / (1 - decay^t)`` (as Adam's moments;
    Kingma & Ba 2015, sec. 3), and 0 before the first update. It depends only on
    past steps, so it is a valid baseline (Williams 1992, sec. 4).

    Args:
        decay: in [0, 1).
    """

    name = "moving_average"
    stateful = True

    def __init__(self, decay: float = 0.9) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.average = 0.0
        self.steps = 0

    @property
    def options(self) -> dict:
        return {"decay": self.decay}

    @property
    def baseline(self) -> float:
        """The bias-corrected average (0.0 before the first update)."""
        if self.steps == 0:
            return 0.0
        return self.average / (1.0 - self.decay**self.steps)

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context) -> CVTerms:
        h = fz.new_full((), self.baseline).expand(*fz.shape, 1)
        return CVTerms(h, h)

    def update(self, *, fz, context) -> None:
        self.average = self.decay * self.average + (1.0 - self.decay) * float(fz.mean())
        self.steps += 1

    def state_dict(self) -> dict:
        return {"average": float(self.average), "steps": int(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.average, self.steps = float(state["average"]), int(state["steps"])


class LeaveOneOut(ControlVariate):
    """Per-sample baseline: the mean of f over the other S - 1 samples.

    ``h_s = (sum_t f(z_t) - f(z_s)) / (S - 1)`` is independent of z_s, so
    ``E[h_s g(z_s)] = 0`` (Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples,
    get a baseline for free!"; Mnih & Rezende 2016). Needs S >= 2.
    """

    name = "leave_one_out"
    min_samples = 2

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context) -> CVTerms:
        s = fz.shape[0]
        h = ((fz.sum(0, keepdim=True) - fz) / (s - 1)).unsqueeze(-1)
        return CVTerms(h, h)


class Optimal(ControlVariate):
    """Optimal constant coefficient per parameter element, from independent samples.

    For one element theta_j of (mu, logvar) with score g_j, the estimator
    ``f g_j - c_j g_j`` has variance minimised by ``c*_j = Cov(f g_j, g_j) / Var(g_j)``
    (Mohamed et al. 2020, sec. 7.4.2; Ranganath et al. 2014, sec. 3.2). Since
    ``E[g_j] = 0`` exactly, ``Cov(f g_j, g_j) = E[f g_j^2]`` and ``Var(g_j) = E[g_j^2]``;
    both are estimated on S extra samples z' independent of the S samples the
    coefficient multiplies, so the estimate stays unbiased:

        c_j = sum_s f(z'_s) g_j(z'_s)^2 / sum_s g_j(z'_s)^2,
        g_mu_j = (z_j - mu_j) / sigma_j^2,  g_logvar_j = ((z_j - mu_j)^2 / sigma_j^2 - 1) / 2.

    The extra S draws (2S f evaluations per estimate) count in its cost.
    """

    name = "optimal"
    extra_factor = 1
    families = ("normal",)

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context) -> CVTerms:
        mu_d, var = mu.detach(), torch.exp(logvar.detach())
        u2 = (z_extra - mu_d) ** 2 / var  # [S, *mu.shape] squared standardized residual
        g_mu2 = u2 / var
        g_lv2 = 0.25 * (u2 - 1.0) ** 2
        fe = f_extra.unsqueeze(-1)
        c_mu = (fe * g_mu2).sum(0, keepdim=True) / g_mu2.sum(0, keepdim=True)
        c_lv = (fe * g_lv2).sum(0, keepdim=True) / g_lv2.sum(0, keepdim=True)
        return CVTerms(c_mu, c_lv)


class Delta(ControlVariate):
    """Delta-method (Taylor) control variate around the mean.

    ``h(z) = f(m) + g^T (z - m) [+ 1/2 (z - m)^T H (z - m)]`` with the expansion point
    m = mu, the gradient g = grad f(m) and the matrix H all held fixed (stopped).
    Its Gaussian expectation is known, so at mu = m

        grad_mu E[h] = g,    grad_logvar_j E[h] = 1/2 H_jj sigma_j^2

    (Paisley, Blei & Jordan 2012, sec. 4; Miller et al. 2017; Mohamed et al. 2020,
    sec. 7.3.1). g comes from autograd. H is the Hessian of f at m by central
    differences of autograd gradients, ``sigma_i H_ij sigma_j ~ sigma_i (d_i f(m +
    delta sigma_j e_j) - d_i f(m - delta sigma_j e_j)) / (2 delta)``, symmetrized: any
    fixed H keeps E[h] exact, so the difference error can only cost variance, never
    bias, and no second derivatives are needed (the fused kernel backends implement
    first derivatives only). Exact for quadratic f up to rounding.

    Args:
        order: 1 or 2.
        step: relative difference step delta (in units of sigma).
    """

    name = "delta"
    families = ("normal",)

    def __init__(self, order: int = 2, step: float = 1e-2) -> None:
        if order not in (1, 2) or isinstance(order, bool):
            raise ValueError(f"delta_order must be 1 or 2, got {order!r}")
        if isinstance(step, bool) or not isinstance(step, int | float) or not step > 0:
            raise ValueError(f"delta step must be a positive number, got {step!r}")
        self.order, self.step = order, float(step)

    @property
    def options(self) -> dict:
        return {"delta_order": self.order}

    def extra_evaluations(self, num_samples: int, dim: int) -> int:
        return 1 if self.order == 1 else 1 + 2 * dim

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context) -> CVTerms:
        m = mu.detach()
        sd = torch.exp(0.5 * logvar.detach())
        d = mu.shape[-1]
        v = z - m  # [S, *mu.shape]
        if self.order == 1:
            pts = m.unsqueeze(0)
        else:
            eye = torch.eye(d, dtype=m.dtype, device=m.device).reshape(d, *([1] * (m.dim() - 1)), d)
            delta = eye * (self.step * sd).unsqueeze(0)  # [D, *mu.shape]: delta sigma_j e_j
            pts = torch.cat([m.unsqueeze(0), m + delta, m - delta], 0)  # [1 + 2D, *mu.shape]
        with torch.enable_grad():
            zc = pts.clone().requires_grad_(True)
            fv = f(zc)
            (g_all,) = torch.autograd.grad(fv.sum(), zc, allow_unused=True)
        g_all = torch.zeros_like(zc) if g_all is None else g_all
        g0 = g_all[0]  # [*mu.shape]
        h = fv[0].detach() + (g0 * v).sum(-1)  # [S, *batch]
        expectation = (g0 * mu).sum(-1)
        if self.order == 2:
            diff = (g_all[1 : 1 + d] - g_all[1 + d :]) / (2.0 * self.step)  # [D (j), *batch, D (i)]: H_ij sigma_j
            k = diff.movedim(0, -1) * sd.unsqueeze(-1)  # [*batch, D, D]: sigma_i H_ij sigma_j
            k = 0.5 * (k + k.transpose(-1, -2))
            u = v / sd
            h = h + 0.5 * torch.einsum("...i,...ij,...j->...", u, k, u)
            expectation = expectation + 0.5 * (torch.diagonal(k, dim1=-2, dim2=-1) * logvar).sum(-1)
        h = h.detach().unsqueeze(-1)
        return CVTerms(h, h, expectation)


class Learned(ControlVariate):
    """NVIL's baseline: a running average c plus an input-dependent b_psi(x) fitted to the residual.

    ``h(x) = c + b_psi(x)`` (Mnih & Gregor 2014, "Neural variational inference and
    learning in belief networks", sec. 3.1-3.2: a constant baseline for the
    learning signal's mean and a data-dependent one learned to predict what is left).
    ``c`` is the bias-corrected exponential moving average of :class:`MovingAverage`;
    ``b_psi`` is a one-hidden-layer tanh MLP whose output starts at 0, and after each
    estimate psi takes one Adam step on ``mean (f(z) - c - b_psi(x))^2``. The baseline
    used for an estimate is the one before its own update, so it does not depend on
    the samples it multiplies. It needs x: VAE setting only.

    Args:
        hidden: width of the hidden layer.
        lr: Adam step size.
        seed: initialisation seed of psi.
        decay: decay of the running average c.
    """

    name = "learned"
    needs_context = True
    stateful = True

    def __init__(self, hidden: int = 100, lr: float = 1e-3, seed: int = 0, decay: float = 0.9) -> None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"baseline_hidden must be a positive int, got {hidden!r}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"baseline_lr must be a positive number, got {lr!r}")
        self.hidden, self.lr, self.seed = hidden, float(lr), int(seed)
        self.average = MovingAverage(decay)
        self.net: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def options(self) -> dict:
        return {"baseline_hidden": self.hidden, "baseline_lr": self.lr, "decay": self.average.decay}

    def _make(self, in_features: int, dtype, device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = nn.Sequential(nn.Linear(in_features, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        self.net = net.to(dtype=dtype, device=device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def _build(self, x: torch.Tensor) -> nn.Module:
        if self.net is None:
            self._make(x.shape[-1], x.dtype, x.device)
        elif self.net[0].in_features != x.shape[-1]:
            raise ValueError(f"learned baseline was built for x of dim {self.net[0].in_features}, got {x.shape[-1]}")
        return self.net

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        """``c + b(x)`` ``[B]`` (detached)."""
        with torch.no_grad():
            return self.average.baseline + self._build(x)(x).squeeze(-1)

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context) -> CVTerms:
        if context is None:
            raise ValueError("the learned control variate needs x: use vae_loss(model, x), not surrogate(f, ...)")
        h = self.baseline(context).expand(fz.shape).unsqueeze(-1)
        return CVTerms(h, h)

    def update(self, *, fz, context) -> None:
        net = self._build(context)
        self.average.update(fz=fz, context=context)
        residual = fz.detach() - self.average.baseline
        with torch.enable_grad():
            loss = ((residual - net(context).squeeze(-1)) ** 2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.net is None else list(self.net.parameters())

    def state_dict(self) -> dict:
        if self.net is None:
            return {"average": self.average.state_dict()}
        return {
            "average": self.average.state_dict(),
            "in_features": int(self.net[0].in_features),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if "average" in state:
            self.average.load_state_dict(state["average"])
        if "net" not in state:
            self.net = self.optimizer = None
            return
        weight = state["net"]["0.weight"]
        self._make(int(state["in_features"]), weight.dtype, weight.device)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


#: name -> factory, in registration order (the CLI's and results' ``"none"`` is the key None).
CONTROL_VARIATES: dict[str | None, Callable[..., ControlVariate]] = {}


def register(name: str | None, factory: Callable[..., ControlVariate], *, replace: bool = False):
    """Add a control variate of ``score_function`` under ``name``.

    Args:
        name: an identifier (the option value ``control_variate=name`` and the
            results' ``control_variate`` column); None is the plain estimator.
        factory: builds a :class:`ControlVariate`; it is called with those of the
            score-function estimator's options (``decay``, ``delta_order``,
            ``baseline_hidden``, ``baseline_lr``, ``seed``) that it accepts as
            keyword arguments.
        replace: allow replacing a registered name.

    Raises:
        ValueError: the name is not an identifier (or is ``"none"``) or is taken.
        TypeError: the factory is not callable.
    """
    if name is not None and (not isinstance(name, str) or not name.isidentifier() or name == "none"):
        raise ValueError(f"control variate name must be an identifier other than 'none', got {name!r}")
    if not callable(factory):
        raise TypeError(f"control variate {name!r}: factory must be callable, got {type(factory).__name__}")
    if name in CONTROL_VARIATES and not replace and CONTROL_VARIATES[name] is not factory:
        raise ValueError(f"control variate {name!r} is already registered (pass replace=True to override)")
    CONTROL_VARIATES[name] = factory
    return factory


register(None, NoControlVariate)
register("moving_average", MovingAverage)
register("leave_one_out", LeaveOneOut)
register("optimal", Optimal)
register("delta", lambda delta_order=2: Delta(delta_order))
register(
    "learned",
    lambda baseline_hidden=100, baseline_lr=1e-3, seed=0, decay=0.9: Learned(baseline_hidden, baseline_lr, seed, decay),
)


def names() -> list[str]:
    """Option values as written in the CLI and results: ``"none"`` for None."""
    return ["none" if k is None else k for k in CONTROL_VARIATES]


def families_of(name: str | None) -> tuple[str, ...]:
    """The latent families control variate ``name`` is defined for."""
    return tuple(make(name).families)


def make(name: str | None, **options):
    """Build the control variate ``name`` (``None`` or ``"none"`` for the plain estimator).

    Args:
        name: a registered name.
        **options: the score-function estimator's options; each factory gets the
            ones its signature accepts (``decay`` for ``moving_average``,
            ``delta_order`` for ``delta``, ``baseline_hidden``, ``baseline_lr``,
            ``seed`` and ``decay`` for ``learned``).
    """
    if name == "none":
        name = None
    if name not in CONTROL_VARIATES:
        raise ValueError(f"control_variate must be one of {[None, *names()[1:]]} (or 'none'), got {name!r}")
    factory = CONTROL_VARIATES[name]
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it bare
        params = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**options)
    return factory(**{k: v for k, v in options.items() if k in params})
