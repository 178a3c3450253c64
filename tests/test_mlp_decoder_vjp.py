"""``MLPVAE.decoder_vjp``: per-replicate decoder gradients without ``vmap``.

The hook of the model protocol that :func:`estimators.per_sample_grads` calls
instead of ``torch.func.vmap`` over a ``vjp`` of ``decode``. Checked here: it
equals that vmap for every replicate position, activation and a frozen layer;
per-sample gradients through it equal the loop of single backward passes and
the generic path; and it declines (``NotImplemented``, the generic path runs)
where it does not describe the model: a subclass with its own ``decode``, or a
decoder layer with parameters that is not ``nn.Linear``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

import estimators
from bench.problems import models


def _model(activation="tanh", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return models.MLPVAE(12, 3, hidden=(7, 5), activation=activation).to(dtype)


def _vmapped(model, z, cot, rep_dim):
    """The generic path's product: ``vmap`` over a ``vjp`` of ``decode`` along ``rep_dim``."""
    params = {n: p.detach() for n, p in model.named_parameters() if n.startswith("decoder.") and p.requires_grad}

    dec = _Decode(model)

    def one(zr, cr):
        _, fn = vjp(lambda p: functional_call(dec, {"m." + k: v for k, v in p.items()}, (zr,)), params)
        return fn(cr)[0]

    return vmap(one, in_dims=(rep_dim, rep_dim))(z, cot)


class _Decode(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z):
        return self.m.decode(z)


@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
@pytest.mark.parametrize("rep_dim,shape", [(0, (4, 6, 3)), (1, (2, 4, 6, 3)), (2, (3, 2, 4, 6, 3))])
def test_decoder_vjp_equals_vmapped_vjp(activation, rep_dim, shape):
    model = _model(activation)
    gen = torch.Generator().manual_seed(rep_dim)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    cot = torch.randn((*shape[:-1], 12), generator=gen, dtype=torch.float64)
    got = model.decoder_vjp(z, cot, rep_dim)
    want = _vmapped(model, z, cot, rep_dim)
    assert set(got) == set(want) == {f"decoder.{i}.{k}" for i in (0, 2, 4) for k in ("weight", "bias")}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)


def test_a_broadcast_cotangent_and_a_frozen_layer():
    model = _model()
    model.decoder[2].weight.requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn((2, 4, 6, 3), generator=gen, dtype=torch.float64)
    cot = torch.randn((1, 4, 1, 12), generator=gen, dtype=torch.float64)  # broadcastable to decode(z)
    got = model.decoder_vjp(z, cot, 1)
    want = _vmapped(model, z, cot.expand(2, 4, 6, 12), 1)
    assert "decoder.2.weight" not in got and set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", ["reparam", "stl", "score_function", "iwae", "dreg", "vimco"])
def test_per_sample_grads_through_the_hook_equal_the_loop(name, monkeypatch):
    model = _model()
    x = torch.rand((5, 12), generator=torch.Generator().manual_seed(1), dtype=torch.float64).bernoulli()
    est = estimators.get(name, **({"control_variate": "leave_one_out"} if name == "score_function" else {}))
    s = 1 if name in ("reparam", "stl") else 3
    calls = []
    hook = models.MLPVAE.decoder_vjp

    def counted(self, *args):
        calls.append(1)
        return hook(self, *args)

    monkeypatch.setattr(models.MLPVAE, "decoder_vjp", counted)
    monkeypatch.setattr(models.MLPVAE, "decoder_layers", lambda self: NotImplemented)  # the vjp hook, not layer taps
    batched = estimators.per_sample_grads(est, model, x, 5, num_samples=s, seed=3, chunk_size=2)
    assert calls, "the hook did not run"
    loop = estimators.per_sample_grads_loop(est, model, x, 5, num_samples=s, seed=3)
    monkeypatch.setattr(models.MLPVAE, "decoder_vjp", None)
    generic = estimators.per_sample_grads(est, model, x, 5, num_samples=s, seed=3, chunk_size=2)
    for pname in loop:
        torch.testing.assert_close(batched[pname], loop[pname], rtol=1e-10, atol=1e-12, msg=f"{name} {pname}")
        torch.testing.assert_close(batched[pname], generic[pname], rtol=1e-10, atol=1e-12, msg=f"{name} {pname}")


class _ScaledDecode(models.MLPVAE):
    def decode(self, z):
        return 2.0 * self.decoder(z)


def test_it_declines_a_model_it_does_not_describe():
    z = torch.randn(4, 6, 3, dtype=torch.float64)
    cot = torch.randn(4, 6, 12, dtype=torch.float64)
    torch.manual_seed(0)
    sub = _ScaledDecode(12, 3, hidden=(7, 5)).to(torch.float64)
    assert sub.decoder_vjp(z, cot, 0) is NotImplemented
    prelu = _model()
    prelu.decoder[1] = nn.PReLU(dtype=torch.float64)  # a parametrised layer the hook does not know
    assert prelu.decoder_vjp(z, cot, 0) is NotImplemented


@pytest.mark.parametrize("kind", ["own-decode", "prelu"])
def test_declined_models_get_the_generic_path(kind):
    torch.manual_seed(0)
    if kind == "own-decode":
        model = _ScaledDecode(12, 3, hidden=(7, 5)).to(torch.float64)
    else:
        model = _model()
        model.decoder[1] = nn.PReLU(dtype=torch.float64)
    x = torch.rand((5, 12), generator=torch.Generator().manual_seed(2), dtype=torch.float64).bernoulli()
    est = estimators.get("iwae")
    batched = estimators.per_sample_grads(est, model, x, 4, num_samples=3, seed=4)
    loop = estimators.per_sample_grads_loop(est, model, x, 4, num_samples=3, seed=4)
    for pname in loop:
        torch.testing.assert_close(batched[pname], loop[pname], rtol=1e-10, atol=1e-12, msg=f"{kind} {pname}")
