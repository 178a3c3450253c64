"""Exact tests: one estimate with a fixed seed equals the hand-derived per-sample formula (float64).

The noise is drawn here from the same stream (``kernels.normal_noise`` with the
estimator's ``noise_shape``); every formula below is written from the
estimator's identity, independently of the estimator code.
"""

from __future__ import annotations

import math

import pytest
import torch
from estimator_models import LOGVAR, MU

import estimators
import kernels
from bench.problems import ppca

A = torch.tensor([0.7, -0.4, 0.3], dtype=torch.float64)
SEEDS = [0, 1, 2]


def f_exp(z):
    return torch.exp((A * z).sum(-1))


def run(est, num_samples, seed):
    mu, lv = MU.clone().requires_grad_(), LOGVAR.clone().requires_grad_()
    eps = kernels.normal_noise(est.noise_shape(num_samples, tuple(MU.shape)), seed=seed, dtype=torch.float64)
    est.surrogate(f_exp, mu, lv, num_samples, eps=eps).sum().backward()
    return eps, mu.grad, lv.grad


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


SD = torch.exp(0.5 * LOGVAR)


def scores(z):
    """(d log q / d mu, d log q / d logvar) at z."""
    u = (z - MU) / SD
    return u / SD, 0.5 * (u * u - 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_reparam(seed):
    eps, g_mu, g_lv = run(estimators.get("reparam"), 1, seed)
    z = MU + SD * eps[0]
    fz = f_exp(z)[..., None]
    close(g_mu, A * fz)
    close(g_lv, A * fz * SD * eps[0] / 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_score_function(seed):
    eps, g_mu, g_lv = run(estimators.get("score_function"), 1, seed)
    z = MU + SD * eps[0]
    s_mu, s_lv = scores(z)
    fz = f_exp(z)[..., None]
    close(g_mu, fz * s_mu)
    close(g_lv, fz * s_lv)


@pytest.mark.parametrize("seed", SEEDS)
def test_leave_one_out(seed):
    eps, g_mu, g_lv = run(estimators.get("score_function", control_variate="leave_one_out"), 2, seed)
    z1, z2 = MU + SD * eps[0], MU + SD * eps[1]
    f1, f2 = f_exp(z1)[..., None], f_exp(z2)[..., None]
    (m1, l1), (m2, l2) = scores(z1), scores(z2)
    close(g_mu, ((f1 - f2) * m1 + (f2 - f1) * m2) / 2)
    close(g_lv, ((f1 - f2) * l1 + (f2 - f1) * l2) / 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_optimal_with_one_sample_uses_the_independent_sample_as_baseline(seed):
    """S = 1: c_j = f(z') g_j(z')^2 / g_j(z')^2 = f(z'), z' the extra sample."""
    eps, g_mu, g_lv = run(estimators.get("score_function", control_variate="optimal"), 1, seed)
    z, z_extra = MU + SD * eps[0], MU + SD * eps[1]
    s_mu, s_lv = scores(z)
    w = (f_exp(z) - f_exp(z_extra))[..., None]
    close(g_mu, w * s_mu)
    close(g_lv, w * s_lv)


@pytest.mark.parametrize("seed", SEEDS)
def test_first_order_delta(seed):
    """h(z) = f(mu) + a f(mu).(z - mu); grad E[h] = (a f(mu), 0)."""
    eps, g_mu, g_lv = run(estimators.get("score_function", control_variate="delta", delta_order=1), 1, seed)
    z = MU + SD * eps[0]
    f_mu = f_exp(MU)[..., None]
    h = f_mu[..., 0] + (A * f_mu * (z - MU)).sum(-1)
    w = (f_exp(z) - h)[..., None]
    s_mu, s_lv = scores(z)
    close(g_mu, w * s_mu + A * f_mu)
    close(g_lv, w * s_lv)


@pytest.mark.parametrize("coupling", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_measure_valued(seed, coupling):
    eps, g_mu, g_lv = run(estimators.get("measure_valued", coupling=coupling), 1, seed)
    n = eps[0]  # [2, 3, 11]
    base_p = MU + SD * n[..., 0]
    base_m = base_p if coupling else MU + SD * n[..., 1]
    w_p = torch.sqrt(n[..., 2] ** 2 + n[..., 3] ** 2)
    w_m = w_p if coupling else torch.sqrt(n[..., 4] ** 2 + n[..., 5] ** 2)
    maxwell = torch.sqrt(n[..., 6] ** 2 + n[..., 7] ** 2 + n[..., 8] ** 2) * torch.sign(n[..., 9])
    normal = maxwell * 0.5 * (1 + torch.erf(n[..., 10] / math.sqrt(2))) if coupling else n[..., 10]
    want_mu, want_lv = torch.empty_like(MU), torch.empty_like(MU)
    for j in range(3):

        def at(base, value, j=j):
            z = base.clone()
            z[:, j] = value[:, j]
            return f_exp(z)

        plus, minus = at(base_p, MU + SD * w_p), at(base_m, MU - SD * w_m)
        want_mu[:, j] = (plus - minus) / (SD[:, j] * math.sqrt(2 * math.pi))
        want_lv[:, j] = 0.5 * (at(base_p, MU + SD * maxwell) - at(base_m, MU + SD * normal))
    close(g_mu, want_mu)
    close(g_lv, want_lv)


# --------------------------------------------------------------------------- the linear-Gaussian VAE
@pytest.fixture(scope="module")
def vae():
    params = ppca.random_params(4, 2, seed=8)
    x = ppca.sample(params, 2, seed=9)
    torch.manual_seed(1)
    model = ppca.LinearGaussianVAE.from_params(params, dtype=torch.float64)
    with torch.no_grad():
        model.encoder.logvar.copy_(torch.tensor([-0.4, 0.3], dtype=torch.float64))
    return model, x


def vae_grads(est, model, x, k, seed):
    eps = kernels.normal_noise(est.noise_shape(k, (x.shape[0], model.k)), seed=seed, dtype=torch.float64)
    model.zero_grad()
    est.vae_loss(model, x, num_samples=k, eps=eps)[0].backward()
    return eps, {n: p.grad.clone() for n, p in model.named_parameters()}


def pieces(model, x, eps):
    """Per-sample quantities for z_k = m + sigma eps_k: ``[K, B, ...]``."""
    with torch.no_grad():
        a, c, lv = model.encoder.weight, model.encoder.bias, model.encoder.logvar
        w, b, s2 = model.decoder.weight, model.decoder.bias, model.decoder.log_s2.exp()
        m = x @ a.T + c
        sd = torch.exp(0.5 * lv)
        z = m + sd * eps
        r = x - z @ w.T - b  # [K, B, d]
        gz = r @ w / s2  # d log p(x|z) / dz
        d = x.shape[1]
        log_lik = -0.5 * (d * math.log(2 * math.pi * s2) + (r * r).sum(-1) / s2)
        log_prior = -0.5 * (z * z + math.log(2 * math.pi)).sum(-1)
        log_q = -0.5 * (eps * eps + math.log(2 * math.pi) + lv).sum(-1)
        return dict(m=m, sd=sd, z=z, r=r, gz=gz, s2=s2, w=w, lv=lv, lw=log_lik + log_prior - log_q, d=d)


def to_params(x, per_m, per_lv, weights_dec, p):
    """Loss gradients from ELBO gradients in (m [B, k], logvar [B, k]) and decoder weights [K, B]."""
    bsz = x.shape[0]
    dec_w = (weights_dec[..., None, None] * p["r"][..., :, None] * p["z"][..., None, :]).sum((0, 1)) / p["s2"]
    dec_b = (weights_dec[..., None] * p["r"]).sum((0, 1)) / p["s2"]
    dec_s = (weights_dec * (-0.5 * p["d"] + (p["r"] ** 2).sum(-1) / (2 * p["s2"]))).sum()
    out = {
        "encoder.weight": per_m.T @ x,
        "encoder.bias": per_m.sum(0),
        "encoder.logvar": per_lv.sum(0),
        "decoder.weight": dec_w,
        "decoder.bias": dec_b,
        "decoder.log_s2": dec_s,
    }
    return {k: -v / bsz for k, v in out.items()}


def check(got, want):
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("seed", SEEDS)
def test_vae_reparam_analytic_kl(vae, seed):
    model, x = vae
    eps, got = vae_grads(estimators.get("reparam"), model, x, 1, seed)
    p = pieces(model, x, eps)
    per_m = p["gz"][0] - p["m"]  # d/dm [log p(x|z) - KL]
    per_lv = p["gz"][0] * p["sd"] * eps[0] / 2 - 0.5 * (p["sd"] ** 2 - 1)
    check(got, to_params(x, per_m, per_lv, torch.ones(1, x.shape[0], dtype=x.dtype), p))


@pytest.mark.parametrize("seed", SEEDS)
def test_vae_iwae(vae, seed):
    """d log w_k / dm = gz_k - z_k (the log q path cancels), d/dlogvar_j = (gz - z)_j sigma_j eps_j / 2 + 1/2."""
    model, x = vae
    eps, got = vae_grads(estimators.get("iwae"), model, x, 2, seed)
    p = pieces(model, x, eps)
    wt = torch.softmax(p["lw"], 0)[..., None]
    per_m = (wt * (p["gz"] - p["z"])).sum(0)
    per_lv = (wt * ((p["gz"] - p["z"]) * p["sd"] * eps / 2 + 0.5)).sum(0)
    check(got, to_params(x, per_m, per_lv, wt[..., 0], p))


@pytest.mark.parametrize("seed", SEEDS)
def test_vae_dreg(vae, seed):
    """Encoder: sum_k w~_k^2 (gz_k - z_k + (z_k - m)/sigma^2) dz_k/dphi; decoder as IWAE."""
    model, x = vae
    eps, got = vae_grads(estimators.get("dreg"), model, x, 2, seed)
    p = pieces(model, x, eps)
    wt = torch.softmax(p["lw"], 0)[..., None]
    dz = p["gz"] - p["z"] + eps / p["sd"]
    per_m = (wt**2 * dz).sum(0)
    per_lv = (wt**2 * dz * p["sd"] * eps / 2).sum(0)
    check(got, to_params(x, per_m, per_lv, wt[..., 0], p))


@pytest.mark.parametrize("seed", SEEDS)
def test_vae_vimco(vae, seed):
    """K = 2: L_{-1} = log w_2, so the signal is L - log w_{other}; encoder gets sum_k (signal_k - w~_k) grad log q."""
    model, x = vae
    eps, got = vae_grads(estimators.get("vimco"), model, x, 2, seed)
    p = pieces(model, x, eps)
    lw = p["lw"]
    big_l = torch.logsumexp(lw, 0) - math.log(2)
    signal = big_l - lw.flip(0)
    wt = torch.softmax(lw, 0)
    coef = (signal - wt)[..., None]
    per_m = (coef * eps / p["sd"]).sum(0)
    per_lv = (coef * 0.5 * (eps * eps - 1)).sum(0)
    check(got, to_params(x, per_m, per_lv, wt, p))


@pytest.mark.parametrize("seed", SEEDS)
def test_vae_stl(vae, seed):
    """K = 1, kl='mc': d/dz [log p(x, z) - log q(z)] dz/dphi with q's parameters stopped."""
    model, x = vae
    eps, got = vae_grads(estimators.get("stl"), model, x, 1, seed)
    p = pieces(model, x, eps)
    dz = (p["gz"] - p["z"] + eps / p["sd"])[0]
    check(got, to_params(x, dz, dz * p["sd"] * eps[0] / 2, torch.ones(1, x.shape[0], dtype=x.dtype), p))
