"""The harness: CLI validation, resume, checkpoints, importance sampling, variance statistics, backends."""

from __future__ import annotations

import argparse
import math

import pandas as pd
import pytest
import torch
from torch import nn

import kernels
from bench import cli
from bench.cli import options as opt
from bench.measure import train as T
from bench.measure import variance as V
from bench.results import read_results

SMALL = {"steps": 30, "batch_size": 50, "eval_every": 10, "is_k": 10, "eval_size": 64, "test_size": 64}


def _numba_runs() -> bool:
    return "numba" in kernels.available_backends("cpu")


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--estimators", "reparam,bogus"], "--estimators: unknown estimator 'bogus'; expected some of"),
        (["train", "--backends", "cuda_magic"], "--backends: unknown backend 'cuda_magic'"),
        (["train", "--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'; expected one of"),
        (["variance", "--dataset", "imagenet"], "--dataset: unknown dataset or problem 'imagenet'"),
        (["train", "--seeds", "0,-1"], "--seeds"),
        (["train", "--seeds", "a"], "--seeds: 'a' is not an integer"),
        (["train", "--control-variates", "magic"], "--control-variates: unknown control variate 'magic'"),
        (["train", "--resume"], "--resume needs --out"),
        (["variance", "--replicates", "1"], "--replicates: got 1; expected an integer >= 2"),
        (["variance", "--num-samples", "0"], "--num-samples: got 0; expected integers >= 1"),
        (["speed", "--kernel-sizes", "12by3"], "--kernel-sizes: '12by3' is not ROWSxCOLS"),
        (["run", "--skip", "nothing"], "--skip: unknown part 'nothing'"),
        (["run", "--estimators", "nope"], "--estimators: unknown estimator 'nope'"),
        (["train", "--data-dir", "/no/such/dir"], "--data-dir: '/no/such/dir' is not a directory"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    rc = cli.main([*argv, "--out", str(out)] if "--resume" not in argv else argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize(
    "argv", [["train", "--steps", "0"], ["train", "--steps", "-3"], ["train", "--batch-size", "x"]]
)
def test_non_positive_counts_are_rejected_by_argparse(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_results_need_resume(tmp_path, capsys):
    (tmp_path / "results.csv").write_text("x\n1\n")
    rc = cli.main(["train", "--out", str(tmp_path)])
    assert rc == 2 and "pass --resume" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for name in ("variance", "speed", "train", "run"):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"elbobench {name}" in text and "--resume" in text


def test_parse_helpers():
    assert opt.parse_ints("0-2,5", "--seeds", minimum=0) == [0, 1, 2, 5]
    assert opt.parse_list("a, b,a", "--x") == ["a", "b"]
    with pytest.raises(opt.OptionError, match="empty item"):
        opt.parse_list("a,,b", "--x")
    assert opt.parse_sizes(" 256x64,4096X1024,256X64", "--sizes") == [(256, 64), (4096, 1024)]
    with pytest.raises(opt.OptionError, match="--sizes: '256by64' is not ROWSxCOLS"):
        opt.parse_sizes("256by64", "--sizes")
    with pytest.raises(opt.OptionError, match="--sizes: got '0x64'; expected positive sizes"):
        opt.parse_sizes("0x64", "--sizes")


# --------------------------------------------------------------------------- training
def test_train_rows_and_curve_improves():
    cfg = T.TrainConfig(estimator="reparam", steps=60, batch_size=50, eval_every=20, is_k=20, test_size=100)
    df = T.to_frame(T.train(cfg))
    assert set(df.metric) >= {
        "train_elbo",
        "val_elbo",
        "wall_s",
        "examples_per_s",
        "test_elbo",
        "test_ll",
        "test_ll_se",
    }
    val = df[df.metric == "val_elbo"].sort_values("step")
    assert list(val.step) == [20, 40, 60]
    assert val.value.iloc[-1] > val.value.iloc[0]  # 60 Adam steps improve the bound on digits
    wall = df[df.metric == "wall_s"].sort_values("step").value
    assert wall.is_monotonic_increasing
    ll = df[df.metric == "test_ll"].iloc[0]
    assert ll.ci_low < ll.value < ll.ci_high
    # the IS estimate (k = 20) is a tighter bound than the single-sample ELBO on the same test rows
    assert ll.value >= df[df.metric == "test_elbo"].value.iloc[0] - 0.5


def _frozen_clock(monkeypatch):
    # the rows hold wall times; make them deterministic so two runs compare equal
    ticks = iter(range(10**9))
    monkeypatch.setattr(T.time, "perf_counter", lambda: float(next(ticks)))


def test_training_resume_continues_from_checkpoint(tmp_path, monkeypatch):
    _frozen_clock(monkeypatch)
    cfg = T.TrainConfig(estimator="reparam", checkpoint_every=10, **SMALL)
    full = T.to_frame(T.train(cfg))

    class Stop(Exception):
        pass

    def stop_at_25(step, model):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        T.train(cfg, checkpoint_dir=tmp_path, on_step=stop_at_25)
    ckpt = torch.load(next(tmp_path.glob("*.pt")), weights_only=False)
    assert ckpt["step"] == 20 and [h["step"] for h in ckpt["history"]] == [10, 20]
    seen = []
    resumed = T.to_frame(T.train(cfg, checkpoint_dir=tmp_path, resume=True, on_step=lambda s, m: seen.append(s)))
    assert seen == list(range(21, 31))  # continued, not restarted
    for metric in ("train_elbo", "val_elbo", "test_ll"):
        a = full[full.metric == metric].value.to_numpy()
        b = resumed[resumed.metric == metric].value.to_numpy()
        assert a.shape == b.shape and (a == b).all(), metric  # bit-identical continuation


def test_resume_skips_finished_configs_and_interrupt_keeps_rows(tmp_path, monkeypatch):
    grid = T.configs(estimators=["reparam", "stl"], **{**SMALL, "is_k": 0}, checkpoint_every=0)
    calls = []
    real = T.train

    def interrupted(cfg, **kw):
        calls.append(cfg.estimator)
        if cfg.estimator == "stl":
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(T, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.train_benchmark(grid, out=tmp_path)
    first = read_results(tmp_path)
    assert set(first.estimator) == {"reparam"} and len(first) > 0  # the finished config was kept
    calls.clear()
    monkeypatch.setattr(T, "train", real)
    seen = []
    monkeypatch.setattr(T, "train", lambda cfg, **kw: seen.append(cfg.estimator) or real(cfg, **kw))
    T.train_benchmark(grid, out=tmp_path, resume=True)
    assert seen == ["stl"]  # reparam was done
    after = read_results(tmp_path)
    assert set(after.estimator) == {"reparam", "stl"}
    pd.testing.assert_frame_equal(after[after.estimator == "reparam"].reset_index(drop=True), first)
    with pytest.raises(FileExistsError, match="--resume"):
        T.train_benchmark(grid, out=tmp_path)


def test_train_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--estimators", "reparam", "--backends", "torch", "--steps", "20", "--is-k", "5"]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    df = read_results(out)
    assert (out / "manifest.json").exists()
    assert set(df.estimator) == {"reparam"} and "val_elbo" in set(df.metric)
    text = capsys.readouterr().out
    assert "val_elbo" in text and "results:" in text
    # rerun with --resume: nothing left to do, rows unchanged
    assert cli.main([*argv, "--out", str(out), "--resume", "--no-progress"]) == 0
    assert len(read_results(out)) == len(df)


@pytest.mark.skipif(not _numba_runs(), reason="numba backend not available")
def test_numba_and_torch_give_the_same_training_curve():
    # noise drawn once per step from the shared stream and passed as eps: backends differ only in rounding
    curves = {}
    for backend in ("numba", "torch"):
        cfg = T.TrainConfig(
            estimator="reparam",
            backend=backend,
            steps=200,
            batch_size=20,
            eval_every=20,
            eval_size=64,
            is_k=0,
            test_size=64,
        )
        df = T.to_frame(T.train(cfg))
        curves[backend] = df[df.metric.isin(["train_elbo", "val_elbo"])].value.to_numpy()
    rel = abs(curves["numba"] - curves["torch"]) / abs(curves["torch"])
    assert rel.max() < 1e-4, rel.max()


def test_lockstep_throughput_trains_each_config_as_train_does():
    """The paired throughput runs train exactly as :func:`train` (same steps, same bounds), timed per step."""
    from bench.problems import datasets

    data = datasets.load("digits", seed=0)
    base = T.TrainConfig(estimator="reparam", backend="torch", steps=12, batch_size=16, eval_every=12, is_k=0)
    other = "numba" if "numba" in kernels.available_backends("cpu") else "torch"
    short = T.TrainConfig(estimator="stl", backend=other, steps=5, batch_size=16, eval_every=5, is_k=0)
    runs = T.lockstep_throughput([base, short], dataset=data)
    assert [r["config"] for r in runs] == [base, short]
    for run, cfg in zip(runs, (base, short), strict=True):
        assert len(run["step_s"]) == len(run["train_elbo"]) == cfg.steps
        assert all(t > 0 for t in run["step_s"])
        assert run["examples_per_s"] > 0 and run["examples_per_s_mean"] > 0
        # train()'s train_elbo at its single evaluation is the mean bound of all its steps
        df = T.to_frame(T.train(cfg, dataset=data))
        want = df[df.metric == "train_elbo"].value.iloc[-1]
        assert math.isclose(sum(run["train_elbo"]) / cfg.steps, want, rel_tol=1e-5)


def test_lockstep_throughput_needs_configs():
    with pytest.raises(ValueError, match="configs must name at least one"):
        T.lockstep_throughput([])


# --------------------------------------------------------------------------- importance sampling
class _LinearGaussian(nn.Module):
    """p(z) = N(0, I_k), p(x|z) = N(Wz + b, s2 I); q(z|x) = N(A x + c, diag exp(lv)) (deliberately inexact)."""

    likelihood = "gaussian"

    def __init__(self, d=5, k=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, k, generator=g, dtype=torch.float64)
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.s2 = 0.5
        m = self.W.T @ self.W + self.s2 * torch.eye(k, dtype=torch.float64)
        self.A = torch.linalg.solve(m, self.W.T)  # the exact posterior mean map M^-1 W^T
        self.lv = torch.log(self.s2 * torch.diagonal(torch.linalg.inv(m))) + 0.7  # too-wide diagonal q

    def encode(self, x):
        mu = (x - self.b) @ self.A.T
        return mu, self.lv.expand_as(mu)

    def decode(self, z):
        mean = z @ self.W.T + self.b
        return mean, torch.full_like(mean, math.log(self.s2))

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)


def test_importance_sampling_converges_to_exact_log_px():
    m = _LinearGaussian()
    with torch.no_grad():
        x = m.decode(torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
        x = x + math.sqrt(m.s2) * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = m.exact_log_px(x)
    gaps = {}
    for k in (1, 10, 1000):
        est = T.importance_sampled_log_likelihood(m, x, k, seed=3)
        gap = est - exact
        gaps[k] = (float(gap.mean()), float(gap.std() / math.sqrt(gap.numel())))
    # k = 1 is the ELBO: below log p(x) by the mean KL(q || p(z|x)) > 0 (q is too wide)
    assert gaps[1][0] < -4 * gaps[1][1]
    # the gap shrinks with k and at k = 1000 is zero within 4 standard errors of its mean (z = 4)
    assert abs(gaps[10][0]) < abs(gaps[1][0]) and abs(gaps[1000][0]) < abs(gaps[10][0])
    assert abs(gaps[1000][0]) < 4 * gaps[1000][1] + 1e-3


def test_importance_sampling_chunking_is_consistent():
    m = _LinearGaussian()
    x = torch.randn(7, 5, dtype=torch.float64)
    a = T.importance_sampled_log_likelihood(m, x, 64, seed=0)
    b = T.importance_sampled_log_likelihood(m, x, 64, seed=0, max_elements=5 * 7 * 10)  # chunks of k
    assert torch.allclose(a, b, atol=0.5)  # different noise chunks, same estimate within MC error
    torch.testing.assert_close(a, T.importance_sampled_log_likelihood(m, x, 64, seed=0))  # reproducible
    with pytest.raises(ValueError, match="k must be a positive int"):
        T.importance_sampled_log_likelihood(m, x, 0)


# --------------------------------------------------------------------------- variance statistics
def test_gradient_stats_recovers_known_variance_bias_and_cosine():
    gen = torch.Generator().manual_seed(0)
    r, p = 4000, 6
    sd = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.5, 0.3], dtype=torch.float64)
    truth = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    g = truth + sd * torch.randn(r, p, generator=gen, dtype=torch.float64)
    st = V.gradient_stats(g, truth, bootstrap=300, seed=1)
    true_var = float((sd**2).sum())  # 7.68
    # Var of the sample trace: sum 2 sd^4 / (r - 1); z = 4
    se = math.sqrt(float((2 * sd**4).sum()) / (r - 1))
    assert abs(st["total_variance"] - true_var) < 4 * se
    assert st["ci_low"] < true_var < st["ci_high"]
    assert st["ci_high"] - st["ci_low"] < 8 * se
    # unbiased: bias_sq has mean 0 and sd ~ sqrt(2 sum sd^4) / r; z = 4
    assert abs(st["bias_sq"]) < 4 * math.sqrt(float((2 * sd**4).sum())) / r
    assert st["cosine"] > 0.999
    shift = torch.tensor([0.3, 0, 0, 0, -0.4, 0], dtype=torch.float64)
    st_b = V.gradient_stats(g + shift, truth, bootstrap=0)
    # E||gbar - g*||^2 - tr/R = ||shift||^2 = 0.25; sd of the estimate ~ 2 ||shift|| sqrt(var/R) ~ 0.02; z = 4
    assert abs(st_b["bias_sq"] - 0.25) < 4 * 2 * 0.5 * math.sqrt(true_var / r) + 0.01
    assert math.isnan(st_b["ci_low"])
    with pytest.raises(ValueError, match="at least 2"):
        V.gradient_stats(g[:1])


@pytest.mark.parametrize("toy", [t for t in V.TOYS if V.toy_family(t) == "normal"])
def test_toy_exact_gradients_match_reparam_mean(toy):
    import estimators

    f, mu, logvar, exact = V.toy_problem(toy, 8, seed=0)
    est = estimators.get("reparam")
    r = 4000
    g = V.toy_per_sample_grads(est, f, mu, logvar, r, 1, seed=0)
    for name in ("mu", "logvar"):
        mean = g[name].double().mean(0)
        se = g[name].double().std(0) / math.sqrt(r)
        z = (mean - exact[name]).abs() / se.clamp_min(1e-12)
        assert float(z.max()) < 4.5, (name, z)  # z-bound 4.5 over 8 coordinates


def test_variance_benchmark_rows(tmp_path):
    grid = V.configs(
        problems=["digits", "gauss_quadratic"],
        estimators=["reparam", "score_function", "iwae"],
        control_variates=["none", "leave_one_out"],
        num_samples=[2],
        train_steps=[0],
        replicates=16,
        bootstrap=50,
        batch_size=8,
    )
    # iwae is VAE-only: no toy configuration for it
    assert not any(c.problem == "gauss_quadratic" and c.estimator == "iwae" for c in grid)
    df = V.variance_benchmark(grid, out=tmp_path, reference_estimates=256)
    assert set(df.config_hash) == {c_hash for c_hash in read_results(tmp_path).config_hash}
    vae = df[(df.problem == "digits") & (df.estimator == "reparam")]
    metrics = set(vae.metric)
    assert {"total_variance", "encoder_variance", "decoder_variance", "snr", "variance_x_seconds",
            "variance_x_evals", "bias_sq", "bias", "cosine", "seconds_per_estimate"} <= metrics  # fmt: skip
    tv = vae[vae.metric == "total_variance"].iloc[0]
    assert tv.value > 0 and tv.ci_low <= tv.value <= tv.ci_high
    # leave-one-out reduces the score-function variance on the toy (S = 2), a large effect
    toy = df[(df.problem == "gauss_quadratic") & (df.metric == "total_variance")]
    sf = toy[(toy.estimator == "score_function")].set_index("control_variate").value
    assert sf["leave_one_out"] < sf["none"]
    # resume: all done, nothing re-measured
    again = V.variance_benchmark(grid, out=tmp_path, resume=True)
    assert again.empty


def test_variance_cli_small(tmp_path):
    argv = ["variance", "--dataset", "digits,gauss_cosine", "--estimators", "reparam", "--backends", "torch",
            "--replicates", "8", "--bootstrap", "20", "--batch-size", "4", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    df = read_results(tmp_path)
    assert set(df.problem) == {"digits", "gauss_cosine"}


def test_namespace_roundtrip():
    # add_common + resolve_common accept the documented comma lists
    p = argparse.ArgumentParser()
    opt.add_common(p)
    a = p.parse_args(["--estimators", "reparam,stl", "--backends", "torch", "--seeds", "0-1", "--out", "x"])
    c = opt.resolve_common(a, default_estimators="reparam")
    assert c["estimators"] == ["reparam", "stl"] and c["seeds"] == [0, 1] and c["backends"] == ["torch"]


def test_variance_on_ppca_uses_the_exact_gradient():
    # reparam is unbiased for the ELBO gradient: squared bias ~ 0 and cosine ~ 1 against the closed form
    grid = V.configs(problems=["ppca"], estimators=["reparam"], replicates=512, bootstrap=50, batch_size=16)
    df = V.variance_benchmark(grid)
    val = df.set_index("metric").value
    assert val["cosine"] > 0.99
    # E[bias_sq] = 0 for an unbiased estimator; its sd is about sqrt(2) tr(Var) / R: z = 4 bound
    assert abs(val["bias_sq"]) < 4 * math.sqrt(2) * val["total_variance"] / 512


def test_bootstrap_ci_is_centred_on_the_estimate_for_small_r():
    # many iid dims make the trace nearly deterministic given the rows, so an uncorrected
    # bootstrap (biased by (R-1)/R = 0.97 at R = 32) would put the CI entirely below the estimate
    g = torch.randn(32, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    st = V.gradient_stats(g, bootstrap=400, seed=0)
    assert st["ci_low"] < st["total_variance"] < st["ci_high"]


# --------------------------------------------------------------------------- estimator speed
def test_time_interleaved_calls_each_fn_under_its_backend_in_rotating_order():
    from bench.measure import speed as S

    calls = []
    fns = {b: (lambda b=b: calls.append((b, kernels.get_backend()))) for b in ("torch", "numba")}
    out = S.time_interleaved(fns, repeats=4, warmup=1)
    assert {k: len(v) for k, v in out.items()} == {"torch": 4, "numba": 4}
    assert all(b == active for b, active in calls)  # each call ran under its own backend
    timed = [b for b, _ in calls[2:]]  # after one warm-up call each
    assert timed == ["torch", "numba", "numba", "torch", "torch", "numba", "numba", "torch"]


def test_estimator_speed_rows_per_backend_and_resume(tmp_path):
    from bench.measure import speed as S
    from bench.results import ResultsWriter

    backends = ["torch", "numba"] if "numba" in kernels.available_backends("cpu") else ["torch"]
    writer = ResultsWriter(tmp_path)
    df = S.estimator_speed(backends=backends, batch_sizes=[8], repeats=3, profile=False, writer=writer)
    for b in backends:
        got = set(df[df.backend == b].metric)
        assert {"ms", "steps_per_s", "examples_per_s"} <= got
    n = len(read_results(tmp_path))
    again = S.estimator_speed(backends=backends, batch_sizes=[8], repeats=3, profile=False, writer=writer)
    assert again.empty and len(read_results(tmp_path)) == n  # every configuration done: nothing re-timed


def test_training_summary_says_its_examples_per_s_are_not_a_backend_comparison():
    def rows(backends):
        out = []
        for b in backends:
            for metric, v in (("val_elbo", -25.0), ("examples_per_s", 1e4), ("test_ll", -24.0), ("test_ll_se", 0.3)):
                out.append(dict(problem="digits", estimator="reparam", control_variate="none", backend=b, seed=0,
                                metric=metric, step=300, value=v))  # fmt: skip
        return pd.DataFrame(out)

    two = T.summary(rows(["numba", "torch"]))
    assert "one after another" in two and "throughput table" in two and "interleaved" in two
    assert "one after another" not in T.summary(rows(["torch"]))


@pytest.mark.parametrize(("extra", "options"), [([], None), (["--interleave-kernels"], {"interleave": True})])
def test_speed_interleave_kernels_reaches_kernel_speed(extra, options):
    import argparse

    from bench.cli import speed as S

    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    _, kw = S.resolve(parser.parse_args(["--kernel-sizes", "8x8", *extra]))
    assert kw.get("kernel_options") == options


def test_variance_on_the_bernoulli_toy_measures_discrete_estimators_against_the_exact_gradient(tmp_path):
    argv = ["variance", "--dataset", "bernoulli_toy", "--toy-dim", "3", "--estimators", "reparam,score_function,disarm,"
            "gumbel_softmax", "--control-variates", "none,optimal", "--backends", "torch", "--replicates", "4000",
            "--bootstrap", "20", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    df = read_results(tmp_path)
    # reparam (Gaussian only) and the optimal control variate (Gaussian score) are skipped
    assert set(zip(df.estimator, df.control_variate, strict=True)) == {
        ("score_function", "none"),
        ("disarm", "none"),
        ("gumbel_softmax", "none"),
    }
    bias = df[df.metric == "bias"].set_index("estimator")
    # the unbiased ones' 95% bias interval starts at 0; the relaxation's excludes it (R = 4000)
    assert bias.loc["disarm", "ci_low"] == 0 and bias.loc["score_function", "ci_low"] == 0
    assert bias.loc["gumbel_softmax", "ci_low"] > 0


def test_variance_on_the_bernoulli_toy_refuses_only_gaussian_estimators(tmp_path, capsys):
    argv = ["variance", "--dataset", "bernoulli_toy", "--estimators", "reparam", "--out", str(tmp_path),
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "none of ['reparam'] is defined for the latent family" in capsys.readouterr().err
