"""Gaussian measure-valued (weak-derivative) gradient.

Identity (Mohamed, Rosca, Figurnov & Mnih 2020, JMLR, sec. 6; Pflug 1989): for one
coordinate x ~ N(mu, sigma^2), the derivative of a Gaussian expectation is a
difference of expectations under two other distributions,

    d/dmu    E[f(x)] = 1/(sigma sqrt(2 pi)) E_W[f(mu + sigma W) - f(mu - sigma W)],
                       W ~ Weibull(shape 2, scale sqrt 2),
    d/dsigma E[f(x)] = 1/sigma E[f(mu + sigma M) - f(mu + sigma E)],
                       M ~ double-sided Maxwell, E ~ N(0, 1),

and ``d/dlogvar = sigma/2 d/dsigma``. For a diagonal Gaussian in D dims the
coordinate j is perturbed while the others keep their common sample z_{-j} ~ q,
so one estimate costs S (1 + 4D) evaluations of f (the extra S give the value
and the direct path of f's own parameters).

All samples come from standard normals (the shared noise stream): with
n ~ N(0, I), ``W = sqrt(n1^2 + n2^2)`` (Rayleigh(1) = Weibull(2, sqrt 2)),
``M = sign(n6) sqrt(n3^2 + n4^2 + n5^2)`` (chi with 3 degrees of freedom, random
sign), ``U = Phi(n7)`` uniform. *Coupling* (common random numbers, ibid.
sec. 7.2): the plus and minus mean terms share W and z_{-j}, and the scale
terms share z_{-j} with ``E = M U``, which is exactly N(0, 1) (if M is
double-sided Maxwell and U uniform, M U is standard normal). Uncoupled, the
two sides draw independent W, z_{-j} and E.
"""

from __future__ import annotations

import math

import torch

from .base import Estimator
from .registry import register

CHANNELS = 11  # noise channels per element: see the layout in MeasureValued._expectation
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@register
class MeasureValued(Estimator):
    """Weibull (mean) and double-sided Maxwell (scale) weak derivatives per coordinate (Mohamed et al. 2020).

    Args:
        coupling: drive the two sides of each difference by common random numbers.
    """

    name = "measure_valued"

    def __init__(self, coupling: bool = True) -> None:
        super().__init__()
        if not isinstance(coupling, bool):
            raise TypeError(f"coupling must be a bool, got {type(coupling).__name__} {coupling!r}")
        self.coupling = coupling

    @property
    def options(self) -> dict:
        return {"coupling": self.coupling}

    @property
    def label(self) -> str:
        return f"{self.name}[{'coupled' if self.coupling else 'uncoupled'}]"

    def noise_shape(self, num_samples, mu_shape):
        return (int(num_samples), *mu_shape, CHANNELS)

    def evaluations(self, num_samples, dim):
        return int(num_samples) * (1 + 4 * int(dim))

    def _expectation(self, f, mu, logvar, eps, context):
        # eps [S, *mu.shape, 11] channels: 0 base z (plus side), 1 base z (minus side, uncoupled),
        # 2-3 W plus, 4-5 W minus (uncoupled), 6-8 Maxwell magnitude, 9 Maxwell sign, 10 E or U.
        s, d = eps.shape[0], mu.shape[-1]
        mu_d = mu.detach()
        sd = torch.exp(0.5 * logvar.detach())
        n = eps.unbind(-1)
        w_p = torch.sqrt(n[2] ** 2 + n[3] ** 2)
        maxwell = torch.sqrt(n[6] ** 2 + n[7] ** 2 + n[8] ** 2) * torch.where(n[9] >= 0, 1.0, -1.0).to(eps.dtype)
        if self.coupling:
            e0_m, w_m = n[0], w_p
            normal = maxwell * 0.5 * (1.0 + torch.erf(n[10] / math.sqrt(2.0)))
        else:
            e0_m, w_m = n[1], torch.sqrt(n[4] ** 2 + n[5] ** 2)
            normal = n[10]
        z0 = mu_d + sd * n[0]  # [S, *mu.shape]
        z0_m = mu_d + sd * e0_m
        # eye [D, 1.., D] puts coordinate j of perturbation j
        eye = torch.eye(d, dtype=torch.bool, device=mu.device).reshape(d, *([1] * (mu.dim() - 1)), d)

        def replace(base, coord):  # -> [S, D, *mu.shape]
            return torch.where(eye, coord.unsqueeze(1), base.unsqueeze(1))

        z = torch.cat(
            [
                z0.unsqueeze(1),
                replace(z0, mu_d + sd * w_p),
                replace(z0_m, mu_d - sd * w_m),
                replace(z0, mu_d + sd * maxwell),
                replace(z0_m, mu_d + sd * normal),
            ],
            1,
        )  # [S, 1 + 4D, *mu.shape]
        out = f(z.reshape(s * (1 + 4 * d), *mu.shape)).reshape(s, 1 + 4 * d, *mu.shape[:-1])
        f0 = out[:, 0]
        parts = out[:, 1:].detach().reshape(s, 4, d, *mu.shape[:-1]).movedim(2, -1)  # [S, 4, *batch, D]
        g_mu = ((parts[:, 0] - parts[:, 1]) / (sd * _SQRT_2PI)).mean(0)  # [*mu.shape]
        g_logvar = (0.5 * (parts[:, 2] - parts[:, 3])).mean(0)  # sigma/2 * (1/sigma) E[f_M - f_N]
        weak = (g_mu * mu).sum(-1) + (g_logvar * logvar).sum(-1)
        return f0.mean(0) + (weak - weak.detach())
