"""Counter-based Gaussian and uniform noise shared by every backend.

The stream is Philox4x32-10 followed by Box-Muller, exactly the steps of Triton's
``tl.randn(seed, offset)`` (triton 3.x ``language/random.py``; Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011):

* key ``(k0, k1) = (seed & 0xFFFFFFFF, seed >> 32)``; counter
  ``(c0, c1, c2, c3) = (offset & 0xFFFFFFFF, offset >> 32, 0, 0)``;
* ten rounds of ``c0' = umulhi(B, c2) ^ c1 ^ k0``, ``c2' = umulhi(A, c0) ^ c3 ^ k1``,
  ``c1' = B * c2``, ``c3' = A * c0`` (mod 2**32), then
  ``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85``;
* the first two output words become uniforms: bitcast to int32, replace a
  negative ``x`` by ``~x`` and multiply by ``4.6566127342e-10``;
* ``u1 = max(u1, 1e-7)`` and the normal is ``sqrt(-2 ln u1) * cos(2 pi u2)``.

The offset of an element is its row-major index in the output, so the value at
an index depends only on ``(seed, index)`` and never on block sizes or thread
counts. Three implementations live here and are tested against each other:

* :func:`randn_at` -- a scalar ``numba.njit`` function that the fused numba
  kernels inline, so they draw noise without materialising it; it takes ``log`` and
  ``cos(2 pi u2)`` from the vectorizable polynomials of
  :mod:`kernels.numba_cpu._math` and evaluates ``cos(2 pi u2)`` from ``u2`` directly,
  whereas ``tl.randn`` and the torch reference round ``2 pi u2`` to float32 first
  (an argument error of up to ~4e-7, times ``r <= 5.7``); over 8.4e7 draws the
  two differ by at most 1.43e-6, mean 7e-8 (with libm ``logf``/``cosf``: 0.95e-6,
  mean 1.5e-8), inside ``kernels.testing.NOISE_ATOL = 4e-6``;
* :func:`normal_noise_numba` -- a parallel numba kernel filling a buffer (bitwise
  the values the fused kernels draw: same code, same compile flags);
* :func:`normal_noise_torch` -- vectorised int64 torch ops (any device), the
  reference the numba and triton versions are tested against.

The discrete families draw uniforms from the same generator: element ``i`` is
``tl.rand(seed, i)``, the first output word turned into a float32 as above,
clamped to ``[U_OPEN, 1 - U_OPEN]`` (``U_OPEN = 2**-24``). That is integer
arithmetic, a float32 product and two selects, so the implementations agree
bitwise: :func:`uniform_at` (inlined by the fused numba kernels),
:func:`uniform_noise_numba` (a fill kernel) and :func:`uniform_noise_torch`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PHILOX_A = 0xD2511F53
PHILOX_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10
U1_MIN = 1e-7
# uniforms of the discrete families are clamped to [U_OPEN, 1 - U_OPEN] (both exact
# in float32), so logit(u) and log(-log u) are finite
U_OPEN = 2.0**-24
TWO_PI = 6.283185307179586
MAX_SEED = 2**63 - 1
_MASK32 = 0xFFFFFFFF


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` as a Python int in ``[0, 2**63)`` or raise a clear error."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [0, 2**63), got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**63), got {seed}")
    return seed


def draw_seed() -> int:
    """Draw a seed from torch's default generator (so ``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64).item())


# --------------------------------------------------------------------------- numba
try:  # numba is a hard dependency of the distribution, but keep import errors lazy.
    import numba
    from numba import njit, prange

    from ._numba_cache import configure as _configure_cache

    _configure_cache()  # before the @njit(cache=True) below are decorated

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

if _HAVE_NUMBA:
    from numba.extending import overload

    # The vectorizable log and cos(2 pi u) live in ``kernels.numba_cpu._math``. This
    # module is imported by ``import kernels`` (and so by the torch and triton
    # backends), and the numba backend package imports it back, so those functions
    # are bound when a kernel below is first compiled, not at import time: no
    # import cycle, and importing ``kernels`` does not import the numba backend.
    def _log(x):  # pragma: no cover - replaced by the overload inside numba
        return np.log(x)

    def _cos2pi(u):  # pragma: no cover - replaced by the overload inside numba
        return np.cos(TWO_PI * u)

    @overload(_log, inline="always")
    def _log_impl(x):
        from .numba_cpu._math import flog

        return lambda x: flog(x)

    @overload(_cos2pi, inline="always")
    def _cos2pi_impl(u):
        from .numba_cpu._math import fcos2pi

        return lambda u: fcos2pi(u)

    # The options of ``kernels.numba_cpu._flags.JIT_OPTIONS``, spelled out because this
    # module cannot import that package at import time (see above; a test checks they
    # agree). ``error_model="numpy"`` removes the division-by-zero check in ``flog``,
    # without which the fill loop does not vectorize at all (docs/numba-backend.md);
    # the fastmath flags add little speed but are those of the fused kernels, which
    # inline ``randn_at``, so the noise filled here is bitwise the noise drawn there.
    _FILL_OPTIONS = dict(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")

    @njit(inline="always", cache=True)
    def _to_uniform_nb(w):
        """uint32 word (held in a uint64) -> uniform float32 in [0, 1], branch-free."""
        i = np.int32(w)  # bitcast: keep the low 32 bits
        i = np.int32(i ^ (i >> np.int32(31)))  # x < 0 -> ~x (all ones where negative)
        return np.float32(i) * np.float32(UNIFORM_SCALE)

    @njit(inline="always", cache=True)
    def _philox_words(k0, k1, idx):
        """Words ``(c0, c1)`` of Philox4x32-10 at counter ``(idx lo, idx hi, 0, 0)``, key ``(k0, k1)`` (uint64 lanes)."""
        m = numba.uint64(_MASK32)
        s32 = numba.uint64(32)
        c0 = idx & m
        c1 = idx >> s32
        c2 = numba.uint64(0)
        c3 = numba.uint64(0)
        a = numba.uint64(PHILOX_A)
        b = numba.uint64(PHILOX_B)
        ka = numba.uint64(PHILOX_KEY_A)
        kb = numba.uint64(PHILOX_KEY_B)
        for _ in range(PHILOX_ROUNDS):
            p0 = b * c2  # < 2**64: both factors < 2**32
            p2 = a * c0
            n0 = (p0 >> s32) ^ c1 ^ k0
            n2 = (p2 >> s32) ^ c3 ^ k1
            c1 = p0 & m
            c3 = p2 & m
            c0 = n0
            c2 = n2
            k0 = (k0 + ka) & m
            k1 = (k1 + kb) & m
        return c0, c1

    @njit(inline="always", cache=True)
    def randn_at(k0, k1, idx):
        """Standard normal at element ``idx`` for key ``(k0, k1)`` (all uint64), float32.

        Inlined into the fused kernels; matches ``tl.randn(seed, idx)`` (see the
        module docstring for how closely). The key words must be below ``2**32``
        (:func:`split_seed`). Branch-free, with no libm call: the 32-bit words sit in
        uint64 lanes, whose 32 x 32 -> 64-bit products LLVM emits as ``vpmuludq``, the
        sign fix-up of the uniforms is integer arithmetic, and ``log``/``cos`` are the
        polynomials of :mod:`kernels.numba_cpu._math`; so a loop over ``idx``
        vectorizes (AVX2: 8 elements per iteration).
        """
        c0, c1 = _philox_words(k0, k1, idx)
        u1 = _to_uniform_nb(c0)
        u2 = _to_uniform_nb(c1)
        u1 = max(u1, np.float32(U1_MIN))
        r = np.sqrt(np.float32(-2.0) * _log(u1))
        return r * _cos2pi(u2)

    @njit(inline="always", cache=True)
    def uniform_at(k0, k1, idx):
        """Uniform of the discrete families at element ``idx`` for key ``(k0, k1)`` (all uint64), float32.

        ``tl.rand(seed, idx)`` (the first Philox word through :func:`_to_uniform_nb`)
        clamped to ``[U_OPEN, 1 - U_OPEN]``: bitwise :func:`uniform_noise_torch`.
        Integer arithmetic and two selects, so a loop over ``idx`` vectorizes as
        :func:`randn_at`'s does.
        """
        c0, _ = _philox_words(k0, k1, idx)
        u = _to_uniform_nb(c0)
        return min(max(u, np.float32(U_OPEN)), np.float32(1.0 - U_OPEN))

    @njit(parallel=True, **_FILL_OPTIONS)
    def _fill_uniform_parallel(out, k0, k1):
        # out: [N] float32, filled with uniform_at(k0, k1, i)
        n = out.shape[0]
        chunk = 4096
        for c in prange((n + chunk - 1) // chunk):
            o = out[c * chunk : min((c + 1) * chunk, n)]  # indexed from 0: the loop vectorizes
            base = numba.uint64(c * chunk)
            for i in range(o.shape[0]):
                o[i] = uniform_at(k0, k1, base + numba.uint64(i))

    @njit(**_FILL_OPTIONS)
    def _fill_uniform_serial(out, k0, k1):
        for i in range(out.shape[0]):
            out[i] = uniform_at(k0, k1, numba.uint64(i))

    @njit(parallel=True, **_FILL_OPTIONS)
    def _fill_normal_parallel(out, k0, k1):
        # out: [N] float32/float64, filled with randn_at(k0, k1, i)
        n = out.shape[0]
        chunk = 4096
        nchunks = (n + chunk - 1) // chunk
        for c in prange(nchunks):
            lo = c * chunk
            hi = min(lo + chunk, n)
            for i in range(lo, hi):
                out[i] = randn_at(k0, k1, numba.uint64(i))

    @njit(**_FILL_OPTIONS)
    def _fill_normal_serial(out, k0, k1):
        for i in range(out.shape[0]):
            out[i] = randn_at(k0, k1, numba.uint64(i))

    @njit(parallel=True, **_FILL_OPTIONS)
    def _fill_blocks_parallel(out, k0, k1, A, nb, M, first):
        # out: [A, nb, M] row-major (flat); element (a, b, m) is the stream at
        # ((first + b) * A + a) * M + m, i.e. element (a, m) of block first + b.
        for j in prange(A * nb):
            _fill_block_row(out, k0, k1, A, nb, M, first, j)

    @njit(**_FILL_OPTIONS)
    def _fill_blocks_serial(out, k0, k1, A, nb, M, first):
        for j in range(A * nb):
            _fill_block_row(out, k0, k1, A, nb, M, first, j)

    @njit(inline="always", **_FILL_OPTIONS)
    def _fill_block_row(out, k0, k1, A, nb, M, first, j):
        a = j // nb
        b = j - a * nb
        src = numba.uint64(((first + b) * A + a) * M)
        o = out[j * M : (j + 1) * M]  # a slice: indexed from 0, the loop vectorizes
        for m in range(M):
            o[m] = randn_at(k0, k1, src + numba.uint64(m))


def split_seed(seed: int) -> tuple[np.uint64, np.uint64]:
    """Philox key words ``(low 32 bits, high 32 bits)`` of ``seed`` as uint64 scalars."""
    return np.uint64(seed & _MASK32), np.uint64((seed >> 32) & _MASK32)


_SERIAL_BELOW = 1 << 15


def normal_noise_numba(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Fill a new CPU tensor of ``shape`` with the shared stream using numba."""
    if not _HAVE_NUMBA:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    shape = tuple(shape)
    # Fill a numpy buffer first and wrap it after: under torch.func transforms
    # torch.empty returns a tensor without storage.
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    flat = np.empty(math.prod(shape), dtype=np_dtype)
    if flat.size:
        k0, k1 = split_seed(seed)
        if flat.shape[0] < _SERIAL_BELOW:
            _fill_normal_serial(flat, k0, k1)
        else:
            _fill_normal_parallel(flat, k0, k1)
    out = torch.from_numpy(flat).reshape(shape)
    return out if out.dtype == dtype else out.to(dtype)


def normal_noise_blocks_numba(blocks: int, shape, seed: int, first: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Blocks ``first .. first + blocks - 1`` of the stream, each of ``shape``, with the block dim second.

    Returns ``[shape[0], blocks, *shape[1:]]`` equal to
    ``normal_noise_numba((first + blocks, *shape), seed)[first:].movedim(0, 1)``,
    but filled in this order directly: contiguous, and without drawing the blocks
    before ``first``.
    """
    if not _HAVE_NUMBA:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    shape = tuple(shape)
    A, M = shape[0], math.prod(shape[1:])
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    flat = np.empty(A * blocks * M, dtype=np_dtype)
    if flat.size:
        k0, k1 = split_seed(seed)
        fill = _fill_blocks_serial if flat.shape[0] < _SERIAL_BELOW else _fill_blocks_parallel
        fill(flat, k0, k1, A, blocks, M, first)
    out = torch.from_numpy(flat).reshape(A, blocks, *shape[1:])
    return out if out.dtype == dtype else out.to(dtype)


def uniform_noise_numba(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """The uniform stream (:func:`uniform_at` at each row-major index) as a new CPU tensor.

    Filled in float32 (the stream's precision) and converted, as
    :func:`uniform_noise_torch` does, so float64 holds the same values.
    """
    if not _HAVE_NUMBA:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    shape = tuple(shape)
    flat = np.empty(math.prod(shape), dtype=np.float32)
    if flat.size:
        k0, k1 = split_seed(seed)
        fill = _fill_uniform_serial if flat.shape[0] < _SERIAL_BELOW else _fill_uniform_parallel
        fill(flat, k0, k1)
    if dtype == torch.float64:
        flat = flat.astype(np.float64)
    out = torch.from_numpy(flat).reshape(shape)
    return out if out.dtype == dtype else out.to(dtype)


# --------------------------------------------------------------------------- torch
def _umulhi_t(a: int, b: torch.Tensor) -> torch.Tensor:
    """High 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 tensor ``b`` < 2**32."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    t1 = a * b_lo  # < 2**48
    t2 = a * b_hi  # < 2**48
    return ((t1 >> 16) + t2) >> 16


def philox4x32(seed: int, offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on counters ``(offset_lo, offset_hi, 0, 0)``; returns four int64 words."""
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    for _ in range(PHILOX_ROUNDS):
        n0 = (_umulhi_t(PHILOX_B, c2) ^ c1 ^ k0) & _MASK32
        n2 = (_umulhi_t(PHILOX_A, c0) ^ c3 ^ k1) & _MASK32
        c1 = (c2 * PHILOX_B) & _MASK32
        c3 = (c0 * PHILOX_A) & _MASK32
        c0, c2 = n0, n2
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _to_uniform(word: torch.Tensor) -> torch.Tensor:
    signed = torch.where(word >= 2**31, word - 2**32, word)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def normal_noise_torch(shape, seed: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Reference implementation of the stream in plain torch (int64 arithmetic, any device)."""
    shape = tuple(shape)
    n = math.prod(shape)
    offsets = torch.arange(n, dtype=torch.int64, device=device)
    w0, w1, _, _ = philox4x32(seed, offsets)
    u1 = torch.clamp(_to_uniform(w0), min=U1_MIN)
    u2 = _to_uniform(w1)
    r = torch.sqrt(-2.0 * torch.log(u1))
    z = r * torch.cos(TWO_PI * u2)
    return z.to(dtype).reshape(shape)


def uniform_noise_torch(shape, seed: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Uniforms of the shared stream: element ``i`` is ``tl.rand(seed, i)`` clamped to the open interval.

    ``tl.rand`` turns the first Philox word into a float32 in [0, 1] as the normal
    stream does (:func:`_to_uniform`); the clamp to ``[U_OPEN, 1 - U_OPEN]``
    (``U_OPEN = 2**-24``) keeps ``logit(u)`` and ``log(-log u)`` finite.
    """
    shape = tuple(shape)
    n = math.prod(shape)
    offsets = torch.arange(n, dtype=torch.int64, device=device)
    w0, _, _, _ = philox4x32(seed, offsets)
    u = torch.clamp(_to_uniform(w0), min=U_OPEN, max=1.0 - U_OPEN)
    return u.to(dtype).reshape(shape)
