"""Contract tests over the estimator registry: API, shapes, noise, batching, backends, bad input."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from estimator_models import LOGVAR, MU, TOYS, TinyVAE, binary_batch

import estimators
import kernels
from estimators import control_variates as cv

EXPECTED = ["reparam", "stl", "score_function", "measure_valued", "iwae", "dreg", "vimco"]
# options of the built-in estimators worth a configuration of their own (beyond the defaults)
EXTRA_OPTIONS = {"measure_valued": [{"coupling": True}, {"coupling": False}]}


def _configs() -> list[tuple[str, dict]]:
    """Every registered estimator of Gaussian latents (plugins' too, see ELBOBENCH_PLUGINS) with the options worth testing.

    An estimator that takes a control variate runs with every registered one.
    """
    out = []
    for name in estimators.available():
        if "normal" not in estimators.estimator_class(name).families:
            continue  # the discrete-family estimators: tests/test_estimators_discrete.py
        if estimators.takes_control_variate(name):
            out += [(name, {"control_variate": c}) for c in cv.CONTROL_VARIATES]
        else:
            out += [(name, o) for o in EXTRA_OPTIONS.get(name, [{}])]
    return out


# every estimator configuration, with a number of samples it accepts
CONFIGS = _configs()
IDS = [f"{n}-{next(iter(o.values()), '')}" for n, o in CONFIGS]


def make(name, opts):
    return estimators.get(name, **opts)


# --------------------------------------------------------------------------- registry
def test_available_lists_every_estimator_in_order():
    # the built-ins first, in order (plugins' estimators and control variates follow)
    assert estimators.available()[: len(EXPECTED)] == EXPECTED
    assert list(cv.CONTROL_VARIATES)[:6] == [None, "moving_average", "leave_one_out", "optimal", "delta", "learned"]
    assert cv.names()[0] == "none"


def test_unknown_estimator_lists_the_available_ones():
    with pytest.raises(ValueError, match="must be one of .*reparam.*vimco.*got 'nope'"):
        estimators.get("nope")


def test_bad_options_are_clear_errors():
    with pytest.raises(TypeError, match="'reparam' takes the options \\[\\], got unknown \\['coupling'\\]"):
        estimators.get("reparam", coupling=True)
    with pytest.raises(TypeError, match="takes the options \\['control_variate', 'decay'.*got unknown \\['cv'\\]"):
        estimators.get("score_function", cv="leave_one_out")
    with pytest.raises(ValueError, match="control_variate must be one of .*leave_one_out.*got 'loo'"):
        estimators.get("score_function", control_variate="loo")
    with pytest.raises(ValueError, match="decay must be a number in \\[0, 1\\), got 1.5"):
        estimators.get("score_function", control_variate="moving_average", decay=1.5)
    with pytest.raises(ValueError, match="delta_order must be 1 or 2, got 3"):
        estimators.get("score_function", control_variate="delta", delta_order=3)
    with pytest.raises(TypeError, match="coupling must be a bool"):
        estimators.get("measure_valued", coupling="yes")
    assert estimators.get("score_function", control_variate="none").control_variate == "none"


def test_register_validates():
    with pytest.raises(TypeError, match="Estimator subclass"):
        estimators.register(int)

    class Clash(estimators.Estimator):
        name = "reparam"

    with pytest.raises(ValueError, match="already registered"):
        estimators.register(Clash)


def test_estimators_import_only_the_public_kernel_api():
    """No module of estimators/ imports a kernel backend (or any kernels submodule)."""
    for path in pathlib.Path(estimators.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kernels"):
                pytest.fail(f"{path.name} imports from {node.module}; use `import kernels` only")
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.startswith("kernels.")]
                assert not bad, f"{path.name} imports {bad}"


# --------------------------------------------------------------------------- surrogate contract
@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
def test_surrogate_shapes_and_gradients(name, opts):
    est = make(name, opts)
    mu = MU.clone().requires_grad_()
    lv = LOGVAR.clone().requires_grad_()
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)  # a parameter f closes over
    f = lambda z: scale * TOYS["exp"][0](z)  # noqa: E731
    if est.vae_only:
        with pytest.raises(ValueError, match="VAE|needs x"):
            est.surrogate(f, mu, lv, 2, seed=0)
        return
    s = est.surrogate(f, mu, lv, 2, seed=0)
    assert s.shape == MU.shape[:-1]
    s.sum().backward()
    for t in (mu.grad, lv.grad, scale.grad):
        assert t is not None and torch.isfinite(t).all()
    assert mu.grad.shape == MU.shape and scale.grad.abs() > 0


@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_loss_contract_and_injected_noise(name, opts, likelihood):
    est = make(name, opts)
    model = TinyVAE(likelihood=likelihood)
    x = binary_batch()
    loss, elbo = est.vae_loss(model, x, num_samples=2, seed=7)
    assert loss.shape == () and elbo.shape == (x.shape[0],) and not elbo.requires_grad
    assert torch.isfinite(loss) and torch.isfinite(elbo).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.decoder.parameters())
    # the same noise passed in as eps gives the same numbers
    est2 = make(name, opts)
    eps = kernels.normal_noise(est2.noise_shape(2, (x.shape[0], model.z_dim)), seed=7)
    loss2, elbo2 = est2.vae_loss(model, x, num_samples=2, eps=eps)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    torch.testing.assert_close(elbo2, elbo, rtol=0, atol=0)


def test_single_sample_bounds_agree_on_the_elbo_value():
    """Same noise, kl='mc': every single-sample estimator's value is log p(x,z) - log q(z) at the same z."""
    model, x = TinyVAE(), binary_batch()
    values = {}
    for name in ("reparam", "stl", "score_function", "iwae", "dreg"):
        _, values[name] = estimators.get(name).vae_loss(model, x, num_samples=1, kl="mc", seed=3)
    for v in values.values():
        torch.testing.assert_close(v, values["reparam"])


# --------------------------------------------------------------------------- per-sample gradients
@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_batched_per_sample_grads_equal_the_loop(name, opts, likelihood):
    est = make(name, opts)
    model, x = TinyVAE(likelihood=likelihood, dtype=torch.float64), binary_batch(dtype=torch.float64)
    if getattr(est, "cv", None) is not None and est.cv.name in ("moving_average", "learned"):
        for s in range(3):
            est.vae_loss(model, x, num_samples=2, seed=50 + s)  # a non-trivial frozen state
    batched = estimators.per_sample_grads(est, model, x, 6, num_samples=2, seed=9, chunk_size=4)
    loop = estimators.per_sample_grads_loop(est, model, x, 6, num_samples=2, seed=9)
    assert batched.keys() == loop.keys() == dict(model.named_parameters()).keys()
    for k in batched:
        assert batched[k].shape == (6, *dict(model.named_parameters())[k].shape)
        torch.testing.assert_close(batched[k], loop[k], rtol=1e-9, atol=1e-11, msg=k)
    # replicates are independent draws, not one shared draw
    assert not torch.allclose(batched["decoder.0.weight"][0], batched["decoder.0.weight"][1])


def test_per_sample_rows_replay_vae_loss_with_replicate_noise():
    est, model, x = estimators.get("reparam"), TinyVAE(), binary_batch()
    g = estimators.per_sample_grads(est, model, x, 3, num_samples=2, seed=4)
    noise = estimators.replicate_noise(est, 2, (x.shape[0], model.z_dim), 3, seed=4)
    model.zero_grad()
    est.vae_loss(model, x, num_samples=2, eps=noise[2])[0].backward()
    torch.testing.assert_close(g["encoder.0.weight"][2], model.encoder[0].weight.grad)


def test_stateful_control_variates_freeze_during_per_sample_grads_and_update_in_training():
    model, x = TinyVAE(), binary_batch()
    est = estimators.get("score_function", control_variate="learned")
    est.vae_loss(model, x, num_samples=2, seed=0)
    before = [p.detach().clone() for p in est.parameters()]
    assert before, "the learned baseline has parameters after its first call"
    estimators.per_sample_grads(est, model, x, 4, num_samples=2)
    assert all(torch.equal(a, b) for a, b in zip(before, est.parameters(), strict=True))
    with torch.no_grad():
        est.vae_loss(model, x, num_samples=2, seed=1)  # evaluation does not train the baseline
    assert all(torch.equal(a, b) for a, b in zip(before, est.parameters(), strict=True))
    est.vae_loss(model, x, num_samples=2, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(before, est.parameters(), strict=True))

    ma = estimators.get("score_function", control_variate="moving_average", decay=0.5)
    ma.surrogate(TOYS["exp"][0], MU, LOGVAR, 2, seed=0)
    assert ma.cv.steps == 1 and ma.cv.baseline != 0.0
    with ma.frozen():
        ma.surrogate(TOYS["exp"][0], MU, LOGVAR, 2, seed=1)
    assert ma.cv.steps == 1


def test_per_sample_grads_expectation_matches_surrogate_rows():
    est, f = estimators.get("measure_valued"), TOYS["cos"][0]
    g = estimators.per_sample_grads_expectation(est, f, MU, LOGVAR, 5, num_samples=2, seed=3, chunk_size=2)
    noise = estimators.replicate_noise(est, 2, tuple(MU.shape), 5, seed=3, dtype=MU.dtype)
    mu, lv = MU.clone().requires_grad_(), LOGVAR.clone().requires_grad_()
    est.surrogate(f, mu, lv, 2, eps=noise[4]).sum().backward()
    torch.testing.assert_close(g["mu"][4], mu.grad)
    torch.testing.assert_close(g["logvar"][4], lv.grad)


# --------------------------------------------------------------------------- backends
OTHER_BACKENDS = [b for b in kernels.available_backends("cpu") if b not in ("torch", "triton")]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
def test_same_estimates_on_every_cpu_backend(backend, name, opts):
    """Same seed, same estimates on the torch oracle and `backend` (float32 tolerance)."""
    per = {}
    for be in ("torch", backend):
        est = make(name, opts)
        model = TinyVAE(likelihood="gaussian" if name == "measure_valued" else "bernoulli")
        x = binary_batch()
        with kernels.use_backend(be):
            if getattr(est, "cv", None) is not None and est.cv.name in ("moving_average", "learned"):
                for s in range(2):
                    est.vae_loss(model, x, num_samples=2, seed=60 + s)
            per[be] = estimators.per_sample_grads(est, model, x, 4, num_samples=2, seed=12)
            if not est.vae_only:
                f = TOYS["sigmoid"][0]
                per[be]["toy"] = estimators.per_sample_grads_expectation(
                    est, f, MU.float(), LOGVAR.float(), 4, num_samples=2, seed=12
                )["mu"]
    for k in per["torch"]:
        torch.testing.assert_close(per[backend][k], per["torch"][k], rtol=1e-4, atol=1e-4, msg=k)


# --------------------------------------------------------------------------- bad input
def test_bad_num_samples():
    model, x = TinyVAE(), binary_batch()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
            estimators.get("reparam").vae_loss(model, x, num_samples=bad)
    with pytest.raises(ValueError, match="leave_one_out.* needs num_samples >= 2, got 1"):
        estimators.get("score_function", control_variate="leave_one_out").vae_loss(model, x, num_samples=1)
    with pytest.raises(ValueError, match="vimco needs num_samples >= 2, got 1"):
        estimators.get("vimco").vae_loss(model, x, num_samples=1)
    with pytest.raises(ValueError, match="needs num_samples >= 2"):
        estimators.get("score_function", control_variate="leave_one_out").surrogate(TOYS["exp"][0], MU, LOGVAR, 1)


def test_bad_shapes_and_inputs():
    est, f = estimators.get("reparam"), TOYS["exp"][0]
    with pytest.raises(ValueError, match="mu and logvar must have the same shape .*\\[2, 3\\] and \\[2, 2\\]"):
        est.surrogate(f, MU, LOGVAR[:, :2], 1)
    with pytest.raises(
        ValueError, match="f\\(z\\) for z of shape \\[1, 2, 3\\] must return shape \\[1, 2\\], got \\[1\\]"
    ):
        est.surrogate(lambda z: z.sum((-1, -2)), MU, LOGVAR, 1)
    with pytest.raises(ValueError, match="eps must have shape \\[2, 2, 3\\].*got \\[1, 2, 3\\]"):
        est.surrogate(f, MU, LOGVAR, 2, eps=torch.zeros(1, 2, 3, dtype=MU.dtype))
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        est.surrogate(f, [0.0, 1.0], LOGVAR, 1)
    model = TinyVAE()
    with pytest.raises(ValueError, match="x must be a floating tensor of shape \\[B, Dx\\]"):
        est.vae_loss(model, torch.zeros(6))
    with pytest.raises(ValueError, match="kl must be one of"):
        est.vae_loss(model, binary_batch(), kl="exact")
    with pytest.raises(ValueError, match="iwae needs kl in \\['mc'\\]"):
        estimators.get("iwae").vae_loss(model, binary_batch(), num_samples=2, kl="analytic")
    with pytest.raises(ValueError, match="stl needs kl in \\['mc'\\]"):
        estimators.get("stl").vae_loss(model, binary_batch(), kl="analytic")

    class NoLikelihood(torch.nn.Module):
        def encode(self, x):
            return x, x

        def decode(self, z):
            return z

    with pytest.raises(ValueError, match="model.likelihood must be one of"):
        est.vae_loss(NoLikelihood(), binary_batch())
    with pytest.raises(TypeError, match="lacks \\['decode'\\]"):
        est.vae_loss(
            object.__new__(type("M", (), {"encode": lambda self, x: x, "likelihood": "bernoulli"})), binary_batch()
        )
    with pytest.raises(ValueError, match="R must be an int >= 1"):
        estimators.per_sample_grads(est, model, binary_batch(), 0)
    with pytest.raises(TypeError, match="est must be an estimator"):
        estimators.per_sample_grads("reparam", model, binary_batch(), 2)
    with pytest.raises(ValueError, match="VAE objective only \\(it needs x"):
        estimators.get("score_function", control_variate="learned").surrogate(f, MU, LOGVAR, 1)


def test_labels_and_options_for_results():
    est = estimators.get("score_function", control_variate="delta", delta_order=1)
    assert est.label == "score_function[delta]" and est.options == {"control_variate": "delta", "delta_order": 1}
    assert estimators.get("measure_valued").label == "measure_valued[coupled]"
    assert estimators.get("score_function").evaluations(4, 10) == 4
    assert estimators.get("score_function", control_variate="optimal").evaluations(4, 10) == 8
    assert estimators.get("measure_valued").evaluations(2, 10) == 2 * 41
