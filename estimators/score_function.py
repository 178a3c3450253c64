"""Score-function (log-derivative, REINFORCE) gradient with optional control variates.

Identity (Williams 1992; Glynn 1990; the "log-derivative trick"):

    grad_theta E_{q_theta}[f(z)] = E_q[f(z) grad_theta log q_theta(z)],

and with a control variate h of known expectation (see
:mod:`estimators.control_variates`)

    grad E_q[f] = E_q[(f(z) - h(z)) grad log q(z)] + grad E_q[h].

For q = N(mu, diag sigma^2): ``d log q / d mu_j = (z_j - mu_j) / sigma_j^2`` and
``d log q / d logvar_j = ((z_j - mu_j)^2 / sigma_j^2 - 1) / 2``. When f closes over
parameters (the ELBO's ``-log q``, the decoder), their direct gradient
``mean_s grad f(z_s)`` at fixed z is added: the decoder gets the plain Monte
Carlo gradient. f itself is never differentiated in z (except by the delta
control variate's expansion).

For the discrete families (Bernoulli, categorical) the same identity holds with
``grad log q(b)``; for a Bernoulli with logits phi it is ``b - sigmoid(phi)``
(Williams 1992). The baselines apply (``moving_average``, ``leave_one_out``, which
is REINFORCE-LOO with K/(K-1) mean_k (f_k - fbar) grad log q(b_k), Kool et al.
2019, and ``learned``, NVIL); ``optimal`` and ``delta`` use the Gaussian score and
f's derivatives in z, so they are defined for the normal family only.
"""

from __future__ import annotations

import kernels

from . import control_variates as cv
from .base import Estimator
from .families import FAMILIES
from .registry import register


@register
class ScoreFunction(Estimator):
    """``mean_s (f(z_s) - h_s) grad log q(z_s) + grad E[h]`` (Williams 1992; Mohamed et al. 2020, sec. 4).

    Args:
        control_variate: ``None`` (or ``"none"``), ``"moving_average"``,
            ``"leave_one_out"``, ``"optimal"``, ``"delta"`` or ``"learned"``.
        decay: moving-average decay.
        delta_order: 1 or 2, order of the delta-method expansion.
        baseline_hidden, baseline_lr, baseline_seed: the learned baseline's MLP width,
            Adam step size and initialisation seed.
    """

    name = "score_function"
    families = FAMILIES

    def __init__(
        self,
        control_variate: str | None = None,
        *,
        decay: float = 0.9,
        delta_order: int = 2,
        baseline_hidden: int = 100,
        baseline_lr: float = 1e-3,
        baseline_seed: int = 0,
    ) -> None:
        super().__init__()
        self.cv = cv.make(
            control_variate,
            decay=decay,
            delta_order=delta_order,
            baseline_hidden=baseline_hidden,
            baseline_lr=baseline_lr,
            seed=baseline_seed,
        )

    @property
    def control_variate(self) -> str:
        """The control variate's name as results write it (``"none"`` for None)."""
        return "none" if self.cv.name is None else self.cv.name

    @property
    def options(self) -> dict:
        return {"control_variate": self.control_variate, **self.cv.options}

    @property
    def label(self) -> str:
        return f"{self.name}[{self.control_variate}]"

    @property
    def min_samples(self) -> int:  # type: ignore[override]
        return self.cv.min_samples

    @property
    def vae_only(self) -> bool:  # type: ignore[override]
        return self.cv.needs_context

    @property
    def stateful(self) -> bool:
        return self.cv.stateful

    def state_dict(self) -> dict:
        return {"control_variate": self.cv.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.cv.load_state_dict(state.get("control_variate", {}))

    def parameters(self):
        return self.cv.parameters()

    def noise_shape(self, num_samples, mu_shape):
        return ((1 + self.cv.extra_factor) * int(num_samples), *mu_shape)

    def evaluations(self, num_samples, dim):
        return int(num_samples) + self.cv.extra_evaluations(int(num_samples), int(dim))

    def _expectation(self, f, mu, logvar, eps, context):
        s = eps.shape[0] // (1 + self.cv.extra_factor)
        mu_d, logvar_d = mu.detach(), logvar.detach()
        z_all = kernels.normal_rsample(mu_d, logvar_d, eps)  # [S(1+extra), *mu.shape], no path to mu
        f_all = f(z_all)  # [S(1+extra), *batch]; graph only through f's own parameters
        z, fz = z_all[:s], f_all[:s]
        fd = fz.detach()
        terms = self.cv.terms(
            f=f,
            z=z,
            fz=fd,
            mu=mu,
            logvar=logvar,
            z_extra=z_all[s:] if s < z_all.shape[0] else None,
            f_extra=f_all[s:].detach() if s < z_all.shape[0] else None,
            context=context,
        )
        if terms.per_row:
            log_q = kernels.normal_log_prob(z, mu, logvar)  # [S, *batch]
            score = ((fd - terms.h_mu.squeeze(-1)) * log_q).mean(0)
        else:
            # per-dimension log densities ([S, *mu.shape]): d/dmu_j and d/dlogvar_j get their own h
            zs, ms, ls = z.unsqueeze(-1), mu.unsqueeze(-1), logvar.unsqueeze(-1)
            lq_mu = kernels.normal_log_prob(zs, ms, ls.detach())
            lq_lv = kernels.normal_log_prob(zs, ms.detach(), ls)
            fe = fd.unsqueeze(-1)
            score = ((fe - terms.h_mu) * lq_mu + (fe - terms.h_logvar) * lq_lv).mean(0).sum(-1)
        if terms.expectation is not None:
            score = score + terms.expectation
        if self.updates_state:
            self.cv.update(fz=fd, context=context)
        # direct path (f's parameters at fixed z) + score surrogate; value = mean_s f(z_s)
        direct = fz.mean(0)
        return direct + (score - score.detach())

    def _family_expectation(self, f, q, noise, context):
        if q.name not in self.cv.families:
            raise ValueError(
                f"control_variate={self.control_variate!r} is defined for the latent families "
                f"{list(self.cv.families)}, not {q.name!r}; for {q.name} use one of "
                f"{[n for n in cv.names() if q.name in cv.families_of(n)]}"
            )
        b = q.sample(noise)  # [S, *q.shape], no gradient
        fb = f(b)  # [S, *batch]; graph only through f's own parameters
        fd = fb.detach()
        terms = self.cv.terms(f=f, z=b, fz=fd, mu=None, logvar=None, z_extra=None, f_extra=None, context=context)
        log_q = q.log_prob(b)  # [S, *batch], gradient in the logits
        score = ((fd - terms.h_mu.squeeze(-1)) * log_q).mean(0)
        if self.updates_state:
            self.cv.update(fz=fd, context=context)
        return fb.mean(0) + (score - score.detach())
