"""Counter-based Gaussian noise shared by every backend.

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
  kernels inline, so they draw noise without materialising it;
* :func:`normal_noise_numba` -- a parallel numba kernel filling a buffer;
* :func:`normal_noise_torch` -- vectorised int64 torch ops (any device), the
  reference the numba and triton versions are tested against.
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

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

if _HAVE_NUMBA:

    @njit(inline="always", cache=True)
    def _umulhi(a, b):
        # a, b: uint64 holding 32-bit values; the product fits in 64 bits.
        return (a * b) >> numba.uint64(32)

    @njit(inline="always", cache=True)
    def randn_at(k0, k1, idx):
        """Standard normal at element ``idx`` for key ``(k0, k1)`` (all uint64), float32.

        Inlined into the fused kernels; matches ``tl.randn(seed, idx)``.
        """
        m = numba.uint64(_MASK32)
        c0 = idx & m
        c1 = (idx >> numba.uint64(32)) & m
        c2 = numba.uint64(0)
        c3 = numba.uint64(0)
        a = numba.uint64(PHILOX_A)
        b = numba.uint64(PHILOX_B)
        ka = numba.uint64(PHILOX_KEY_A)
        kb = numba.uint64(PHILOX_KEY_B)
        for _ in range(PHILOX_ROUNDS):
            n0 = (_umulhi(b, c2) ^ c1 ^ k0) & m
            n2 = (_umulhi(a, c0) ^ c3 ^ k1) & m
            c1 = (b * c2) & m
            c3 = (a * c0) & m
            c0 = n0
            c2 = n2
            k0 = (k0 + ka) & m
            k1 = (k1 + kb) & m
        # uint32 -> int32 bitcast -> uniform in [0, 1)
        i0 = np.int64(c0)
        if i0 >= 2147483648:
            i0 = i0 - 4294967296
        if i0 < 0:
            i0 = -i0 - 1
        i1 = np.int64(c1)
        if i1 >= 2147483648:
            i1 = i1 - 4294967296
        if i1 < 0:
            i1 = -i1 - 1
        u1 = np.float32(i0) * np.float32(UNIFORM_SCALE)
        u2 = np.float32(i1) * np.float32(UNIFORM_SCALE)
        if u1 < np.float32(U1_MIN):
            u1 = np.float32(U1_MIN)
        r = np.sqrt(np.float32(-2.0) * np.log(u1))
        return r * np.cos(np.float32(TWO_PI) * u2)

    @njit(parallel=True, cache=True)
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

    @njit(cache=True)
    def _fill_normal_serial(out, k0, k1):
        for i in range(out.shape[0]):
            out[i] = randn_at(k0, k1, numba.uint64(i))


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
