"""Broadcast log variances with a precomputed exp, and noise drawn in block order.

* When a log variance is broadcast over many rows (a fixed decoder variance, log q
  of ``z [S, B, D]`` under ``logvar [B, D]``), the numba launchers take
  ``exp(-logvar)`` (log-prob) or ``exp(logvar / 2)`` (rsample) once over its own
  elements and the kernels read it through the same layout
  (``kernels.numba_cpu._common.exp_of_broadcast``). These tests run shapes above
  the thresholds of ``_flags.PRECOMPUTE_*``, so the precomputed kernels run, and
  hold their values and gradients to the torch reference; short rows (chunked
  kernels), rows of at most ``BLOCK`` (one plain loop) and longer rows are all
  covered.
* ``kernels.normal_noise_blocks`` equals the moved slice of ``normal_noise`` it
  replaces, bit for bit (same generator code, same index of every element).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kernels
from kernels import registry
from kernels.testing import assert_close_to_reference

numba_missing = registry.unavailable_reason("numba", "cpu")
needs_numba = pytest.mark.skipif(numba_missing is not None, reason=f"numba backend not available: {numba_missing}")


# --------------------------------------------------------------------------- precomputed exp
@needs_numba
def test_exp_of_broadcast_thresholds():
    from kernels.numba_cpu._common import exp_of_broadcast
    from kernels.numba_cpu._flags import PRECOMPUTE_MIN_ELEMENTS, PRECOMPUTE_RATIO

    a = np.linspace(-3, 3, 64, dtype=np.float32)
    assert exp_of_broadcast(None, 1 << 20, 0.5) is None
    assert exp_of_broadcast(a, PRECOMPUTE_MIN_ELEMENTS - 1, 0.5) is None  # too small a kernel
    assert exp_of_broadcast(a, 64 * PRECOMPUTE_RATIO - 1, 0.5) is None  # not broadcast enough
    n = max(PRECOMPUTE_MIN_ELEMENTS, 64 * PRECOMPUTE_RATIO)
    for scale in (-1.0, 0.5):
        got = exp_of_broadcast(a, n, scale)
        np.testing.assert_allclose(got, np.exp(scale * a.astype(np.float64)), rtol=2e-6)
        assert got.dtype == a.dtype


# (z or x shape, mu shape, logvar shape): logvar broadcast over at least 4x its size
SHAPES = [
    ((256, 32, 10), (32, 10), (1,)),  # short rows, one variance for all (ppca's decoder)
    ((1024, 16, 3), (16, 3), (16, 3)),  # D = 3: log q of z [S, B, 3]
    ((300, 8, 64), (8, 64), (8, 64)),  # a row of at most BLOCK: one plain loop
    ((40, 3, 700), (3, 700), (1, 700)),  # rows longer than BLOCK: the block loop
    ((64, 20, 48), (64, 20, 48), (20, 1)),  # full mu, one variance per row broadcast over D
]


def _params(zshape, mshape, vshape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(zshape, generator=gen, dtype=dtype)
    mu = torch.randn(mshape, generator=gen, dtype=dtype)
    lv = 0.7 * torch.randn(vshape, generator=gen, dtype=dtype)
    if vshape == (1,):  # a scalar expanded to a full row, as ppca's decoder returns it (stride 0 in D too)
        lv = lv.expand(zshape[-1])
    return z, mu, lv


def _check(got, want, full_numel, dtype):
    """Each tensor against the reference, its tolerance scaled by the terms summed into one of its elements.

    A value of the broadcast shape sums D terms (log-prob) or none; a gradient of
    an input broadcast over ``full_numel / numel`` positions sums that many.
    """
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        terms = max(1, full_numel // max(b.numel(), 1))
        assert_close_to_reference(a, b, dtype=dtype, terms=terms, msg=f"output {i}")


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + "_lv" + "x".join(map(str, s[2])))
def test_normal_log_prob_broadcast_logvar(shapes, dtype):
    results = {}
    for be in ("torch", "numba"):
        x, mu, lv = (t.requires_grad_() for t in _params(*shapes, dtype))
        with kernels.use_backend(be):
            lp = kernels.normal_log_prob(x, mu, lv)
        results[be] = (lp.detach(), *_grads(lp, (x, mu, lv)))
    _check(results["numba"], results["torch"], math.prod(shapes[0]), dtype)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["normal_rsample", "normal_rsample_kl"])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + "_lv" + "x".join(map(str, s[2])))
def test_rsample_broadcast_logvar(shapes, op, dtype):
    results = {}
    for be in ("torch", "numba"):
        eps, mu, lv = _params(*shapes, dtype)
        mu, lv = mu.requires_grad_(), lv.requires_grad_()
        with kernels.use_backend(be):
            if op == "normal_rsample":
                z = kernels.normal_rsample(mu, lv, eps)
                grads = _grads(z, (mu, lv))
                results[be] = (z.detach(), *grads)
            else:
                z, kl = kernels.normal_rsample_kl(mu, lv, eps)
                loss = (z * torch.linspace(-1, 1, z.shape[-1], dtype=dtype)).sum() + 0.3 * kl.sum()
                results[be] = (z.detach(), kl.detach(), *torch.autograd.grad(loss, (mu, lv)))
    _check(results["numba"], results["torch"], math.prod(shapes[0]), dtype)


@needs_numba
def test_precomputed_kernels_run_for_these_shapes():
    """The shapes above do take the precomputed path (so the tests above test it)."""
    from kernels.numba_cpu.gaussian import prepare
    from kernels.numba_cpu.logprob import normal_prepare

    for zshape, mshape, vshape in SHAPES:
        z, mu, lv = _params(zshape, mshape, vshape, torch.float32)
        assert normal_prepare(z, mu, lv, z.shape)[2][6] is not None
        assert prepare(mu, lv, z, z.shape)[2][4] is not None
    z, mu, lv = _params((64, 20, 48), (64, 20, 48), (64, 20, 48), torch.float32)  # nothing broadcast
    assert normal_prepare(z, mu, lv, z.shape)[2][6] is None
    assert prepare(mu, lv, z, z.shape)[2][4] is None


# --------------------------------------------------------------------------- noise in block order
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("blocks", "shape", "first"),
    [(3, (5, 4), 0), (7, (100, 2, 3), 2), (64, (1000, 8), 0), (5, (1, 1), 9), (4, (300, 20, 3), 1), (0, (3, 2), 0)],
)
def test_normal_noise_blocks_equals_the_moved_slice(blocks, shape, first, dtype):
    got = kernels.normal_noise_blocks(blocks, shape, seed=123, first=first, dtype=dtype)
    want = kernels.normal_noise((first + blocks, *shape), seed=123, dtype=dtype)[first:].movedim(0, 1)
    assert got.shape == (shape[0], blocks, *shape[1:])
    assert got.is_contiguous() and got.dtype == dtype
    assert torch.equal(got, want)


def test_normal_noise_blocks_seed_none_follows_torch_manual_seed():
    torch.manual_seed(5)
    a = kernels.normal_noise_blocks(2, (3, 4))
    torch.manual_seed(5)
    b = kernels.normal_noise_blocks(2, (3, 4))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"blocks": -1, "shape": (2,)}, "blocks must be an int >= 0, got -1"),
        ({"blocks": 2.0, "shape": (2,)}, "blocks must be an int >= 0, got 2.0"),
        ({"blocks": 2, "shape": (2,), "first": -3}, "first must be an int >= 0, got -3"),
        ({"blocks": 2, "shape": ()}, "shape must have at least one dim"),
        ({"blocks": 2, "shape": (2, -1)}, "non-negative sizes"),
        ({"blocks": 2, "shape": "ab"}, "shape must be a sequence of ints"),
        ({"blocks": 2, "shape": (2,), "dtype": torch.int32}, "dtype must be one of"),
        ({"blocks": 2, "shape": (2,), "seed": -1}, "seed must be in"),
    ],
)
def test_normal_noise_blocks_bad_input(kwargs, match):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.normal_noise_blocks(kwargs.pop("blocks"), kwargs.pop("shape"), **kwargs)


# --------------------------------------------------------------------------- broadcast gradients summed in the kernel
@needs_numba
def test_grad_outputs_sums_only_broadcast_inputs_read_in_place():
    """mu [8, 64] of z [300, 8, 64]: the backward's gradient outputs are [REDUCE_TASKS, 512] accumulators."""
    from kernels.numba_cpu._common import grad_outputs
    from kernels.numba_cpu._flags import REDUCE_TASKS
    from kernels.numba_cpu.logprob import normal_prepare

    z, mu, lv = _params((300, 8, 64), (8, 64), (8, 64), torch.float32)
    _, _, args = normal_prepare(z, mu, lv, z.shape)
    arrays_in = args[0:6:2]
    res, arrays = grad_outputs(z.shape, torch.float32, (False, True, True), (z, mu, lv), arrays_in)
    assert res[0] is None and all(a.shape == (REDUCE_TASKS, 512) for a in arrays[1:])
    # not broadcast, or not read in place (a copy, a non-contiguous input): full-size outputs
    for i, t in ((0, z), (1, mu.clone()), (1, mu.t().contiguous().t())):
        wanted = tuple(j == i for j in range(3))
        inputs = tuple(t if j == i else u for j, u in enumerate((z, mu, lv)))
        _, arrays = grad_outputs(z.shape, torch.float32, wanted, inputs, arrays_in)
        assert arrays[i].shape == (z.numel(),)


def _spy_grad_outputs(monkeypatch):
    """Record how many accumulators each backward launcher got from grad_outputs."""
    from kernels.numba_cpu import _common, _layout

    seen = []

    def spy(*args, **kwargs):
        res, arrays = _common.grad_outputs(*args, **kwargs)
        seen.append(sum(a is not None and a.ndim == 2 for a in arrays))
        return res, arrays

    monkeypatch.setattr(_layout, "grad_outputs", spy)  # called by the backward launchers' rows_backward
    return seen


@needs_numba
@pytest.mark.parametrize("seeded", [False, True], ids=["eps", "philox"])
def test_plain_backward_sums_broadcast_gradients_in_the_kernel(monkeypatch, seeded):
    seen = _spy_grad_outputs(monkeypatch)
    z, mu, lv = _params((300, 8, 64), (8, 64), (8, 64), torch.float64)
    got = {}
    for be in ("numba", "torch"):
        m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        with kernels.use_backend(be):
            if seeded:
                zz = kernels.normal_rsample(m.expand(300, 8, 64), v, seed=4)  # rsample only, Philox noise
            else:
                zz = kernels.normal_rsample(m, v, z)
            lq = kernels.normal_log_prob(zz.detach(), m, v)
        got[be] = torch.autograd.grad((zz * z).sum() + lq.sum(), (m, v))
    # rsample: dmu and dlogvar summed in the kernel (mu expanded first is not read in place: dlogvar only);
    # log-prob: dmu and dlogvar
    assert sorted(seen) == ([1, 2] if seeded else [2, 2])
    _check(got["numba"], got["torch"], z.numel(), torch.float64)


@needs_numba
@pytest.mark.parametrize("seeded", [False, True], ids=["eps", "philox"])
def test_summed_broadcast_gradients_do_not_depend_on_the_thread_count(seeded):
    import numba

    before = numba.get_num_threads()
    if before < 2:
        pytest.skip("needs numba with at least 2 threads to compare against 1")
    z, mu, lv = _params((300, 8, 64), (8, 64), (8, 64), torch.float32)
    out = []
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
            with kernels.use_backend("numba"):
                if seeded:  # Philox noise: z takes mu's shape, so mu comes expanded (logvar is still broadcast)
                    zz, kl = kernels.normal_rsample_kl(m.expand(300, 8, 64), v, seed=9)
                else:
                    zz, kl = kernels.normal_rsample_kl(m, v, z)
                lq = kernels.normal_log_prob(zz.detach(), m, v)
            out.append(torch.autograd.grad((zz * z).sum() + kl.sum() + lq.sum(), (m, v)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(out[0], out[1], strict=True):
        assert torch.equal(a, b)
