"""``model.decoder_layers()``: per-replicate decoder gradients from layer taps in the main backward pass.

:func:`estimators.per_sample_grads` hooks the named linear layers while the
estimator's objective runs, takes the loss's cotangent at each layer output in
the same ``autograd.grad`` as the encoder's, and forms ``dW_r = sum_n c^T a`` per
replicate. Checked here against the loop of single backward passes (float64,
exact up to summation order) for every estimator and activation, a frozen
layer, a layer called twice, a decoder that reshapes (the generic path takes
over) and the hook's errors: an in-place activation, a wrong return type or
name, a decoder parameter outside the layers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import estimators
import kernels
from bench.problems import models
from estimators import per_sample

TOL = dict(rtol=1e-10, atol=1e-12)
SAMPLES = {"reparam": 1, "stl": 1}


def _mlp(activation="tanh", seed=0):
    torch.manual_seed(seed)
    return models.MLPVAE(12, 3, hidden=(7, 5), activation=activation).to(torch.float64)


def _x(seed=1, n=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand((n, 12), generator=gen, dtype=torch.float64), generator=gen)


def _est(name):
    return estimators.get(name, **({"control_variate": "leave_one_out"} if name == "score_function" else {}))


@pytest.fixture
def layer_calls(monkeypatch):
    """How often per_sample_grads formed gradients from layer taps (and asserts the vjp hook never ran)."""
    calls = []
    real = per_sample._layer_grads

    def counted(*args):
        got = real(*args)
        calls.append(got is not None)
        return got

    monkeypatch.setattr(per_sample, "_layer_grads", counted)
    monkeypatch.setattr(models.MLPVAE, "decoder_vjp", lambda *a: pytest.fail("decoder_vjp ran; layer taps expected"))
    return calls


def _compare(model, est, x, R=5, S=3, chunk=2, seed=3, msg=""):
    batched = estimators.per_sample_grads(est, model, x, R, num_samples=S, seed=seed, chunk_size=chunk)
    loop = estimators.per_sample_grads_loop(est, model, x, R, num_samples=S, seed=seed)
    assert set(batched) == set(loop)
    for name in loop:
        torch.testing.assert_close(batched[name], loop[name], **TOL, msg=f"{msg} {name}")
    return batched


@pytest.mark.parametrize("name", ["reparam", "stl", "score_function", "iwae", "dreg", "vimco"])
def test_layer_taps_equal_the_loop_for_every_estimator(name, layer_calls):
    _compare(_mlp(), _est(name), _x(), S=SAMPLES.get(name, 3), msg=name)
    assert layer_calls and all(layer_calls)


@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
@pytest.mark.parametrize("name", ["reparam", "score_function"])
def test_every_activation(activation, name, layer_calls):
    _compare(_mlp(activation), _est(name), _x(2), S=SAMPLES.get(name, 3), msg=f"{activation} {name}")
    assert all(layer_calls)


@pytest.mark.parametrize("cv", ["none", "moving_average", "leave_one_out", "optimal", "delta", "learned"])
def test_every_control_variate(cv, layer_calls):
    est = estimators.get("score_function", control_variate=None if cv == "none" else cv)
    _compare(_mlp(), est, _x(8), S=3 if cv in ("leave_one_out", "optimal") else 1, msg=cv)
    assert layer_calls and all(layer_calls)


def test_measure_valued(layer_calls):
    _compare(_mlp(), _est("measure_valued"), _x(9), S=1)
    assert layer_calls and all(layer_calls)


@pytest.mark.parametrize("name", ["reparam", "score_function"])
def test_the_monte_carlo_kl(name, layer_calls):
    batched = estimators.per_sample_grads(_est(name), _mlp(), _x(10), 5, num_samples=2, seed=2, kl="mc")
    loop = estimators.per_sample_grads_loop(_est(name), _mlp(), _x(10), 5, num_samples=2, seed=2, kl="mc")
    for pname in loop:
        torch.testing.assert_close(batched[pname], loop[pname], **TOL, msg=pname)
    assert layer_calls and all(layer_calls)


def test_float32(layer_calls):
    model = _mlp().float()
    x = _x(11).float()
    batched = estimators.per_sample_grads(_est("iwae"), model, x, 5, num_samples=3, seed=3)
    loop = estimators.per_sample_grads_loop(_est("iwae"), model, x, 5, num_samples=3, seed=3)
    for pname in loop:
        assert batched[pname].dtype == torch.float32
        torch.testing.assert_close(batched[pname], loop[pname], msg=pname)  # float32 defaults: rtol 1.3e-6, atol 1e-5
    assert layer_calls and all(layer_calls)


def test_a_frozen_layer_gets_no_gradient(layer_calls):
    model = _mlp()
    model.decoder[2].weight.requires_grad_(False)
    got = _compare(model, _est("iwae"), _x(3))
    assert "decoder.2.weight" not in got and "decoder.2.bias" in got
    assert layer_calls and all(layer_calls)


def test_weights_tied_across_layers_add_up(layer_calls):
    torch.manual_seed(0)
    model = models.MLPVAE(12, 3, hidden=(7, 7, 7)).to(torch.float64)
    model.decoder[4].weight = model.decoder[2].weight  # named_parameters lists it once, as decoder.2.weight
    got = _compare(model, _est("iwae"), _x(12))
    assert "decoder.2.weight" in got and "decoder.4.weight" not in got
    assert layer_calls and all(layer_calls)


def test_the_same_rows_as_the_vjp_hook_and_the_generic_path(monkeypatch):
    model, x, est = _mlp(), _x(4), _est("vimco")
    ran = []
    real = per_sample._layer_grads
    monkeypatch.setattr(per_sample, "_layer_grads", lambda *a: ran.append(1) or real(*a))
    taps = estimators.per_sample_grads(est, model, x, 6, num_samples=4, seed=8, chunk_size=4)
    assert ran, "the layer taps did not run"
    monkeypatch.setattr(models.MLPVAE, "decoder_layers", lambda self: NotImplemented)
    hook = estimators.per_sample_grads(est, model, x, 6, num_samples=4, seed=8, chunk_size=4)
    monkeypatch.setattr(models.MLPVAE, "decoder_vjp", None)
    generic = estimators.per_sample_grads(est, model, x, 6, num_samples=4, seed=8, chunk_size=4)
    for name in taps:
        torch.testing.assert_close(taps[name], hook[name], **TOL, msg=name)
        torch.testing.assert_close(taps[name], generic[name], **TOL, msg=name)


class _Custom(nn.Module):
    """A protocol model whose decode can call a layer twice, reshape, or use an in-place activation."""

    likelihood = "bernoulli"

    def __init__(self, mode="plain", layers=None):
        super().__init__()
        torch.manual_seed(0)
        self.mode, self._layers = mode, layers
        self.encoder = nn.Linear(12, 6, dtype=torch.float64)
        self.decoder = nn.ModuleList(
            [nn.Linear(3, 7, dtype=torch.float64), nn.Linear(7, 7, dtype=torch.float64), nn.Linear(7, 12, dtype=torch.float64)]
        )  # fmt: skip

    def encode(self, x):
        h = self.encoder(x)
        return h[..., :3], h[..., 3:]

    def decode(self, z):
        h = torch.tanh(self.decoder[0](z))
        if self.mode == "twice":
            h = torch.tanh(self.decoder[1](h)) + h
            h = torch.tanh(self.decoder[1](h))
        elif self.mode == "reshape":
            lead = h.shape[:-1]
            h = torch.tanh(self.decoder[1](h.reshape(-1, 7))).reshape(*lead, 7)
        elif self.mode == "inplace":
            h = torch.relu_(self.decoder[1](h))
        elif self.mode == "kwargs":
            h = torch.tanh(self.decoder[1](input=h))
        else:
            h = torch.tanh(self.decoder[1](h))
        return self.decoder[2](h)

    def log_likelihood(self, x, logits):
        return kernels.bernoulli_log_prob(x, logits)

    def decoder_layers(self):
        if self._layers is not None:
            return self._layers(self)
        return {f"decoder.{i}": m for i, m in enumerate(self.decoder)}


class _GaussianDecoder(_Custom):
    """Two linear heads: decode returns (mean, logvar) of a Gaussian likelihood."""

    likelihood = "gaussian"

    def __init__(self):
        super().__init__()
        self.decoder.append(nn.Linear(7, 12, dtype=torch.float64))

    def decode(self, z):
        h = torch.tanh(self.decoder[1](torch.tanh(self.decoder[0](z))))
        return self.decoder[2](h), 0.1 * self.decoder[3](h)


class _SharedLayer(_Custom):
    """The encoder's first layer is also the decoder's middle layer (listed once, as encoder.0)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(7, 7, dtype=torch.float64), nn.Tanh(), nn.Linear(7, 6, dtype=torch.float64)
        )
        self.decoder[1] = self.encoder[0]
        self.pre = nn.Linear(12, 7, dtype=torch.float64)

    def encode(self, x):
        h = self.encoder(torch.tanh(self.pre(x)))
        return h[..., :3], h[..., 3:]


def test_a_gaussian_decoder_with_two_heads(layer_calls):
    x = torch.randn((5, 12), generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    _compare(_GaussianDecoder(), _est("iwae"), x)
    assert layer_calls and all(layer_calls)


def test_a_layer_called_by_keyword(layer_calls):
    _compare(_Custom("kwargs"), _est("stl"), _x(14), S=2)
    assert layer_calls and all(layer_calls)


def test_a_layer_shared_with_the_encoder_gets_both_gradients(layer_calls):
    # the shared weight is in both groups, so the layer taps stand aside and both VJPs add to it
    model = _SharedLayer()
    weight = model.encoder[0].weight
    got = _compare(model, _est("reparam"), _x(15), S=2)  # the loop runs after the batched call, on the same model
    assert "encoder.0.weight" in got and not layer_calls
    # functional_call swaps a module reachable by two paths twice; the model must come back with its parameters
    assert model.encoder[0].weight is weight and model.decoder[1].weight is weight
    assert isinstance(weight, nn.Parameter) and {id(p) for p in model.parameters()} >= {id(weight)}


def test_a_layer_called_twice_adds_up(layer_calls):
    _compare(_Custom("twice"), _est("iwae"), _x(5))
    assert layer_calls and all(layer_calls)


def test_a_decoder_that_reshapes_takes_the_generic_path(layer_calls):
    _compare(_Custom("reshape"), _est("reparam"), _x(6), S=2)
    assert layer_calls and not any(layer_calls)


def test_an_in_place_activation_is_an_error():
    with pytest.raises(RuntimeError, match="'decoder.1' was modified in place"):
        estimators.per_sample_grads(_est("reparam"), _Custom("inplace"), _x(), 3)


@pytest.mark.parametrize(
    "layers,error,match",
    [
        (lambda m: list(m.decoder), TypeError, "must return a dict submodule name -> nn.Linear"),
        (lambda m: {"decoder.0": nn.Tanh()}, TypeError, "must return a dict"),
        (lambda m: {"decoder.7": m.decoder[0]}, ValueError, "'decoder.7' is not the name of that layer"),
        (lambda m: {"decoder.1": m.decoder[0]}, ValueError, "'decoder.1' is not the name of that layer"),
        (lambda m: {"decoder.0": m.decoder[0], "decoder.1": m.decoder[1]}, ValueError, r"\['decoder.2.weight'"),
    ],
    ids=["list", "not-linear", "unknown-name", "wrong-layer", "uncovered"],
)
def test_a_bad_hook_is_a_clear_error(layers, error, match):
    with pytest.raises(error, match=match):
        estimators.per_sample_grads(_est("reparam"), _Custom(layers=layers), _x(), 3)


def test_declining_takes_the_other_paths(layer_calls):
    _compare(_Custom(layers=lambda m: NotImplemented), _est("dreg"), _x(7))
    assert not layer_calls
