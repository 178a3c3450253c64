"""Fused numba kernels for the diagonal Gaussian: rsample, KL to N(0, I), and both at once.

Math (``s = exp(logvar / 2)``, rows of length D; Kingma & Welling 2014, sec. 2.4
and appendix B):

* ``z = mu + s * eps``;
* ``kl = 0.5 * sum_j (s_j^2 + mu_j^2 - 1 - logvar_j)``;
* backward, from upstream ``dz [..., D]`` and ``dkl [...]`` in one pass:
  ``dmu = dz + dkl * mu``,
  ``dlogvar = 0.5 * dz * s * eps + 0.5 * dkl * (s^2 - 1)``,
  ``deps = dz * s``.

One forward kernel serves the three ops (``z`` or ``kl`` is None to skip it) and
one backward kernel their gradients; numba specialises each on which arguments
are None and prunes the dead branches. When ``eps`` is None the kernels draw
``randn_at(k0, k1, i)`` at the row-major index ``i`` of z inline (the shared
Philox stream of :mod:`kernels.philox`), and the backward draws it again instead
of storing it (inlined, so the kernel's ``reassoc`` flag may move a value by an
ulp or so: the stream agrees with :func:`kernels.philox.normal_noise_numba` to
``kernels.testing.NOISE_ATOL``, as any two builds of it do). Row sums of float32 accumulate in float32 blocks of
:data:`~._flags.BLOCK` lanes and float64 across blocks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import overload

from ..philox import randn_at
from ._common import (
    PLAIN,
    TRANSFORM,
    apply,
    apply_backward,
    exp_of_broadcast,
    expand_to,
    finish_grads,
    flat,
    fold_vmap,
    keys,
    output,
    outputs,
    plain_apply,
    reduce_to,
    route,
    rows,
    saved_key,
    summable,
    use_parallel,
)
from ._flags import BLOCK, JIT_OPTIONS
from ._layout import (
    CHUNK_ROWS,
    SHORT_ROW,
    WITNESS,
    address,
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
from ._math import cst, fexp, seg
from ._stream import (
    block_len,
    block_out,
    buffer_row,
    num_tasks_for,
    stream_block,
    stream_buffers,
    stream_fence,
)

# --------------------------------------------------------------------------- kernels


def std_of(sp, sp_, j, v):  # pragma: no cover - replaced by the overload inside numba
    """``exp(v / 2)``: read from ``sp_[j]`` when the launcher precomputed it (``sp`` not None)."""
    return np.exp(v / 2) if sp is None else sp_[j]


@overload(std_of, inline="always")
def _std_of_impl(sp, sp_, j, v):
    if isinstance(sp, types.NoneType):
        return lambda sp, sp_, j, v: fexp(v * cst(v, 0.5))
    return lambda sp, sp_, j, v: sp_[j]


def noise_at(eps, e_, j, k0, k1, idx):  # pragma: no cover - replaced by the overload inside numba
    """``e_[j]``, or the Philox stream at ``idx`` when there is no ``eps`` (None)."""
    return e_[j] if eps is not None else randn_at(k0, k1, idx)


@overload(noise_at, inline="always")
def _noise_at_impl(eps, e_, j, k0, k1, idx):
    if isinstance(eps, types.NoneType):
        return lambda eps, e_, j, k0, k1, idx: randn_at(k0, k1, idx)
    return lambda eps, e_, j, k0, k1, idx: e_[j]


@njit(**JIT_OPTIONS)
def _fwd_rows(r0, r1, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl, sb):
    # Rows r0 .. r1 - 1. mu, lv: mean, log variance, read as rows of their layouts
    # (see _layout); sp: exp(lv / 2) through lv's layout, or None; eps: noise or
    # None (Philox at the row-major index of z); z: [R*D] output or None; kl: [R]
    # output or None. Blocks of BLOCK elements, each indexed from 0 (see
    # _math.seg), summed in float32 lanes, then float64; a row of at most BLOCK
    # elements is one block, read without slicing it again. sb: None, or a
    # BLOCK-element staging buffer: z's blocks are computed into it and written
    # out with non-temporal stores (_stream).
    half = cst(mu, 0.5)
    one = cst(mu, 1.0)
    for r in range(r0, r1):
        start = r * D
        mr, vr, sr, er = row(mu, mul, r, D), row(lv, lvl, r, D), row(sp, lvl, r, D), row(eps, el, r, D)
        zr = seg(z, start, start + D)
        acc = 0.0
        for lo in range(0, D, BLOCK):
            hi = min(lo + BLOCK, D)
            if D > BLOCK:
                m_, v_, s_, e_, z_ = seg(mr, lo, hi), seg(vr, lo, hi), seg(sr, lo, hi), seg(er, lo, hi), seg(zr, lo, hi)
            else:
                m_, v_, s_, e_, z_ = mr, vr, sr, er, zr
            zw = block_out(z_, sb)
            idx0 = np.uint64(start + lo)  # Philox index of the block's first element (see _bwd_rows)
            part = cst(mu, 0.0)
            for j in range(hi - lo):
                m = m_[j]
                v = v_[j]
                s = std_of(sp, s_, j, v)
                if z is not None:
                    zw[j] = m + s * cst(mu, noise_at(eps, e_, j, k0, k1, idx0 + np.uint64(j)))
                if kl is not None:
                    part += s * s + m * m - one - v
            stream_block(z_, sb, hi - lo)
            acc += np.float64(part * half)
        if kl is not None:
            kl[r] = cst(kl, acc)
    stream_fence(sb)


@njit(**JIT_OPTIONS)
def _fwd_serial(R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl, bufs):
    _fwd_rows(0, R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl, buffer_row(bufs, 0))


@njit(parallel=True, **JIT_OPTIONS)
def _fwd_parallel(R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl, bufs):
    # bufs: None, or one staging buffer per task (_stream.stream_buffers: fewer, larger tasks)
    n = num_tasks_for(bufs, tasks(R, D))
    for t in prange(n):
        lo, hi = task(t, n, R)
        _fwd_rows(lo, hi, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl, buffer_row(bufs, t))


@njit(**JIT_OPTIONS)  # a call, not IR inlining: numba prunes the None branches only in a compiled signature
def _bwd_elems(n, dz_, dkl, g, m_, v_, s_, sp, e_, k0, k1, idx0, dm_, dl_, de_):
    # The backward of n elements (the short-row chunks; _bwd_rows has the same
    # loop per row): dz_, m_, v_, e_ (None: Philox at idx0 + i) inputs,
    # s_ exp(v / 2) precomputed or None (sp None: evaluated here); dm_, dl_, de_
    # outputs (None: not wanted); g is the KL's upstream gradient spread over the
    # chunk's elements (n values), used when dkl is not None.
    half = cst(m_, 0.5)
    one = cst(m_, 1.0)
    for i in range(n):
        s = std_of(sp, s_, i, v_[i])
        gm = cst(m_, 0.0)
        gl = cst(m_, 0.0)
        if dz_ is not None:
            gz = dz_[i]
            if dl_ is not None:
                if e_ is None:
                    e = cst(m_, randn_at(k0, k1, idx0 + np.uint64(i)))
                else:
                    e = e_[i]
                gl = half * gz * s * e
            if de_ is not None:
                de_[i] = gz * s
            gm = gz
        if dkl is not None:
            gi = g[i]
            gm = gm + gi * m_[i]
            gl = gl + half * gi * (s * s - one)
        if dm_ is not None:
            dm_[i] = gm
        if dl_ is not None:
            dl_[i] = gl


@njit(**JIT_OPTIONS)
def _bwd_rows(r0, r1, slot, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps, sb):
    # Rows r0 .. r1 - 1: the loop of _bwd_elems with one KL gradient per row,
    # written out here so that it is not a call per row (see _layout.TASK_ELEMENTS)
    # and its None branches test this function's own arguments (which numba
    # prunes). dz: upstream gradient of z or None; dkl: [R] or None; mu, lv, eps
    # (None: Philox) and dz are read as rows of their layouts (see _layout); sp:
    # exp(lv / 2) or None; dmu, dlv, deps: None when not wanted, [R*D] outputs, or
    # [REDUCE_TASKS, n] accumulators of a broadcast input (_layout.out_row, put;
    # `slot` is this task's row of them). sb: None (a row is one pass), or
    # [3, BLOCK] staging buffers of full-size dmu, dlv, deps: each row then runs
    # in blocks of BLOCK, written out with non-temporal stores (_stream).
    half = cst(mu, 0.5)
    one = cst(mu, 1.0)
    step = block_len(sb, D)
    for r in range(r0, r1):
        g = cst(mu, 0.0)
        if dkl is not None:
            g = dkl[r]
        b0 = r * D
        mr, vr, er, dzr = row(mu, mul, r, D), row(lv, lvl, r, D), row(eps, el, r, D), row(dz, dzl, r, D)
        sr = row(sp, lvl, r, D)
        dmr, dlr = out_row(dmu, slot, mul, r, D), out_row(dlv, slot, lvl, r, D)
        der = out_row(deps, slot, el, r, D)
        for lo in range(0, D, step):
            hi = min(lo + step, D)
            m_, v_, e_, dz_, s_ = seg(mr, lo, hi), seg(vr, lo, hi), seg(er, lo, hi), seg(dzr, lo, hi), seg(sr, lo, hi)
            dm_, dl_, de_ = seg(dmr, lo, hi), seg(dlr, lo, hi), seg(der, lo, hi)
            dmw, dlw, dew = (
                block_out(dm_, buffer_row(sb, 0)),
                block_out(dl_, buffer_row(sb, 1)),
                block_out(de_, buffer_row(sb, 2)),
            )
            idx0 = np.uint64(b0 + lo)  # Philox index of the first element (a uint64 base vectorizes; int64 + j did not)
            for i in range(hi - lo):
                s = std_of(sp, s_, i, v_[i])
                gm = cst(mu, 0.0)
                gl = cst(mu, 0.0)
                if dz is not None:
                    gz = dz_[i]
                    if dlv is not None:
                        gl = half * gz * s * cst(mu, noise_at(eps, e_, i, k0, k1, idx0 + np.uint64(i)))
                    if deps is not None:
                        put(deps, dew, i, gz * s)
                    gm = gz
                if dkl is not None:
                    gm = gm + g * m_[i]
                    gl = gl + half * g * (s * s - one)
                if dmu is not None:
                    put(dmu, dmw, i, gm)
                if dlv is not None:
                    put(dlv, dlw, i, gl)
            stream_block(dm_, buffer_row(sb, 0), hi - lo)
            stream_block(dl_, buffer_row(sb, 1), hi - lo)
            stream_block(de_, buffer_row(sb, 2), hi - lo)
    stream_fence(sb)


@njit(**JIT_OPTIONS)
def _bwd_serial(nt, R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps, bufs):
    for t in range(nt):
        lo, hi = task(t, nt, R)
        _bwd_rows(
            lo, hi, t, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps, buffer_row(bufs, t)
        )


@njit(parallel=True, **JIT_OPTIONS)
def _bwd_parallel(nt, R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps, bufs):
    # bufs: None, or [nt, 3, BLOCK] staging buffers (_stream.stream_buffers)
    for t in prange(nt):
        lo, hi = task(t, nt, R)
        _bwd_rows(
            lo, hi, t, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps, buffer_row(bufs, t)
        )


@njit(**JIT_OPTIONS)
def _fwd_small(w, R, D, pm, nm, mul, pv, nv, lvl, pe, ne, el, k0, k1, pz, pk):
    # _fwd_serial (or, for short rows, _fwd_chunked_serial) of a small call
    # (_layout.small): every array given by address and length (_layout.view;
    # None stays None), w the dtype; no precomputed exp.
    mu, lv, eps = view(pm, nm, w), view(pv, nv, w), view(pe, ne, w)
    z, kl = view(pz, R * D, w), view(pk, R, w)
    if D < SHORT_ROW:
        _fwd_chunked_serial(R, D, mu, mul, lv, lvl, None, eps, el, k0, k1, z, kl)
    else:
        _fwd_rows(0, R, D, mu, mul, lv, lvl, None, eps, el, k0, k1, z, kl, None)


@njit(**JIT_OPTIONS)
def _bwd_small(w, R, D, pdz, ndz, dzl, pdk, pm, nm, mul, pv, nv, lvl, pe, ne, el, k0, k1, pdm, pdl, pde):
    # _bwd_serial (one task, full-size gradients) or _bwd_chunked_serial of a small call, arrays by address.
    n = R * D
    dz, dkl = view(pdz, ndz, w), view(pdk, R, w)
    mu, lv, eps = view(pm, nm, w), view(pv, nv, w), view(pe, ne, w)
    dmu, dlv, deps = view(pdm, n, w), view(pdl, n, w), view(pde, n, w)
    if D < SHORT_ROW:
        _bwd_chunked_serial(R, D, dz, dzl, dkl, mu, mul, lv, lvl, None, eps, el, k0, k1, dmu, dlv, deps)
    else:
        _bwd_rows(0, R, 0, D, dz, dzl, dkl, mu, mul, lv, lvl, None, eps, el, k0, k1, dmu, dlv, deps, None)


@njit(**JIT_OPTIONS)
def _fwd_chunk(c, R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl):
    # Short rows (D < SHORT_ROW): the elements of CHUNK_ROWS rows as one flat,
    # vectorized loop (Philox index = flat index of z), then per-row KL sums.
    r0 = c * CHUNK_ROWS
    nr = min(CHUNK_ROWS, R - r0)
    n = nr * D
    o = r0 * D
    ms = rows_flat(mu, mul, r0, nr, D, scratch(mu, n))
    vs = rows_flat(lv, lvl, r0, nr, D, scratch(lv, n))
    ss = rows_flat(sp, lvl, r0, nr, D, scratch(sp, n))
    es = rows_flat(eps, el, r0, nr, D, scratch(eps, n))
    z_ = seg(z, o, o + n)
    t = scratch(kl, n)
    one = cst(mu, 1.0)
    idx0 = np.uint64(o)
    for i in range(n):
        m = ms[i]
        v = vs[i]
        s = std_of(sp, ss, i, v)
        if z is not None:
            if eps is None:
                e = cst(mu, randn_at(k0, k1, idx0 + np.uint64(i)))
            else:
                e = es[i]
            z_[i] = m + s * e
        if kl is not None:
            t[i] = s * s + m * m - one - v
    if kl is not None:
        sum_rows(t, nr, D, 0.5, kl, r0)  # fewer than SHORT_ROW terms a row: in the input dtype (see the row kernel)


@njit(**JIT_OPTIONS)
def _fwd_chunked_serial(R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl):
    for c in range((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _fwd_chunk(c, R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl)


@njit(parallel=True, **JIT_OPTIONS)
def _fwd_chunked_parallel(R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl):
    for c in prange((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _fwd_chunk(c, R, D, mu, mul, lv, lvl, sp, eps, el, k0, k1, z, kl)


@njit(**JIT_OPTIONS)
def _bwd_chunk(c, R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps):
    # Short rows: as _bwd_rows over CHUNK_ROWS rows at once, dkl spread over each row first.
    r0 = c * CHUNK_ROWS
    nr = min(CHUNK_ROWS, R - r0)
    n = nr * D
    o = r0 * D
    ms = rows_flat(mu, mul, r0, nr, D, scratch(mu, n))
    vs = rows_flat(lv, lvl, r0, nr, D, scratch(lv, n))
    ss = rows_flat(sp, lvl, r0, nr, D, scratch(sp, n))
    es = rows_flat(eps, el, r0, nr, D, scratch(eps, n))
    dzs = rows_flat(dz, dzl, r0, nr, D, scratch(dz, n))
    gs = scratch(dkl, n)
    if dkl is not None:
        spread_rows(dkl, r0, nr, D, gs)
    dm_, dl_, de_ = seg(dmu, o, o + n), seg(dlv, o, o + n), seg(deps, o, o + n)
    _bwd_elems(n, dzs, dkl, gs, ms, vs, ss, sp, es, k0, k1, np.uint64(o), dm_, dl_, de_)


@njit(**JIT_OPTIONS)
def _bwd_chunked_serial(R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps):
    for c in range((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _bwd_chunk(c, R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps)


@njit(parallel=True, **JIT_OPTIONS)
def _bwd_chunked_parallel(R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps):
    for c in prange((R + CHUNK_ROWS - 1) // CHUNK_ROWS):
        _bwd_chunk(c, R, D, dz, dzl, dkl, mu, mul, lv, lvl, sp, eps, el, k0, k1, dmu, dlv, deps)


# --------------------------------------------------------------------------- launchers


def prepare(mu, logvar, eps, shape=None):
    """``(R, D, kernel inputs)``: the row count, row length and ``(array, layout)`` of mu, logvar, eps.

    ``shape``: the broadcast shape when the inputs are not expanded to it. The
    backward of a plain ``loss.backward()`` reuses the forward's (see :class:`_PlainRsampleKL`).
    """
    shape = mu.shape if shape is None else shape
    R, D = rows(shape)
    lv, lvl = strided(logvar, R, D, shape)
    sp = exp_of_broadcast(lv, R * D, 0.5)  # exp(logvar / 2) once, for a broadcast logvar
    lvl, lv, sp = chunk_tiled(lvl, R, D, lv, sp)
    ma, ml = strided(mu, R, D, shape)
    ml, ma = chunk_tiled(ml, R, D, ma)
    ea, el = strided(eps, R, D, shape)
    el, ea = chunk_tiled(el, R, D, ea)
    return R, D, (ma, ml, lv, lvl, sp, ea, el)


def forward(mu, logvar, eps, seed, want_z, want_kl, *, z_out=None, kl_out=None, prepared=None, shape=None):
    """Run the fused forward kernel.

    Args:
        mu: ``[..., D]`` mean.
        logvar: ``[..., D]`` log variance (same shape).
        eps: ``[..., D]`` noise, or None to draw the Philox stream of ``seed``.
        seed: int when ``eps`` is None.
        want_z: compute ``z``.
        want_kl: compute ``kl``.
        z_out: optional preallocated contiguous ``[..., D]`` output (benchmarks).
        kl_out: optional preallocated contiguous ``[...]`` output.
        prepared: :func:`prepare` of ``(mu, logvar, eps)``, when the caller has it.
        shape: the broadcast shape when the inputs are not expanded to it (with ``prepared``).

    Returns:
        ``(z or None, kl or None)``.
    """
    shape = mu.shape if shape is None else shape
    z = kl = za = kla = None
    if want_z:
        z, za = output(shape, mu.dtype, z_out)
    if want_kl:
        kl, kla = output(shape[:-1], mu.dtype, kl_out)
    n = math.prod(shape)
    if n == 0:
        if kl is not None:
            kl.zero_()  # a sum over an empty last dim is 0
        return z, kl
    R, D, args = prepared if prepared is not None else prepare(mu, logvar, eps, shape)
    k0, k1 = keys(seed if eps is None else None)
    if D < SHORT_ROW:
        kernel = _fwd_chunked_parallel if use_parallel(n) else _fwd_chunked_serial
        kernel(R, D, *args, k0, k1, za, kla)
    else:
        kernel = _fwd_parallel if use_parallel(n) else _fwd_serial
        kernel(R, D, *args, k0, k1, za, kla, stream_buffers(za, R, D))  # staging buffers when z streams
    return z, kl


def backward(
    dz, dkl, mu, logvar, eps, seed, need_mu, need_lv, need_eps, *, out=None, prepared=None, shape=None, reduce=False
):  # fmt: skip
    """Run the fused backward kernel; returns ``(dmu, dlogvar, deps)`` (None where not needed).

    Args:
        dz: ``[..., D]`` upstream gradient of z, or None (KL only).
        dkl: ``[...]`` upstream gradient of kl, or None (rsample only).
        mu, logvar: ``[..., D]`` forward inputs.
        eps: ``[..., D]`` forward noise, or None to redraw the Philox stream of ``seed``.
        need_mu, need_lv, need_eps: which gradients to produce.
        out: optional preallocated ``(dmu, dlv, deps)`` (benchmarks).
        prepared: :func:`prepare` of ``(mu, logvar, eps)``, when the caller has it.
        shape: the broadcast shape when the inputs are not expanded to it (with ``prepared``);
            the gradients are of this shape.
        reduce: the gradient of an input broadcast over many rows may come back
            summed to that input's shape (:func:`._common.grad_outputs`; rows of at
            least SHORT_ROW, never with ``out``).
    """
    shape = mu.shape if shape is None else shape
    need_eps = need_eps and dz is not None
    wanted = (need_mu, need_lv, need_eps)
    n = math.prod(shape)
    if n == 0 or not any(wanted):
        return outputs(shape, mu.dtype, wanted, out)[0]
    R, D, args = prepared if prepared is not None else prepare(mu, logvar, eps, shape)
    k0, k1 = keys(seed if eps is None else None)
    if D < SHORT_ROW:
        grads, arrays = outputs(shape, mu.dtype, wanted, out)
        kernel = _bwd_chunked_parallel if use_parallel(n) else _bwd_chunked_serial
        kernel(R, D, *strided(dz, R, D), flat(dkl), *args, k0, k1, *arrays)
        return grads
    inputs = (mu, logvar, eps)
    grads, arrays, kernel, nt = rows_backward(
        _bwd_parallel, _bwd_serial, shape, mu.dtype, wanted, out, reduce, inputs, (args[0], args[2], args[5]), R, D
    )  # fmt: skip
    bufs = stream_buffers(arrays, R, D)  # staging buffers when the (full-size) gradients stream
    if bufs is not None:
        nt = bufs.shape[0]
    kernel(nt, R, D, *strided(dz, R, D), flat(dkl), *args, k0, k1, *arrays, bufs)
    return finish_grads(grads, inputs)


# --------------------------------------------------------------------------- autograd


class GaussianBackward(torch.autograd.Function):
    """The fused backward as a Function of its own, so it runs under ``torch.func`` transforms."""

    @staticmethod
    def forward(dz, dkl, mu, logvar, eps, seed, need_mu, need_lv, need_eps):
        return backward(dz, dkl, mu, logvar, eps, seed, need_mu, need_lv, need_eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "second derivatives of the numba Gaussian kernels are not implemented; use backend='torch'"
        )

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(GaussianBackward, info, in_dims, args, noise_args=(4, 5, 2))


def _grads(ctx, dz, dkl):
    mu, logvar, eps = ctx.saved_tensors
    need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
    if dkl is None and need_mu:
        # rsample only: dmu = dz exactly, no pass over memory needed.
        _, dlv, deps = apply_backward(GaussianBackward, dz, None, mu, logvar, eps, ctx.seed, False, need_lv, need_eps)
        return dz, dlv, deps, None
    dmu, dlv, deps = apply_backward(GaussianBackward, dz, dkl, mu, logvar, eps, ctx.seed, need_mu, need_lv, need_eps)
    return dmu, dlv, deps, None


class RsampleKL(torch.autograd.Function):
    """``(z, kl)`` in one pass; the backward is one pass too (:class:`GaussianBackward`)."""

    @staticmethod
    def forward(mu, logvar, eps, seed):
        return forward(mu, logvar, eps, seed, True, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, logvar, eps, seed = inputs
        ctx.save_for_backward(mu, logvar, eps)
        ctx.seed = seed

    @staticmethod
    def backward(ctx, dz, dkl):
        return _grads(ctx, dz, dkl)

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(RsampleKL, info, in_dims, args, noise_args=(2, 3, 0))


class Rsample(torch.autograd.Function):
    """``z = mu + exp(logvar / 2) * eps``."""

    @staticmethod
    def forward(mu, logvar, eps, seed):
        return forward(mu, logvar, eps, seed, True, False)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, logvar, eps, seed = inputs
        ctx.save_for_backward(mu, logvar, eps)
        ctx.seed = seed

    @staticmethod
    def backward(ctx, dz):
        return _grads(ctx, dz, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(Rsample, info, in_dims, args, noise_args=(2, 3, 0))


class KLStd(torch.autograd.Function):
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` per row."""

    @staticmethod
    def forward(mu, logvar):
        return forward(mu, logvar, None, None, False, True)[1]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, None)
        ctx.seed = None

    @staticmethod
    def backward(ctx, dkl):
        mu, logvar, _ = ctx.saved_tensors
        need_mu, need_lv = ctx.needs_input_grad[:2]
        dmu, dlv, _ = apply_backward(GaussianBackward, None, dkl, mu, logvar, None, None, need_mu, need_lv, False)
        return dmu, dlv

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold_vmap(KLStd, info, in_dims, args)


def _sums_dmu(prepared, mu, shape) -> bool:
    """Whether the backward kernel sums a broadcast mu's gradient (:func:`._common.summable`).

    Then an rsample-only backward asks the kernel for dmu (dz summed over the
    broadcast, in the same pass as dlogvar) instead of returning dz for torch to sum.
    """
    R, D, args = prepared
    return D >= SHORT_ROW and summable(mu, args[0], R * D)


class _PlainRsampleKL(torch.autograd.Function):
    """The op for a plain ``backward()`` (no ``torch.func`` transform active): legacy-style, lean.

    At the small batches of VAE training the Python around a kernel, not the
    kernel, is most of an op's time (``docs/numba-backend.md``). This Function keeps the forward's input arrays
    and layouts (:func:`prepare`) for its backward instead of rebuilding them, and
    calls the backward launcher directly. Under a transform, or for a second
    derivative (``create_graph=True``), the transform-aware Functions above run.
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps, seed, want_z, want_kl, shape):
        # mu, logvar, eps: not expanded to the broadcast `shape` (read in place, see _layout.strided)
        ctx.save_for_backward(mu, logvar, eps)  # keeps them alive and version-checked
        ctx.key = saved_key(mu, logvar, eps)
        R, D = rows(shape)
        if small(shape, D):
            call = small_call(shape, R, D, mu, logvar, eps)
            ctx.state = (None, seed, want_z, want_kl, shape)
            ctx.small = call
            z, kl = _small_forward(call, mu.dtype, seed, want_z, want_kl, shape)
        else:
            prepared = prepare(mu, logvar, eps, shape)
            ctx.state = (prepared, seed, want_z, want_kl, shape)
            ctx.small = None
            z, kl = forward(mu, logvar, eps, seed, want_z, want_kl, prepared=prepared, shape=shape)
        if not want_z:
            return kl
        if not want_kl:
            return z
        return z, kl

    @staticmethod
    def backward(ctx, *grads):
        prepared, seed, want_z, want_kl, shape = ctx.state
        dz = grads[0] if want_z else None
        dkl = grads[-1] if want_kl else None
        mu, logvar, eps = ctx.saved_tensors
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        small_args = ctx.small
        if not torch.is_grad_enabled():
            small_args, prepared = kept_for_backward(ctx.key, small_args, prepared, (mu, logvar, eps), shape, prepare)
        if torch.is_grad_enabled():  # create_graph: the Function path (it raises for second derivatives)
            m, v, e = expand_to(shape, mu, logvar, eps)
            dmu, dlv, deps = apply(GaussianBackward, dz, dkl, m, v, e, seed, need_mu, need_lv, need_eps)
        elif small_args is not None:
            dmu, dlv, deps = _small_backward(small_args, dz, dkl, mu.dtype, seed, need_mu, need_lv, need_eps, shape)
        elif dkl is None and need_mu and not _sums_dmu(prepared, mu, shape):  # rsample only: dmu = dz exactly
            _, dlv, deps = backward(
                dz, None, mu, logvar, eps, seed, False, need_lv, need_eps, prepared=prepared, shape=shape, reduce=True
            )  # fmt: skip
            dmu = dz
        else:  # a broadcast mu's dmu (dz summed) is summed in the kernel's pass over dz (see _sums_dmu)
            dmu, dlv, deps = backward(
                dz, dkl, mu, logvar, eps, seed, need_mu, need_lv, need_eps, prepared=prepared, shape=shape, reduce=True
            )  # fmt: skip
        dmu, dlv = reduce_to(dmu, mu.shape), reduce_to(dlv, logvar.shape)
        deps = None if eps is None else reduce_to(deps, eps.shape)
        return dmu, dlv, deps, None, None, None, None


def _small_forward(call, dtype, seed, want_z, want_kl, shape):
    """``(z or None, kl or None)`` of a small call: :func:`forward` with addresses for arrays."""
    R, D, args, _ = call
    z, pz = new_output(shape, dtype, want_z)
    kl, pk = new_output(shape[:-1], dtype, want_kl)
    k0, k1 = keys(seed if args[6] is None else None)  # args[6]: eps's address
    _fwd_small(WITNESS[dtype], R, D, *args, k0, k1, pz, pk)
    return z, kl


def _small_backward(call, dz, dkl, dtype, seed, need_mu, need_lv, need_eps, shape):
    """``(dmu, dlogvar, deps)`` of a small call, of the broadcast ``shape`` (None where not needed).

    As :func:`backward`; an rsample-only backward (``dkl`` None) returns ``dz`` itself as dmu.
    """
    R, D, args, _ = call
    dmu_is_dz = dkl is None and need_mu
    need_mu = need_mu and not dmu_is_dz
    need_eps = need_eps and dz is not None
    dmu = dz if dmu_is_dz else None
    if not (need_mu or need_lv or need_eps):
        return dmu, None, None
    keep: list = []
    pdz, ndz, dzl = address(dz, R, D, None, keep)
    if dkl is not None and not dkl.is_contiguous():
        dkl = dkl.contiguous()
    pdk = None if dkl is None else dkl.data_ptr()
    g_mu, pdm = new_output(shape, dtype, need_mu)
    dlv, pdl = new_output(shape, dtype, need_lv)
    deps, pde = new_output(shape, dtype, need_eps)
    k0, k1 = keys(seed if args[6] is None else None)
    _bwd_small(WITNESS[dtype], R, D, pdz, ndz, dzl, pdk, *args, k0, k1, pdm, pdl, pde)
    return (dmu if dmu_is_dz else g_mu), dlv, deps


# --------------------------------------------------------------------------- backend entry points


def _direct(mu, logvar, eps, seed, want_z, want_kl, shape):
    """The no-grad route (no autograd, no transform): :func:`forward`, or the small-call kernel."""
    shape = mu.shape if shape is None else shape
    R, D = rows(shape)
    if small(shape, D):
        return _small_forward(small_call(shape, R, D, mu, logvar, eps), mu.dtype, seed, want_z, want_kl, shape)
    return forward(mu, logvar, eps, seed, want_z, want_kl, shape=shape)


def normal_rsample(mu, logvar, eps, seed, shape=None):
    """``z = mu + exp(logvar / 2) * eps`` (eps None: Philox stream of seed).

    Inputs ``[..., D]`` of one shape, or broadcastable to ``shape`` when it is given
    (:data:`READS_BROADCASTS`).
    """
    path = route(mu, logvar, eps)
    if path == PLAIN:
        return plain_apply(_PlainRsampleKL, mu, logvar, eps, seed, True, False, shape or mu.shape)
    if path == TRANSFORM:
        return apply(Rsample, *expand_to(shape, mu, logvar, eps), seed)
    return _direct(mu, logvar, eps, seed, True, False, shape)[0]


def normal_kl_std(mu, logvar, shape=None):
    """``[...]`` KL of ``N(mu, diag exp(logvar))`` to ``N(0, I)`` (inputs as :func:`normal_rsample`)."""
    path = route(mu, logvar)
    if path == PLAIN:
        return plain_apply(_PlainRsampleKL, mu, logvar, None, None, False, True, shape or mu.shape)
    if path == TRANSFORM:
        return apply(KLStd, *expand_to(shape, mu, logvar))
    return _direct(mu, logvar, None, None, False, True, shape)[1]


def normal_rsample_kl(mu, logvar, eps, seed, shape=None):
    """``(z [..., D], kl [...])`` in one pass (inputs as :func:`normal_rsample`)."""
    path = route(mu, logvar, eps)
    if path == PLAIN:
        return plain_apply(_PlainRsampleKL, mu, logvar, eps, seed, True, True, shape or mu.shape)
    if path == TRANSFORM:
        return apply(RsampleKL, *expand_to(shape, mu, logvar, eps), seed)
    return _direct(mu, logvar, eps, seed, True, True, shape)
