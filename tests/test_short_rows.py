"""The numba short-row kernels (rows of D < SHORT_ROW): row sums, spread row values, tiled broadcast inputs.

Rows shorter than ``kernels.numba_cpu._layout.SHORT_ROW`` run as chunks of
``CHUNK_ROWS`` rows, one flat loop over their elements, with the per-row loops of
``sum_rows`` (the row sums of the forward) and ``spread_rows`` (a row's upstream
gradient over its elements, in the backward) eight rows at a time. An input
whose rows repeat with a period dividing ``CHUNK_ROWS`` (the data ``x [B, D]``
under a decoder mean ``[S, R, B, D]``, a scalar variance) is tiled once into one
chunk of rows (``chunk_tiled``) instead of being gathered by every chunk.

Checked here: the helpers against numpy for every short row length and row
counts that are and are not multiples of eight; the tiled layout reads the rows
of the original one; and the public ops against the torch reference on the
shapes that take these paths (several chunks, a remainder chunk, tiled and
untiled broadcasts), forward and backward under a non-unit upstream gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels
from kernels import registry
from kernels.testing import assert_close_to_reference

numba_missing = registry.unavailable_reason("numba", "cpu")
pytestmark = pytest.mark.skipif(numba_missing is not None, reason=f"numba backend not available: {numba_missing}")

SHORT_DS = [1, 2, 3, 5, 7, 8, 9, 10, 16, 31]


# --------------------------------------------------------------------------- the per-row helpers
@pytest.mark.parametrize("D", SHORT_DS)
@pytest.mark.parametrize("nr", [1, 7, 8, 9, 37, 512])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_sum_rows_matches_numpy(D, nr, dtype):
    from kernels.numba_cpu._layout import sum_rows

    rng = np.random.default_rng(D * 1000 + nr)
    t = rng.standard_normal(nr * D).astype(dtype)
    out = np.full(nr + 5, np.nan, dtype)
    sum_rows(t, nr, D, -0.5, out, 3)  # rows go to out[3 : 3 + nr]
    expected = -0.5 * t.astype(np.float64).reshape(nr, D).sum(1)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out[3 : 3 + nr], expected, rtol=tol, atol=tol * np.sqrt(D))
    assert np.isnan(out[:3]).all() and np.isnan(out[3 + nr :]).all()  # nothing written outside


@pytest.mark.parametrize("D", SHORT_DS)
@pytest.mark.parametrize("nr", [1, 7, 8, 9, 37, 512])
def test_spread_rows_matches_repeat(D, nr):
    from kernels.numba_cpu._layout import spread_rows

    g = np.arange(nr + 4, dtype=np.float32) + 0.5
    gs = np.full(nr * D, np.nan, np.float32)
    got = spread_rows(g, 4, nr, D, gs)  # rows 4 .. 4 + nr of g
    np.testing.assert_array_equal(got, np.repeat(g[4 : 4 + nr], D))
    assert got.ctypes.data == gs.ctypes.data  # written in place


# --------------------------------------------------------------------------- tiled broadcast inputs
def _rows(a, lay, R, D):
    inner, so, si = lay[0], lay[1], lay[2]
    return np.stack([a[(r // inner) * so + (r % inner) * si :][:D] for r in range(R)])


@pytest.mark.parametrize(
    "name, base_shape, view, tiled",
    [
        ("data_under_samples", (32, 10), lambda t: t.expand(64, 32, 10), True),  # x [B, D], B | CHUNK_ROWS
        ("scalar_everywhere", (1,), lambda t: t.expand(64, 32, 10), True),
        ("one_row", (10,), lambda t: t.expand(2048, 10), True),
        ("column_slice_under_samples", (16, 23), lambda t: t[:, 3:13].expand(128, 16, 10), True),
        ("period_not_dividing_chunk", (33, 10), lambda t: t.expand(64, 33, 10), False),
        ("middle_broadcast", (64, 1, 10), lambda t: t.expand(64, 32, 10), False),  # outer stride != 0
        ("contiguous", (2048, 10), lambda t: t, False),
        ("few_rows", (32, 10), lambda t: t.expand(20, 32, 10), False),  # fewer than two chunks
        ("long_rows", (32, 40), lambda t: t.expand(64, 32, 40), False),  # D >= SHORT_ROW: row kernels
    ],
)
def test_chunk_tiled_reads_the_same_rows(name, base_shape, view, tiled):
    from kernels.numba_cpu._layout import CHUNK_ROWS, chunk_tiled, strided

    t = view(torch.randn(base_shape, dtype=torch.float64))
    D = t.shape[-1]
    R = t.numel() // D
    a, lay = strided(t, R, D)
    lay2, a2, none = chunk_tiled(lay, R, D, a, None)
    assert none is None
    if not tiled:
        assert lay2 == lay and a2 is a, name
        return
    assert a2.size == CHUNK_ROWS * D and lay2[:3] == (CHUNK_ROWS, 0, D), name
    np.testing.assert_array_equal(_rows(a2, lay2, R, D), t.reshape(R, D).numpy(), err_msg=name)


def test_chunk_tiled_takes_the_ppca_decoder_inputs():
    """The decoder log-prob of the ppca variance benchmark: x [B, 10] and a scalar variance are tiled."""
    from kernels.numba_cpu import logprob
    from kernels.numba_cpu._layout import CHUNK_ROWS

    x = torch.randn(32, 10)
    mean = torch.randn(40, 8, 32, 10)
    lv = torch.zeros(()).expand(mean.shape)
    R, D, (xa, xl, ma, ml, lva, lvl, w) = logprob.normal_prepare(x, mean, lv, mean.shape)
    assert xl[:3] == (CHUNK_ROWS, 0, 10) and lvl[:3] == (CHUNK_ROWS, 0, 10)
    assert xa.size == lva.size == w.size == CHUNK_ROWS * 10
    assert ml[:3] == (R, 0, 10)  # the mean is contiguous: read in place as before


# --------------------------------------------------------------------------- public ops vs torch
def _run(op, args, leaves, backend, seed=1):
    outs = getattr(kernels, op)(*args, backend=backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, ups)
    return tuple(o.detach() for o in outs), grads


def _leaf(shape, dtype, gen, scale=1.0):
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()


@pytest.mark.parametrize("D", SHORT_DS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", ["normal_log_prob", "normal_rsample_kl", "normal_kl_std"])
def test_short_rows_full_inputs_match_reference(op, D, dtype):
    """2 chunks and a remainder of 13 rows (not a multiple of 8), full contiguous inputs."""
    R = 2 * 512 + 13
    gen = torch.Generator().manual_seed(D)
    if op == "normal_log_prob":
        leaves = [_leaf((R, D), dtype, gen), _leaf((R, D), dtype, gen), _leaf((R, D), dtype, gen, 0.5)]
    elif op == "normal_rsample_kl":
        leaves = [_leaf((R, D), dtype, gen), _leaf((R, D), dtype, gen, 0.5), _leaf((R, D), dtype, gen)]
    else:
        leaves = [_leaf((R, D), dtype, gen), _leaf((R, D), dtype, gen, 0.5)]
    outs, grads = _run(op, leaves, leaves, "numba")
    ref_outs, ref_grads = _run(op, leaves, leaves, "torch")
    assert_close_to_reference(outs, ref_outs, terms=D, msg=f"{op} D={D}")
    assert_close_to_reference(grads, ref_grads, msg=f"{op} D={D} grads")


@pytest.mark.parametrize("D", [3, 10, 31])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("B", [32, 33], ids=["tiled", "gathered"])
def test_decoder_log_prob_under_broadcast_data_matches_reference(D, dtype, B):
    """log p(x | z) of data x [B, D] under a mean [S, R, B, D] and one scalar variance (ppca's decoder)."""
    gen = torch.Generator().manual_seed(B + D)
    x = _leaf((B, D), dtype, gen)
    mean = _leaf((24, 5, B, D), dtype, gen)
    log_s2 = _leaf((), dtype, gen, 0.3)
    args = (x, mean, log_s2.expand(mean.shape))
    outs, grads = _run("normal_log_prob", args, [x, mean, log_s2], "numba")
    ref_outs, ref_grads = _run("normal_log_prob", args, [x, mean, log_s2], "torch")
    assert_close_to_reference(outs, ref_outs, terms=D)
    assert_close_to_reference(grads[1], ref_grads[1])
    assert_close_to_reference(grads[0], ref_grads[0], terms=24 * 5)  # summed over the broadcast rows
    assert_close_to_reference(grads[2], ref_grads[2], terms=24 * 5 * B * D)


@pytest.mark.parametrize("D", [3, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_rsample_kl_under_tiled_parameters_matches_reference(D, dtype):
    """mu, logvar [B, D] with B | CHUNK_ROWS broadcast under noise [S, B, D]: tiled mu, logvar and exp."""
    gen = torch.Generator().manual_seed(D)
    mu, lv = _leaf((64, D), dtype, gen), _leaf((64, D), dtype, gen, 0.5)
    eps = _leaf((40, 64, D), dtype, gen)
    args = (mu.expand(eps.shape), lv.expand(eps.shape), eps)
    outs, grads = _run("normal_rsample_kl", args, [mu, lv, eps], "numba")
    ref_outs, ref_grads = _run("normal_rsample_kl", args, [mu, lv, eps], "torch")
    assert_close_to_reference(outs, ref_outs, terms=D)
    assert_close_to_reference(grads[2], ref_grads[2])
    assert_close_to_reference(grads[:2], ref_grads[:2], terms=40)
