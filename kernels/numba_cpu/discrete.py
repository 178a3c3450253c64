"""Fused numba kernels of the discrete families: Bernoulli and categorical samples, relaxations, KLs.

The formulas and their papers are in :mod:`kernels.discrete`; here is how each op
runs. A kernel reads its uniforms from ``u`` or, when ``u`` is None, draws them
itself (one flag argument, so one compiled kernel serves both): a row (or a
block of groups) at a time, :func:`kernels.philox.uniform_at` at each element's
row-major index into a buffer of that size, which the same pass then reads
while it is in L1; no noise tensor is materialised. The sample, relaxation or
weight is computed in that pass, and the backward of a differentiable op is one
pass giving every gradient asked for.

* Bernoulli, rows ``[R, D]``, ``p = sigmoid(l)``, ``q = sigmoid(-l)`` from one
  ``e = exp(-|l|)``:

  * ``bernoulli_sample``, ``bernoulli_antithetic``: the thresholds in float64,
    as the torch reference, so samples are bitwise the same;
  * ``bernoulli_kl`` per row; backward ``dl = g p q (l - l0)``,
    ``dl0 = g (sigmoid(l0) - p)``;
  * ``binary_concrete``: ``s = (l + log(u / (1 - u))) / tau``, ``y = sigmoid(s)``;
  * ``bernoulli_conditional_relaxed``: ``s = z~ / tau`` with, in terms that stay
    accurate for any ``|l|``, ``z~ = softplus(l) + log(q + p v) - log(1 - v)``
    when ``b = 1`` and ``z~ = log v - softplus(-l) - log(p + q (1 - v))`` when
    ``b = 0``; ``dz~/dl = p v / (q + p v)`` and ``q (1 - v) / (p + q (1 - v))``.

  The backward of both relaxations recomputes ``s`` (and the noise) instead of
  saving anything of full size, and gives, in one pass, ``dl = g sigmoid'(s) /
  tau * dz~/dl`` (``dz~/dl = 1`` for the binary Concrete) and, per row,
  ``sum g sigmoid'(s) s``, of which ``dtau = -sum / tau``.

* Categorical, groups of ``K`` (``[..., D, K]`` is ``G = R D`` groups):

  * ``categorical_sample``: Gumbel-max in float64, as the reference (one-hot out);
  * ``gumbel_softmax``: ``s = (l - log(-log u)) / tau``, ``y = softmax(s)``; the
    backward reads ``y`` (saved) and gives ``ds = y (gy - sum gy y)``,
    ``dl = ds / tau`` and, per group, ``sum ds s`` (recomputing ``s`` only when
    ``tau`` needs a gradient);
  * ``categorical_log_prob``, ``categorical_kl``: a row's D groups summed in
    float64; the backward needs ``lse = logsumexp(l)`` per group:
    ``dx = g (l - lse)``, ``dl = g (x - softmax(l) sum x)`` and, with
    ``a = log p - log p0``, ``dl = g p (a - sum p a)``, ``dl0 = g (p0 - p)``.

From ``PARALLEL_MIN_ELEMENTS_BERNOULLI`` elements on (the cost per element is
that of the Bernoulli log-likelihood or more: Philox, logs, exps) one parallel
kernel, :func:`_parallel`, runs an op's kernel over tasks of rows or groups
(``prange``); below it the kernel is called from Python and runs serially. A value
never depends on the task split, so results are the same for any thread count.

Cold compile time is what shapes this module (numba compiles every kernel once
per dtype; on a fresh CI cache that is most of their cost): every kernel takes
the same arguments (see the kernels section), so the one ``_parallel`` serves
them all; an absent input or unwanted output is a shared empty array and a flag,
not None (which would compile a variant); the polynomial ``exp``/``log`` of
:mod:`._math` are called through plain njit wrappers rather than inlined at every
call site (LLVM inlines them, the loops still vectorize). Inputs are made
contiguous and read as flat arrays.

Each differentiable op has an ``autograd.Function`` whose backward runs a
``Function`` of its own (so both work under ``torch.func`` transforms, with
``vmap`` rules that fold the vmapped dim into the leading dims); second
derivatives are not implemented (use ``backend="torch"``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from ..philox import split_seed, uniform_at, uniform_noise_numba
from ._common import NO_GRAD, TRANSFORM, apply, apply_backward, flat, route, use_parallel
from ._flags import JIT_OPTIONS, PARALLEL_MIN_ELEMENTS_BERNOULLI
from ._math import cst, fexp, flog, fsigmoid, log1p_unit

# tasks per thread of a parallel kernel (rows or groups split evenly among them)
_TASKS_PER_THREAD = 4
# the categorical kernels that draw noise run in blocks of whole groups of about this many elements
_GROUP_BLOCK = 512
_NP = {torch.float32: np.float32, torch.float64: np.float64}
# stand-in for an absent input or an unwanted output (its flag is off; never indexed)
_NONE = {torch.float32: np.empty(0, np.float32), torch.float64: np.empty(0, np.float64)}
_NO_KEY = (np.uint64(0), np.uint64(0))

# --------------------------------------------------------------------------- helpers
# The vectorizable functions of ._math, each wrapped in a plain njit function:
# compiled once per dtype and called, where the overloads would be inlined (and
# typed again) at every call site; LLVM inlines these calls, so loops still
# vectorize. The helpers below are plain njit functions too, except two that LLVM
# would not inline (too large): _gumbel (in float64) and _relaxed_logit.


@njit(**JIT_OPTIONS)
def _exp(x):
    return fexp(x)


@njit(**JIT_OPTIONS)
def _log(x):
    return flog(x)


@njit(**JIT_OPTIONS)
def _sigmoid(x):
    return fsigmoid(x)


@njit(**JIT_OPTIONS)
def _log1p_unit(x):
    return log1p_unit(x)


@njit(**JIT_OPTIONS)
def _uniforms(u, buf, o, n, draw, k0, k1):
    """The ``n`` uniforms from flat index ``o`` on: ``u[o:o + n]``, or drawn into ``buf`` when ``draw``.

    Not inlined: the Philox loop (:func:`kernels.philox.uniform_at`, vectorized)
    is compiled once per dtype and called once per row or group, whose elements
    are then read from ``buf`` while it is in L1; no noise tensor is materialised.
    """
    if draw:
        base = numba.uint64(o)
        for j in range(n):
            buf[j] = uniform_at(k0, k1, base + numba.uint64(j))
        return buf
    return u[o : o + n]


@njit(**JIT_OPTIONS)
def _sig(x):
    """``(sigmoid(x), sigmoid(-x), exp(-|x|))`` from one exp."""
    zero = cst(x, 0.0)
    one = cst(x, 1.0)
    e = _exp(-(x if x > zero else -x))
    inv = one / (one + e)
    ei = e * inv
    pos = x >= zero
    return (inv if pos else ei), (ei if pos else inv), e


@njit(**JIT_OPTIONS)
def _dsig(x):
    """``sigmoid'(x) = sigmoid(x) sigmoid(-x)``, accurate for any ``|x|``."""
    one = cst(x, 1.0)
    e = _exp(-(x if x > cst(x, 0.0) else -x))
    inv = one / (one + e)
    return e * inv * inv


@njit(**JIT_OPTIONS)
def _logit(u):
    """``log(u / (1 - u))``; ``1 - u`` is exact for ``u >= 1/2`` and within an ulp below."""
    return _log(u / (cst(u, 1.0) - u))


@njit(inline="always", **JIT_OPTIONS)
def _gumbel(u):
    """``-log(-log u)``, a standard Gumbel variate from a uniform."""
    return -_log(-_log(u))


@njit(inline="always", **JIT_OPTIONS)
def _relaxed_logit(x, bj, vj):
    """REBAR's ``z~ = l + logit(u~)`` given ``b`` and its derivative in ``l`` (module docstring).

    Branch-free: ``z~ = c + log(a) - log(d)``, ``dz~/dl = n / a`` (``b = 1``) or
    ``n / d`` (``b = 0``), with ``c = softplus(l)``, ``a = q + p v``, ``d = 1 - v``,
    ``n = p v`` when ``b = 1`` and ``c = -softplus(-l)``, ``a = v``,
    ``d = p + q (1 - v)``, ``n = q (1 - v)`` when ``b = 0``.
    """
    zero = cst(x, 0.0)
    one = cst(x, 1.0)
    p, q, e = _sig(x)
    lp1 = _log1p_unit(e)  # softplus(l) = max(l, 0) + lp1, softplus(-l) = max(-l, 0) + lp1
    w = one - vj
    one_ = bj > cst(x, 0.5)
    c = ((x if x > zero else zero) + lp1) if one_ else -((-x if x < zero else zero) + lp1)
    a = (q + p * vj) if one_ else vj
    d = w if one_ else p + q * w
    num = (p * vj) if one_ else q * w
    return c + _log(a) - _log(d), num / (a if one_ else d)


@njit(**JIT_OPTIONS)
def _lse(a, K):
    """``logsumexp(a[:K])`` (once per group: a call, compiled once per dtype)."""
    m = cst(a, -np.inf)
    for k in range(K):
        m = max(m, a[k])
    tot = cst(a, 0.0)
    for k in range(K):
        tot += _exp(a[k] - m)
    return m + _log(tot)


@njit(**JIT_OPTIONS)
def _softmax(p, a, K):
    """``p[:K] = softmax(a[:K])`` (``p`` may be ``a``); returns ``logsumexp(a[:K])``."""
    m = cst(a, -np.inf)
    for k in range(K):
        m = max(m, a[k])
    tot = cst(a, 0.0)
    for k in range(K):
        e = _exp(a[k] - m)
        p[k] = e
        tot += e
    inv = cst(a, 1.0) / tot
    for k in range(K):
        p[k] *= inv
    return m + _log(tot)


# --------------------------------------------------------------------------- kernels
# Every kernel takes the same arguments, so that one parallel kernel per dtype
# (_parallel) runs any of them: numba compiles a prange wrapper in about a second
# of CPU, and one per kernel was about a third of these kernels' cold compile. The
# arguments:
#
#   r0, r1      rows r0 .. r1 - 1 ([R, D] Bernoulli) or groups ([G, K] categorical)
#   n           row or group length, D or K
#   m           groups per row (D) of a categorical backward, else 0
#   xs          4 input arrays, flat (the shared empty array where unused)
#   ys          3 output arrays, flat (idem)
#   acc         float64 [R] or [G] sums per row or group (idem)
#   draw, k0, k1    draw the uniforms for key (k0, k1) instead of reading them
#   tau         the temperature
#   f0, f1      which gradients to write
#
# Called from Python (r0 = 0, r1 = R) for the serial path.


@njit(**JIT_OPTIONS)
def _bern_sample_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: logits lg, uniforms u [R*D]; ys: samples b [R*D]
    lg, u, b = xs[0], xs[1], ys[0]
    one = cst(b, 1.0)
    zero = cst(b, 0.0)
    buf = np.empty(n if draw else 0, lg.dtype)
    for r in range(r0, r1):
        o = r * n
        u_ = _uniforms(u, buf, o, n, draw, k0, k1)
        l_, b_ = lg[o : o + n], b[o : o + n]
        for j in range(n):
            b_[j] = one if np.float64(u_[j]) < _sigmoid(np.float64(l_[j])) else zero


@njit(**JIT_OPTIONS)
def _bern_anti_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: lg, u [R*D]; ys: b1, b2, w [R*D]
    lg, u = xs[0], xs[1]
    b1, b2, w = ys
    one = cst(b1, 1.0)
    zero = cst(b1, 0.0)
    buf = np.empty(n if draw else 0, lg.dtype)
    for r in range(r0, r1):
        o = r * n
        u_ = _uniforms(u, buf, o, n, draw, k0, k1)
        l_, b1_, b2_, w_ = lg[o : o + n], b1[o : o + n], b2[o : o + n], w[o : o + n]
        for j in range(n):
            uj = np.float64(u_[j])
            p, q, _ = _sig(np.float64(l_[j]))
            hi = uj > q  # b1 = 1[u > sigmoid(-lg)]
            lo = uj < p  # b2 = 1[u < sigmoid(lg)]
            s = p if p > q else q  # sigmoid(|lg|)
            b1_[j] = one if hi else zero
            b2_[j] = one if lo else zero
            w_[j] = cst(w, 0.0 if hi == lo else (-s if lo else s))


@njit(**JIT_OPTIONS)
def _bern_kl_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: logits lg, prior logits lg0 [R*D]; ys: kl [R]
    lg, lg0, kl = xs[0], xs[1], ys[0]
    zero = cst(lg, 0.0)
    for r in range(r0, r1):
        o = r * n
        l_, l0_ = lg[o : o + n], lg0[o : o + n]
        s = 0.0
        for j in range(n):
            x, x0 = l_[j], l0_[j]
            p, _, e = _sig(x)
            e0 = _exp(-(x0 if x0 > zero else -x0))
            sp = (x if x > zero else zero) + _log1p_unit(e)  # softplus(l)
            sp0 = (x0 if x0 > zero else zero) + _log1p_unit(e0)  # softplus(l0)
            s += np.float64(p * (x - x0) + sp0 - sp)
        kl[r] = cst(kl, s)


@njit(**JIT_OPTIONS)
def _bern_kl_bwd_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: upstream g [R], lg, lg0 [R*D]; ys: dl (when f0), dl0 (when f1) [R*D]
    g, lg, lg0 = xs[0], xs[1], xs[2]
    dl, dl0 = ys[0], ys[1]
    sink = np.empty(0 if f0 and f1 else n, lg.dtype)  # an unwanted gradient: stored, never read
    for r in range(r0, r1):
        o = r * n
        gr = g[r]
        l_, l0_ = lg[o : o + n], lg0[o : o + n]
        dl_ = dl[o : o + n] if f0 else sink
        dm_ = dl0[o : o + n] if f1 else sink
        for j in range(n):
            x = l_[j]
            p, q, _ = _sig(x)
            dl_[j] = gr * p * q * (x - l0_[j])
            dm_[j] = gr * (_sigmoid(l0_[j]) - p)


@njit(**JIT_OPTIONS)
def _concrete_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: lg, u [R*D]; ys: relaxed samples y [R*D]
    lg, u, y = xs[0], xs[1], ys[0]
    it = cst(lg, 1.0 / tau)
    buf = np.empty(n if draw else 0, lg.dtype)
    for r in range(r0, r1):
        o = r * n
        u_ = _uniforms(u, buf, o, n, draw, k0, k1)
        l_, y_ = lg[o : o + n], y[o : o + n]
        for j in range(n):
            y_[j] = _sigmoid((l_[j] + _logit(u_[j])) * it)


@njit(**JIT_OPTIONS)
def _concrete_bwd_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: upstream gy, lg, u [R*D]; ys: dl [R*D] (when f0); acc: [R] sum of
    # gy sigmoid'(s) s per row (when f1, for dtau)
    gy, lg, u, dl = xs[0], xs[1], xs[2], ys[0]
    it = cst(lg, 1.0 / tau)
    buf = np.empty(n if draw else 0, lg.dtype)
    sink = np.empty(0 if f0 else n, lg.dtype)  # dl when not wanted: the loop stores unconditionally
    for r in range(r0, r1):
        o = r * n
        u_ = _uniforms(u, buf, o, n, draw, k0, k1)
        g_, l_ = gy[o : o + n], lg[o : o + n]
        dl_ = dl[o : o + n] if f0 else sink
        s_tau = 0.0
        for j in range(n):
            s = (l_[j] + _logit(u_[j])) * it
            ds = g_[j] * _dsig(s)
            dl_[j] = ds * it
            s_tau += np.float64(ds * s)
        if f1:
            acc[r] = s_tau


@njit(**JIT_OPTIONS)
def _conditional_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: lg, samples b, uniforms v [R*D]; ys: relaxed samples y [R*D]
    lg, b, v, y = xs[0], xs[1], xs[2], ys[0]
    it = cst(lg, 1.0 / tau)
    buf = np.empty(n if draw else 0, lg.dtype)
    for r in range(r0, r1):
        o = r * n
        v_ = _uniforms(v, buf, o, n, draw, k0, k1)
        l_, b_, y_ = lg[o : o + n], b[o : o + n], y[o : o + n]
        for j in range(n):
            z, _ = _relaxed_logit(l_[j], b_[j], v_[j])
            y_[j] = _sigmoid(z * it)


@njit(**JIT_OPTIONS)
def _conditional_bwd_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: upstream gy, lg, b, v [R*D]; ys, acc: as _concrete_bwd_rows
    gy, lg, b, v = xs
    dl = ys[0]
    it = cst(lg, 1.0 / tau)
    buf = np.empty(n if draw else 0, lg.dtype)
    sink = np.empty(0 if f0 else n, lg.dtype)
    for r in range(r0, r1):
        o = r * n
        v_ = _uniforms(v, buf, o, n, draw, k0, k1)
        g_, l_, b_ = gy[o : o + n], lg[o : o + n], b[o : o + n]
        dl_ = dl[o : o + n] if f0 else sink
        s_tau = 0.0
        for j in range(n):
            z, dz = _relaxed_logit(l_[j], b_[j], v_[j])
            s = z * it
            ds = g_[j] * _dsig(s)
            dl_[j] = ds * it * dz
            s_tau += np.float64(ds * s)
        if f1:
            acc[r] = s_tau


@njit(**JIT_OPTIONS)
def _cat_sample_groups(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: logits lg, uniforms u [G*K]; ys: one-hot samples x [G*K]. Groups run in
    # blocks of about _GROUP_BLOCK elements: the perturbed logits of a block in one
    # (vectorized) loop, then the argmax of each group.
    lg, u, x = xs[0], xs[1], ys[0]
    one = cst(x, 1.0)
    zero = cst(x, 0.0)
    step = max(1, _GROUP_BLOCK // n)
    buf = np.empty(step * n if draw else 0, lg.dtype)
    gb = np.empty(step * n, np.float64)  # l + Gumbel, in float64 as the reference
    for g0 in range(r0, r1, step):
        o, cnt = g0 * n, (min(g0 + step, r1) - g0) * n
        u_ = _uniforms(u, buf, o, cnt, draw, k0, k1)
        l_, x_ = lg[o : o + cnt], x[o : o + cnt]
        for i in range(cnt):
            gb[i] = np.float64(l_[i]) + _gumbel(np.float64(u_[i]))
            x_[i] = zero
        for q in range(0, cnt, n):
            best = gb[q]
            kb = q
            for i in range(q + 1, q + n):
                if gb[i] > best:  # the first of equal maxima, as torch.argmax
                    best = gb[i]
                    kb = i
            x_[kb] = one


@njit(**JIT_OPTIONS)
def _gumbel_softmax_groups(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: lg, u [G*K]; ys: relaxed one-hot samples y [G*K]; blocks as _cat_sample_groups
    lg, u, y = xs[0], xs[1], ys[0]
    it = cst(lg, 1.0 / tau)
    step = max(1, _GROUP_BLOCK // n)
    buf = np.empty(step * n if draw else 0, lg.dtype)
    for g0 in range(r0, r1, step):
        o, cnt = g0 * n, (min(g0 + step, r1) - g0) * n
        u_ = _uniforms(u, buf, o, cnt, draw, k0, k1)
        l_, y_ = lg[o : o + cnt], y[o : o + cnt]
        for i in range(cnt):
            y_[i] = (l_[i] + _gumbel(u_[i])) * it
        for q in range(0, cnt, n):
            yq = y_[q : q + n]
            _softmax(yq, yq, n)


@njit(**JIT_OPTIONS)
def _gumbel_softmax_bwd_groups(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: upstream gy, output y, lg, u [G*K]; ys: dl [G*K] (when f0); acc: [G] sum of
    # ds s per group (when f1, for dtau; only then is u read). ds = y (gy - sum gy y).
    gy, y, lg, u = xs
    dl = ys[0]
    it = cst(lg, 1.0 / tau)
    step = max(1, _GROUP_BLOCK // n)
    buf = np.empty(step * n if draw and f1 else 0, lg.dtype)
    ds = np.empty(step * n, lg.dtype)
    for g0 in range(r0, r1, step):
        o, cnt = g0 * n, (min(g0 + step, r1) - g0) * n
        g_, y_ = gy[o : o + cnt], y[o : o + cnt]
        for q in range(0, cnt, n):
            dot = cst(y, 0.0)
            for i in range(q, q + n):
                dot += g_[i] * y_[i]
            for i in range(q, q + n):
                ds[i] = y_[i] * (g_[i] - dot)
        if f0:
            dl_ = dl[o : o + cnt]
            for i in range(cnt):
                dl_[i] = ds[i] * it
        if f1:
            u_ = _uniforms(u, buf, o, cnt, draw, k0, k1)
            l_ = lg[o : o + cnt]
            for q in range(0, cnt, n):
                s_tau = 0.0
                for i in range(q, q + n):
                    s_tau += np.float64(ds[i] * (l_[i] + _gumbel(u_[i])) * it)
                acc[g0 + q // n] = s_tau


@njit(**JIT_OPTIONS)
def _cat_log_prob_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # rows of m groups of n = K: xs: values x, logits lg [R*m*K]; ys: log-probabilities [R]
    x, lg, out = xs[0], xs[1], ys[0]
    for r in range(r0, r1):
        s = 0.0
        for o in range(r * m * n, (r + 1) * m * n, n):
            x_, l_ = x[o : o + n], lg[o : o + n]
            lse = _lse(l_, n)
            for k in range(n):
                s += np.float64(x_[k] * (l_[k] - lse))
        out[r] = cst(out, s)


@njit(**JIT_OPTIONS)
def _cat_log_prob_bwd_groups(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: upstream g [G / m] (one per row of m groups), x, lg [G*K]; ys: dx (when f0), dl (when f1) [G*K]
    g, x, lg = xs[0], xs[1], xs[2]
    dx, dl = ys[0], ys[1]
    for gi in range(r0, r1):
        o = gi * n
        gr = g[gi // m]
        x_, l_ = x[o : o + n], lg[o : o + n]
        lse = _lse(l_, n)
        if f0:
            dx_ = dx[o : o + n]
            for k in range(n):
                dx_[k] = gr * (l_[k] - lse)
        if f1:
            dl_ = dl[o : o + n]
            sx = cst(x, 0.0)
            for k in range(n):
                sx += x_[k]
            for k in range(n):
                dl_[k] = gr * (x_[k] - _exp(l_[k] - lse) * sx)


@njit(**JIT_OPTIONS)
def _cat_kl_rows(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # rows of m groups of n = K: xs: logits lg, prior logits lg0 [R*m*K]; ys: KL [R]
    lg, lg0, out = xs[0], xs[1], ys[0]
    p = np.empty(n, lg.dtype)
    for r in range(r0, r1):
        s = 0.0
        for o in range(r * m * n, (r + 1) * m * n, n):
            l_, l0_ = lg[o : o + n], lg0[o : o + n]
            lse = _softmax(p, l_, n)
            lse0 = _lse(l0_, n)
            for k in range(n):
                s += np.float64(p[k] * ((l_[k] - lse) - (l0_[k] - lse0)))
        out[r] = cst(out, s)


@njit(**JIT_OPTIONS)
def _cat_kl_bwd_groups(r0, r1, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # xs: upstream g [G / m], lg, lg0 [G*K]; ys: dl (when f0), dl0 (when f1) [G*K]
    g, lg, lg0 = xs[0], xs[1], xs[2]
    dl, dl0 = ys[0], ys[1]
    p = np.empty(n, lg.dtype)
    for gi in range(r0, r1):
        o = gi * n
        gr = g[gi // m]
        l_, l0_ = lg[o : o + n], lg0[o : o + n]
        lse = _softmax(p, l_, n)
        lse0 = _lse(l0_, n)
        if f0:
            dl_ = dl[o : o + n]
            ea = 0.0  # sum_k p_k a_k, a = log p - log p0
            for k in range(n):
                ea += np.float64(p[k] * ((l_[k] - lse) - (l0_[k] - lse0)))
            mean = cst(lg, ea)
            for k in range(n):
                dl_[k] = gr * p[k] * ((l_[k] - lse) - (l0_[k] - lse0) - mean)
        if f1:
            d0_ = dl0[o : o + n]
            for k in range(n):
                d0_[k] = gr * (_exp(l0_[k] - lse0) - p[k])


# the kernels by id (the order of the branches in _parallel)
_KERNELS = (
    _bern_sample_rows,
    _bern_anti_rows,
    _bern_kl_rows,
    _bern_kl_bwd_rows,
    _concrete_rows,
    _concrete_bwd_rows,
    _conditional_rows,
    _conditional_bwd_rows,
    _cat_sample_groups,
    _gumbel_softmax_groups,
    _gumbel_softmax_bwd_groups,
    _cat_log_prob_rows,
    _cat_log_prob_bwd_groups,
    _cat_kl_rows,
    _cat_kl_bwd_groups,
)
_KERNEL_ID = {k: i for i, k in enumerate(_KERNELS)}
_ROWS_OF_GROUPS = (_cat_log_prob_rows, _cat_kl_rows)


@njit(parallel=True, **JIT_OPTIONS)
def _parallel(op, nt, rows, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1):
    # kernel _KERNELS[op] over nt tasks of rows (or groups) split evenly
    for t in prange(nt):
        a = (t * rows // nt, (t + 1) * rows // nt, n, m, xs, ys, acc, draw, k0, k1, tau, f0, f1)
        if op == 0:
            _bern_sample_rows(*a)
        elif op == 1:
            _bern_anti_rows(*a)
        elif op == 2:
            _bern_kl_rows(*a)
        elif op == 3:
            _bern_kl_bwd_rows(*a)
        elif op == 4:
            _concrete_rows(*a)
        elif op == 5:
            _concrete_bwd_rows(*a)
        elif op == 6:
            _conditional_rows(*a)
        elif op == 7:
            _conditional_bwd_rows(*a)
        elif op == 8:
            _cat_sample_groups(*a)
        elif op == 9:
            _gumbel_softmax_groups(*a)
        elif op == 10:
            _gumbel_softmax_bwd_groups(*a)
        elif op == 11:
            _cat_log_prob_rows(*a)
        elif op == 12:
            _cat_log_prob_bwd_groups(*a)
        elif op == 13:
            _cat_kl_rows(*a)
        elif op == 14:
            _cat_kl_bwd_groups(*a)


# --------------------------------------------------------------------------- launchers


def _run(kernel, dtype, rows, n, *, m=0, xs=(), ys=(), acc=None, noise=None, tau=1.0, f0=False, f1=False):
    """Run ``kernel`` over ``rows`` rows (groups) of ``n``: serially, or by :func:`_parallel` when large.

    ``xs``/``ys`` are padded with the shared empty array; ``noise`` is
    ``(draw, k0, k1)`` (:func:`_noise`). A categorical reduction's rows hold
    ``m`` groups of ``n``, the others ``n`` elements.
    """
    numel = rows * n * (m if kernel in _ROWS_OF_GROUPS else 1)
    if numel == 0:
        return
    none = _NONE[dtype]
    xs = (*xs, *(none,) * (4 - len(xs)))
    ys = (*ys, *(none,) * (3 - len(ys)))
    acc = _NONE[torch.float64] if acc is None else acc
    draw, k0, k1 = (False, *_NO_KEY) if noise is None else noise
    args = (n, m, xs, ys, acc, draw, k0, k1, float(tau), f0, f1)
    if use_parallel(numel, PARALLEL_MIN_ELEMENTS_BERNOULLI):
        _parallel(_KERNEL_ID[kernel], min(rows, _TASKS_PER_THREAD * numba.get_num_threads()), rows, *args)
    else:
        kernel(0, rows, *args)


def _noise(u: torch.Tensor | None, seed: int | None, dtype: torch.dtype) -> tuple:
    """``(u array, (draw, k0, k1))``: the given uniforms, or the stream's key to draw them in the kernel."""
    if u is None:
        return _NONE[dtype], (True, *split_seed(seed))
    return flat(u), None


def _new(shape, dtype: torch.dtype, wanted: bool = True) -> tuple[torch.Tensor | None, np.ndarray]:
    """``(tensor, flat array)`` of a new output, or ``(None, empty)`` when not ``wanted``.

    A numpy buffer wrapped after (``torch.from_numpy``): under ``torch.func``
    transforms ``torch.empty`` returns a tensor without storage.
    """
    if not wanted:
        return None, _NONE[dtype]
    a = np.empty(math.prod(shape), _NP[dtype])
    return torch.from_numpy(a.reshape(shape)), a


def _sums(shape, wanted: bool = True) -> tuple[torch.Tensor | None, np.ndarray]:
    """A float64 buffer of per-row (or per-group) sums, zero where a kernel writes nothing."""
    if not wanted:
        return None, _NONE[torch.float64]
    a = np.zeros(math.prod(shape), np.float64)
    return torch.from_numpy(a).view(tuple(shape)), a


def _rows(shape) -> tuple[int, int]:
    """``(R, D)`` of ``[..., D]``; ``(G, K)`` of ``[..., D, K]``."""
    return math.prod(shape[:-1]), shape[-1]


def _bernoulli_sample(logits, u, seed):
    R, D = _rows(logits.shape)
    ua, noise = _noise(u, seed, logits.dtype)
    b, ba = _new(logits.shape, logits.dtype)
    _run(_bern_sample_rows, logits.dtype, R, D, xs=(flat(logits), ua), ys=(ba,), noise=noise)
    return b


def _bernoulli_antithetic(logits, u, seed):
    R, D = _rows(logits.shape)
    ua, noise = _noise(u, seed, logits.dtype)
    (b1, a1), (b2, a2), (w, aw) = (_new(logits.shape, logits.dtype) for _ in range(3))
    _run(_bern_anti_rows, logits.dtype, R, D, xs=(flat(logits), ua), ys=(a1, a2, aw), noise=noise)
    return b1, b2, w


def _bernoulli_kl(logits, prior_logits):
    R, D = _rows(logits.shape)
    kl, ka = _new(logits.shape[:-1], logits.dtype)
    ka[:] = 0  # an empty row sums to 0
    _run(_bern_kl_rows, logits.dtype, R, D, xs=(flat(logits), flat(prior_logits)), ys=(ka,))
    return kl


def _bernoulli_kl_grads(g, logits, prior_logits, need_l, need_l0):
    R, D = _rows(logits.shape)
    dl, dla = _new(logits.shape, logits.dtype, need_l)
    dl0, dl0a = _new(logits.shape, logits.dtype, need_l0)
    xs = (flat(g), flat(logits), flat(prior_logits))
    _run(_bern_kl_bwd_rows, logits.dtype, R, D, xs=xs, ys=(dla, dl0a), f0=need_l, f1=need_l0)
    return dl, dl0


def _binary_concrete(logits, u, tau, seed):
    R, D = _rows(logits.shape)
    ua, noise = _noise(u, seed, logits.dtype)
    y, ya = _new(logits.shape, logits.dtype)
    _run(_concrete_rows, logits.dtype, R, D, xs=(flat(logits), ua), ys=(ya,), noise=noise, tau=tau)
    return y


def _binary_concrete_grads(gy, logits, u, tau, seed, need_l, need_tau):
    R, D = _rows(logits.shape)
    ua, noise = _noise(u, seed, logits.dtype)
    dl, dla = _new(logits.shape, logits.dtype, need_l)
    part, pa = _sums(logits.shape[:-1], need_tau)
    xs = (flat(gy), flat(logits), ua)
    _run(_concrete_bwd_rows, logits.dtype, R, D, xs=xs, ys=(dla,), acc=pa, noise=noise, tau=tau, f0=need_l, f1=need_tau)
    return dl, part


def _conditional(logits, b, v, tau, seed):
    R, D = _rows(logits.shape)
    va, noise = _noise(v, seed, logits.dtype)
    y, ya = _new(logits.shape, logits.dtype)
    _run(_conditional_rows, logits.dtype, R, D, xs=(flat(logits), flat(b), va), ys=(ya,), noise=noise, tau=tau)
    return y


def _conditional_grads(gy, logits, b, v, tau, seed, need_l, need_tau):
    R, D = _rows(logits.shape)
    dt = logits.dtype
    va, noise = _noise(v, seed, dt)
    dl, dla = _new(logits.shape, dt, need_l)
    part, pa = _sums(logits.shape[:-1], need_tau)
    xs = (flat(gy), flat(logits), flat(b), va)
    _run(_conditional_bwd_rows, dt, R, D, xs=xs, ys=(dla,), acc=pa, noise=noise, tau=tau, f0=need_l, f1=need_tau)
    return dl, part


def _categorical_sample(logits, u, seed):
    G, K = _rows(logits.shape)
    ua, noise = _noise(u, seed, logits.dtype)
    x, xa = _new(logits.shape, logits.dtype)
    _run(_cat_sample_groups, logits.dtype, G, K, xs=(flat(logits), ua), ys=(xa,), noise=noise)
    return x


def _gumbel_softmax(logits, u, tau, seed):
    G, K = _rows(logits.shape)
    ua, noise = _noise(u, seed, logits.dtype)
    y, ya = _new(logits.shape, logits.dtype)
    _run(_gumbel_softmax_groups, logits.dtype, G, K, xs=(flat(logits), ua), ys=(ya,), noise=noise, tau=tau)
    return y


def _gumbel_softmax_grads(gy, y, logits, u, tau, seed, need_l, need_tau):
    G, K = _rows(logits.shape)
    dt = logits.dtype
    ua, noise = _noise(u, seed, dt)
    dl, dla = _new(logits.shape, dt, need_l)
    part, pa = _sums(logits.shape[:-1], need_tau)
    xs = (flat(gy), flat(y), flat(logits), ua)
    _run(_gumbel_softmax_bwd_groups, dt, G, K, xs=xs, ys=(dla,), acc=pa, noise=noise, tau=tau, f0=need_l, f1=need_tau)
    return dl, part


def _categorical_log_prob(x, logits):
    G, K = _rows(logits.shape)
    D = logits.shape[-2]
    lp, lpa = _new(logits.shape[:-2], logits.dtype)
    lpa[:] = 0  # a row of no groups sums to 0
    _run(_cat_log_prob_rows, logits.dtype, G // D if D else 0, K, m=D, xs=(flat(x), flat(logits)), ys=(lpa,))
    return lp


def _categorical_log_prob_grads(g, x, logits, need_x, need_l):
    G, K = _rows(logits.shape)
    dx, dxa = _new(logits.shape, logits.dtype, need_x)
    dl, dla = _new(logits.shape, logits.dtype, need_l)
    xs = (flat(g), flat(x), flat(logits))
    _run(_cat_log_prob_bwd_groups, logits.dtype, G, K, m=logits.shape[-2], xs=xs, ys=(dxa, dla), f0=need_x, f1=need_l)
    return dx, dl


def _categorical_kl(logits, prior_logits):
    G, K = _rows(logits.shape)
    D = logits.shape[-2]
    kl, kla = _new(logits.shape[:-2], logits.dtype)
    kla[:] = 0
    _run(_cat_kl_rows, logits.dtype, G // D if D else 0, K, m=D, xs=(flat(logits), flat(prior_logits)), ys=(kla,))
    return kl


def _categorical_kl_grads(g, logits, prior_logits, need_l, need_l0):
    G, K = _rows(logits.shape)
    dl, dla = _new(logits.shape, logits.dtype, need_l)
    dl0, dl0a = _new(logits.shape, logits.dtype, need_l0)
    xs = (flat(g), flat(logits), flat(prior_logits))
    _run(_cat_kl_bwd_groups, logits.dtype, G, K, m=logits.shape[-2], xs=xs, ys=(dla, dl0a), f0=need_l, f1=need_l0)
    return dl, dl0


# --------------------------------------------------------------------------- vmap


def _fold(fn, info, in_dims, args, noise=None, scalar=None):
    """The ``vmap`` rule of an op on rows: one call on the inputs with the vmapped dim folded in front.

    The ops act on rows (groups) of the last dim(s), so a batch of calls is one
    call on ``[B, ...]``: batched inputs get their vmapped dim moved to the front,
    unbatched tensors are expanded.

    Args:
        fn: the ``autograd.Function`` to apply to the folded arguments.
        info, in_dims: functorch's vmap info and the vmapped dim of each argument.
        args: the arguments of ``fn.apply``.
        noise: ``(u_pos, seed_pos, like_pos)``: when ``args[u_pos]`` is None the
            uniforms of one call (indexed within it) are drawn here and shared by
            the batch, as a call per sample would draw them.
        scalar: position of the temperature, a 0-dim tensor that must not be batched.

    Returns:
        ``(outputs, out_dims)`` as functorch expects.
    """
    args, in_dims = list(args), list(in_dims)
    if scalar is not None and in_dims[scalar] is not None:
        raise NotImplementedError(
            "the numba discrete kernels take one temperature per call; vmap over it is not "
            "implemented (use backend='torch')"
        )
    if noise is not None:
        u_pos, seed_pos, like_pos = noise
        if args[u_pos] is None and args[seed_pos] is not None:
            like, dim = args[like_pos], in_dims[like_pos]
            shape = [s for i, s in enumerate(like.shape) if i != dim]
            args[u_pos] = uniform_noise_numba(shape, args[seed_pos], like.dtype)
            in_dims[u_pos] = None
    folded = []
    for i, (a, d) in enumerate(zip(args, in_dims, strict=True)):
        if isinstance(a, torch.Tensor) and i != scalar:
            a = a.movedim(d, 0) if d is not None else a.unsqueeze(0).expand(info.batch_size, *a.shape)
        folded.append(a)
    out = fn.apply(*folded)
    if isinstance(out, tuple):
        return out, tuple(0 if isinstance(o, torch.Tensor) else None for o in out)
    return out, 0


def _tau_grad(part: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``dtau = -sum(part) / tau`` from the kernel's per-row sums of ``g sigmoid'(s) s`` (or ``ds s``)."""
    return (-(part.sum() / tau)).to(tau.dtype)


# --------------------------------------------------------------------------- autograd: samples


class _Sample(torch.autograd.Function):
    """A sampling op (no gradient) under ``torch.func`` transforms: unwrapped inputs, ``vmap`` by folding.

    Outside transforms the launchers run directly (their outputs carry no graph).
    """

    @staticmethod
    def forward(launch, logits, u, seed):
        return launch(logits, u, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*(output if isinstance(output, tuple) else (output,)))

    @staticmethod
    def backward(ctx, *grads):
        return None, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_Sample, info, in_dims, args, noise=(2, 3, 1))


def _sample(launch, logits, u, seed):
    if route(logits, u) == TRANSFORM:
        return apply(_Sample, launch, logits, u, seed)
    return launch(logits, u, seed)


# --------------------------------------------------------------------------- autograd: KLs, log-probs


def _no_second_derivative(op: str):
    raise NotImplementedError(
        f"second derivatives of the numba {op} kernel are not implemented; use backend='torch'"
    )  # fmt: skip


def _two_input_op(op: str, forward_fn, grads_fn, doc: str):
    """``(Function, GradFunction)`` of a two-input op with a fused one-pass backward.

    ``forward_fn(a, b)`` computes the op; ``grads_fn(g, a, b, need_a, need_b)`` both
    input gradients in one pass. The backward is itself a Function, so that
    ``torch.func`` transforms can vmap it; its own backward raises (no second
    derivatives: use ``backend='torch'``).
    """

    class Grad(torch.autograd.Function):
        @staticmethod
        def forward(g, a, b, need_a, need_b):
            return grads_fn(g, a, b, need_a, need_b)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, *grads):
            _no_second_derivative(op)

        @staticmethod
        def vmap(info, in_dims, *args):
            return _fold(Grad, info, in_dims, args)

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(a, b):
            return forward_fn(a, b)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            return apply_backward(Grad, g, a, b, *ctx.needs_input_grad[:2])

        @staticmethod
        def vmap(info, in_dims, *args):
            return _fold(Fn, info, in_dims, args)

    Fn.__doc__ = doc
    Grad.__doc__ = f"The fused backward of {op} as a Function (for ``torch.func`` transforms)."
    Fn.__name__ = Fn.__qualname__ = "_" + "".join(w.title() for w in op.split("_"))
    Grad.__name__ = Grad.__qualname__ = Fn.__name__ + "Grad"
    return Fn, Grad


_BernoulliKL, _BernoulliKLGrad = _two_input_op(
    "bernoulli_kl", _bernoulli_kl, _bernoulli_kl_grads,
    "``KL(Bern(sigmoid(l)) || Bern(sigmoid(l0)))`` per row; backward one pass for both gradients.",
)  # fmt: skip
_CategoricalLogProb, _CategoricalLogProbGrad = _two_input_op(
    "categorical_log_prob", _categorical_log_prob, _categorical_log_prob_grads,
    "``sum_{d,k} x_dk log softmax(l_d)_k`` per row; backward one pass for both gradients.",
)  # fmt: skip
_CategoricalKL, _CategoricalKLGrad = _two_input_op(
    "categorical_kl", _categorical_kl, _categorical_kl_grads,
    "``KL(Cat(l) || Cat(l0))`` summed over the D variables of a row; backward one pass.",
)  # fmt: skip


# --------------------------------------------------------------------------- autograd: relaxations


class _BinaryConcreteGrad(torch.autograd.Function):
    """The fused backward of :class:`_BinaryConcrete` as a Function: ``(dl, per-row sums for dtau)``."""

    @staticmethod
    def forward(gy, logits, u, tau, seed, need_l, need_tau):
        return _binary_concrete_grads(gy, logits, u, tau, seed, need_l, need_tau)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        _no_second_derivative("binary_concrete")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_BinaryConcreteGrad, info, in_dims, args, noise=(2, 4, 1), scalar=3)


class _BinaryConcrete(torch.autograd.Function):
    """``sigmoid((l + logit u) / tau)``; the backward recomputes the noise and ``s`` (nothing full-size saved)."""

    @staticmethod
    def forward(logits, u, tau, seed):
        return _binary_concrete(logits, u, tau, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, u, tau, seed = inputs
        ctx.save_for_backward(logits, u, tau)
        ctx.seed = seed

    @staticmethod
    def backward(ctx, gy):
        logits, u, tau = ctx.saved_tensors
        need_l, _, need_tau = ctx.needs_input_grad[:3]
        dl, part = apply_backward(_BinaryConcreteGrad, gy, logits, u, tau, ctx.seed, need_l, need_tau)
        return dl, None, (_tau_grad(part, tau) if need_tau else None), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_BinaryConcrete, info, in_dims, args, noise=(1, 3, 0), scalar=2)


class _ConditionalGrad(torch.autograd.Function):
    """The fused backward of :class:`_Conditional` as a Function: ``(dl, per-row sums for dtau)``."""

    @staticmethod
    def forward(gy, logits, b, v, tau, seed, need_l, need_tau):
        return _conditional_grads(gy, logits, b, v, tau, seed, need_l, need_tau)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        _no_second_derivative("bernoulli_conditional_relaxed")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_ConditionalGrad, info, in_dims, args, noise=(3, 5, 1), scalar=4)


class _Conditional(torch.autograd.Function):
    """REBAR's ``sigmoid(z~ / tau)`` given ``b``; the backward recomputes ``z~`` (no gradient for b, v)."""

    @staticmethod
    def forward(logits, b, v, tau, seed):
        return _conditional(logits, b, v, tau, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, b, v, tau, seed = inputs
        ctx.save_for_backward(logits, b, v, tau)
        ctx.seed = seed

    @staticmethod
    def backward(ctx, gy):
        logits, b, v, tau = ctx.saved_tensors
        need_l, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        dl, part = apply_backward(_ConditionalGrad, gy, logits, b, v, tau, ctx.seed, need_l, need_tau)
        return dl, None, None, (_tau_grad(part, tau) if need_tau else None), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_Conditional, info, in_dims, args, noise=(2, 4, 0), scalar=3)


class _GumbelSoftmaxGrad(torch.autograd.Function):
    """The fused backward of :class:`_GumbelSoftmax` as a Function: ``(dl, per-group sums for dtau)``."""

    @staticmethod
    def forward(gy, y, logits, u, tau, seed, need_l, need_tau):
        return _gumbel_softmax_grads(gy, y, logits, u, tau, seed, need_l, need_tau)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        _no_second_derivative("gumbel_softmax")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_GumbelSoftmaxGrad, info, in_dims, args, noise=(3, 5, 2), scalar=4)


class _GumbelSoftmax(torch.autograd.Function):
    """``softmax((l - log(-log u)) / tau)``; the backward reads the saved output."""

    @staticmethod
    def forward(logits, u, tau, seed):
        return _gumbel_softmax(logits, u, tau, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, u, tau, seed = inputs
        ctx.save_for_backward(logits, u, tau, output)
        ctx.seed = seed

    @staticmethod
    def backward(ctx, gy):
        logits, u, tau, y = ctx.saved_tensors
        need_l, _, need_tau = ctx.needs_input_grad[:3]
        dl, part = apply_backward(_GumbelSoftmaxGrad, gy, y, logits, u, tau, ctx.seed, need_l, need_tau)
        return dl, None, (_tau_grad(part, tau) if need_tau else None), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _fold(_GumbelSoftmax, info, in_dims, args, noise=(1, 3, 0), scalar=2)


# --------------------------------------------------------------------------- backend entry points
# Inputs arrive validated and expanded to one shape by kernels.discrete.


def uniform_noise(shape, seed, device, dtype):
    """The uniform stream (:func:`kernels.philox.uniform_at`) filled by a numba kernel."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"uniform_noise: the numba backend fills CPU tensors only, got device {device}")
    return uniform_noise_numba(shape, seed, dtype)


def bernoulli_sample(logits, u, seed):
    """``1[u < sigmoid(logits)]`` (threshold in float64), u drawn in the kernel when None."""
    return _sample(_bernoulli_sample, logits, u, seed)


def bernoulli_antithetic(logits, u, seed):
    """``(b1, b2, w)`` of ARM/DisARM from one uniform, in one pass."""
    return _sample(_bernoulli_antithetic, logits, u, seed)


def categorical_sample(logits, u, seed):
    """One-hot Gumbel-max samples ``[..., D, K]`` (argmax in float64)."""
    return _sample(_categorical_sample, logits, u, seed)


def bernoulli_kl(logits, prior_logits):
    """``[...]`` KL between Bernoullis of logits ``[..., D]``, differentiable in both."""
    if route(logits, prior_logits) == NO_GRAD:
        return _bernoulli_kl(logits, prior_logits)
    return apply(_BernoulliKL, logits, prior_logits)


def categorical_log_prob(x, logits):
    """``[...]`` log-probability of ``x`` ``[..., D, K]`` under categoricals of ``logits``."""
    if route(x, logits) == NO_GRAD:
        return _categorical_log_prob(x, logits)
    return apply(_CategoricalLogProb, x, logits)


def categorical_kl(logits, prior_logits):
    """``[...]`` KL between categoricals of logits ``[..., D, K]``, differentiable in both."""
    if route(logits, prior_logits) == NO_GRAD:
        return _categorical_kl(logits, prior_logits)
    return apply(_CategoricalKL, logits, prior_logits)


def binary_concrete(logits, u, tau, seed):
    """Relaxed Bernoulli ``sigmoid((logits + logit u) / tau)``, differentiable in logits and tau."""
    if route(logits, u, tau) == NO_GRAD:
        return _binary_concrete(logits, u, tau, seed)
    return apply(_BinaryConcrete, logits, u, tau, seed)


def bernoulli_conditional_relaxed(logits, b, v, tau, seed):
    """REBAR's conditional relaxed sample given ``b``, differentiable in logits and tau."""
    if route(logits, b, v, tau) == NO_GRAD:
        return _conditional(logits, b, v, tau, seed)
    return apply(_Conditional, logits, b, v, tau, seed)


def gumbel_softmax(logits, u, tau, seed):
    """Relaxed one-hot ``softmax((logits - log(-log u)) / tau)``, differentiable in logits and tau."""
    if route(logits, u, tau) == NO_GRAD:
        return _gumbel_softmax(logits, u, tau, seed)
    return apply(_GumbelSoftmax, logits, u, tau, seed)
