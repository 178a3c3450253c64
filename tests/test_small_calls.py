"""The numba small-call path: kernels given addresses instead of numpy arrays.

Below ``kernels.numba_cpu._layout.SMALL_MAX_ELEMENTS`` elements (short rows,
``D < SHORT_ROW``, only in fewer than two chunks) the Gaussian rsample/KL ops
and both log densities hand their serial kernels ``(address, length, layout)`` per input
(``_layout.address``) and build the arrays inside numba (``_layout.view``), which
costs a fraction of :func:`_layout.strided`'s numpy views at VAE-training sizes.

Checked here: which calls take the path (the training step's do; calls at the
threshold, with short rows or under a transform do not); the ops against the
torch reference on it, forward and backward under non-unit upstream gradients,
for every input layout ``address`` handles (contiguous, chunked views read in
place, broadcasts, a layout that is copied and kept alive, in-kernel noise,
expanded upstream gradients); the pure-Python ``view`` against the tensor it
points at.
"""

from __future__ import annotations

import gc

import pytest
import torch

import kernels
from kernels import registry
from kernels.testing import NOISE_ATOL, assert_close_to_reference, tolerance

numba_missing = registry.unavailable_reason("numba", "cpu")
pytestmark = pytest.mark.skipif(numba_missing is not None, reason=f"numba backend not available: {numba_missing}")

DTYPES = [torch.float32, torch.float64]


@pytest.fixture
def launches(monkeypatch):
    """Counts of the small-call kernels' launches, by name."""
    from kernels.numba_cpu import gaussian, logprob

    names = [(gaussian, "_fwd_small"), (gaussian, "_bwd_small"), (logprob, "_bern_fwd_small")]
    names += [(logprob, "_normal_fwd_small"), (logprob, "_normal_bwd_small")]
    counts = {name: 0 for _, name in names}
    for mod, name in names:
        kernel = getattr(mod, name)

        def counted(*args, _k=kernel, _n=name):
            counts[_n] += 1
            return _k(*args)

        monkeypatch.setattr(mod, name, counted)
    return counts


def _leaf(shape, dtype, gen, scale=1.0):
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()


def _ups(outs, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]


def _both(fn, leaves):
    """``fn(backend)`` -> outputs, and the leaves' gradients under fixed non-unit upstream gradients, per backend."""
    res = {}
    for backend in ("numba", "torch"):
        outs = fn(backend)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = torch.autograd.grad(outs, leaves, _ups(outs), allow_unused=True)
        res[backend] = (tuple(o.detach() for o in outs), grads)
    return res


# --------------------------------------------------------------------------- which calls take the path
def test_a_training_step_takes_the_small_path(launches):
    """Batch 20 of the default VAE: rsample+KL [20, 50] under eps [1, 20, 50], log-likelihood [1, 20, 784]."""
    gen = torch.Generator().manual_seed(0)
    h = _leaf((20, 100), torch.float32, gen)
    mu, logvar = h.chunk(2, -1)  # views of one encoder output, read in place
    eps = torch.randn((1, 20, 50), generator=gen)
    x = torch.rand((20, 784), generator=gen).bernoulli()
    logits = _leaf((1, 20, 784), torch.float32, gen)
    z, kl = kernels.normal_rsample_kl(mu, logvar, eps, backend="numba")
    ll = kernels.bernoulli_log_prob(x, logits, backend="numba")
    (z.sum() + kl.sum() - ll.sum()).backward()
    assert launches == {
        "_fwd_small": 1,
        "_bwd_small": 1,
        "_bern_fwd_small": 1,
        "_normal_fwd_small": 0,
        "_normal_bwd_small": 0,
    }
    with torch.no_grad():  # the no-grad route too
        kernels.normal_rsample_kl(mu, logvar, eps, backend="numba")
        kernels.bernoulli_log_prob(x, logits, backend="numba")
        kernels.normal_log_prob(z, mu, logvar, backend="numba")
    assert launches == {
        "_fwd_small": 2,
        "_bwd_small": 1,
        "_bern_fwd_small": 2,
        "_normal_fwd_small": 1,
        "_normal_bwd_small": 0,
    }


@pytest.mark.parametrize(
    "shape,expected",
    [((1024, 32), 0), ((8, 4095), 1), ((1000, 31), 1), ((1100, 29), 0), ((100, 16), 1)],
    ids=["at-threshold", "one-under", "short-rows-one-chunk-and-a-half", "short-rows-two-chunks", "digits-latents"],
)
def test_the_threshold_and_short_rows(launches, shape, expected):
    """Below 32768 elements; short rows (D < 32) only in fewer than two chunks of 512 rows."""
    from kernels.numba_cpu._layout import CHUNK_ROWS, SHORT_ROW, SMALL_MAX_ELEMENTS

    assert (SHORT_ROW, CHUNK_ROWS, SMALL_MAX_ELEMENTS) == (32, 512, 32768)  # the ids above
    gen = torch.Generator().manual_seed(1)
    mu, logvar = _leaf(shape, torch.float32, gen), _leaf(shape, torch.float32, gen, 0.5)
    kernels.normal_rsample_kl(mu, logvar, torch.randn(shape, generator=gen), backend="numba")
    assert launches["_fwd_small"] == expected


def test_transforms_do_not_take_the_small_path(launches):
    gen = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(4, 64, generator=gen), torch.randn(4, 64, generator=gen)
    eps = torch.randn(4, 64, generator=gen)

    def f(m):
        z, kl = kernels.normal_rsample_kl(m, logvar, eps, backend="numba")
        return z.sum() + kl.sum()

    torch.func.vmap(torch.func.grad(f))(mu[None].expand(3, 4, 64))
    assert launches["_fwd_small"] == 0 and launches["_bwd_small"] == 0


# --------------------------------------------------------------------------- the Gaussian op on the path
def _gaussian_case(case, dtype, gen):
    """``(mu, logvar, eps, leaves)`` of a small call whose inputs have the layout named ``case``."""
    if case == "contiguous":
        mu, logvar, eps = _leaf((20, 50), dtype, gen), _leaf((20, 50), dtype, gen, 0.5), _leaf((20, 50), dtype, gen)
        return mu, logvar, eps, [mu, logvar, eps]
    if case == "chunked-views":  # halves of an encoder output: read in place (strided rows)
        h = _leaf((20, 100), dtype, gen)
        mu, logvar = h.chunk(2, -1)
        return mu, logvar, torch.randn((1, 20, 50), generator=gen, dtype=torch.float64).to(dtype), [h]
    if case == "broadcast-samples":  # mu, logvar [B, D] under eps [S, B, D]
        mu, logvar, eps = _leaf((6, 40), dtype, gen), _leaf((6, 40), dtype, gen, 0.5), _leaf((5, 6, 40), dtype, gen)
        return mu, logvar, eps, [mu, logvar, eps]
    if case == "broadcast-row":  # one logvar row for every row
        mu, logvar, eps = _leaf((3, 7, 33), dtype, gen), _leaf((33,), dtype, gen, 0.5), _leaf((3, 7, 33), dtype, gen)
        return mu, logvar, eps, [mu, logvar, eps]
    if case == "short-rows":  # digits' latents [B, 16]: the chunked kernels
        h = _leaf((100, 32), dtype, gen)
        mu, logvar = h.chunk(2, -1)
        return mu, logvar, torch.randn((1, 100, 16), generator=gen, dtype=torch.float64).to(dtype), [h]
    if case == "short-rows-broadcast":  # rows of 3 under samples, 2 chunks' worth of elements but 960 rows
        mu, logvar, eps = _leaf((96, 3), dtype, gen), _leaf((96, 3), dtype, gen, 0.5), _leaf((10, 96, 3), dtype, gen)
        return mu, logvar, eps, [mu, logvar, eps]
    if case == "copied":  # leading dims that do not collapse to two: strided() copies it, address() keeps the copy
        base = _leaf((4, 5, 6, 40), dtype, gen)
        mu = base.permute(2, 0, 1, 3)  # [6, 4, 5, 40], strides that do not merge
        logvar, eps = _leaf((6, 4, 5, 40), dtype, gen, 0.5), _leaf((6, 4, 5, 40), dtype, gen)
        return mu, logvar, eps, [base, logvar, eps]
    raise AssertionError(case)


GAUSS_CASES = [
    "contiguous",
    "chunked-views",
    "broadcast-samples",
    "broadcast-row",
    "short-rows",
    "short-rows-broadcast",
    "copied",
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GAUSS_CASES)
@pytest.mark.parametrize("op", ["normal_rsample_kl", "normal_rsample", "normal_kl_std"])
def test_gaussian_small_calls_match_reference(launches, op, case, dtype):
    gen = torch.Generator().manual_seed(GAUSS_CASES.index(case))
    mu, logvar, eps, leaves = _gaussian_case(case, dtype, gen)
    args = (mu, logvar) if op == "normal_kl_std" else (mu, logvar, eps)
    res = _both(lambda b: getattr(kernels, op)(*args, backend=b), leaves)
    assert launches["_fwd_small"] == 1 and launches["_bwd_small"] == 1
    D = mu.shape[-1]
    assert_close_to_reference(res["numba"][0], res["torch"][0], terms=D, msg=f"{op} {case}")
    assert_close_to_reference(res["numba"][1], res["torch"][1], terms=30, msg=f"{op} {case} grads")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_in_kernel_noise_on_the_small_path(launches, dtype):
    """eps None: the kernels draw the shared stream for the seed; the backward draws it again."""
    gen = torch.Generator().manual_seed(3)
    mu, logvar = _leaf((4, 9, 48), dtype, gen), _leaf((4, 9, 48), dtype, gen, 0.5)
    res = _both(lambda b: kernels.normal_rsample_kl(mu, logvar, seed=123, backend=b), [mu, logvar])
    assert launches["_fwd_small"] == 1 and launches["_bwd_small"] == 1
    # The two streams agree to NOISE_ATOL (kernels.testing); it enters z times sigma
    # and dlogvar times 0.5 * sigma * dz, on top of the reference tolerance of 48-term sums.
    sigma = torch.exp(0.5 * logvar.detach()).max().item()
    up = max(u.abs().max().item() for u in _ups(res["torch"][0]))
    tol = dict(rtol=tolerance(dtype)["rtol"], atol=NOISE_ATOL * sigma * max(1.0, up) + tolerance(dtype, 48)["atol"])
    for a, e in zip(res["numba"][0] + res["numba"][1], res["torch"][0] + res["torch"][1], strict=True):
        torch.testing.assert_close(a, e, **tol)


def test_expanded_upstream_gradients(launches):
    """``z.sum()`` and ``kl.mean()`` hand the backward expanded (stride-0) gradients."""
    gen = torch.Generator().manual_seed(4)
    mu, logvar, eps = (
        _leaf((20, 50), torch.float64, gen),
        _leaf((20, 50), torch.float64, gen),
        _leaf((20, 50), torch.float64, gen),
    )
    grads = {}
    for b in ("numba", "torch"):
        z, kl = kernels.normal_rsample_kl(mu, logvar, eps, backend=b)
        grads[b] = torch.autograd.grad(3.0 * z.sum() + kl.mean(), [mu, logvar, eps])
    assert launches["_bwd_small"] == 1
    assert_close_to_reference(grads["numba"], grads["torch"], msg="expanded upstream")


def test_rsample_only_returns_dz_as_dmu():
    gen = torch.Generator().manual_seed(5)
    mu, logvar, eps = (
        _leaf((20, 50), torch.float32, gen),
        _leaf((20, 50), torch.float32, gen),
        torch.randn(20, 50, generator=gen),
    )
    z = kernels.normal_rsample(mu, logvar, eps, backend="numba")
    up = torch.randn(20, 50, generator=gen)
    dmu, dlv = torch.autograd.grad(z, [mu, logvar], up)
    torch.testing.assert_close(dmu, up, rtol=0, atol=0)
    torch.testing.assert_close(dlv, 0.5 * up * torch.exp(0.5 * logvar.detach()) * eps)


def test_the_copy_outlives_the_forward(launches):
    """A copied input (no layout reads it in place) is kept for the backward, whatever the collector does."""
    gen = torch.Generator().manual_seed(6)
    mu, logvar, eps, leaves = _gaussian_case("copied", torch.float32, gen)
    z, kl = kernels.normal_rsample_kl(mu, logvar, eps, backend="numba")
    junk = [torch.randn(6, 4, 5, 40) for _ in range(50)]  # reuse any freed memory
    del junk
    gc.collect()
    got = torch.autograd.grad((z, kl), leaves, _ups((z, kl)))
    z2, kl2 = kernels.normal_rsample_kl(mu, logvar, eps, backend="torch")
    ref = torch.autograd.grad((z2, kl2), leaves, _ups((z2, kl2)))
    assert_close_to_reference(got, ref, terms=40, msg="copied")


# --------------------------------------------------------------------------- the Bernoulli op on the path
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["contiguous", "broadcast-data", "real-x", "strided-logits", "short-rows"])
def test_bernoulli_small_calls_match_reference(launches, case, dtype):
    gen = torch.Generator().manual_seed(10)
    if case == "broadcast-data":  # x [B, D] under logits [S, B, D] (the decoder's samples)
        x = torch.rand((6, 784), generator=gen, dtype=torch.float64).bernoulli().to(dtype)
        logits = _leaf((3, 6, 784), dtype, gen, 3.0)
    elif case == "short-rows":  # no chunked Bernoulli kernel: the row kernel at any D
        x = torch.rand((2, 50, 10), generator=gen, dtype=torch.float64).bernoulli().to(dtype)
        logits = _leaf((2, 50, 10), dtype, gen, 3.0)
    elif case == "strided-logits":
        x = torch.rand((20, 100), generator=gen, dtype=torch.float64).bernoulli().to(dtype)
        wide = _leaf((20, 300), dtype, gen, 3.0)
        logits = wide[:, 100:200]
    else:
        x = torch.rand((20, 784), generator=gen, dtype=torch.float64).to(dtype)
        x = x if case == "real-x" else x.bernoulli()
        logits = _leaf((1, 20, 784), dtype, gen, 3.0)
    leaf = wide if case == "strided-logits" else logits
    res = _both(lambda b: kernels.bernoulli_log_prob(x, logits, backend=b), [leaf])
    assert launches["_bern_fwd_small"] == 1
    D = x.shape[-1]
    assert_close_to_reference(res["numba"][0], res["torch"][0], terms=D, msg=f"bernoulli {case}")
    assert_close_to_reference(res["numba"][1], res["torch"][1], msg=f"bernoulli {case} grads")
    with torch.no_grad():
        got = kernels.bernoulli_log_prob(x, logits, backend="numba")
    assert launches["_bern_fwd_small"] == 2
    assert_close_to_reference(got, res["torch"][0][0], terms=D, msg=f"bernoulli {case} no-grad")


# --------------------------------------------------------------------------- the Gaussian log density on the path
def _normal_case(case, dtype, gen):
    """``(x, mu, logvar, leaves)`` of a small log-density call whose inputs have the layout ``case``."""
    if case == "contiguous":
        x, mu, logvar = _leaf((20, 50), dtype, gen), _leaf((20, 50), dtype, gen), _leaf((20, 50), dtype, gen, 0.5)
        return x, mu, logvar, [x, mu, logvar]
    if case == "log-q-of-samples":  # z [S, B, D] under the chunked encoder output (kl="mc", IWAE, score function)
        h = _leaf((6, 80), dtype, gen, 0.5)
        mu, logvar = h.chunk(2, -1)
        x = _leaf((5, 6, 40), dtype, gen)
        return x, mu, logvar, [x, h]
    if case == "broadcast-row":  # a fixed variance row, as the ppca decoder's
        x, mu, logvar = _leaf((3, 7, 33), dtype, gen), _leaf((7, 33), dtype, gen), _leaf((33,), dtype, gen, 0.5)
        return x, mu, logvar, [x, mu, logvar]
    if case == "short-rows":  # log q of z [S, B, 16] under digits' chunked encoder output
        h = _leaf((30, 32), dtype, gen, 0.5)
        mu, logvar = h.chunk(2, -1)
        x = _leaf((10, 30, 16), dtype, gen)
        return x, mu, logvar, [x, h]
    if case == "copied":
        base = _leaf((4, 5, 6, 40), dtype, gen)
        x = base.permute(2, 0, 1, 3)
        mu, logvar = _leaf((6, 4, 5, 40), dtype, gen), _leaf((6, 4, 5, 40), dtype, gen, 0.5)
        return x, mu, logvar, [base, mu, logvar]
    raise AssertionError(case)


NORMAL_CASES = ["contiguous", "log-q-of-samples", "broadcast-row", "short-rows", "copied"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", NORMAL_CASES)
def test_normal_log_prob_small_calls_match_reference(launches, case, dtype):
    gen = torch.Generator().manual_seed(20 + NORMAL_CASES.index(case))
    x, mu, logvar, leaves = _normal_case(case, dtype, gen)
    res = _both(lambda b: kernels.normal_log_prob(x, mu, logvar, backend=b), leaves)
    assert launches["_normal_fwd_small"] == 1 and launches["_normal_bwd_small"] == 1
    D = x.shape[-1]
    assert_close_to_reference(res["numba"][0], res["torch"][0], terms=D, msg=f"normal_log_prob {case}")
    assert_close_to_reference(res["numba"][1], res["torch"][1], terms=30, msg=f"normal_log_prob {case} grads")
    with torch.no_grad():
        got = kernels.normal_log_prob(x, mu, logvar, backend="numba")
    assert_close_to_reference(got, res["torch"][0][0], terms=D, msg=f"normal_log_prob {case} no-grad")


def test_normal_log_prob_expanded_upstream(launches):
    """``lp.mean()`` hands the backward an expanded (stride-0) gradient, made contiguous for the kernel."""
    gen = torch.Generator().manual_seed(30)
    x, mu, logvar, leaves = _normal_case("log-q-of-samples", torch.float64, gen)
    grads = {}
    for b in ("numba", "torch"):
        grads[b] = torch.autograd.grad(kernels.normal_log_prob(x, mu, logvar, backend=b).mean(), leaves)
    assert launches["_normal_bwd_small"] == 1
    assert_close_to_reference(grads["numba"], grads["torch"], terms=30, msg="expanded upstream")


# --------------------------------------------------------------------------- the view helper itself
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_python_view_reads_the_tensor(dtype):
    from kernels.numba_cpu._layout import WITNESS, view

    t = torch.arange(12, dtype=dtype)
    a = view(t[3:].data_ptr(), 9, WITNESS[dtype])
    assert a.tolist() == list(range(3, 12)) and a.dtype == WITNESS[dtype].dtype
    assert view(None, 0, WITNESS[dtype]) is None
