"""Per-sample gradients: batched (``estimators.per_sample_grads``) vs a Python loop of R backward passes.

Run with ``pytest --benchmark tests/benchmarks/test_estimator_bench.py``. Each
case times the batched call with pytest-benchmark and the loop reference
(``per_sample_grads_loop`` / a loop of ``surrogate(...).backward()``) in the same
run, checks that both give the same rows, and records in ``benchmark.extra_info``:
``loop_s`` and ``batched_s`` (medians), ``speedup = loop_s / batched_s``, R, the
chunk size and the peak-RSS growth of the process. Targets: >= 20x on
the small problems (Gaussian toys, ppca with d <= 20); never slower than the loop
on the default VAE (784-200-200-50 tanh). Timings are not asserted (a shared
CPU makes them noisy); the speedups are printed and stored. Measured figures
are in docs/measurements/.

``ELBOBENCH_BENCH_R`` overrides R (default 1024).
"""

from __future__ import annotations

import os
import resource

import pytest
import torch

import estimators
from bench.measure.timing import quantile, time_call
from bench.problems import ppca

pytestmark = pytest.mark.benchmark

R = int(os.environ.get("ELBOBENCH_BENCH_R", "1024"))
MU = torch.tensor([[0.3, -0.5, 0.8], [-0.2, 0.4, 0.1]])
LOGVAR = torch.tensor([[-0.5, 0.2, -1.0], [0.1, -0.3, -0.6]])
A = torch.tensor([0.7, -0.4, 0.3])


def f_exp(z):
    return torch.exp((A * z).sum(-1))


def _median(fn, rounds):
    return quantile(time_call(fn, repeats=rounds, warmup=0), 0.5)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _record(benchmark, loop_s, rounds, label, rss0, **extra):
    batched = benchmark.pedantic(extra.pop("batched_fn"), rounds=rounds, iterations=1, warmup_rounds=1)
    batched_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "R": R,
            "loop_s": loop_s,
            "batched_s": batched_s,
            "speedup": loop_s / batched_s,
            "peak_rss_growth_mib": _rss_mib() - rss0,
            **extra,
        }
    )
    print(f"\n{label}: loop {loop_s * 1e3:.1f} ms, batched {batched_s * 1e3:.1f} ms, speedup {loop_s / batched_s:.1f}x")
    return batched


TOY_CASES = [
    ("reparam", {}, 1),
    ("score_function", {"control_variate": "leave_one_out"}, 4),
    ("measure_valued", {}, 1),
]


@pytest.mark.parametrize(("name", "opts", "s"), TOY_CASES, ids=[c[0] for c in TOY_CASES])
def test_gaussian_toy(benchmark, name, opts, s):
    est = estimators.get(name, **opts)
    noise = estimators.replicate_noise(est, s, tuple(MU.shape), R, seed=0)

    def loop():
        rows = []
        for r in range(R):
            mu, lv = MU.clone().requires_grad_(), LOGVAR.clone().requires_grad_()
            est.surrogate(f_exp, mu, lv, s, eps=noise[r]).sum().backward()
            rows.append(mu.grad)
        return torch.stack(rows)

    def batched():
        return estimators.per_sample_grads_expectation(est, f_exp, MU, LOGVAR, R, num_samples=s, seed=0)

    rss0 = _rss_mib()
    ref = loop()
    loop_s = _median(loop, 3)
    out = _record(benchmark, loop_s, 5, f"toy {est.label}", rss0, batched_fn=batched, problem="gauss_exp")
    torch.testing.assert_close(out["mu"], ref, rtol=1e-4, atol=1e-5)


PPCA_CASES = [
    ("reparam", {}, 1),
    ("stl", {}, 1),
    ("score_function", {"control_variate": "leave_one_out"}, 4),
    ("iwae", {}, 4),
    ("dreg", {}, 4),
]


@pytest.mark.parametrize(("name", "opts", "s"), PPCA_CASES, ids=[c[0] for c in PPCA_CASES])
def test_ppca(benchmark, name, opts, s):
    """Linear-Gaussian VAE, d = 10, k = 3, batch 20."""
    params = ppca.random_params(10, 3, seed=0)
    x = ppca.sample(params, 20, seed=1).float()
    model = ppca.LinearGaussianVAE.from_params(params, dtype=torch.float32)
    est = estimators.get(name, **opts)
    rss0 = _rss_mib()
    ref = estimators.per_sample_grads_loop(est, model, x, R, num_samples=s, seed=0)
    loop_s = _median(lambda: estimators.per_sample_grads_loop(est, model, x, R, num_samples=s, seed=0), 1)
    out = _record(
        benchmark,
        loop_s,
        5,
        f"ppca {est.label}",
        rss0,
        batched_fn=lambda: estimators.per_sample_grads(est, model, x, R, num_samples=s, seed=0),
        problem="ppca_d10",
    )
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)


VAE_CASES = [("reparam", {}, 1), ("score_function", {"control_variate": "leave_one_out"}, 2), ("iwae", {}, 2)]


@pytest.mark.parametrize(("name", "opts", "s"), VAE_CASES, ids=[c[0] for c in VAE_CASES])
def test_default_vae(benchmark, name, opts, s):
    """784-200-200-50 tanh Bernoulli VAE (Burda et al. 2016), batch 20; chunked over R."""
    from bench.problems.models import MLPVAE

    torch.manual_seed(0)
    model = MLPVAE(784, 50)
    x = torch.bernoulli(torch.full((20, 784), 0.3), generator=torch.Generator().manual_seed(0))
    est = estimators.get(name, **opts)
    rss0 = _rss_mib()
    loop_s = time_call(
        lambda: estimators.per_sample_grads_loop(est, model, x, R, num_samples=s, seed=0), repeats=1, warmup=0
    )[0]
    out = _record(
        benchmark,
        loop_s,
        1,
        f"default VAE {est.label}",
        rss0,
        batched_fn=lambda: estimators.per_sample_grads(est, model, x, R, num_samples=s, seed=0),
        problem="mlp_784_200_200_50",
        params=sum(p.numel() for p in model.parameters()),
    )
    check = estimators.per_sample_grads_loop(est, model, x, 4, num_samples=s, seed=0)
    for k in check:
        torch.testing.assert_close(out[k][:4], check[k], rtol=1e-4, atol=1e-5)
