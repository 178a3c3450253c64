"""Shared pieces of the triton kernels: device helpers, launch shapes, vmap folding.

Importing this module first settles the backend's mode (``_freeze``), so that
``TRITON_INTERPRET`` is in the environment before the first ``@triton.jit`` here
decorates a kernel (it reads the variable at that moment).

Layout convention of every kernel: an input ``[..., D]`` is viewed as ``[R, D]``
contiguous rows (``R`` = product of the leading dims). Row-reducing kernels run
one program per block of ``BLOCK_R`` rows and loop over ``D`` in ``BLOCK_D``
chunks, accumulating in float32 (float64 for float64 inputs); element-wise
kernels run over the flat index. The flat (row-major) index of an element is
also its Philox offset, so noise never depends on the block shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import _freeze

_freeze()  # TRITON_INTERPRET must be settled before the first @triton.jit below

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton import knobs  # noqa: E402

# Only @builtin language functions appear in the kernels below, never the
# @triton.jit ones of triton.language (tl.zeros, tl.sum, tl.randn, ...): those are
# decorated when triton is first imported, and if that happened before
# TRITON_INTERPRET was set (torch.compile imports triton, even on CPU) the
# interpreter cannot call them. tl.reduce with triton's own sum combiner is tl.sum;
# the interpreter recognises that combiner by identity and never calls it.
from triton.language.standard import _sum_combine  # noqa: E402

INTERPRETED: bool = bool(knobs.runtime.interpret)
"""True when ``@triton.jit`` produced interpreter functions in this process."""

NAMESPACE = "elbobench_triton"  # torch.ops.elbobench_triton.<op>

# Elements per program. Compiled: tiles that keep a GPU busy and fit in registers.
# Interpreted: one numpy op per tile, so big tiles (few programs) are much faster.
TILE = 1 << 16 if INTERPRETED else 4096  # BLOCK_R * BLOCK_D of a row-reducing kernel
MAX_BLOCK_D = 4096 if INTERPRETED else 1024
FLAT_BLOCK = 1 << 16 if INTERPRETED else 1024  # BLOCK of an element-wise kernel


# --------------------------------------------------------------------------- device functions
@triton.jit
def load_acc(ptr, offs, mask, F64: tl.constexpr):
    """Load a block and convert it to the accumulation dtype (float64 or float32)."""
    x = tl.load(ptr + offs, mask=mask, other=0.0)
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def store_out(ptr, offs, value, mask):
    """Store ``value`` converted to the element type of ``ptr``, rounding to nearest even.

    For bfloat16 the rounding is done by hand on the float32 bits (add ``0x7FFF`` plus
    the lowest kept bit, clear the low half), after which the cast is exact: the
    interpreter's float32 -> bfloat16 cast truncates, while compiled Triton rounds
    to nearest even, and both must give the same answer.
    """
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        tl.store(ptr + offs, bits.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=mask)
    else:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def zeros_acc(BLOCK: tl.constexpr, F64: tl.constexpr):
    """A ``[BLOCK]`` accumulator of zeros in the accumulation dtype."""
    if F64:
        return tl.full([BLOCK], 0.0, tl.float64)
    else:
        return tl.full([BLOCK], 0.0, tl.float32)


@triton.jit
def row_sum(x):
    """Sum of a ``[BLOCK_R, BLOCK_D]`` block over its last axis (``tl.sum(x, axis=1)``)."""
    return tl.reduce(x, 1, _sum_combine)


# Philox4x32-10 constants (Salmon et al. 2011; the values of triton.language.random).
_PHILOX_A: tl.constexpr = tl.constexpr(0xD2511F53)
_PHILOX_B: tl.constexpr = tl.constexpr(0xCD9E8D57)
_PHILOX_KEY_A: tl.constexpr = tl.constexpr(0x9E3779B9)
_PHILOX_KEY_B: tl.constexpr = tl.constexpr(0xBB67AE85)
_UNIFORM_SCALE: tl.constexpr = tl.constexpr(4.6566127342e-10)
_TWO_PI: tl.constexpr = tl.constexpr(6.283185307179586)


@triton.jit
def _uniform(word):
    """uint32 -> uniform in [0, 1): bitcast to int32, ``~x`` for negatives, times 2**-31."""
    x = word.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x.to(tl.float32) * _UNIFORM_SCALE


@triton.jit
def philox_randn(seed, offs):
    """Standard normals at int64 offsets ``offs``: the stream of ``tl.randn(seed, offs)``.

    The steps of triton 3.x ``language/random.py`` (key = the two 32-bit halves of
    ``seed``, counter = ``(offs_lo, offs_hi, 0, 0)``, ten Philox rounds, Box-Muller on
    the first two words; see :mod:`kernels.philox`), written out
    here because ``tl.randn`` is itself a ``@triton.jit`` function decorated when
    triton is first imported: if anything imported triton before ``TRITON_INTERPRET``
    was set (``torch.compile`` does, even on CPU), the interpreter cannot call it.
    ``tests/test_triton_backend.py`` checks this port against ``tl.randn`` itself.
    """
    seed = tl.to_tensor(seed).to(tl.uint64)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = offs.to(tl.uint32)
    c1 = (offs >> 32).to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    for _ in tl.static_range(10):
        n0 = tl.umulhi(_PHILOX_B, c2) ^ c1 ^ k0
        n2 = tl.umulhi(_PHILOX_A, c0) ^ c3 ^ k1
        c1 = tl.mul(_PHILOX_B, c2, sanitize_overflow=False)
        c3 = tl.mul(_PHILOX_A, c0, sanitize_overflow=False)
        c0 = n0
        c2 = n2
        k0 = tl.add(k0, _PHILOX_KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, _PHILOX_KEY_B, sanitize_overflow=False)
    u1 = tl.maximum(1.0e-7, _uniform(c0))
    u2 = _uniform(c1)
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(u2 * _TWO_PI)


@triton.jit
def noise_at(seed, offs, period, PERIODIC: tl.constexpr):
    """:func:`philox_randn` at ``offs``, taken modulo ``period`` when PERIODIC.

    The period is the element count of one vmapped sample: under ``torch.func.vmap``
    every sample draws the same noise, as a Python loop over the samples would.
    """
    if PERIODIC:
        offs = offs % period
    return philox_randn(seed, offs)


@triton.jit
def log1p_small(t):
    """``log(1 + t)`` accurate for small ``t`` >= 0 (Goldberg 1991, "What every computer
    scientist should know about floating-point arithmetic", Theorem 4)."""
    u = 1.0 + t
    return tl.where(u == 1.0, t, tl.log(u) * (t / tl.where(u == 1.0, 1.0, u - 1.0)))


# --------------------------------------------------------------------------- launch shapes
def rows_of(t: torch.Tensor) -> tuple[int, int]:
    """``(R, D)`` of a ``[..., D]`` tensor."""
    d = t.shape[-1]
    return (t.numel() // d if d else math.prod(t.shape[:-1])), d


def row_blocks(r: int, d: int) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_D, num_warps)`` of a row-reducing kernel over ``r`` rows of length ``d``."""
    block_d = min(triton.next_power_of_2(max(d, 1)), MAX_BLOCK_D)
    block_r = max(1, min(TILE // block_d, triton.next_power_of_2(max(r, 1))))
    return block_r, block_d, (4 if block_r * block_d <= 1024 else 8)


def flat_block(n: int) -> int:
    """``BLOCK`` of an element-wise kernel over ``n`` elements."""
    return min(FLAT_BLOCK, max(16, triton.next_power_of_2(max(n, 1))))


def contiguous(*ts: torch.Tensor | None) -> list[torch.Tensor | None]:
    """``t.contiguous()`` for each tensor (the API may pass expanded, stride-0 views)."""
    return [None if t is None else t.contiguous() for t in ts]


def placeholder(like: torch.Tensor) -> torch.Tensor:
    """An empty tensor returned in the slot of a gradient nobody asked for."""
    return like.new_empty(0)


# --------------------------------------------------------------------------- vmap
def batch_args(info, in_dims: Sequence[int | None], args: Sequence) -> list:
    """Fold a vmapped dim into the leading (row) dims: batched tensors get it at dim 0,
    unbatched tensors are expanded to ``[batch_size, *shape]``; non-tensors pass through.

    Every kernel treats the leading dims as independent rows, so this is all a vmap
    rule needs (the period of the noise aside, see :func:`sample_period`).
    """
    out = []
    for a, d in zip(args, in_dims, strict=True):
        if isinstance(a, torch.Tensor):
            a = a.movedim(d, 0) if d is not None else a.expand(info.batch_size, *a.shape)
        out.append(a)
    return out


def sample_period(period: int, batched: torch.Tensor) -> int:
    """Noise period after folding: unchanged if already set, else one sample's element count."""
    return period if period else math.prod(batched.shape[1:])
