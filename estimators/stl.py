"""Sticking the landing (STL): the reparameterized ELBO gradient without the score term.

Identity (Roeder, Wu & Duvenaud 2017, "Sticking the landing: simple, lower-variance
gradient estimators for variational inference", eq. 8): the total derivative of
the Monte Carlo ELBO ``log p(x, z) - log q_phi(z)`` at z = z(phi, eps) is

    d/dphi [log p(x, z) - log q_phi(z)] = (d/dz [log p(x, z) - log q_phi(z)]) dz/dphi
                                          - (d/dphi log q_phi(z))|_z fixed,

and the last (score) term has expectation zero, so STL drops it by evaluating
``log q`` with stopped variational parameters. When q equals the exact posterior
the first term vanishes for every sample: zero variance.

STL concerns the Monte Carlo ``log q``: it requires ``kl="mc"`` (with an analytic
KL there is no score term and it would be :mod:`estimators.reparam`). For a
generic Gaussian expectation :meth:`surrogate` it equals ``reparam``.
"""

from __future__ import annotations

from .registry import register
from .reparam import Reparam


@register
class STL(Reparam):
    """Reparameterized ELBO gradient with ``log q`` under stopped (mu, logvar) (Roeder et al. 2017)."""

    name = "stl"
    default_kl = "mc"
    kl_modes = ("mc",)

    def _log_q_params(self, mu, logvar):
        return mu.detach(), logvar.detach()
