"""The intervals of bench.measure.gradstats hold their stated coverage on Gaussian estimates with known truth.

Each check repeats a fixed-seed experiment ``N`` times and holds the observed rate
to its nominal value within 4 binomial standard errors (``z = 4``):
``|rate - p| <= 4 sqrt(p (1 - p) / N)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.measure.gradstats import gradient_stats, replicates_for_bias

N = 200
P, R = 300, 32


def _bound(p: float, n: int = N) -> float:
    return 4 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def truth():
    return torch.randn(P, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _draw(gen, truth, shift=0.0, r=R):
    return truth + shift + torch.randn(r, P, generator=gen, dtype=torch.float64)


def test_an_unbiased_estimator_is_covered_at_95_percent_and_rejected_at_5(truth):
    gen = torch.Generator().manual_seed(0)
    covered = rejected = 0
    for _ in range(N):
        st = gradient_stats(_draw(gen, truth), truth, bootstrap=0)
        covered += st["bias_sq_ci_low"] <= 0 <= st["bias_sq_ci_high"]
        rejected += st["bias_p_value"] < 0.05
        assert st["bias_ci_low"] == 0.0 or st["bias_sq_ci_low"] > 0  # the bias interval starts at 0 when covered
    assert abs(covered / N - 0.95) <= _bound(0.95), covered
    assert rejected / N <= 0.05 + _bound(0.05), rejected


def test_a_biased_estimator_is_found_and_its_bias_covered(truth):
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(P, generator=gen, dtype=torch.float64)
    b = b / b.norm() * 0.3 * truth.norm()  # relative bias 0.3
    covered = 0
    for _ in range(N):
        st = gradient_stats(_draw(gen, truth, b), truth, bootstrap=0)
        covered += st["bias_ci_low"] <= float(b.norm()) <= st["bias_ci_high"]
        assert st["bias_p_value"] < 1e-3 and st["bias_ci_low"] > 0
    assert abs(covered / N - 0.95) <= _bound(0.95), covered


def test_the_reference_noise_is_counted(truth):
    """A Monte Carlo truth (group means): with its noise counted the interval covers; ignored, it would not."""
    gen = torch.Generator().manual_seed(2)
    with_groups = without = 0
    for _ in range(N):
        groups = truth + 3.0 * torch.randn(32, P, generator=gen, dtype=torch.float64)
        ref = groups.mean(0)
        g = _draw(gen, truth)
        st = gradient_stats(g, ref, truth_groups=groups, bootstrap=0)
        with_groups += st["bias_sq_ci_low"] <= 0 <= st["bias_sq_ci_high"]
        naive = gradient_stats(g, ref, bootstrap=0)
        without += naive["bias_sq_ci_low"] <= 0 <= naive["bias_sq_ci_high"]
    assert abs(with_groups / N - 0.95) <= _bound(0.95), with_groups
    assert without / N < 0.95 - _bound(0.95), without  # the reference's noise looks like bias


def test_the_mde_is_the_bias_found_four_times_in_five(truth):
    """At a relative bias equal to bias_mde the test rejects with power about 0.8 (the rule drops b^T C b)."""
    gen = torch.Generator().manual_seed(3)
    mde = gradient_stats(_draw(gen, truth), truth, bootstrap=0)["bias_mde"]
    b = torch.randn(P, generator=gen, dtype=torch.float64)
    b = b / b.norm() * mde * truth.norm()
    power = sum(gradient_stats(_draw(gen, truth, b), truth, bootstrap=0)["bias_p_value"] < 0.05 for _ in range(N)) / N
    assert 0.8 - 0.1 - _bound(0.8) <= power <= 0.8 + _bound(0.8), power


def test_replicates_for_bias_reaches_its_target(truth):
    gen = torch.Generator().manual_seed(4)
    st = gradient_stats(_draw(gen, truth, r=16), truth, bootstrap=0)
    r = math.ceil(replicates_for_bias(st["tr_var_sq"], float(truth @ truth), 0.05))
    got = gradient_stats(_draw(gen, truth, r=r), truth, bootstrap=0)["bias_mde"]
    assert got == pytest.approx(0.05, rel=0.25)


def test_snr_and_cosine_come_with_intervals_around_them(truth):
    gen = torch.Generator().manual_seed(5)
    small = 0.2 * truth  # a weak signal: the plain SNR is biased up, the plain cosine down
    pop_snr = float(small.abs().mean())
    covered = 0
    for i in range(50):
        st = gradient_stats(_draw(gen, small), small, bootstrap=200, seed=i)
        assert st["snr_ci_low"] <= st["snr"] <= st["snr_ci_high"]
        assert st["cosine_ci_low"] <= st["cosine"] <= st["cosine_ci_high"] <= 1.0
        covered += st["snr_ci_low"] <= pop_snr <= st["snr_ci_high"]
    assert covered / 50 >= 0.95 - _bound(0.95, 50), covered


def test_estimates_with_a_common_random_scale_get_the_right_standard_error():
    """Score-function-like noise (one random scale per estimate across many dims) is far from Gaussian.

    The U-statistic standard error needs no Gaussian assumption: the mean reported
    ``se`` matches the spread of ``bias_sq`` over repeats (the sample sd of 100
    repeats has a relative standard error of 1/sqrt(198) = 7%; z = 4 gives the
    bounds 0.72-1.4), and the interval covers 0 at its level.
    """
    gen = torch.Generator().manual_seed(6)
    p, n = 2000, 100
    t = torch.randn(p, generator=gen, dtype=torch.float64)
    values, ses, covered = [], [], 0
    for _ in range(n):
        scale = torch.randn(R, 1, generator=gen, dtype=torch.float64).abs() * 2  # f(z) for every coordinate
        st = gradient_stats(t + scale * torch.randn(R, p, generator=gen, dtype=torch.float64), t, bootstrap=0)
        values.append(st["bias_sq"])
        ses.append(st["bias_sq_se"])
        covered += st["bias_sq_ci_low"] <= 0 <= st["bias_sq_ci_high"]
    ratio = (sum(ses) / n) / float(torch.tensor(values).std())
    assert 0.72 <= ratio <= 1.4, ratio
    assert abs(covered / n - 0.95) <= _bound(0.95, n), covered
