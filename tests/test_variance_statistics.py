"""The variance benchmark's statistics on a real model (digits): bias intervals, control variates trained along
the training trajectory, and R chosen by a pilot.

Statistical tolerances come from the rows' own 95% intervals (z = 1.96) and
p-values; seeds are fixed.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

import estimators
import kernels
from bench.measure import variance as V
from estimators import registry


class _BiasedReparam(estimators.Estimator):
    """reparam plus a gradient of 0.1 on every mean: a bias the benchmark must find."""

    name = "reparam_biased_test"

    def _expectation(self, f, mu, logvar, eps, context):
        z = kernels.normal_rsample(mu, logvar, eps)
        return f(z).mean(0) + 0.1 * mu.sum(-1)


@pytest.fixture
def biased_estimator():
    estimators.register(_BiasedReparam)
    try:
        yield _BiasedReparam.name
    finally:
        registry._REGISTRY.pop(_BiasedReparam.name, None)


def _by(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df.metric == metric].set_index(["estimator", "control_variate"])


def test_bias_intervals_cover_zero_for_unbiased_estimators_and_not_for_a_biased_one(biased_estimator):
    grid = V.configs(
        problems=["digits"],
        estimators=["reparam", "score_function", biased_estimator],
        control_variates=["moving_average"],
        backends=["torch"],
        train_steps=[100],
        replicates=32,
        batch_size=32,
    )
    bias = _by(V.variance_benchmark(grid), "bias")
    for key in (("reparam", "none"), ("score_function", "moving_average")):
        row = bias.loc[key]
        assert row.ci_low == 0.0 <= row.value <= row.ci_high, (key, row.to_dict())
    df = V.variance_benchmark([c for c in grid if c.estimator == biased_estimator])
    row = _by(df, "bias").loc[(biased_estimator, "none")]
    assert row.ci_low > 0, row.to_dict()
    assert float(_by(df, "bias_p_value").loc[(biased_estimator, "none")].value) < 1e-3


def test_the_learned_baseline_trains_alongside_the_model():
    """At step 200 on digits: NVIL's baseline cuts the encoder variance of the plain score function 10x or more
    (the ratio's low end: none's interval low end over learned's high end), and is no worse than the moving average
    (its estimate is under the moving average's interval's high end)."""
    grid = V.configs(
        problems=["digits"],
        estimators=["score_function"],
        control_variates=["none", "moving_average", "learned"],
        backends=["torch"],
        train_steps=[200],
        replicates=64,
        batch_size=32,
    )
    enc = _by(V.variance_benchmark(grid), "encoder_variance")
    none, ma, learned = (enc.loc[("score_function", c)] for c in ("none", "moving_average", "learned"))
    assert none.ci_low / learned.ci_high >= 10, (none.to_dict(), learned.to_dict())
    assert learned.value <= ma.ci_high, (learned.to_dict(), ma.to_dict())


def test_a_stateful_control_variate_is_in_its_state_at_the_train_point():
    cfg = V.VarianceConfig(estimator="score_function", control_variate="moving_average", train_step=7, replicates=4)
    dataset, _, _ = V._problem(cfg, {})
    est = V._make_est("score_function", "moving_average")
    V._update_along_trajectory(cfg, est, dataset)
    assert est.cv.steps == 7  # one update per training step, as in training
    at0 = V._make_est("score_function", "moving_average")
    V._update_along_trajectory(V.VarianceConfig(estimator="score_function", train_step=0), at0, dataset)
    assert at0.cv.steps == 0


def test_replicates_are_chosen_by_the_pilot_and_the_cap_is_marked():
    grid = V.configs(
        problems=["gauss_quadratic"],
        estimators=["reparam", "score_function"],
        control_variates=["none"],
        backends=["torch"],
        replicates=None,
        max_replicates=48,
        target_rel_bias=0.2,
        toy_dim=8,
    )
    df = V.variance_benchmark(grid)
    r = _by(df, "replicates")["value"]
    capped = _by(df, "replicates_capped")["value"]
    assert r.loc[("score_function", "none")] == 48 and capped.loc[("score_function", "none")] == 1
    assert V.PILOT_REPLICATES <= r.loc[("reparam", "none")] < 48 and capped.loc[("reparam", "none")] == 0
    mde = _by(df, "bias_mde")["value"]
    assert mde.loc[("reparam", "none")] <= 0.2 * 1.5  # the rule's target, within the pilot's noise
    assert math.isfinite(mde.loc[("score_function", "none")])
