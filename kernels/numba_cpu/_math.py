"""Vectorizable float32/float64 ``exp``, ``log``, ``log1p``, ``cos(2 pi u)``, softplus and sigmoid for numba.

Pip's llvmlite ships without SVML, so ``np.exp``/``np.log1p`` inside a numba loop
become scalar libm calls and the loop does not vectorize (see
``docs/numba-backend.md``: a polynomial is several times faster).
The functions here are branch-free range reduction + polynomial, written so that
LLVM turns every branch into a select and the whole loop into AVX2 code.

Algorithms (classic formulas; constants from the Cephes library, S. L. Moshier,
"Methods and Programs for Mathematical Functions", 1989, files ``expf.c``/``exp.c``,
``sinf.c``/``cosf.c``/``sin.c``):

* ``exp(x)``: ``n = round(x log2(e))`` (float32; to nearest) or
  ``floor(x log2(e) + 1/2)`` (float64), ``r = x - n ln2`` in ``[-ln2/2, ln2/2]``
  with ln2 split in two (Cody & Waite 1980) so ``n * C1`` is exact, then
  ``exp(r)``:

  * float32: ``1 + r + r^2 Q(r)`` with ``Q`` of degree 4 (total degree 6), its
    coefficients a weighted least-squares fit made for this module (4000
    Chebyshev nodes of ``[-ln2/2, ln2/2]``, weight ``r^2 e^-r`` so the fit minimises
    the relative error of the result; :func:`_fit_exp32` recomputes them and a
    test checks the constants). Its error, 3.6e-9, is far under a float32
    ulp; Cephes' ``expf`` uses degree 7. ``2^n`` is applied by adding ``n`` to the
    exponent bits of ``exp(r)`` (in ``[0.70, 1.42]``, so the result stays normal
    within the clamp below), one integer add instead of building ``2^n`` and
    multiplying. Together with the rounding, fewer cycles per exp than the
    degree-7 version at the same accuracy (at most 0.99 ulp over
    ``[-87, 88]``; ``docs/measurements/cheaper-exp-amd-epyc.md``).
  * float64: the Pade form ``1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))`` (Cephes
    ``exp``), scaled by ``2^n`` built directly in the exponent bits.

  Inputs are clamped to
  ``[-87, 88]`` (float32) / ``[-708, 709]`` (float64) so the result stays a normal
  number: the output saturates at ``exp(88) = 1.65e38`` and ``exp(-87) = 1.6e-38``
  instead of overflowing to ``inf`` or flushing to 0. NaN propagates.
* ``log(x)``: ``x = m 2^e`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` read from the
  bits, then ``log(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...)`` with
  ``s = (m - 1)/(m + 1)``, ``|s| <= 0.1716`` (5 terms for float32, 11 for float64).
* ``cos(2 pi u)`` (the angle of Box-Muller, :mod:`kernels.philox`): reduce by quarter
  turns, ``k = floor(4u + 1/2)``, ``r = u - k/4`` in ``[-1/8, 1/8]`` (exact: ``k/4`` is
  within a factor 2 of ``u`` or ``r = u``, Sterbenz's lemma; for ``|u| < 2**21`` in
  float32), ``x = 2 pi r`` in ``[-pi/4, pi/4]``; ``sin x = x + x^3 S(x^2)`` and
  ``cos x = 1 - x^2/2 + x^4 C(x^2)`` with Cephes' minimax coefficients (degree 3/3
  in ``x^2`` for float32 from ``sinf.c``/``cosf.c``, 6/6 for float64 from ``sin.c``);
  then ``cos(2 pi u) = cos x, -sin x, -cos x, sin x`` for ``k mod 4 = 0, 1, 2, 3``,
  chosen by selects. Both polynomials are evaluated for every element (no branch).
  As ``r`` is exact, the error is relative even next to the zeros at ``u = 1/4, 3/4``.
* ``log1p(t)``: Goldberg's trick (D. Goldberg, "What every computer scientist
  should know about floating-point arithmetic", 1991, Thm. 4):
  ``u = 1 + t``; ``log1p(t) = t`` if ``u == 1`` else ``log(u) * t / (u - 1)``.
* ``log1p(t)`` for ``t`` in ``[0, 1]`` (:func:`log1p_unit`, the softplus case):
  ``2 atanh(s)`` with ``s = t / (2 + t)`` in ``[0, 1/3]``, the series in ``s^2`` cut
  after 7 terms (float32) or 16 (float64); one division instead of two.
* ``softplus(l) = max(l, 0) + log1p(exp(-|l|))`` (through :func:`log1p_unit`) and
  ``sigmoid(l) = 1 / (1 + exp(-l))`` evaluated through ``exp(-|l|)``: both
  finite and accurate for any ``|l|`` (no overflow at ``|l| = 100``).

Every function is a numba ``overload`` that specialises on the argument's float
width, so kernels written once serve float32 and float64. :func:`cst` casts a
Python constant to the dtype of an array or scalar (numba types a bare ``0.5``
as float64, which would silently promote float32 arithmetic).

Accuracy (tested in ``tests/test_numba_math.py``): float32 exp/log/log1p within
about 2 ulp of the float64 value, float64 within about 4 ulp (``log1p_unit`` on
``[0, 1]``: 1.9 and 2.0 eps measured; softplus: 2.05 and 2.9); ``cos(2 pi u)`` within
1.5 eps relative (float32; measured 1.2) and 2 eps (float64; measured 1.15) and
below 1 eps absolute.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ._flags import JIT_OPTIONS

# --------------------------------------------------------------------------- bit casts


@intrinsic
def _i32_as_f32(typingctx, x):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _f32_as_i32(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _i64_as_f64(typingctx, x):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _f64_as_i64(typingctx, x):
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


# --------------------------------------------------------------------------- typed constants


def cst(like, value):  # pragma: no cover - replaced by the overload inside numba
    """``value`` as the float dtype of ``like`` (an array or a float scalar)."""
    return np.asarray(like).dtype.type(value)


def _float_bits(like) -> int | None:
    if isinstance(like, types.Array):
        like = like.dtype
    if isinstance(like, types.Float):
        return like.bitwidth
    return None


@overload(cst, inline="always")
def _cst_impl(like, value):
    bits = _float_bits(like)
    if bits == 32:
        return lambda like, value: np.float32(value)
    if bits == 64:
        return lambda like, value: np.float64(value)
    return None


def seg(a, lo, hi):  # pragma: no cover - replaced by the overload inside numba
    """``a[lo:hi]``, or None when ``a`` is None.

    Kernels index row segments from 0 (``seg(x, lo, hi)[j]``) rather than a flat
    array at ``lo + j``: numba wraps negative indices, and with an offset index
    LLVM cannot prove ``lo + j >= 0``, so the wrap-around select turns every load
    into a gather (several times slower); a slice indexed by ``range(n)`` is plainly
    non-negative and vectorizes.
    """
    return None if a is None else a[lo:hi]


@overload(seg, inline="always")
def _seg_impl(a, lo, hi):
    if isinstance(a, types.NoneType):
        return lambda a, lo, hi: None
    if isinstance(a, types.Array):
        return lambda a, lo, hi: a[lo:hi]
    return None


# --------------------------------------------------------------------------- exp

_LOG2E = 1.4426950408889634
# float32: clamp and Cody-Waite split of ln2 from Cephes expf.c; Q fitted by _fit_exp32 (highest degree first)
_E32_HI, _E32_LO = 88.0, -87.0
_E32_C1, _E32_C2 = 0.693359375, -2.12194440e-4
_E32_Q = (
    1.3751407895817615e-3,
    8.368916341374082e-3,
    4.166953310922339e-2,
    1.6666518459980373e-1,
    4.999998859511277e-1,
)
# float64 (Cephes exp.c)
_E64_HI, _E64_LO = 709.0, -708.0
_E64_C1, _E64_C2 = 6.93145751953125e-1, 1.42860682030941723212e-6
_E64_P = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_E64_Q = (3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1, 2.0)


def fexp(x):  # pragma: no cover - replaced by the overload inside numba
    """Vectorizable ``exp`` (see the module docstring)."""
    return np.exp(x)


def _fit_exp32(nodes: int = 4000) -> tuple[float, ...]:
    """The coefficients of ``Q`` in ``exp(r) ~ 1 + r + r^2 Q(r)``, highest degree first (see the module docstring)."""
    h = np.log(2.0) / 2
    r = h * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)  # Chebyshev nodes of [-h, h]
    g = (np.expm1(r) - r) / r**2
    w = r**2 * np.exp(-r)  # error in g, times r^2 / e^r, is the relative error of exp(r)
    c = np.linalg.lstsq(np.vander(r, 5, increasing=True) * w[:, None], g * w, rcond=None)[0]
    return tuple(float(v) for v in c[::-1])


def _exp32(x):
    f = np.float32
    if x > f(_E32_HI):
        x = f(_E32_HI)
    if x < f(_E32_LO):
        x = f(_E32_LO)
    n = np.rint(x * f(_LOG2E))
    r = x - n * f(_E32_C1)
    r = r - n * f(_E32_C2)
    q = f(_E32_Q[0])
    q = q * r + f(_E32_Q[1])
    q = q * r + f(_E32_Q[2])
    q = q * r + f(_E32_Q[3])
    q = q * r + f(_E32_Q[4])
    p = q * (r * r) + r + f(1.0)
    # p * 2^n through the exponent bits. A NaN x gives n = NaN, which converts to
    # INT_MIN on x86 (the "integer indefinite"); INT_MIN << 23 is 0, so p's NaN bits stay.
    return _i32_as_f32(_f32_as_i32(p) + (np.int32(n) << np.int32(23)))


def _exp64(x):
    f = np.float64
    if x > f(_E64_HI):
        x = f(_E64_HI)
    if x < f(_E64_LO):
        x = f(_E64_LO)
    n = np.floor(x * f(_LOG2E) + f(0.5))
    r = x - n * f(_E64_C1)
    r = r - n * f(_E64_C2)
    rr = r * r
    px = ((f(_E64_P[0]) * rr + f(_E64_P[1])) * rr + f(_E64_P[2])) * r
    qx = ((f(_E64_Q[0]) * rr + f(_E64_Q[1])) * rr + f(_E64_Q[2])) * rr + f(_E64_Q[3])
    e = f(1.0) + f(2.0) * (px / (qx - px))
    scale = _i64_as_f64((np.int64(n) + np.int64(1023)) << np.int64(52))
    return e * scale


@overload(fexp, inline="always")
def _fexp_impl(x):
    bits = _float_bits(x)
    if bits == 32:
        return _exp32
    if bits == 64:
        return _exp64
    return None


# --------------------------------------------------------------------------- log

_SQRT2 = 1.4142135623730951
_LN2 = 0.6931471805599453


def flog(x):  # pragma: no cover - replaced by the overload inside numba
    """Vectorizable natural ``log`` for float32/float64 (see the module docstring)."""
    return np.log(x)


def _log32(x):
    f = np.float32
    bits = _f32_as_i32(x)
    e = ((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(127)
    m = _i32_as_f32((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000))  # [1, 2)
    if m > f(_SQRT2):
        m = m * f(0.5)
        e = e + np.int32(1)
    s = (m - f(1.0)) / (m + f(1.0))
    s2 = s * s
    p = f(1.0 / 9.0)
    p = p * s2 + f(1.0 / 7.0)
    p = p * s2 + f(1.0 / 5.0)
    p = p * s2 + f(1.0 / 3.0)
    p = p * s2 + f(1.0)
    y = f(2.0) * s * p + f(e) * f(_LN2)
    # special values: log(0) = -inf, log(x < 0) = nan, log(inf) = inf, nan -> nan;
    # subnormals are outside what the kernels need and give approximate values.
    if x == f(0.0):
        y = -f(np.inf)
    if x < f(0.0):
        y = f(np.nan)
    if x == f(np.inf):
        y = x
    if x != x:
        y = x
    return y


def _log64(x):
    f = np.float64
    bits = _f64_as_i64(x)
    e = ((bits >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1023)
    m = _i64_as_f64((bits & np.int64(0xFFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000))
    if m > f(_SQRT2):
        m = m * f(0.5)
        e = e + np.int64(1)
    s = (m - f(1.0)) / (m + f(1.0))
    s2 = s * s
    p = f(1.0 / 21.0)
    p = p * s2 + f(1.0 / 19.0)
    p = p * s2 + f(1.0 / 17.0)
    p = p * s2 + f(1.0 / 15.0)
    p = p * s2 + f(1.0 / 13.0)
    p = p * s2 + f(1.0 / 11.0)
    p = p * s2 + f(1.0 / 9.0)
    p = p * s2 + f(1.0 / 7.0)
    p = p * s2 + f(1.0 / 5.0)
    p = p * s2 + f(1.0 / 3.0)
    p = p * s2 + f(1.0)
    y = f(2.0) * s * p + f(e) * f(_LN2)
    if x == f(0.0):
        y = -f(np.inf)
    if x < f(0.0):
        y = f(np.nan)
    if x == f(np.inf):
        y = x
    if x != x:
        y = x
    return y


@overload(flog, inline="always")
def _flog_impl(x):
    bits = _float_bits(x)
    if bits == 32:
        return _log32
    if bits == 64:
        return _log64
    return None


# --------------------------------------------------------------------------- cos(2 pi u)

_TWO_PI = 6.283185307179586
# float32 (Cephes sinf.c / cosf.c): minimax on |x| <= pi/4
_S32 = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_C32 = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
# float64 (Cephes sin.c): sin on |x| <= pi/4 as x + x^3 S(x^2), cos as 1 - x^2/2 + x^4 C(x^2)
_S64 = (
    1.58962301576546568060e-10,
    -2.50507477628578072866e-8,
    2.75573136213857245213e-6,
    -1.98412698295895385996e-4,
    8.33333333332211858878e-3,
    -1.66666666666666307295e-1,
)
_C64 = (
    -1.13585365213876817300e-11,
    2.08757008419747316778e-9,
    -2.75573141792967388112e-7,
    2.48015872888517045348e-5,
    -1.38888888888730564116e-3,
    4.16666666666665929218e-2,
)


def fcos2pi(u):  # pragma: no cover - replaced by the overload inside numba
    """Vectorizable ``cos(2 pi u)``, branch-free (see the module docstring).

    Meant for ``u`` in ``[0, 1]`` (a uniform draw); correct for any ``|u| < 2**21`` (float32) or ``2**50`` (float64).
    """
    return np.cos(2.0 * np.pi * u)


def _cos2pi32(u):
    f = np.float32
    k = np.floor(u * f(4.0) + f(0.5))  # nearest quarter turn
    r = u - k * f(0.25)  # exact: |r| <= 1/8
    q = np.int32(k) & np.int32(3)
    x = r * f(_TWO_PI)  # |x| <= pi/4
    z = x * x
    s = ((f(_S32[0]) * z + f(_S32[1])) * z + f(_S32[2])) * z * x + x
    c = ((f(_C32[0]) * z + f(_C32[1])) * z + f(_C32[2])) * (z * z) - f(0.5) * z + f(1.0)
    # cos(2 pi (q/4 + r)) = cos x, -sin x, -cos x, sin x for q = 0, 1, 2, 3
    y = s if (q & np.int32(1)) != np.int32(0) else c
    return -y if ((q + np.int32(1)) & np.int32(2)) != np.int32(0) else y


def _cos2pi64(u):
    f = np.float64
    k = np.floor(u * f(4.0) + f(0.5))
    r = u - k * f(0.25)
    q = np.int64(k) & np.int64(3)
    x = r * f(_TWO_PI)
    z = x * x
    s = f(_S64[0])
    s = s * z + f(_S64[1])
    s = s * z + f(_S64[2])
    s = s * z + f(_S64[3])
    s = s * z + f(_S64[4])
    s = s * z + f(_S64[5])
    s = s * z * x + x
    c = f(_C64[0])
    c = c * z + f(_C64[1])
    c = c * z + f(_C64[2])
    c = c * z + f(_C64[3])
    c = c * z + f(_C64[4])
    c = c * z + f(_C64[5])
    c = c * (z * z) - f(0.5) * z + f(1.0)
    y = s if (q & np.int64(1)) != np.int64(0) else c
    return -y if ((q + np.int64(1)) & np.int64(2)) != np.int64(0) else y


@overload(fcos2pi, inline="always")
def _fcos2pi_impl(u):
    bits = _float_bits(u)
    if bits == 32:
        return _cos2pi32
    if bits == 64:
        return _cos2pi64
    return None


# --------------------------------------------------------------------------- log1p, softplus, sigmoid


def flog1p(x):  # pragma: no cover - replaced by the overload inside numba
    """Vectorizable ``log(1 + x)``, accurate for small ``x`` (Goldberg's trick)."""
    return np.log1p(x)


def fsoftplus(x):  # pragma: no cover - replaced by the overload inside numba
    """Stable ``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))``."""
    return np.logaddexp(0.0, x)


def fsigmoid(x):  # pragma: no cover - replaced by the overload inside numba
    """Stable ``1 / (1 + exp(-x))`` through ``exp(-|x|)``."""
    return 1.0 / (1.0 + np.exp(-x))


@overload(flog1p, inline="always")
def _flog1p_impl(x):
    if _float_bits(x) is None:
        return None

    def impl(x):
        one = cst(x, 1.0)
        u = one + x
        d = u - one
        if d == cst(x, 0.0):
            d = one  # u == 1: log1p(x) = x (the ratio below would be 0/0)
        y = flog(u) * (x / d)
        if u == one:
            y = x
        if u == cst(x, np.inf):
            y = u
        return y

    return impl


def log1p_unit(t):  # pragma: no cover - replaced by the overload inside numba
    """``log1p(t)`` for ``t`` in ``[0, 1]`` (softplus's ``log1p(exp(-|x|))``) with one division.

    ``log1p(t) = 2 atanh(s)``, ``s = t / (2 + t)`` in ``[0, 1/3]``, so ``s^2 <= 1/9``
    and the series ``s (1 + s^2/3 + s^4/5 + ...)`` gains a factor 9 a term: 7 terms
    leave 1.4e-8 relative (float32), 16 leave 1.6e-17 (float64). No bit tricks and no
    special values (``t`` is an exp); one division where :func:`flog1p` takes two
    (its log's and Goldberg's); accurate for tiny ``t`` too (``s`` rounds once).
    """
    return np.log1p(t)


def _log1p_unit32(t):
    f = np.float32
    s = t / (f(2.0) + t)
    z = s * s
    p = f(1.0 / 13.0)
    p = p * z + f(1.0 / 11.0)
    p = p * z + f(1.0 / 9.0)
    p = p * z + f(1.0 / 7.0)
    p = p * z + f(1.0 / 5.0)
    p = p * z + f(1.0 / 3.0)
    p = p * z + f(1.0)
    return f(2.0) * s * p


def _log1p_unit64(t):
    f = np.float64
    s = t / (f(2.0) + t)
    z = s * s
    p = f(1.0 / 31.0)
    p = p * z + f(1.0 / 29.0)
    p = p * z + f(1.0 / 27.0)
    p = p * z + f(1.0 / 25.0)
    p = p * z + f(1.0 / 23.0)
    p = p * z + f(1.0 / 21.0)
    p = p * z + f(1.0 / 19.0)
    p = p * z + f(1.0 / 17.0)
    p = p * z + f(1.0 / 15.0)
    p = p * z + f(1.0 / 13.0)
    p = p * z + f(1.0 / 11.0)
    p = p * z + f(1.0 / 9.0)
    p = p * z + f(1.0 / 7.0)
    p = p * z + f(1.0 / 5.0)
    p = p * z + f(1.0 / 3.0)
    p = p * z + f(1.0)
    return f(2.0) * s * p


@overload(log1p_unit, inline="always")
def _log1p_unit_impl(t):
    bits = _float_bits(t)
    if bits == 32:
        return _log1p_unit32
    if bits == 64:
        return _log1p_unit64
    return None


@overload(fsoftplus, inline="always")
def _fsoftplus_impl(x):
    if _float_bits(x) is None:
        return None

    def impl(x):
        zero = cst(x, 0.0)
        a = x if x > zero else -x
        m = x if x > zero else zero
        return m + log1p_unit(fexp(-a))

    return impl


@overload(fsigmoid, inline="always")
def _fsigmoid_impl(x):
    if _float_bits(x) is None:
        return None

    def impl(x):
        zero = cst(x, 0.0)
        one = cst(x, 1.0)
        a = x if x > zero else -x
        e = fexp(-a)
        inv = one / (one + e)
        return inv if x >= zero else e * inv

    return impl


# --------------------------------------------------------------------------- array entry points (for tests)


@njit(**JIT_OPTIONS)
def _map_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = fexp(x[i])


@njit(**JIT_OPTIONS)
def map_exp_scaled(x, scale, out):
    """``out[i] = fexp(x[i] * scale)`` (the kernels' exp of a broadcast log variance, taken once)."""
    c = cst(x, scale)
    for i in range(x.shape[0]):
        out[i] = fexp(x[i] * c)


@njit(**JIT_OPTIONS)
def _map_log(x, out):
    for i in range(x.shape[0]):
        out[i] = flog(x[i])


@njit(**JIT_OPTIONS)
def _map_cos2pi(x, out):
    for i in range(x.shape[0]):
        out[i] = fcos2pi(x[i])


@njit(**JIT_OPTIONS)
def _map_log1p(x, out):
    for i in range(x.shape[0]):
        out[i] = flog1p(x[i])


@njit(**JIT_OPTIONS)
def _map_log1p_unit(x, out):
    for i in range(x.shape[0]):
        out[i] = log1p_unit(x[i])


@njit(**JIT_OPTIONS)
def _map_softplus(x, out):
    for i in range(x.shape[0]):
        out[i] = fsoftplus(x[i])


@njit(**JIT_OPTIONS)
def _map_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = fsigmoid(x[i])


_MAPS = {
    "exp": _map_exp,
    "log": _map_log,
    "log1p": _map_log1p,
    "log1p_unit": _map_log1p_unit,
    "cos2pi": _map_cos2pi,
    "softplus": _map_softplus,
    "sigmoid": _map_sigmoid,
}


def apply(name: str, x: np.ndarray) -> np.ndarray:
    """Evaluate one of ``exp``, ``log``, ``log1p``, ``log1p_unit``, ``cos2pi``, ``softplus``, ``sigmoid`` elementwise.

    Compiled with the same fastmath flags as the kernels, so the tests measure
    the accuracy the kernels get.

    Args:
        name: function name (a key of the table above).
        x: float32 or float64 array of any shape.

    Returns:
        a new array of ``x``'s shape and dtype.
    """
    if name not in _MAPS:
        raise ValueError(f"name must be one of {sorted(_MAPS)}, got {name!r}")
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    out = np.empty_like(x)
    _MAPS[name](x.reshape(-1), out.reshape(-1))
    return out
