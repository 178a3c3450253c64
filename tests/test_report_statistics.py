"""The report's statistics: paired variance ratios, bias wording, seed intervals, time to target."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.measure import variance as V
from bench.report import tables as rt
from bench.results import Manifest, ResultsWriter, make_result


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ratios")
    grid = V.configs(
        problems=["gauss_quadratic"],
        estimators=["reparam", "stl", "score_function"],
        backends=["torch"],
        replicates=64,
        toy_dim=8,
        bootstrap=50,
    )
    V.variance_benchmark(grid, out=out)
    Manifest.collect(benchmark="variance").write(out)
    return rt.load_run(out)


def test_variance_ratios_are_paired_and_called_by_their_interval(toy_run):
    t = rt.variance_ratio_table(toy_run, "reparam").set_index("estimator")
    sf = t.loc["score_function"]
    assert sf["verdict"] == "higher" and sf["_lo"] > 1 and sf["paired replicates"] == 64
    # on a Gaussian expectation stl is reparam (no log q term): the same noise gives the same estimates
    stl = t.loc["stl"]
    assert stl["_ratio"] == pytest.approx(1.0) and stl["verdict"] == "no difference"
    d = np.load(toy_run.path / "replicates" / f"{_hash(toy_run, 'score_function')}.npz")["total"]
    r = np.load(toy_run.path / "replicates" / f"{_hash(toy_run, 'reparam')}.npz")["total"]
    assert sf["_ratio"] == pytest.approx(d.mean() / r.mean())


def _hash(run, estimator):
    d = run.results
    return d[(d.estimator == estimator) & (d.metric == "total_variance")]["config_hash"].iloc[0]


def test_the_variance_table_words_bias_by_its_test(toy_run):
    t = rt.variance_table(toy_run.results).set_index("estimator")
    assert t.loc["reparam", "bias"].startswith("no detectable bias (p = ")
    assert t.loc["reparam", "R"] == "64"
    assert "bias MDE" in t.columns


def _train_rows(seed: int, finals: dict[str, float], walls=(1.0, 2.0, 3.0)):
    rows = []
    for est, final in finals.items():
        key = {"benchmark": "train", "estimator": est, "seed": seed}
        common = dict(benchmark="train", problem="digits", estimator=est, backend="torch", seed=seed)
        for step, frac, wall in zip((10, 20, 30), (0.5, 0.9, 1.0), walls, strict=True):
            value = -100 + frac * (final + 100)
            rows.append(make_result(key, **common, metric="val_elbo", unit="nats", value=value, step=step))
            rows.append(make_result(key, **common, metric="wall_s", unit="s", value=wall, step=step))
        rows.append(make_result(key, **common, metric="test_ll", unit="nats", value=final - 1 + 0.1 * seed))
        rows.append(make_result(key, **common, metric="test_ll_se", unit="nats", value=0.3))
    return rows


def test_convergence_intervals_across_seeds_and_time_to_target(tmp_path):
    w = ResultsWriter(tmp_path)
    for seed in (0, 1, 2):
        w.append(_train_rows(seed, {"reparam": -30.0 + seed, "score_function": -40.0}))
    df = rt.load_run(tmp_path).results
    t = rt.convergence_table(df).set_index("estimator")
    m, lo, hi = rt.t_interval([-30.0, -29.0, -28.0])
    assert t.loc["reparam", "final val ELBO"] == f"{rt._fmt(m)} [{rt._fmt(lo, 4)}, {rt._fmt(hi, 4)}]"
    from scipy.stats import t as student_t

    assert hi - m == pytest.approx(student_t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    # target: best final (reparam, mean -29) minus 1 nat = -30; every reparam seed reaches it at its last step
    assert rt.default_target(df, "digits") == pytest.approx(-30.0)
    assert t.loc["reparam", "steps to target"] == "30"
    assert t.loc["reparam", "time to target [s]"].endswith("(3/3 seeds)")
    assert t.loc["score_function", "time to target [s]"] == "not reached"
    assert "[" in t.loc["reparam", "test log-lik [nats]"]
    assert "minus 1 nat" in rt.convergence_target_note(df)


def test_one_seed_gets_its_importance_sampling_interval(tmp_path):
    w = ResultsWriter(tmp_path)
    w.append(_train_rows(0, {"reparam": -30.0}))
    t = rt.convergence_table(rt.load_run(tmp_path).results).set_index("estimator")
    v = -31.0
    assert (
        t.loc["reparam", "test log-lik [nats]"]
        == f"{rt._fmt(v)} [{rt._fmt(v - 1.96 * 0.3, 4)}, {rt._fmt(v + 1.96 * 0.3, 4)}]"
    )
    assert pd.isna(rt.t_interval([1.0])[1])
