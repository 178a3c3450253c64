"""Fused numba kernels for the two log-likelihoods, summed over the last dim.

Math (rows of length D, upstream gradient ``g [...]``):

* diagonal Gaussian, ``w = exp(-logvar)``, ``d = x - mu``:
  ``lp = -0.5 * sum_j (log(2 pi) + logvar_j + d_j^2 w_j)``;
  ``dx = -g d w``, ``dmu = g d w``, ``dlogvar = -0.5 g (1 - d^2 w)``
  (equals ``torch.distributions.Normal(mu, exp(logvar / 2)).log_prob(x).sum(-1)``);
* Bernoulli with logits ``l``: ``lp = sum_j (x_j l_j - softplus(l_j))``;
  ``dx = g l``, ``dl = g (x - sigmoid(l))``; softplus and sigmoid go through
  ``exp(-|l|)`` so any ``|l|`` is finite (equals
  ``torch.distributions.Bernoulli(logits=l).log_prob(x).sum(-1)``, x real in [0, 1]).

Each op is one forward kernel (a row reduction) and one backward kernel giving
the gradients of every floating input (x too: STL and DReG differentiate log q
in its sample) in one pass; a gradient that is not needed is not written.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import overload

from ._common import (
    NO_GRAD,
    PLAIN,
    TRANSFORM,
    apply,
    apply_backward,
    exp_of_broadcast,
    expand_to,
    finish_grads,
    flat,
    fold_vmap,
    output,
    outputs,
    plain_apply,
    reduce_to,
    route,
    rows,
    saved_key,
    use_parallel,
)
from ._flags import BLOCK, FUSED_GRAD_MAX_ELEMENTS, JIT_OPTIONS, PARALLEL_MIN_ELEMENTS_BERNOULLI
from ._layout import (
    CHUNK_ROWS,
    SHORT_ROW,
    WITNESS,
    chunk_tiled,
    kept_for_backward,
    new_output,
    out_row,
    put,
    row,
    rows_backward,
    rows_flat,
    scratch,
    small,
    small_call,
    spread_rows,
    strided,
    sum_rows,
    task,
    tasks,
    view,
)
from ._math import cst, fexp, fsigmoid, fsoftplus, seg
from ._stream import block_len, block_out, buffer_row, stream_block, stream_buffers, stream_fence

LOG_2PI = math.log(2.0 * math.pi)

# --------------------------------------------------------------------------- Gaussian


def inv_var(w, w_, j, v):  # pragma: no cover - replaced by the overload inside numba
    """``exp(-v)``: read from ``w_[j]`` when the launcher precomputed it (``w`` not None)."""
    return np.exp(-v) if w is None else w_[j]


@overload(inv_var, inline="always")
def _inv_var_impl(w, w_, j, v):
    if isinstance(w, types.NoneType):
        return lambda w, w_, j, v: fexp(-v)
    return lambda w, w_, j, v: w_[j]


@njit(**JIT_OPTIONS)
def _normal_fwd_rows(r0, r1, D, x, xl, mu, mul, lv, lvl, w, out):
    # Rows r0 .. r1 - 1. x, mu, lv: read as rows of their layouts (see _layout); w:
    # exp(-lv) through lv's layout, or None (evaluated here); out: [R] log density
    # per row. Blocks indexed from 0 (_math.seg); a row of at most BLOCK elements
    # is one block, read without slicing it again.
    c = cst(x, LOG_2PI)
    for r in range(r0, r1):
        xr, mr, vr, wr = row(x, xl, r, D), row(mu, mul, r, D), row(lv, lvl, r, D), row(w, lvl, r, D)
        acc = 0.0
        for lo in range(0, D, BLOCK):
            hi = min(lo + BLOCK, D)
            if D > BLOCK:
                x_, m_, v_, w_ = seg(xr, lo, hi), seg(mr, lo, hi), seg(vr, lo, hi), seg(wr, lo, hi)
            else:
                x_, m_, v_, w_ = xr, mr, vr, wr
            part = cst(x, 0.0)
            for j in range(hi - lo):
                v = v_[j]
                d = x_[j] - m_[j]
                part += c + v + d * d * inv_var(w, w_, j, v)
            acc += np.float64(part)
        out[r] = cst(out, -0.5 * acc)


@njit(**JIT_OPTIONS)
def _normal_fwd_serial(R, D, x, xl, mu, mul, lv, lvl, w, out):
    _normal_fwd_rows(0, R, D, x, xl, mu, mul, lv, lvl, w, out)


@njit(parallel=True, **JIT_OPTIONS)
def _normal_fwd_parallel(R, D, x, xl, mu, mul, lv, lvl, w, out):
    n = tasks(R, D)
    for t in prange(n):
        lo, hi = task(t, n, R)
        _normal_fwd_rows(lo, hi, D, x, xl, mu, mul, lv, lvl, w, out)


@njit(**JIT_OPTIONS)
def _normal_bwd_rows(r0, r1, slot, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv, sb):
    # Rows r0 .. r1 - 1 of task `slot`. g: [R] upstream; x, mu, lv: rows of their
    # layouts (_layout); w: exp(-lv) or None (as in the forward); dx, dmu, dlv:
    # None, [R*D] outputs, or [REDUCE_TASKS, n] accumulators of a broadcast input
    # (_layout.out_row, put). sb: None (a row is one pass), or [3, BLOCK] staging
    # buffers of full-size dx, dmu, dlv: rows then run in blocks of BLOCK, written
    # out with non-temporal stores (_stream).
    half = cst(x, 0.5)
    one = cst(x, 1.0)
    step = block_len(sb, D)
    for r in range(r0, r1):
        gr = g[r]
        xr, mr, vr, wr = row(x, xl, r, D), row(mu, mul, r, D), row(lv, lvl, r, D), row(w, lvl, r, D)
        dxr, dmr, dlr = out_row(dx, slot, xl, r, D), out_row(dmu, slot, mul, r, D), out_row(dlv, slot, lvl, r, D)
        for lo in range(0, D, step):
            hi = min(lo + step, D)
            x_, m_, v_, w_ = seg(xr, lo, hi), seg(mr, lo, hi), seg(vr, lo, hi), seg(wr, lo, hi)
            dx_, dm_, dl_ = seg(dxr, lo, hi), seg(dmr, lo, hi), seg(dlr, lo, hi)
            dxw, dmw, dlw = (
                block_out(dx_, buffer_row(sb, 0)),
                block_out(dm_, buffer_row(sb, 1)),
                block_out(dl_, buffer_row(sb, 2)),
            )
            for j in range(hi - lo):
                d = x_[j] - m_[j]
                q = d * inv_var(w, w_, j, v_[j])
                gq = gr * q
                if dx is not None:
                    put(dx, dxw, j, -gq)
                if dmu is not None:
                    put(dmu, dmw, j, gq)
                if dlv is not None:
                    put(dlv, dlw, j, -half * gr * (one - d * q))
            stream_block(dx_, buffer_row(sb, 0), hi - lo)
            stream_block(dm_, buffer_row(sb, 1), hi - lo)
            stream_block(dl_, buffer_row(sb, 2), hi - lo)
    stream_fence(sb)


@njit(**JIT_OPTIONS)
def _normal_bwd_serial(nt, R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv, bufs):
    for t in range(nt):
        lo, hi = task(t, nt, R)
        _normal_bwd_rows(lo, hi, t, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv, buffer_row(bufs, t))


@njit(parallel=True, **JIT_OPTIONS)
def _normal_bwd_parallel(nt, R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv, bufs):
    # bufs: None, or [nt, 3, BLOCK] staging buffers (_stream.stream_buffers)
    for t in prange(nt):
        lo, hi = task(t, nt, R)
        _normal_bwd_rows(lo, hi, t, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv, buffer_row(bufs, t))


@njit(**JIT_OPTIONS)
def _normal_fwd_chunk(c, R, D, x, xl, mu, mul, lv, lvl, w, out):
    # Short rows (D < SHORT_ROW): rows c*CHUNK_ROWS .. as one flat, vectorized
    # loop over their elements, then a per-row float64 sum of the terms.
    r0 = c * CHUNK_ROWS
    nr = min(CHUNK_ROWS, R - r0)
    n = nr * D
    xs = rows_flat(x, xl, r0, nr, D, scratch(x, n))
    ms = rows_flat(mu, mul, r0, nr, D, scratch(mu, n))
    vs = rows_flat(lv, lvl, r0, nr, D, scratch(lv, n))
    ws = rows_flat(w, lvl, r0, nr, D, scratch(w, n))
    t = np.empty(n, x.dtype)
    cc = cst(x, LOG_2PI)
    for i in range(n):
        v = vs[i]
        d = xs[i] - ms[i]
        t[i] = cc + v + d * d * inv_var(w, ws, i, v)
    sum_rows(
        t, nr, D, -0.5, out, r0
    )  # fewer than SHORT_ROW terms a row: in the input dtype, as a block of the row kernels


@njit(**JIT_OPTIONS)
def _normal_fwd_chunked_serial(R, D, x, xl, mu, mul, lv, lvl, w, out):
    for c in range((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _normal_fwd_chunk(c, R, D, x, xl, mu, mul, lv, lvl, w, out)


@njit(parallel=True, **JIT_OPTIONS)
def _normal_fwd_chunked_parallel(R, D, x, xl, mu, mul, lv, lvl, w, out):
    for c in prange((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _normal_fwd_chunk(c, R, D, x, xl, mu, mul, lv, lvl, w, out)


@njit(**JIT_OPTIONS)
def _normal_bwd_chunk(c, R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv):
    # Short rows: the elements of CHUNK_ROWS rows as one flat loop, with the
    # upstream gradient of each row spread over its elements first.
    r0 = c * CHUNK_ROWS
    nr = min(CHUNK_ROWS, R - r0)
    n = nr * D
    o = r0 * D
    xs = rows_flat(x, xl, r0, nr, D, scratch(x, n))
    ms = rows_flat(mu, mul, r0, nr, D, scratch(mu, n))
    vs = rows_flat(lv, lvl, r0, nr, D, scratch(lv, n))
    ws = rows_flat(w, lvl, r0, nr, D, scratch(w, n))
    gs = spread_rows(g, r0, nr, D, np.empty(n, x.dtype))
    half = cst(x, 0.5)
    one = cst(x, 1.0)
    dx_, dm_, dl_ = seg(dx, o, o + n), seg(dmu, o, o + n), seg(dlv, o, o + n)
    for i in range(n):
        d = xs[i] - ms[i]
        q = d * inv_var(w, ws, i, vs[i])
        gq = gs[i] * q
        if dx is not None:
            dx_[i] = -gq
        if dmu is not None:
            dm_[i] = gq
        if dlv is not None:
            dl_[i] = -half * gs[i] * (one - d * q)


@njit(**JIT_OPTIONS)
def _normal_bwd_chunked_serial(R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv):
    for c in range((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _normal_bwd_chunk(c, R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv)


@njit(parallel=True, **JIT_OPTIONS)
def _normal_bwd_chunked_parallel(R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv):
    for c in prange((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _normal_bwd_chunk(c, R, D, g, x, xl, mu, mul, lv, lvl, w, dx, dmu, dlv)


# --------------------------------------------------------------------------- Bernoulli


@njit(**JIT_OPTIONS)
def _bern_fwd_rows(r0, r1, D, x, xl, logits, ll, out, dl):
    # Rows r0 .. r1 - 1. x, logits: rows of their layouts (_layout); out: [R]; dl:
    # [R*D] or None, the unit-upstream gradient x - sigmoid(l) written in the same
    # pass (its exp(-|l|) shared with the softplus). Blocks indexed from 0 (_math.seg).
    for r in range(r0, r1):
        xr, lr = row(x, xl, r, D), row(logits, ll, r, D)
        dr = seg(dl, r * D, (r + 1) * D)
        acc = 0.0
        for lo in range(0, D, BLOCK):
            hi = min(lo + BLOCK, D)
            x_, l_, d_ = seg(xr, lo, hi), seg(lr, lo, hi), seg(dr, lo, hi)
            part = cst(x, 0.0)
            for j in range(hi - lo):
                lj = l_[j]
                xj = x_[j]
                part += xj * lj - fsoftplus(lj)
                if dl is not None:
                    d_[j] = xj - fsigmoid(lj)
            acc += np.float64(part)
        out[r] = cst(out, acc)


@njit(**JIT_OPTIONS)
def _bern_fwd_serial(R, D, x, xl, logits, ll, out, dl):
    _bern_fwd_rows(0, R, D, x, xl, logits, ll, out, dl)


@njit(parallel=True, **JIT_OPTIONS)
def _bern_fwd_parallel(R, D, x, xl, logits, ll, out, dl):
    n = tasks(R, D)
    for t in prange(n):
        lo, hi = task(t, n, R)
        _bern_fwd_rows(lo, hi, D, x, xl, logits, ll, out, dl)


@njit(**JIT_OPTIONS)
def _bern_bwd_rows(r0, r1, D, g, x, xl, logits, ll, dx, dl):
    # Rows r0 .. r1 - 1. g: [R]; x, logits: rows of their layouts (_layout); dx,
    # dl: [R*D] outputs or None
    for r in range(r0, r1):
        gr = g[r]
        b0 = r * D
        b1 = b0 + D
        x_, l_, dx_, dl_ = row(x, xl, r, D), row(logits, ll, r, D), seg(dx, b0, b1), seg(dl, b0, b1)
        for j in range(D):
            lj = l_[j]
            if dx is not None:
                dx_[j] = gr * lj
            if dl is not None:
                dl_[j] = gr * (x_[j] - fsigmoid(lj))


@njit(**JIT_OPTIONS)
def _bern_bwd_serial(R, D, g, x, xl, logits, ll, dx, dl):
    _bern_bwd_rows(0, R, D, g, x, xl, logits, ll, dx, dl)


@njit(parallel=True, **JIT_OPTIONS)
def _bern_bwd_parallel(R, D, g, x, xl, logits, ll, dx, dl):
    n = tasks(R, D)
    for t in prange(n):
        lo, hi = task(t, n, R)
        _bern_bwd_rows(lo, hi, D, g, x, xl, logits, ll, dx, dl)


@njit(**JIT_OPTIONS)
def _normal_fwd_small(wt, R, D, px, nx, xl, pm, nm, mul, pv, nv, lvl, po):
    # _normal_fwd_serial (short rows: _normal_fwd_chunked_serial) of a small call
    # (_layout.small): arrays by address and length (_layout.view), wt the dtype;
    # no precomputed exp(-lv).
    x, mu, lv = view(px, nx, wt), view(pm, nm, wt), view(pv, nv, wt)
    out = view(po, R, wt)
    if D < SHORT_ROW:
        _normal_fwd_chunked_serial(R, D, x, xl, mu, mul, lv, lvl, None, out)
    else:
        _normal_fwd_rows(0, R, D, x, xl, mu, mul, lv, lvl, None, out)


@njit(**JIT_OPTIONS)
def _normal_bwd_small(wt, R, D, pg, px, nx, xl, pm, nm, mul, pv, nv, lvl, pdx, pdm, pdl):
    # _normal_bwd_serial (one task, full-size gradients) or the chunked one of a small call, arrays by address.
    n = R * D
    x, mu, lv = view(px, nx, wt), view(pm, nm, wt), view(pv, nv, wt)
    dx, dmu, dlv = view(pdx, n, wt), view(pdm, n, wt), view(pdl, n, wt)
    if D < SHORT_ROW:
        _normal_bwd_chunked_serial(R, D, view(pg, R, wt), x, xl, mu, mul, lv, lvl, None, dx, dmu, dlv)
    else:
        _normal_bwd_rows(0, R, 0, D, view(pg, R, wt), x, xl, mu, mul, lv, lvl, None, dx, dmu, dlv, None)


@njit(**JIT_OPTIONS)
def _bern_fwd_small(w, R, D, px, nx, xl, pl, nl, ll, po, pd):
    # _bern_fwd_serial of a small call (_layout.small), arrays by address and length (_layout.view)
    _bern_fwd_rows(0, R, D, view(px, nx, w), xl, view(pl, nl, w), ll, view(po, R, w), view(pd, R * D, w))


# --------------------------------------------------------------------------- launchers


def _row_out(shape, dtype, out):
    return output(shape[:-1], dtype, out)


def normal_prepare(x, mu, logvar, shape=None):
    """``(R, D, kernel inputs)`` of the Gaussian log density (see :func:`.gaussian.prepare`)."""
    shape = x.shape if shape is None else shape
    R, D = rows(shape)
    lv, lvl = strided(logvar, R, D, shape)
    w = exp_of_broadcast(lv, R * D, -1.0)  # exp(-logvar) once, for a broadcast logvar
    lvl, lv, w = chunk_tiled(lvl, R, D, lv, w)
    xa, xl = strided(x, R, D, shape)
    xl, xa = chunk_tiled(xl, R, D, xa)
    ma, ml = strided(mu, R, D, shape)
    ml, ma = chunk_tiled(ml, R, D, ma)
    return R, D, (xa, xl, ma, ml, lv, lvl, w)


def normal_forward(x, mu, logvar, *, out=None, prepared=None, shape=None):
    """Gaussian log density per row of ``[..., D]`` inputs -> ``[...]``.

    ``prepared``/``shape``: :func:`normal_prepare` of the inputs and their broadcast
    shape, when they are not expanded to it.
    """
    shape = x.shape if shape is None else shape
    res, ra = _row_out(shape, x.dtype, out)
    n = math.prod(shape)
    if n == 0:
        res.zero_()  # a sum over an empty last dim is 0 (and no rows: nothing to fill)
        return res
    R, D, args = prepared if prepared is not None else normal_prepare(x, mu, logvar, shape)
    if D < SHORT_ROW:
        kernel = _normal_fwd_chunked_parallel if use_parallel(n) else _normal_fwd_chunked_serial
    else:
        kernel = _normal_fwd_parallel if use_parallel(n) else _normal_fwd_serial
    kernel(R, D, *args, ra)
    return res


def normal_backward(
    g, x, mu, logvar, need_x, need_mu, need_lv, *, out=None, prepared=None, shape=None, reduce=False
):  # fmt: skip
    """``(dx, dmu, dlogvar)`` of the Gaussian log density (None where not needed), of the broadcast shape.

    ``reduce``: the gradient of an input broadcast over many rows may come back
    summed to that input's shape (:func:`._common.grad_outputs`; rows of at least
    SHORT_ROW, never with ``out``).
    """
    shape = x.shape if shape is None else shape
    n = math.prod(shape)
    wanted = (need_x, need_mu, need_lv)
    if n == 0 or not any(wanted):
        return outputs(shape, x.dtype, wanted, out)[0]
    R, D, args = prepared if prepared is not None else normal_prepare(x, mu, logvar, shape)
    if D < SHORT_ROW:
        grads, arrays = outputs(shape, x.dtype, wanted, out)
        kernel = _normal_bwd_chunked_parallel if use_parallel(n) else _normal_bwd_chunked_serial
        kernel(R, D, flat(g), *args, *arrays)
        return tuple(grads)
    inputs = (x, mu, logvar)
    grads, arrays, kernel, nt = rows_backward(
        _normal_bwd_parallel, _normal_bwd_serial, shape, x.dtype, wanted, out, reduce, inputs, args[0:6:2], R, D
    )  # fmt: skip
    bufs = stream_buffers(arrays, R, D)  # staging buffers when the (full-size) gradients stream
    if bufs is not None:
        nt = bufs.shape[0]
    kernel(nt, R, D, flat(g), *args, *arrays, bufs)
    return finish_grads(grads, inputs)


def bernoulli_forward(x, logits, *, out=None, with_grad=False, shape=None):
    """Bernoulli log-likelihood per row of ``[..., D]`` inputs -> ``[...]``.

    With ``with_grad`` also ``x - sigmoid(logits)`` ``[..., D]`` (the gradient in the
    logits for a unit upstream gradient) from the same pass: returns ``(ll, grad)``.
    ``shape``: the broadcast shape when the inputs are not expanded to it.
    """
    shape = x.shape if shape is None else shape
    R, D = rows(shape)
    res, ra = _row_out(shape, x.dtype, out)
    grad, ga = output(shape, x.dtype) if with_grad else (None, None)
    n = math.prod(shape)
    if n == 0:
        res.zero_()
        return (res, grad) if with_grad else res
    kernel = _bern_fwd_parallel if use_parallel(n, PARALLEL_MIN_ELEMENTS_BERNOULLI) else _bern_fwd_serial
    kernel(R, D, *strided(x, R, D, shape), *strided(logits, R, D, shape), ra, ga)
    return (res, grad) if with_grad else res


def _normal_small_forward(call, dtype, shape):
    """:func:`normal_forward` of a small call: addresses for arrays (outside transforms only)."""
    R, D, args, _ = call
    res, po = new_output(shape[:-1], dtype)
    _normal_fwd_small(WITNESS[dtype], R, D, *args, po)
    return res


def _normal_small_backward(call, g, dtype, needs, shape):
    """``(dx, dmu, dlogvar)`` of a small call, of the broadcast ``shape`` (None where not needed)."""
    R, D, args, _ = call
    if not any(needs):
        return None, None, None
    if not g.is_contiguous():
        g = g.contiguous()
    (dx, px), (dm, pm), (dl, pl) = (new_output(shape, dtype, need) for need in needs)
    _normal_bwd_small(WITNESS[dtype], R, D, g.data_ptr(), *args, px, pm, pl)
    return dx, dm, dl


def _bern_small_forward(x, logits, with_grad, shape, R, D):
    """:func:`bernoulli_forward` of a small call (:func:`._layout.small`): addresses for arrays.

    Only outside ``torch.func`` transforms (the plain and no-grad routes), where
    ``torch.empty`` has storage and the inputs are plain tensors.
    """
    _, _, args, keep = small_call(shape, R, D, x, logits)  # keep: copies the kernel reads
    res, po = new_output(shape[:-1], x.dtype)
    grad, pd = new_output(shape, x.dtype, with_grad)
    _bern_fwd_small(WITNESS[x.dtype], R, D, *args, po, pd)
    return (res, grad) if with_grad else res


def bernoulli_backward(g, x, logits, need_x, need_l, *, out=None, shape=None):
    """``(dx, dlogits)`` of the Bernoulli log-likelihood (None where not needed).

    ``shape``: the broadcast shape when the inputs are not expanded to it (the
    gradients are of this shape).
    """
    shape = x.shape if shape is None else shape
    R, D = rows(shape)
    grads, arrays = outputs(shape, x.dtype, (need_x, need_l), out)
    n = math.prod(shape)
    if n == 0 or all(t is None for t in grads):
        return tuple(grads)
    kernel = _bern_bwd_parallel if use_parallel(n, PARALLEL_MIN_ELEMENTS_BERNOULLI) else _bern_bwd_serial
    kernel(R, D, flat(g), *strided(x, R, D, shape), *strided(logits, R, D, shape), *arrays)
    return tuple(grads)


# --------------------------------------------------------------------------- autograd


class NormalLogProbBackward(torch.autograd.Function):
    """Fused Gaussian log-prob backward as a Function (runs under ``torch.func``)."""

    @staticmethod
    def forward(g, x, mu, logvar, need_x, need_mu, need_lv):
        return normal_backward(g, x, mu, logvar, need_x, need_mu, need_lv)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("second derivatives of the numba log-prob kernels are not implemented")

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(NormalLogProbBackward, info, in_dims, args)


class NormalLogProb(torch.autograd.Function):
    """Diagonal Gaussian log density summed over the last dim."""

    @staticmethod
    def forward(x, mu, logvar):
        return normal_forward(x, mu, logvar)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, mu, logvar = ctx.saved_tensors
        return apply_backward(NormalLogProbBackward, g, x, mu, logvar, *ctx.needs_input_grad[:3])

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(NormalLogProb, info, in_dims, args)


class BernoulliLogProbBackward(torch.autograd.Function):
    """Fused Bernoulli log-prob backward as a Function (runs under ``torch.func``)."""

    @staticmethod
    def forward(g, x, logits, need_x, need_l):
        return bernoulli_backward(g, x, logits, need_x, need_l)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("second derivatives of the numba log-prob kernels are not implemented")

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(BernoulliLogProbBackward, info, in_dims, args)


class BernoulliLogProb(torch.autograd.Function):
    """Bernoulli log-likelihood with logits summed over the last dim."""

    @staticmethod
    def forward(x, logits):
        return bernoulli_forward(x, logits)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, logits = ctx.saved_tensors
        return apply_backward(BernoulliLogProbBackward, g, x, logits, *ctx.needs_input_grad[:2])

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(BernoulliLogProb, info, in_dims, args)


class _PlainNormalLogProb(torch.autograd.Function):
    """The Gaussian log density for a plain ``backward()`` (no transform): lean, legacy-style.

    As :class:`.gaussian._PlainRsampleKL`: inputs unexpanded, the forward's arrays and
    layouts kept for the backward kernel; ``create_graph=True`` takes the
    transform-aware Function path.
    """

    @staticmethod
    def forward(ctx, x, mu, logvar, shape):
        ctx.save_for_backward(x, mu, logvar)
        ctx.key = saved_key(x, mu, logvar)
        R, D = rows(shape)
        if small(shape, D):
            call = small_call(shape, R, D, x, mu, logvar)
            ctx.state, ctx.small = (None, shape), call
            return _normal_small_forward(call, x.dtype, shape)
        prepared = normal_prepare(x, mu, logvar, shape)
        ctx.state, ctx.small = (prepared, shape), None
        return normal_forward(x, mu, logvar, prepared=prepared, shape=shape)

    @staticmethod
    def backward(ctx, g):
        prepared, shape = ctx.state
        x, mu, logvar = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        small_args = ctx.small
        if not torch.is_grad_enabled():
            small_args, prepared = kept_for_backward(
                ctx.key, small_args, prepared, (x, mu, logvar), shape, normal_prepare
            )
        if torch.is_grad_enabled():  # create_graph: the Function path (it raises for second derivatives)
            grads = apply(NormalLogProbBackward, g, *expand_to(shape, x, mu, logvar), *needs)
        elif small_args is not None:
            grads = _normal_small_backward(small_args, g, x.dtype, needs, shape)
        else:
            grads = normal_backward(g, x, mu, logvar, *needs, prepared=prepared, shape=shape, reduce=True)
        return (*(reduce_to(d, t.shape) for d, t in zip(grads, (x, mu, logvar), strict=True)), None)


class _PlainBernoulliLogProb(torch.autograd.Function):
    """The Bernoulli log-likelihood for a plain ``backward()`` (no transform), in the logits only.

    Up to :data:`~._flags.FUSED_GRAD_MAX_ELEMENTS` the forward pass writes
    ``x - sigmoid(logits)`` next to the log-likelihood (one exp shared by both),
    so the backward is one multiply by the upstream gradient instead of a second
    kernel and its launcher: at the batch sizes of VAE training the launcher's
    Python, not the kernel, is most of a backward's time. Larger inputs run the
    backward kernel (a full-size extra buffer costs more there than it saves).
    A second derivative (``create_graph=True``) goes through the transform-aware
    Function path.
    """

    @staticmethod
    def forward(ctx, x, logits, shape):
        # x, logits: not expanded to the broadcast `shape` (read in place, see _layout.strided)
        R, D = rows(shape)
        if small(shape, D):
            ll, grad = _bern_small_forward(x, logits, True, shape, R, D)
        elif math.prod(shape) <= FUSED_GRAD_MAX_ELEMENTS:
            ll, grad = bernoulli_forward(x, logits, with_grad=True, shape=shape)
        else:
            ll, grad = bernoulli_forward(x, logits, shape=shape), None
        ctx.grad, ctx.shape = grad, shape
        ctx.save_for_backward(x, logits)
        return ll

    @staticmethod
    def backward(ctx, g):
        x, logits = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the Function path (it raises for second derivatives)
            xe, le = expand_to(ctx.shape, x, logits)
            _, dl = apply(BernoulliLogProbBackward, g, xe, le, False, True)
        elif ctx.grad is not None:
            dl = g.unsqueeze(-1) * ctx.grad
        else:
            _, dl = bernoulli_backward(g, x, logits, False, True, shape=ctx.shape)
        return None, reduce_to(dl, logits.shape), None


# --------------------------------------------------------------------------- backend entry points


def normal_log_prob(x, mu, logvar, shape=None):
    """``[...]`` diagonal Gaussian log density of ``[..., D]`` x under (mu, logvar), broadcast to ``shape``."""
    path = route(x, mu, logvar)
    if path == PLAIN:
        return plain_apply(_PlainNormalLogProb, x, mu, logvar, shape or x.shape)
    if path == TRANSFORM:
        return apply(NormalLogProb, *expand_to(shape, x, mu, logvar))
    shape = shape or x.shape
    R, D = rows(shape)
    if small(shape, D):
        return _normal_small_forward(small_call(shape, R, D, x, mu, logvar), x.dtype, shape)
    return normal_forward(x, mu, logvar, shape=shape)


def bernoulli_log_prob(x, logits, shape=None):
    """``[...]`` Bernoulli log-likelihood of ``[..., D]`` x under logits, broadcast to ``shape``."""
    path = route(x, logits)
    if path == PLAIN and not x.requires_grad:
        return plain_apply(_PlainBernoulliLogProb, x, logits, shape or x.shape)
    if path != NO_GRAD:  # a transform, or x differentiable too
        return apply(BernoulliLogProb, *expand_to(shape, x, logits))
    shape = shape or x.shape
    R, D = rows(shape)
    if small(shape, D):
        return _bern_small_forward(x, logits, False, shape, R, D)
    return bernoulli_forward(x, logits, shape=shape)
