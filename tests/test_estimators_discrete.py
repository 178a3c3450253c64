"""Discrete-latent estimators against exact gradients: the Bernoulli toy, enumeration, the mixture, a small VAE.

Statistical tests use fixed seeds. An estimate is "equal to the truth" when every
coordinate of the mean over R replicates is within Z = 4 standard errors of the
exact gradient (about 6e-5 two-sided per coordinate; a few dozen coordinates per
test), and each such test first checks that the exact gradient is at least 5
standard errors from 0, so an estimator that returned 0 would fail.
"""

from __future__ import annotations

import math

import pytest
import torch

import estimators
import kernels
from bench.problems import discrete as D

Z = 4.0
UNBIASED_BERNOULLI = [
    ("score_function", {}, 1),
    ("score_function", {"control_variate": "moving_average"}, 1),
    ("score_function", {"control_variate": "leave_one_out"}, 4),
    ("arm", {}, 1),
    ("disarm", {}, 1),
    ("rebar", {}, 1),
    ("relax", {}, 1),
]
IDS = [f"{n}-{o.get('control_variate', '')}-S{s}" for n, o, s in UNBIASED_BERNOULLI]


def replicate_grads(est, f, logits: torch.Tensor, family, R: int, num_samples: int, seed: int) -> torch.Tensor:
    """R independent gradient estimates ``[R, *logits.shape]`` in one batched call.

    The logits are repeated along a new leading batch dim; f is row-wise, so row r
    of the gradient is the r-th replicate's estimate (its own noise).
    """
    rep = logits.detach().unsqueeze(0).repeat(R, *([1] * logits.dim())).requires_grad_(True)
    est.surrogate(f, family(rep), num_samples=num_samples, seed=seed).sum().backward()
    return rep.grad


def assert_unbiased(g: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    mean, se = g.mean(0), g.std(0) / math.sqrt(g.shape[0])
    assert bool((exact.abs() > 5 * se).all()), f"{what}: exact gradient within 5 SE of 0 ({exact} vs {se})"
    z = (mean - exact) / se
    assert bool((z.abs() < Z).all()), f"{what}: z = {z.tolist()} (mean {mean.tolist()}, exact {exact.tolist()})"


# --------------------------------------------------------------------------- ground truths
def test_toy_exact_gradient_equals_enumeration():
    f, logits, exact = D.bernoulli_toy(dim=5, t=0.45, seed=3)
    lg = logits.clone().requires_grad_(True)
    D.enumerate_expectation(f, lg).backward()
    torch.testing.assert_close(lg.grad, exact, rtol=1e-12, atol=1e-14)


def test_binary_states_are_every_vector_once():
    s = D.binary_states(4)
    assert s.shape == (16, 4)
    assert len({tuple(r.tolist()) for r in s}) == 16
    with pytest.raises(ValueError, match="dim must be an int in \\[1, 16\\].*got 17"):
        D.binary_states(17)


def test_em_never_decreases_the_log_likelihood_and_bounds_the_exact_elbo():
    x, _ = D.mixture_data(400, components=3, dim=2, seed=1)
    params, trace = D.fit_em(x, 3, iters=100, seed=0)
    assert all(b >= a - 1e-9 for a, b in zip(trace, trace[1:], strict=False))
    model = D.MixtureVAE(2, 3, seed=0, init_x=x).double()
    with torch.no_grad():
        model.means.copy_(params["means"])
        model.log_var.copy_(params["log_var"])
        model.prior_logits.copy_(params["log_pi"].unsqueeze(0))
        # the exact log-likelihood of EM's parameters is what EM reports
        assert float(model.log_marginal(x.double()).mean()) == pytest.approx(params["log_lik"], abs=1e-9)
        # any q gives ELBO <= log p(x)
        assert bool((model.exact_elbo(x.double()) <= model.log_marginal(x.double()) + 1e-9).all())


def test_exact_vae_elbo_is_a_bound_and_its_gradient_is_the_enumerated_score_function():
    torch.manual_seed(0)
    model = D.BernoulliVAE(16, latent_dim=4, hidden=8, seed=1).double()
    x = (torch.rand(3, 16, dtype=torch.float64) < 0.4).double()
    elbo = D.exact_elbo(model, x)
    assert bool((elbo <= D.exact_log_marginal(model, x) + 1e-12).all())
    params = [p for p in model.parameters()]
    exact = torch.autograd.grad(elbo.sum(), params)
    # sum over the 2^D states of q(b|x) times the score-function estimate at b: the same gradient
    logits = model.encode(x).detach()
    total = [torch.zeros_like(p) for p in params]
    for b in D.binary_states(4):
        bb = b.expand(1, 3, 4)
        weight = estimators.Bernoulli(logits).log_prob(bb).exp().squeeze(0)  # q(b|x) [B]
        q = estimators.Bernoulli(model.encode(x))
        prior = estimators.Bernoulli(model.prior_logits.expand(3, 4))

        def f(z, q=q, prior=prior):
            return estimators.log_likelihood(model, x, z) + prior.log_prob(z) - q.log_prob(z)

        fb = f(bb)  # [1, B]
        surr = fb.detach() * q.log_prob(bb) + fb  # score term + direct term at b
        grads = torch.autograd.grad((weight * surr.squeeze(0)).sum(), params, allow_unused=True)
        total = [t + (g if g is not None else 0) for t, g in zip(total, grads, strict=True)]
    for e, t in zip(exact, total, strict=True):
        torch.testing.assert_close(t, e, rtol=1e-9, atol=1e-11)


def test_exact_vae_elbo_gradient_matches_central_differences():
    model = D.BernoulliVAE(6, latent_dim=3, hidden=4, seed=2).double()
    x = torch.tensor([[1.0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]], dtype=torch.float64)
    params = list(model.parameters())
    grads = torch.autograd.grad(D.exact_elbo(model, x).sum(), params)
    h = 1e-6
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            for i in range(min(p.numel(), 5)):
                flat = p.view(-1)
                flat[i] += h
                up = D.exact_elbo(model, x).sum()
                flat[i] -= 2 * h
                down = D.exact_elbo(model, x).sum()
                flat[i] += h
                assert float((up - down) / (2 * h)) == pytest.approx(float(g.view(-1)[i]), rel=1e-6, abs=1e-8)


# --------------------------------------------------------------------------- unbiasedness
@pytest.mark.parametrize(("name", "opts", "num_samples"), UNBIASED_BERNOULLI, ids=IDS)
def test_unbiased_on_the_bernoulli_toy(name, opts, num_samples):
    f, logits, exact = D.bernoulli_toy(dim=3, t=0.45, seed=0)
    est = estimators.get(name, **opts)
    g = replicate_grads(est, f, logits, estimators.Bernoulli, R=40_000, num_samples=num_samples, seed=11)
    assert_unbiased(g.double(), exact, est.label)


@pytest.mark.parametrize(("name", "opts", "num_samples"), UNBIASED_BERNOULLI, ids=IDS)
def test_unbiased_for_a_non_separable_f_by_enumeration(name, opts, num_samples):
    a = torch.tensor([1.5, -2.0, 0.7, 1.1], dtype=torch.float64)

    def f(b):
        s = b @ a
        return torch.sin(s) + 0.3 * s * s

    logits = torch.tensor([0.4, -0.8, 1.2, 0.1], dtype=torch.float64, requires_grad=True)
    D.enumerate_expectation(f, logits).backward()
    est = estimators.get(name, **opts)
    g = replicate_grads(est, f, logits, estimators.Bernoulli, R=40_000, num_samples=num_samples, seed=5)
    assert_unbiased(g, logits.grad, est.label)


@pytest.mark.parametrize("cv", [None, "leave_one_out"])
def test_score_function_is_unbiased_on_the_mixture(cv):
    x, _ = D.mixture_data(6, components=3, dim=2, seed=2)
    model = D.MixtureVAE(2, 3, hidden=0, seed=0, init_x=x).double()
    x = x.double()
    logits = model.encode(x).detach().requires_grad_(True)  # [B, 1, K]
    # exact ELBO of q = softmax(logits): sum_k r_k (log p(x, k) - log r_k)
    joint = model.component_log_joint(x).detach()  # [B, K]
    log_r = torch.log_softmax(logits.squeeze(-2), -1)
    (log_r.exp() * (joint - log_r)).sum().backward()
    exact = logits.grad

    def make_f(q):
        def f(z):  # z one-hot [S, R, B, 1, K]
            return (z.squeeze(-2) * joint).sum(-1) - q.log_prob(z)

        return f

    R = 20_000
    rep = logits.detach().unsqueeze(0).repeat(R, 1, 1, 1).requires_grad_(True)
    q = estimators.Categorical(rep)
    est = estimators.get("score_function", control_variate=cv)
    est.surrogate(make_f(q), q, num_samples=4, seed=3).sum().backward()
    g = rep.grad.reshape(R, -1)
    big = exact.reshape(-1).abs() > 5 * g.std(0) / math.sqrt(R)
    assert int(big.sum()) >= 6, "too few coordinates with a detectable exact gradient"
    assert_unbiased(g[:, big], exact.reshape(-1)[big], est.label)


# --------------------------------------------------------------------------- variance and bias
def test_disarm_variance_is_at_most_arms_per_coordinate():
    """Var(ARM) - Var(DisARM) = E[Var(ARM | b1, b2)] >= 0 (Dong et al. 2020, theorem 1).

    Paired on the same uniforms: d_r = (g_arm - exact)^2 - (g_disarm - exact)^2 has
    mean Var(ARM) - Var(DisARM); asserted >= -3 standard errors of d's mean per
    coordinate, and strictly positive (> 3 SE) on at least one coordinate.
    """
    f, logits, exact = D.bernoulli_toy(dim=4, t=0.45, seed=7)
    R = 40_000
    g_arm = replicate_grads(estimators.get("arm"), f, logits, estimators.Bernoulli, R, 1, seed=21)
    g_dis = replicate_grads(estimators.get("disarm"), f, logits, estimators.Bernoulli, R, 1, seed=21)
    d = (g_arm - exact) ** 2 - (g_dis - exact) ** 2
    mean, se = d.mean(0), d.std(0) / math.sqrt(R)
    assert bool((mean >= -3 * se).all()), (mean, se)
    assert bool((mean > 3 * se).any()), (mean, se)


def test_soft_gumbel_bias_shrinks_as_the_temperature_falls():
    f, logits, exact = D.bernoulli_toy(dim=3, t=0.45, seed=0)
    R = 40_000
    bias, se = {}, {}
    for tau in (1.0, 0.2):
        est = estimators.get("gumbel_softmax", temperature=tau)
        g = replicate_grads(est, f, logits, estimators.Bernoulli, R, 1, seed=9)
        bias[tau] = (g.mean(0) - exact).norm()
        se[tau] = math.sqrt(float((g.var(0) / R).sum()))
    assert float(bias[1.0]) > 10 * se[1.0], "the relaxation at tau = 1 must be detectably biased"
    assert float(bias[1.0] - bias[0.2]) > Z * (se[1.0] + se[0.2]), (bias, se)


def test_gumbel_softmax_values_on_categoricals_are_f_at_the_discrete_samples():
    logits = torch.tensor([[0.5, -0.3, 1.0], [0.0, 2.0, -1.0]], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(z):
        return ((z * w).sum(-1) ** 2).sum(-1)

    for hard in (False, True):
        est = estimators.get("gumbel_softmax", temperature=0.5, hard=hard)
        out = est.surrogate(f, estimators.Categorical(logits.clone().requires_grad_(True)), num_samples=3, seed=1)
        b = estimators.Categorical(logits).sample(estimators.Categorical(logits).noise(3, seed=1))
        torch.testing.assert_close(out.detach(), f(b).mean(0))


def test_relax_trains_its_control_variate_to_lower_variance_and_stays_unbiased():
    """300 steps of Adam on the squared estimate cut RELAX's variance on the toy.

    Variance estimated from R = 20000 replicates before and after (relative standard
    error about 1%): asserted at least 4x lower after, on every coordinate; the
    estimate after training is still within Z standard errors of the exact gradient.
    """
    f, logits, exact = D.bernoulli_toy(dim=3, t=0.45, seed=0)
    est = estimators.get("relax")
    R = 20_000
    with est.frozen():
        before = replicate_grads(est, f, logits, estimators.Bernoulli, R, 1, seed=1)
    for i in range(300):
        leaf = logits.clone().requires_grad_(True)
        est.surrogate(f, estimators.Bernoulli(leaf), num_samples=1, seed=1000 + i).sum().backward()
    with est.frozen():
        after = replicate_grads(est, f, logits, estimators.Bernoulli, R, 1, seed=2)
    assert bool((after.var(0) * 4 < before.var(0)).all()), (before.var(0), after.var(0))
    assert_unbiased(after, exact, "relax after training")
    # a checkpoint restores the trained control variate exactly
    other = estimators.get("relax")
    other.load_state_dict(est.state_dict())
    with other.frozen(), est.frozen():
        a = replicate_grads(est, f, logits, estimators.Bernoulli, 8, 1, seed=3)
        b = replicate_grads(other, f, logits, estimators.Bernoulli, 8, 1, seed=3)
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- the VAE objective
@pytest.mark.parametrize("name", ["score_function", "arm", "disarm", "rebar", "relax", "gumbel_softmax"])
def test_vae_loss_on_a_bernoulli_vae(name):
    model = D.BernoulliVAE(12, latent_dim=3, hidden=8, seed=0)
    x = (torch.rand(5, 12, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    loss, elbo = estimators.get(name).vae_loss(model, x, num_samples=2, seed=0)
    assert loss.shape == () and elbo.shape == (5,)
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    # fixed noise: the same loss (a fresh estimator: rebar and relax updated their state)
    loss2, _ = estimators.get(name).vae_loss(model, x, num_samples=2, seed=0)
    assert float(loss2) == float(loss.detach())


def test_unbiased_estimators_match_the_enumerated_vae_gradient():
    model = D.BernoulliVAE(10, latent_dim=3, hidden=0, seed=4).double()
    x = (torch.rand(4, 10, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    bias = model.encoder.bias
    exact = torch.autograd.grad(D.exact_elbo(model, x).mean(), bias)[0]
    R = 2000
    for name, opts, s in [("disarm", {}, 1), ("score_function", {"control_variate": "leave_one_out"}, 4)]:
        est = estimators.get(name, **opts)
        gs = []
        for r in range(R):
            loss, _ = est.vae_loss(model, x, num_samples=s, seed=r)
            gs.append(torch.autograd.grad(-loss, bias)[0])
        g = torch.stack(gs)
        se = g.std(0) / math.sqrt(R)
        big = exact.abs() > 5 * se
        assert int(big.sum()) >= 1, (exact, se)
        z = (g.mean(0) - exact) / se
        assert bool((z.abs() < Z).all()), (est.label, z)


# --------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_clear_error():
    with pytest.raises(ValueError, match="Bernoulli: logits has NaN"):
        estimators.Bernoulli(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="K >= 2 categories.*got \\[3, 1\\]"):
        estimators.Categorical(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="arm estimates gradients for the latent families \\['bernoulli'\\]"):
        estimators.get("arm").surrogate(lambda z: z.sum((-1, -2)), estimators.Categorical(torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="reparam estimates gradients .*not 'bernoulli'.*score_function"):
        estimators.get("reparam").surrogate(lambda z: z.sum(-1), estimators.Bernoulli(torch.zeros(3)))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        estimators.get("gumbel_softmax", temperature=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        estimators.get("rebar", temperature=-1)
    with pytest.raises(ValueError, match="control_variate='delta' is defined for the latent families \\['normal'\\]"):
        estimators.get("score_function", control_variate="delta").surrogate(
            lambda z: z.sum(-1), estimators.Bernoulli(torch.zeros(3))
        )
    with pytest.raises(ValueError, match="eps must have shape \\[2, 3\\]"):
        estimators.get("disarm").surrogate(
            lambda z: z.sum(-1), estimators.Bernoulli(torch.zeros(3)), 2, eps=torch.rand(3)
        )
    with pytest.raises(ValueError, match="f\\(z\\) for z of shape \\[2, 3\\] must return shape \\[2\\]"):
        estimators.get("arm").surrogate(lambda z: z, estimators.Bernoulli(torch.zeros(3)))


def test_gaussian_calls_keep_working_both_ways():
    mu, lv = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    est = estimators.get("reparam")
    a = est.surrogate(lambda z: (z * z).sum(-1), mu, lv, 4, seed=0)
    b = est.surrogate(lambda z: (z * z).sum(-1), estimators.Normal(mu, lv), num_samples=4, seed=0)
    torch.testing.assert_close(a, b)


def test_per_sample_grads_of_a_discrete_vae_are_the_replicates_of_vae_loss():
    model = D.BernoulliVAE(8, latent_dim=3, hidden=0, seed=0)
    x = (torch.rand(4, 8, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    est = estimators.get("disarm")
    grads = estimators.per_sample_grads(est, model, x, R=3, num_samples=2, seed=5)
    noise = kernels.uniform_noise((3, 2, 4, 3), seed=5)  # replicate r: block r of the stream
    for r in range(3):
        loss, _ = est.vae_loss(model, x, num_samples=2, eps=noise[r])
        g = torch.autograd.grad(loss, model.encoder.weight)[0]
        torch.testing.assert_close(grads["encoder.weight"][r], g)
