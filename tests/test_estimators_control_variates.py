"""Variance reduction where theory says so, with numbers (linear-Gaussian VAE, fixed seeds).

The statistic is the total variance of the encoder gradient (sum of per-element
variances over R = 2000 batched per-sample estimates, float64) on the ppca problem of
``test_estimators_ppca`` (a generic, non-optimal encoder). Ratios measured when
the test was written (R = 4000, S = 4, baselines trained 100 steps) are quoted in
each assertion; the thresholds leave room for the ~10% sampling error of a
variance ratio at this R.
"""

from __future__ import annotations

import math

import pytest
import torch

import estimators
from bench.problems import ppca

R = 2000
D, K, B = 5, 2, 3


@pytest.fixture(scope="module")
def problem():
    params = ppca.random_params(D, K, seed=3)
    x = ppca.sample(params, B, seed=4)
    torch.manual_seed(0)
    model = ppca.LinearGaussianVAE.from_params(params, dtype=torch.float64)
    with torch.no_grad():
        model.encoder.logvar.copy_(torch.tensor([-0.7, -0.2], dtype=torch.float64))
        model.decoder.log_s2.fill_(math.log(0.8))
    return model, x


def encoder_variance(est, model, x, num_samples, kl=None):
    g = estimators.per_sample_grads(est, model, x, R, num_samples=num_samples, kl=kl, seed=77)
    return sum(v.var(0).sum().item() for k, v in g.items() if k.startswith("encoder."))


@pytest.fixture(scope="module")
def plain(problem):
    return encoder_variance(estimators.get("score_function"), *problem, 4)


@pytest.mark.parametrize(
    ("cv_name", "measured", "threshold"),
    [
        ("moving_average", 0.25, 0.5),  # a baseline near E[f] removes the mean's share of f g
        ("leave_one_out", 0.27, 0.5),  # Kool et al. 2019: the other samples' mean is such a baseline
        ("optimal", 0.30, 0.6),  # per-element c* from independent samples (counts 2S evaluations)
        ("learned", 0.22, 0.5),  # NVIL baseline b(x) after training
    ],
)
def test_score_function_control_variates_reduce_variance(problem, plain, cv_name, measured, threshold):
    model, x = problem
    est = estimators.get("score_function", control_variate=cv_name, baseline_lr=1e-2)
    for s in range(40):  # train the stateful baselines (ignored by the stateless ones)
        est.vae_loss(model, x, num_samples=4, seed=500 + s)
    ratio = encoder_variance(est, model, x, 4) / plain
    assert ratio < threshold, f"{cv_name}: variance ratio to the plain score function {ratio:.3f} (was {measured})"


def test_delta_control_variate_is_exact_for_a_gaussian_likelihood(problem, plain):
    """log p(x|z) is quadratic in z here, so the second-order expansion is f itself: variance ratio ~1e-29."""
    model, x = problem
    est = estimators.get("score_function", control_variate="delta")
    assert encoder_variance(est, model, x, 4) / plain < 1e-12


def test_coupling_reduces_measure_valued_variance(problem):
    model, x = problem
    ratio = encoder_variance(estimators.get("measure_valued"), model, x, 1) / encoder_variance(
        estimators.get("measure_valued", coupling=False), model, x, 1
    )
    assert ratio < 0.6, f"coupled / uncoupled variance {ratio:.3f} (was 0.34)"


def test_dreg_has_lower_encoder_variance_than_iwae(problem):
    """Tucker et al. 2019: DReG removes the score terms of the IWAE encoder gradient (K = 8)."""
    model, x = problem
    ratio = encoder_variance(estimators.get("dreg"), model, x, 8) / encoder_variance(
        estimators.get("iwae"), model, x, 8
    )
    assert ratio < 0.5, f"dreg / iwae variance {ratio:.3f} (was 0.24)"


def test_stl_has_lower_variance_near_the_exact_posterior():
    """Roeder et al. 2017: near q = p(z|x) the path term vanishes and STL's variance goes to zero."""
    params = ppca.random_params(D, K, seed=5, orthogonal=True)
    x = ppca.sample(params, B, seed=6)
    model = ppca.LinearGaussianVAE.from_params(params, dtype=torch.float64)
    model.set_exact_posterior()
    with torch.no_grad():
        model.encoder.weight.mul_(1.05)
        model.encoder.logvar.add_(0.1)
    ratio = encoder_variance(estimators.get("stl"), model, x, 1) / encoder_variance(
        estimators.get("reparam"), model, x, 1, kl="mc"
    )
    assert ratio < 0.1, f"stl / reparam (kl='mc') variance {ratio:.4f} (was 0.009)"
