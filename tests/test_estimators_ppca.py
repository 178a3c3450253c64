"""The linear-Gaussian VAE (bench/problems/ppca.py): closed forms, and every estimator against them.

Statistical checks use fixed seeds and ``|mean - exact| <= Z * SE`` with the
estimator's own standard error; Z = 5 (two-sided p = 5.7e-7 per comparison; a few
hundred comparisons here, so a false alarm has probability < 1e-3).
"""

from __future__ import annotations

import math

import pytest
import torch

import estimators
from bench.problems import ppca

Z = 5.0
D, K, B = 5, 2, 3


def assert_unbiased(samples, truth, what, z=Z):
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    bound = z * se + 1e-9 * (1.0 + truth.abs())
    assert ((mean - truth).abs() <= bound).all(), f"{what}: mean {mean} vs exact {truth}, SE {se}"


@pytest.fixture(scope="module")
def problem():
    """A float64 model with a generic (non-optimal) encoder and a batch of 3 points."""
    params = ppca.random_params(D, K, seed=3)
    x = ppca.sample(params, B, seed=4)
    torch.manual_seed(0)
    model = ppca.LinearGaussianVAE.from_params(params, dtype=torch.float64)
    with torch.no_grad():
        model.encoder.logvar.copy_(torch.tensor([-0.7, -0.2], dtype=torch.float64))
        model.decoder.log_s2.fill_(math.log(0.8))
    return model, x


@pytest.fixture(scope="module")
def posterior_problem():
    """W with orthogonal columns and the encoder set to the exact posterior."""
    params = ppca.random_params(D, K, seed=5, orthogonal=True)
    x = ppca.sample(params, B, seed=6)
    model = ppca.LinearGaussianVAE.from_params(params, dtype=torch.float64)
    model.set_exact_posterior()
    return model, x


# --------------------------------------------------------------------------- closed forms
def test_closed_form_gradients_match_autograd(problem):
    model, x = problem
    loss = -model.exact_elbo(x).mean()
    names = [n for n, _ in model.named_parameters()]
    auto = torch.autograd.grad(loss, list(model.parameters()))
    exact = model.exact_loss_grads(x)
    for name, g in zip(names, auto, strict=True):
        torch.testing.assert_close(exact[name], g, rtol=1e-12, atol=1e-12, msg=name)


def test_log_marginal_and_posterior_are_exact(problem):
    model, x = problem
    w, b, log_s2 = (t.detach() for t in model._theta())
    s2 = log_s2.exp()
    ref = torch.distributions.MultivariateNormal(b, w @ w.T + s2 * torch.eye(D, dtype=w.dtype)).log_prob(x)
    torch.testing.assert_close(ppca.log_marginal(x, w, b, s2), ref, rtol=1e-12, atol=1e-12)
    # Bayes' rule at any z: log p(x) = log p(x|z) + log p(z) - log p(z|x)
    mean, cov = ppca.exact_posterior(x, w, b, s2)
    z = torch.randn(B, K, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lik = torch.distributions.Normal(z @ w.T + b, s2.sqrt()).log_prob(x).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    post = torch.distributions.MultivariateNormal(mean, cov).log_prob(z)
    torch.testing.assert_close(lik + prior - post, ref, rtol=1e-12, atol=1e-12)


def test_elbo_is_a_bound_tight_at_the_exact_posterior(problem, posterior_problem):
    model, x = problem
    gap = model.log_marginal(x) - model.exact_elbo(x)
    assert (gap > 1e-3).all(), gap
    model, x = posterior_problem
    torch.testing.assert_close(model.exact_elbo(x), model.log_marginal(x), rtol=1e-12, atol=1e-12)
    enc = {k: v for k, v in model.exact_loss_grads(x).items() if k.startswith("encoder")}
    assert max(v.abs().max().item() for v in enc.values()) < 1e-12


def test_closed_form_elbo_matches_monte_carlo(problem):
    """E_q[log p(x|z) + log p(z) - log q(z)] by 20,000 samples (torch.distributions) within Z SE."""
    model, x = problem
    with torch.no_grad():
        mu, logvar = model.encode(x)
        w, b, log_s2 = model._theta()
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        z = q.sample((20000,))
        lw = (
            torch.distributions.Normal(z @ w.T + b, (0.5 * log_s2).exp()).log_prob(x).sum(-1)
            + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            - q.log_prob(z).sum(-1)
        )
    assert_unbiased(lw, model.exact_elbo(x).detach(), "Monte Carlo ELBO")


def test_set_exact_posterior_needs_diagonal_wtw(problem):
    model, _ = problem
    with pytest.raises(ValueError, match="W\\^T W must be diagonal"):
        model.set_exact_posterior()


def test_harness_hooks():
    x, info = ppca.dataset_arrays(seed=0)
    assert x.shape == (ppca.DEFAULT_N, ppca.DEFAULT_D) and x.dtype.name == "float32"
    assert info["W"].shape == (ppca.DEFAULT_D, ppca.DEFAULT_K) and info["likelihood"] == "gaussian"

    class _Data:
        dim = ppca.DEFAULT_D

    _Data.info = info
    m = ppca.model_for(_Data())
    assert (m.d, m.k) == (ppca.DEFAULT_D, ppca.DEFAULT_K)
    assert all(n.startswith(("encoder.", "decoder.")) for n, _ in m.named_parameters())


# --------------------------------------------------------------------------- estimators vs exact
SINGLE = [
    ("reparam", {}, "analytic", 1),
    ("reparam", {}, "mc", 1),
    ("stl", {}, "mc", 1),
    ("score_function", {"control_variate": None}, "analytic", 1),
    ("score_function", {"control_variate": "moving_average"}, "analytic", 1),
    ("score_function", {"control_variate": "leave_one_out"}, "analytic", 2),
    ("score_function", {"control_variate": "optimal"}, "analytic", 1),
    ("score_function", {"control_variate": "delta"}, "analytic", 1),
    ("score_function", {"control_variate": "learned"}, "mc", 2),
    ("measure_valued", {"coupling": True}, "analytic", 1),
    ("measure_valued", {"coupling": False}, "mc", 1),
    ("iwae", {}, "mc", 1),
    ("dreg", {}, "mc", 1),
]


def _warm(est, model, x):
    """Give moving-average / learned baselines a trained state before they are frozen."""
    if getattr(getattr(est, "cv", None), "name", None) in ("moving_average", "learned"):
        for s in range(30):
            est.vae_loss(model, x, num_samples=2, seed=1000 + s)


@pytest.mark.parametrize(("name", "opts", "kl", "s"), SINGLE, ids=lambda v: str(v))
def test_mean_gradient_matches_exact(problem, name, opts, kl, s):
    model, x = problem
    est = estimators.get(name, **opts)
    _warm(est, model, x)
    r = 20000 if name == "score_function" else 4000  # the score function's SE is ~5x larger: more replicates
    g = estimators.per_sample_grads(est, model, x, r, num_samples=s, kl=kl, seed=21)
    exact = model.exact_loss_grads(x)
    for pname, rows in g.items():
        assert_unbiased(rows, exact[pname], f"{est.label} kl={kl} S={s}: {pname}")


def test_multi_sample_estimators_agree_on_the_iwae_gradient(problem):
    """IWAE (pathwise), DReG and VIMCO estimate the same gradient of the K = 3 bound."""
    model, x = problem
    grads = {
        n: estimators.per_sample_grads(estimators.get(n), model, x, 3000, num_samples=3, seed=31)
        for n in ("iwae", "dreg", "vimco")
    }
    for pname in grads["iwae"]:
        ref = grads["iwae"][pname]
        for other in ("dreg", "vimco"):
            o = grads[other][pname]
            diff = ref.mean(0) - o.mean(0)
            se = torch.sqrt(ref.var(0) / ref.shape[0] + o.var(0) / o.shape[0])
            assert (diff.abs() <= Z * se + 1e-9).all(), f"iwae vs {other} on {pname}: {diff} (SE {se})"


@pytest.mark.parametrize("name", ["iwae", "dreg", "vimco", "stl", "reparam"])
def test_exact_posterior_bound_is_log_px_and_encoder_gradient_zero(posterior_problem, name):
    model, x = posterior_problem
    est = estimators.get(name)
    k = 1 if name in ("stl", "reparam") else 3
    for seed in range(3):
        _, bound = est.vae_loss(model, x, num_samples=k, seed=seed)
        if name != "reparam":  # kl="mc" bounds: every sample's log weight is log p(x)
            torch.testing.assert_close(bound, model.log_marginal(x).detach(), rtol=1e-10, atol=1e-10)
    g = estimators.per_sample_grads(est, model, x, 1000, num_samples=k, seed=41)
    for pname, rows in g.items():
        if not pname.startswith("encoder."):
            continue
        if name in ("dreg", "stl"):  # zero for every sample: zero variance
            assert rows.abs().max() < 1e-10, f"{name}: {pname} not exactly zero ({rows.abs().max():.3g})"
        else:  # zero in expectation only
            assert rows.abs().max() > 1e-6 or name == "reparam"
            assert_unbiased(rows, torch.zeros_like(rows[0]), f"{name}: {pname} at the exact posterior")


@pytest.mark.parametrize(("name", "kl"), [("reparam", "analytic"), ("reparam", "mc"), ("iwae", "mc")])
def test_elbo_value_is_unbiased_for_the_closed_form(problem, name, kl):
    """The per-example bound returned by vae_loss (S = 1) averages to the closed-form ELBO (Z-bound)."""
    model, x = problem
    n = 4000
    _, values = estimators.get(name).vae_loss(model, x.repeat(n, 1), num_samples=1, kl=kl, seed=5)
    assert_unbiased(values.reshape(n, B), model.exact_elbo(x).detach(), f"{name} kl={kl}: ELBO value")


# --------------------------------------------------------------------------- the closed-form decoder VJP hook
@pytest.mark.parametrize("rep_dim", [0, 1, 2])
@pytest.mark.parametrize("broadcast_logvar_cot", [False, True])
def test_decoder_vjp_equals_vmapped_vjp(problem, rep_dim, broadcast_logvar_cot):
    """``LinearGaussianVAE.decoder_vjp`` equals ``vmap`` of a ``vjp`` of ``decode`` along ``rep_dim``."""
    from torch.func import vjp, vmap

    model, _ = problem
    gen = torch.Generator().manual_seed(rep_dim)
    lead = [4, 3, 5, B][: rep_dim + 1] + [2, B]  # leading dims, replicates (R = 3 or 5 or B) at rep_dim
    z = torch.randn(*lead, K, generator=gen, dtype=torch.float64)
    c_mean = torch.randn(*lead, D, generator=gen, dtype=torch.float64)
    c_lv = torch.randn((), dtype=torch.float64).expand(*lead, D) if broadcast_logvar_cot else torch.randn_like(c_mean)
    params = {n: p.detach() for n, p in model.named_parameters() if n.startswith("decoder.")}

    def one_decode(zz, cm, cl):
        _, fn = vjp(lambda p: _decode_with(model, p, zz), params)
        return fn((cm, cl))[0]

    want = vmap(one_decode, in_dims=(rep_dim, rep_dim, rep_dim))(z, c_mean, c_lv)
    got = model.decoder_vjp(z, (c_mean, c_lv), rep_dim)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)


def _decode_with(model, params, z):
    """``model.decode(z)`` with ``params`` swapped in (``torch.func.functional_call`` on a wrapper)."""
    from torch.func import functional_call

    from estimators.per_sample import _Method

    return functional_call(_Method(model, "decode"), {"m." + n: p for n, p in params.items()}, (z,))


@pytest.mark.parametrize("name", ["reparam", "stl", "score_function", "iwae", "dreg", "vimco"])
def test_per_sample_grads_with_the_hook_equal_the_loop(problem, name, monkeypatch):
    """Batched per-sample gradients through ``decoder_vjp`` equal the loop of single backward passes,
    and the generic vmap path (the hook removed) gives the same rows."""
    model, x = problem
    est = estimators.get(name, **({"control_variate": "leave_one_out"} if name == "score_function" else {}))
    s = 3
    batched = estimators.per_sample_grads(est, model, x, 5, num_samples=s, seed=7, chunk_size=2)
    loop = estimators.per_sample_grads_loop(est, model, x, 5, num_samples=s, seed=7)
    monkeypatch.setattr(type(model), "decoder_vjp", None)
    generic = estimators.per_sample_grads(est, model, x, 5, num_samples=s, seed=7, chunk_size=2)
    for pname in loop:
        torch.testing.assert_close(batched[pname], loop[pname], rtol=1e-10, atol=1e-12, msg=f"{name} {pname}")
        torch.testing.assert_close(batched[pname], generic[pname], rtol=1e-10, atol=1e-12, msg=f"{name} {pname}")


def test_a_bad_decoder_vjp_is_named(problem, monkeypatch):
    model, x = problem
    est = estimators.get("reparam")
    monkeypatch.setattr(type(model), "decoder_vjp", lambda self, z, c, rd: {"decoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"decoder_vjp\(\)\['decoder.weight'\] must have shape \(2, 5, 2\)"):
        estimators.per_sample_grads(est, model, x, 2, num_samples=1)
    monkeypatch.setattr(type(model), "decoder_vjp", lambda self, z, c, rd: {"nope": torch.zeros(2)})
    with pytest.raises(KeyError, match="'nope', not a trainable parameter"):
        estimators.per_sample_grads(est, model, x, 2, num_samples=1)
