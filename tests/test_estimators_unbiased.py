"""Statistical tests: unbiasedness on Gaussian toys with closed-form gradients, closed-form variance.

Every check compares the mean of R independent estimates (batched per-sample
gradients, fixed seeds) with the exact gradient within ``Z * SE``, SE being the
estimator's own standard error ``std / sqrt(R)``. Z = 5: two-sided p = 5.7e-7 per
comparison, so over the ~700 comparisons here a correct estimator fails with
probability < 5e-4 (and with fixed seeds the outcome is deterministic).
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch
from estimator_models import LOGVAR, MU, TOYS, Q, T

import estimators
from estimators import control_variates as cv

Z = 5.0
R = 2000

CONFIGS = {
    "reparam": ("reparam", {}),
    "stl": ("stl", {}),
    "score_function[none]": ("score_function", {"control_variate": None}),
    "score_function[moving_average]": ("score_function", {"control_variate": "moving_average"}),
    "score_function[leave_one_out]": ("score_function", {"control_variate": "leave_one_out"}),
    "score_function[optimal]": ("score_function", {"control_variate": "optimal"}),
    "score_function[delta1]": ("score_function", {"control_variate": "delta", "delta_order": 1}),
    "score_function[delta2]": ("score_function", {"control_variate": "delta", "delta_order": 2}),
    "measure_valued[coupled]": ("measure_valued", {"coupling": True}),
    "measure_valued[uncoupled]": ("measure_valued", {"coupling": False}),
}


def make(config: str):
    name, opts = CONFIGS[config]
    return estimators.get(name, **opts)


def assert_unbiased(samples: torch.Tensor, truth: torch.Tensor, what: str, z: float = Z) -> None:
    """``|mean - truth| <= z * SE`` elementwise (plus float64 rounding slack for exact estimators)."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    bound = z * se + 1e-9 * (1.0 + truth.abs())
    excess = (mean - truth).abs() - bound
    assert (excess <= 0).all(), f"{what}: mean {mean.tolist()} vs exact {truth.tolist()}, SE {se.tolist()} (z = {z})"


def warm_up(est) -> None:
    """Give stateful control variates a non-trivial state (then per-sample gradients freeze it)."""
    if isinstance(est.cv if hasattr(est, "cv") else None, cv.MovingAverage):
        f = TOYS["exp"][0]
        for seed in range(5):
            est.surrogate(f, MU, LOGVAR, 4, seed=100 + seed)


@pytest.mark.parametrize("toy", list(TOYS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_mean_matches_closed_form_gradient(config, toy):
    est = make(config)
    warm_up(est)
    f, exact = TOYS[toy]
    _, g_mu, g_lv = exact(MU, LOGVAR)
    g = estimators.per_sample_grads_expectation(est, f, MU, LOGVAR, R, num_samples=4, seed=11)
    assert_unbiased(g["mu"], g_mu, f"{config} on {toy}: d/dmu")
    assert_unbiased(g["logvar"], g_lv, f"{config} on {toy}: d/dlogvar")


def test_moving_average_state_is_used_and_frozen():
    est = make("score_function[moving_average]")
    warm_up(est)
    base, steps = est.cv.baseline, est.cv.steps
    assert steps == 5 and base != 0.0
    estimators.per_sample_grads_expectation(est, TOYS["exp"][0], MU, LOGVAR, 8, num_samples=4)
    assert (est.cv.baseline, est.cv.steps) == (base, steps)  # frozen while taking per-sample gradients


def test_surrogate_value_is_the_monte_carlo_objective():
    mu, lv = MU.clone().requires_grad_(), LOGVAR.clone().requires_grad_()
    f, exact = TOYS["exp"]
    for config in CONFIGS:
        est = make(config)
        vals = torch.stack([est.surrogate(f, mu, lv, 64, seed=s).detach() for s in range(40)])
        assert_unbiased(vals, exact(MU, LOGVAR)[0], f"{config}: value of E[f]")


class _LeaveOneIn(cv.ControlVariate):
    """A deliberately wrong baseline (the mean over all S samples, including the one it multiplies)."""

    name = "leave_one_in"

    def terms(self, *, f, z, fz, mu, logvar, z_extra, f_extra, context):
        h = fz.mean(0, keepdim=True).expand_as(fz).unsqueeze(-1)
        return cv.CVTerms(h, h)


def test_the_unbiasedness_check_detects_a_biased_estimator():
    """Power check: a baseline that sees its own sample is biased by -grad/S and must be caught."""
    est = estimators.get("score_function")
    est.cv = _LeaveOneIn()
    f, exact = TOYS["exp"]
    _, g_mu, _ = exact(MU, LOGVAR)
    g = estimators.per_sample_grads_expectation(est, f, MU, LOGVAR, R, num_samples=4, seed=11)
    with pytest.raises(AssertionError):
        assert_unbiased(g["mu"], g_mu, "leave-one-in")


# --------------------------------------------------------------------------- closed-form variance
def _gauss_expect(expr, eps):
    """E over independent standard normals ``eps`` of a polynomial: E[e^n] = (n-1)!! for even n, else 0."""
    poly = sympy.Poly(sympy.expand(expr), *eps)
    total = sympy.Integer(0)
    for powers, coeff in poly.terms():
        m = sympy.Integer(1)
        for p in powers:
            m *= 0 if p % 2 else sympy.factorial2(p - 1)
        total += coeff * m
    return total


def _quadratic_variances(kind: str, num_samples: int):
    """Exact per-element variances ``(var_mu [D], var_logvar [D])`` on row 0 of the quadratic toy.

    One sample's estimate u is a polynomial in its standard normals e; single-sample
    moments M(.) come from Gaussian moments. Means of S iid samples have variance
    ``(M(u^2) - M(u)^2) / S``; the leave-one-out estimate with S = 2 is
    ``g = (f1 - f2)(s1 - s2) / 2`` (s the score), whose second moment factors over the
    two independent samples: ``E[g^2] = 1/4 sum_terms coeff * M(f^a s^b) M(f^c s^d)``.
    """
    mu, lv = [float(v) for v in MU[0]], [float(v) for v in LOGVAR[0]]
    q, t = [float(v) for v in Q], [float(v) for v in T]
    d = len(mu)
    sd = [math.exp(0.5 * v) for v in lv]
    e = [sympy.Symbol(f"e{j}") for j in range(d)]
    f = sum(q[i] * (mu[i] + sd[i] * e[i] - t[i]) ** 2 for i in range(d))

    def moment(expr):
        return _gauss_expect(expr, e)

    var_mu, var_lv = [], []
    for j in range(d):
        if kind == "reparam":
            per_sample = [2 * q[j] * (mu[j] + sd[j] * e[j] - t[j]), q[j] * (mu[j] + sd[j] * e[j] - t[j]) * sd[j] * e[j]]
        else:
            per_sample = [e[j] / sd[j], (e[j] ** 2 - 1) / 2]  # scores of mu_j and logvar_j
        for u, out in zip(per_sample, (var_mu, var_lv), strict=True):
            if kind == "reparam":
                out.append(float(moment(u * u) - moment(u) ** 2) / num_samples)
            elif kind == "score_function":
                out.append(float(moment((f * u) ** 2) - moment(f * u) ** 2) / num_samples)
            else:  # leave_one_out, S = 2
                assert num_samples == 2
                f1, f2, s1, s2 = sympy.symbols("f1 f2 s1 s2")
                poly = sympy.Poly(sympy.expand((f1 - f2) ** 2 * (s1 - s2) ** 2), f1, s1, f2, s2)
                second = sum(c * moment(f**a * u**b) * moment(f**c2 * u**d2) for (a, b, c2, d2), c in poly.terms())
                out.append(float(second / 4 - moment(f * u) ** 2))
    return torch.tensor(var_mu, dtype=torch.float64), torch.tensor(var_lv, dtype=torch.float64)


def assert_variance(samples: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """Sample variance within Z standard errors, SE(s^2) = sqrt((m4 - s^4) / R) from the sample."""
    c = samples - samples.mean(0)
    var = (c * c).mean(0)
    m4 = (c**4).mean(0)
    se = torch.sqrt((m4 - var * var).clamp_min(0) / samples.shape[0])
    assert ((var - exact).abs() <= Z * se + 1e-12).all(), f"{what}: variance {var.tolist()} vs {exact.tolist()}"


@pytest.mark.parametrize(
    ("kind", "config", "num_samples"),
    [
        ("reparam", "reparam", 1),
        ("reparam", "reparam", 3),
        ("score_function", "score_function[none]", 1),
        ("leave_one_out", "score_function[leave_one_out]", 2),
    ],
)
def test_quadratic_variance_matches_closed_form(kind, config, num_samples):
    var_mu, var_lv = _quadratic_variances(kind, num_samples)
    g = estimators.per_sample_grads_expectation(
        make(config), TOYS["quadratic"][0], MU[:1], LOGVAR[:1], 10000, num_samples=num_samples, seed=5
    )
    assert_variance(g["mu"][:, 0], var_mu, f"{config} S={num_samples} d/dmu")
    assert_variance(g["logvar"][:, 0], var_lv, f"{config} S={num_samples} d/dlogvar")


def test_second_order_delta_is_exact_on_a_quadratic():
    """h = f for quadratic f, so the estimate is grad E[h] itself: zero variance, exact value."""
    _, g_mu, g_lv = TOYS["quadratic"][1](MU, LOGVAR)
    g = estimators.per_sample_grads_expectation(
        make("score_function[delta2]"), TOYS["quadratic"][0], MU, LOGVAR, 50, num_samples=1, seed=2
    )
    torch.testing.assert_close(g["mu"], g_mu.expand_as(g["mu"]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g["logvar"], g_lv.expand_as(g["logvar"]), rtol=1e-6, atol=1e-6)
