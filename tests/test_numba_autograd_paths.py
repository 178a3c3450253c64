"""The numba backend's two autograd paths agree.

A plain ``loss.backward()`` runs lean legacy-style Functions
(``_PlainRsampleKL``, ``_PlainNormalLogProb``, ``_PlainBernoulliLogProb``): the Gaussian ones reuse the
forward's input arrays in their backward, the Bernoulli one writes
``x - sigmoid(logits)`` in the forward pass and multiplies in the backward.
Under ``torch.func`` transforms and for ``create_graph=True`` the
transform-aware Functions run. These tests hold the two paths to each other, pin
which one runs, and check that a second derivative fails clearly.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import registry
from kernels.testing import tolerance

pytestmark = pytest.mark.skipif(
    registry.unavailable_reason("numba", "cpu") is not None, reason="numba backend not available"
)

# op -> (argument names, keyword arguments)
CASES = {
    "normal_rsample": (("mu", "logvar", "eps"), {}),
    "normal_rsample_seed": (("mu", "logvar"), {"seed": 11}),
    "normal_kl_std": (("mu", "logvar"), {}),
    "normal_rsample_kl": (("mu", "logvar", "eps"), {}),
    "normal_rsample_kl_seed": (("mu", "logvar"), {"seed": 11}),
    "normal_log_prob": (("x", "mu", "logvar"), {}),
    "bernoulli_log_prob": (("x", "logits"), {}),
}
PLAIN_NODE = {
    "normal_rsample": "_PlainRsampleKLBackward",
    "normal_kl_std": "_PlainRsampleKLBackward",
    "normal_rsample_kl": "_PlainRsampleKLBackward",
    "normal_log_prob": "_PlainNormalLogProbBackward",
    "bernoulli_log_prob": "_PlainBernoulliLogProbBackward",
}


def _diff(case, name):
    """Whether an argument is differentiated: all but the Bernoulli x (data; its lean path has no dx)."""
    return not (name == "x" and case.startswith("bernoulli"))


def _fn(case):
    return getattr(kernels, case.removesuffix("_seed"))


def _inputs(case, shape=(4, 6), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in CASES[case][0]:
        if name == "x":
            t = torch.rand(shape, generator=gen, dtype=dtype)
        elif name == "logits":
            t = 3 * torch.randn(shape, generator=gen, dtype=dtype)
        elif name == "logvar":
            t = torch.rand(shape, generator=gen, dtype=dtype) * 4 - 2
        else:
            t = torch.randn(shape, generator=gen, dtype=dtype)
        out.append(t)
    return out


def _scalar(case, weights):
    fn, kwargs = _fn(case), CASES[case][1]

    def scalar(*args):
        outs = fn(*args, backend="numba", **kwargs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum((o * weights[o.dim()]).sum() for o in outs)

    return scalar


def _weights(shape, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return {
        len(shape): torch.randn(shape, generator=gen, dtype=dtype),
        len(shape) - 1: torch.randn(shape[:-1], generator=gen, dtype=dtype),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_plain_backward_equals_torch_func_grad(case):
    """``loss.backward()`` (lean path) and ``torch.func.grad`` (transform path) give the same gradients."""
    shape = (4, 6)
    scalar = _scalar(case, _weights(shape))
    args = _inputs(case, shape)
    leaves = [a.clone().requires_grad_() for a in args]
    # x of the Bernoulli case is data: its lean path is for gradients in the logits only
    wrt = [i for i, n in enumerate(CASES[case][0]) if _diff(case, n)]
    plain = torch.autograd.grad(scalar(*leaves), [leaves[i] for i in wrt])
    func = torch.func.grad(scalar, argnums=tuple(wrt))(*args)
    for p, f in zip(plain, func, strict=True):
        torch.testing.assert_close(p, f, **tolerance(torch.float64))


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("_seed")])
def test_plain_path_runs_for_a_plain_backward(case):
    """The lean Function is the one recorded (a regression here costs ~60 us a step at batch 20, silently)."""
    args = _inputs(case)
    args = [a.requires_grad_(_diff(case, n)) for a, n in zip(args, CASES[case][0], strict=True)]
    out = _fn(case)(*args, backend="numba")
    out = out[0] if isinstance(out, tuple) else out
    assert type(out.grad_fn).__name__ == PLAIN_NODE[case]


def test_bernoulli_with_differentiable_x_takes_the_full_path():
    """When x requires grad (the lean path has no dx) the full Function runs, and dx = g * logits."""
    x, logits = (a.requires_grad_() for a in _inputs("bernoulli_log_prob"))
    ll = kernels.bernoulli_log_prob(x, logits, backend="numba")
    assert type(ll.grad_fn).__name__ != PLAIN_NODE["bernoulli_log_prob"]
    g = torch.linspace(-1, 1, ll.numel(), dtype=ll.dtype).reshape(ll.shape)
    dx, dl = torch.autograd.grad(ll, (x, logits), g)
    torch.testing.assert_close(dx, g[:, None] * logits.detach(), **tolerance(torch.float64))
    torch.testing.assert_close(
        dl, g[:, None] * (x.detach() - torch.sigmoid(logits.detach())), **tolerance(torch.float64)
    )


@pytest.mark.parametrize("case", ["normal_rsample_kl", "normal_kl_std", "normal_log_prob", "bernoulli_log_prob"])
def test_create_graph_first_derivative_then_clear_error_for_the_second(case):
    shape = (3, 5)
    scalar = _scalar(case, _weights(shape))
    args = _inputs(case, shape)
    leaves = [a.clone().requires_grad_(_diff(case, n)) for a, n in zip(args, CASES[case][0], strict=True)]
    wrt = [leaves[i] for i, n in enumerate(CASES[case][0]) if _diff(case, n)]
    first = torch.autograd.grad(scalar(*leaves), wrt, create_graph=True)
    again = [a.clone().requires_grad_(_diff(case, n)) for a, n in zip(args, CASES[case][0], strict=True)]
    plain = torch.autograd.grad(scalar(*again), [again[i] for i, n in enumerate(CASES[case][0]) if _diff(case, n)])
    for f, p in zip(first, plain, strict=True):
        torch.testing.assert_close(f.detach(), p, **tolerance(torch.float64))
    with pytest.raises(NotImplementedError, match="second derivatives"):
        torch.autograd.grad(sum(f.sum() for f in first), wrt)


BROADCASTS = [
    ("normal_rsample_kl", {"mu": (3, 5), "logvar": (1, 5), "eps": (4, 3, 5)}),
    ("normal_rsample_kl", {"mu": (5,), "logvar": (4, 1, 1), "eps": (4, 3, 5)}),  # a broadcast last dim
    ("normal_rsample", {"mu": (4, 1, 5), "logvar": (3, 5), "eps": (4, 3, 5)}),
    ("normal_kl_std", {"mu": (2, 3, 5), "logvar": (3, 1)}),
    ("normal_log_prob", {"x": (4, 3, 5), "mu": (3, 5), "logvar": (1,)}),  # log q(z) of samples; a scalar variance
    ("normal_log_prob", {"x": (3, 5), "mu": (4, 3, 5), "logvar": (4, 1, 5)}),
    ("bernoulli_log_prob", {"x": (3, 5), "logits": (4, 3, 5)}),
    ("bernoulli_log_prob", {"x": (4, 3, 5), "logits": (3, 5)}),
    ("bernoulli_log_prob", {"x": (4, 3, 5), "logits": (1,)}),
]


@pytest.mark.parametrize("op,shapes", BROADCASTS, ids=str)
def test_plain_path_reads_broadcast_inputs_unexpanded(op, shapes):
    """Unexpanded inputs (the public API hands them to numba as they are): values and grads equal torch's."""
    names = CASES[op][0]
    leaves = [_inputs(op, shapes[n], seed=i)[i].requires_grad_(_diff(op, n)) for i, n in enumerate(names)]
    wrt = [t for t, n in zip(leaves, names, strict=True) if _diff(op, n)]
    outs = {}
    for backend in ("numba", "torch"):
        o = getattr(kernels, op)(*leaves, backend=backend)
        o = o if isinstance(o, tuple) else (o,)
        if backend == "numba":
            assert type(o[0].grad_fn).__name__ == PLAIN_NODE[op]
        gen = torch.Generator().manual_seed(5)
        ups = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in o]
        outs[backend] = ([t.detach() for t in o], torch.autograd.grad(o, wrt, ups))
    for got, want in zip(outs["numba"], outs["torch"], strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, **tolerance(torch.float64))


@pytest.mark.parametrize("op,shapes", [c for c in BROADCASTS if c[0] == "bernoulli_log_prob"], ids=str)
def test_plain_bernoulli_above_the_fused_grad_size_runs_the_backward_kernel(op, shapes, monkeypatch):
    """Above ``FUSED_GRAD_MAX_ELEMENTS`` the lean Bernoulli keeps no gradient buffer: same values and grads."""
    from kernels.numba_cpu import logprob

    monkeypatch.setattr(logprob, "FUSED_GRAD_MAX_ELEMENTS", 0)
    x = _inputs(op, shapes["x"], seed=0)[0]
    logits = _inputs(op, shapes["logits"], seed=1)[1].requires_grad_()
    ll = kernels.bernoulli_log_prob(x, logits, backend="numba")
    assert type(ll.grad_fn).__name__ == PLAIN_NODE[op]
    g = torch.linspace(-1, 2, ll.numel(), dtype=ll.dtype).reshape(ll.shape)
    (got,) = torch.autograd.grad(ll, logits, g)
    want_ll = kernels.bernoulli_log_prob(x, logits, backend="torch")
    (want,) = torch.autograd.grad(want_ll, logits, g)
    torch.testing.assert_close(ll.detach(), want_ll.detach(), **tolerance(torch.float64))
    torch.testing.assert_close(got, want, **tolerance(torch.float64))


@pytest.mark.parametrize("op,shapes", BROADCASTS, ids=str)
def test_no_grad_path_reads_broadcast_inputs_unexpanded(op, shapes):
    """Without autograd the launchers take the unexpanded inputs and the broadcast shape too."""
    names = CASES[op][0]
    args = [_inputs(op, shapes[n], seed=i)[i] for i, n in enumerate(names)]
    with torch.no_grad():
        got = getattr(kernels, op)(*args, backend="numba")
        want = getattr(kernels, op)(*args, backend="torch")
    for g, w in zip(
        got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,), strict=True
    ):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, **tolerance(torch.float64))


# --------------------------------------------------------------------------- saved-tensor hooks


def _hooked_grads(case, shape, backend, change):
    """Gradients of the case's weighted sum under a pack hook that saves copies, the inputs changed after the forward.

    ``change(inputs)`` runs between forward and backward (in place, or by dropping
    the caller's references). The saved copies hold the forward's values, so the
    gradients must be those of the forward's inputs, whatever happened to them.
    """
    fn, kwargs = _fn(case), CASES[case][1]
    names = CASES[case][0]
    inputs = [a.requires_grad_(_diff(case, n)) for a, n in zip(_inputs(case, shape), names, strict=True)]
    wrt = [t for t, n in zip(inputs, names, strict=True) if _diff(case, n)]
    weights = _weights(shape)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        outs = fn(*inputs, backend=backend, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * weights[o.dim()]).sum() for o in outs)
    change(inputs)
    return torch.autograd.grad(loss, wrt)


def _overwrite(inputs):
    with torch.no_grad():
        for t in inputs:
            t.add_(0.5)  # legal: autograd holds the hook's copies, not these


@pytest.mark.parametrize("shape", [(20, 50), (256, 1024)], ids=["small-call", "large"])
@pytest.mark.parametrize("case", list(CASES))
def test_backward_reads_the_saved_copies_not_the_changed_inputs(case, shape):
    """With a copying pack hook, changing an input after the forward leaves the gradients those of the forward.

    The lean Functions keep the forward's arrays (or small calls' raw addresses);
    they must notice that ``ctx.saved_tensors`` are other tensors and read those.
    """
    got = _hooked_grads(case, shape, "numba", _overwrite)
    want = _hooked_grads(case, shape, "torch", _overwrite)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **tolerance(torch.float64))


@pytest.mark.parametrize("case", ["normal_rsample_kl", "normal_log_prob", "bernoulli_log_prob"])
def test_non_reentrant_checkpoint_equals_the_plain_backward(case):
    """``torch.utils.checkpoint`` (``use_reentrant=False``) recomputes the forward in the backward."""
    from torch.utils.checkpoint import checkpoint

    shape = (20, 50)
    names = CASES[case][0]
    scalar = _scalar(case, _weights(shape))
    args = _inputs(case, shape)

    def leaves():
        return [a.clone().requires_grad_(_diff(case, n)) for a, n in zip(args, names, strict=True)]

    a, b = leaves(), leaves()
    plain = torch.autograd.grad(scalar(*a), [t for t, n in zip(a, names, strict=True) if _diff(case, n)])
    loss = checkpoint(lambda *xs: scalar(*(x * 1.0 for x in xs)), *b, use_reentrant=False)
    ckpt = torch.autograd.grad(loss, [t for t, n in zip(b, names, strict=True) if _diff(case, n)])
    for p, c in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(p, c, **tolerance(torch.float64))
