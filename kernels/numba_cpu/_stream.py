"""Non-temporal ("streaming") stores for the large outputs of the numba kernels.

A plain store to a line that is not in cache first reads the line from memory
(read for ownership) and later writes it back, so an output written once costs
twice its size in DRAM traffic. A non-temporal store (``movntps`` and kin,
LLVM's ``!nontemporal`` metadata) collects the line in a write-combining buffer
and writes it to memory without reading it first (Intel 64 and IA-32
Architectures Optimization Reference Manual, "Non-temporal stores"; Drepper,
"What every programmer should know about memory", 2007, sec. 6.1). glibc's
``memcpy`` switches to them above a size tied to the cache for the same reason.
The cost: the data are not in cache afterwards, so they are used only for
outputs too large to stay there (:data:`STREAM_MIN_BYTES`).

LLVM's loop vectorizer will not vectorize a loop whose store is non-temporal
unless the target can do it at the store's alignment (4 bytes for a float
array), so the kernels compute a block into a small per-task buffer with their
usual vectorized loop and :func:`stream_block` then copies it out: plain stores
up to the first 64-byte boundary of the output, one 64-byte non-temporal store
per line after it, plain stores for the tail. The values are the same ones the
plain path writes (only the store differs); tests check they are bitwise equal.
Non-temporal stores are weakly ordered, so each task ends with ``sfence``
(:func:`stream_fence`) before the thread reports it done; one fence per task
costs a drain of the write-combining buffers, hence the large streaming tasks
(:data:`STREAM_TASK_ELEMENTS`; with one-row tasks the fences ate the gain).

Which outputs stream: ``z`` of the fused Gaussian forward (:mod:`.gaussian`),
and the full-size gradients of its backward and of the Gaussian log density's
backward (:mod:`.logprob`; up to three outputs a task, one staging buffer
each). The gradient of a broadcast input, summed in the kernel, is added to, not
streamed. Row sums (KL, log densities) are ``[R]``: too small to matter.

``scripts/stream_stores.py`` times both variants in balanced rounds in one
process, on inputs read from DRAM. On an Intel host streaming was faster for
every op and size from [2048, 1024] up; on AMD it has not been shown to pay
(``docs/numba-backend.md``, ``docs/measurements/stream-stores-intel-xeon.md``).

``ELBOBENCH_NUMBA_STREAM_STORES``: ``auto`` (default: on for x86-64 Intel CPUs,
where it was measured to pay; off elsewhere), ``on`` (any x86-64 CPU) or ``off``. The
setting is read when :mod:`kernels` is imported; a value it does not know is
reported with a warning and treated as ``auto``. Non-x86 hosts never stream
(``sfence`` is an x86 instruction).
"""

from __future__ import annotations

import os
import platform
import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._flags import BLOCK, JIT_OPTIONS

ENV = "ELBOBENCH_NUMBA_STREAM_STORES"
CHOICES = ("auto", "on", "off")

#: Outputs of at least this many bytes are written with non-temporal stores.
#: 8 MiB is more than a core's L2 and a fair share of a shared L3 could keep for
#: the next op anyway; from this size up streaming was faster on cold inputs
#: (module doc).
STREAM_MIN_BYTES = 8 << 20

#: Elements per task when streaming (whole rows; :func:`stream_buffers`).
#: Each task ends with one ``sfence``; at 1 MiB of float32 output per task the
#: fence's drain is a small part of the task's time.
STREAM_TASK_ELEMENTS = 1 << 18

_LINE = 64  # bytes per non-temporal store: one cache line


def _cpu_vendor() -> str:
    """The ``vendor_id`` of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def requested() -> str:
    """The value of ``ELBOBENCH_NUMBA_STREAM_STORES`` (``auto`` when unset); a bad value is an error."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV} must be one of {list(CHOICES)}, got {os.environ.get(ENV)!r}")
    return value


def _decide() -> tuple[bool, str]:
    try:
        choice = requested()
    except ValueError as exc:
        warnings.warn(f"{exc}; using 'auto'", stacklevel=3)
        choice = "auto"
    if choice == "off":
        return False, f"plain stores ({ENV}=off)"
    if not _is_x86_64():
        return False, f"plain stores (non-temporal stores are x86-64 only, this is {platform.machine()})"
    vendor = _cpu_vendor()
    if choice == "auto" and vendor != "GenuineIntel":
        return False, f"plain stores (auto: measured faster on Intel only, this is {vendor or 'an unknown vendor'})"
    return True, f"non-temporal stores for outputs of at least {STREAM_MIN_BYTES >> 20} MiB ({ENV}={choice})"


ENABLED, _DESCRIPTION = _decide()


def describe() -> str:
    """One line: whether the kernels stream their large outputs, and why."""
    return _DESCRIPTION


def streams(nbytes: int) -> bool:
    """Whether an output of ``nbytes`` bytes is written with non-temporal stores."""
    return ENABLED and nbytes >= STREAM_MIN_BYTES


def stream_buffers(outs, R: int, D: int) -> np.ndarray | None:
    """Per-task staging buffers for writing ``outs`` (``R`` rows of ``D``), or None (plain stores).

    ``outs``: one flat output (or None), giving buffers ``[tasks, BLOCK]``; or a
    tuple of flat outputs (None where not wanted), giving ``[tasks, len(outs),
    BLOCK]``, slot ``k`` for ``outs[k]``. None, the plain path compiled as
    before, unless :func:`streams` says so for the largest output and every
    output is flat (a 2-D accumulator of a broadcast input is added to, not
    streamed). The kernels run one task per buffer, each over whole rows and
    about :data:`STREAM_TASK_ELEMENTS` elements.
    """
    many = isinstance(outs, tuple)
    arrays = [a for a in (outs if many else (outs,)) if a is not None]
    if not arrays or R == 0 or any(a.ndim != 1 for a in arrays) or not streams(max(a.nbytes for a in arrays)):
        return None
    n = min(R, max(1, -(-(R * D) // STREAM_TASK_ELEMENTS)))
    return np.empty((n, len(outs), BLOCK) if many else (n, BLOCK), arrays[0].dtype)


# --------------------------------------------------------------------------- numba side


@intrinsic
def _nt_line(typingctx, dst, i, src, j):
    """Store one cache line, ``src[j : j + W]``, to ``dst[i : i + W]`` with a non-temporal store.

    ``W = 64 / itemsize``; ``dst + i`` must be 64-byte aligned (:func:`stream_block`
    checks), ``src`` may have any alignment.
    """
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype):
        return None
    width = _LINE * 8 // dst.dtype.bitwidth

    def codegen(context, builder, signature, args):
        dv, iv, sv, jv = args
        da = context.make_array(signature.args[0])(context, builder, dv)
        sa = context.make_array(signature.args[2])(context, builder, sv)
        elem = context.get_data_type(signature.args[0].dtype)
        vec = ir.VectorType(elem, width).as_pointer()
        value = builder.load(builder.bitcast(builder.gep(sa.data, [jv]), vec), align=dst.dtype.bitwidth // 8)
        store = builder.store(value, builder.bitcast(builder.gep(da.data, [iv]), vec), align=_LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(dst, i, src, j), codegen


@intrinsic
def _sfence(typingctx):
    """``sfence``: the non-temporal stores before it are visible before any store after it."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.sfence"), [])
        return context.get_dummy_value()

    return types.void(), codegen


def buffer_row(bufs, i):  # pragma: no cover - replaced by the overload inside numba
    """Row ``i`` of ``bufs``, or None when ``bufs`` is None (plain stores).

    A task's staging buffers are row ``t`` of the kernel's; one output's buffer is
    row ``k`` of a task's ``[slots, BLOCK]`` (the backward kernels).
    """
    return None if bufs is None else bufs[i]


@overload(buffer_row, inline="always")
def _buffer_row_impl(bufs, i):
    if isinstance(bufs, types.NoneType):
        return lambda bufs, i: None
    return lambda bufs, i: bufs[i]


def block_len(sb, D):  # pragma: no cover - replaced by the overload inside numba
    """Elements per block of a row: the whole row ``D`` when not streaming, else the buffers' length."""
    return D if sb is None else sb.shape[-1]


@overload(block_len, inline="always")
def _block_len_impl(sb, D):
    if isinstance(sb, types.NoneType):
        return lambda sb, D: D
    return lambda sb, D: sb.shape[-1]


def block_out(out, sb):  # pragma: no cover - replaced by the overload inside numba
    """Where a block's results go: ``out`` itself, or the staging buffer ``sb`` when streaming."""
    return out if sb is None or out is None else sb


@overload(block_out, inline="always")
def _block_out_impl(out, sb):
    if isinstance(sb, types.NoneType) or isinstance(out, types.NoneType):
        return lambda out, sb: out
    return lambda out, sb: sb


def stream_block(out, sb, n):  # pragma: no cover - replaced by the overload inside numba
    """Copy ``sb[:n]`` to ``out[:n]``, whole aligned lines with non-temporal stores; nothing when not streaming."""
    if sb is not None and out is not None:
        out[:n] = sb[:n]


@overload(stream_block, inline="always")
def _stream_block_impl(out, sb, n):
    if isinstance(sb, types.NoneType) or isinstance(out, types.NoneType):
        return lambda out, sb, n: None
    size = out.dtype.bitwidth // 8
    width = _LINE // size

    def impl(out, sb, n):
        # Every name is assigned once (no while loop, no branch): inlined three times
        # into one function, a name assigned on two paths trips numba's IR scope check.
        a = np.int64(out.ctypes.data)
        # plain stores up to the next line boundary; all of them when the output is not
        # element-aligned (never for arrays numpy or torch made)
        head = min(((_LINE - a % _LINE) % _LINE) // size + (a % size != 0) * n, n)
        lines = (n - head) // width
        for j in range(head):
            out[j] = sb[j]
        for q in range(lines):
            _nt_line(out, head + q * width, sb, head + q * width)
        for j in range(head + lines * width, n):
            out[j] = sb[j]

    return impl


def stream_fence(sb):  # pragma: no cover - replaced by the overload inside numba
    """``sfence`` after a task's non-temporal stores; nothing when not streaming."""


@overload(stream_fence, inline="always")
def _stream_fence_impl(sb):
    if isinstance(sb, types.NoneType):
        return lambda sb: None
    return lambda sb: _sfence()


def num_tasks_for(bufs, default):  # pragma: no cover - replaced by the overload inside numba
    """The task count of a kernel: one per staging buffer when streaming, else ``default``."""
    return default if bufs is None else bufs.shape[0]


@overload(num_tasks_for, inline="always")
def _num_tasks_for_impl(bufs, default):
    if isinstance(bufs, types.NoneType):
        return lambda bufs, default: default
    return lambda bufs, default: bufs.shape[0]


@njit(**JIT_OPTIONS)
def stream_copy(out, src, sb):
    """``out[:] = src`` through :func:`stream_block`, in blocks of ``sb``'s length (for tests)."""
    n = src.shape[0]
    for lo in range(0, n, sb.shape[0]):
        hi = min(lo + sb.shape[0], n)
        for j in range(hi - lo):
            sb[j] = src[lo + j]
        stream_block(out[lo:hi], sb, hi - lo)
    stream_fence(sb)
