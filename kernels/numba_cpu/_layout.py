"""Read broadcast and strided inputs in place: a row layout instead of a copy.

The public API hands the numba ops inputs expanded to one shape ``[..., D]``:
log q of z ``[S, B, D]`` under mu ``[B, D]`` gets mu as an expanded view with a
zero stride, and autograd's upstream gradient of ``z.sum()`` is a single 1
expanded to the full shape. Making such views contiguous copies ``S`` times the
data the kernel needs, a large share of the many-sample variance benchmark's
time (``docs/numba-backend.md``).

Instead, an input whose last dim is unit-stride is described by a *row layout*
``(inner, outer_stride, inner_stride)``: with its leading dims collapsed into at
most two, ``(outer, inner)``, row ``r`` of the flattened ``[R, D]`` view starts
at element ``(r // inner) * outer_stride + (r % inner) * inner_stride`` of a 1-D
array over the tensor's storage. A contiguous input is ``(R, 0, D)``; mu
``[B, D]`` broadcast against ``[S, B, D]`` is ``(B, 0, D)``; ``[S, 1, D]`` against
``[S, B, D]`` is ``(B, D, 0)``; one row expanded everywhere is ``(1, 0, 0)``.
Anything else (a transposed last dim, three leading dims that do not collapse)
is made contiguous.

Kernels call :func:`row` once per row; what follows is the same unit-stride
loop over ``D`` elements as for a contiguous input, so it vectorizes the same.
Rows can be short (``D = 10`` in the ppca benchmark, 2M rows), so ``r // inner``
is not an integer division (tens of cycles, three per row: more than a short
row's work): the layout carries a magic multiplier and
shift with ``r // inner == (r * magic) >> shift`` for every ``r < 2**31``
(Granlund & Montgomery, "Division by invariant integers using multiplication",
PLDI 1994, Thm. 4.2: ``shift = 31 + ceil(log2(inner))``,
``magic = ceil(2**shift / inner)``; the product stays below ``2**63``).
The full layout is ``(inner, outer_stride, inner_stride, magic, shift)``.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numpy as np
import torch
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._common import flat, grad_outputs, outputs, rows, saved_key, use_parallel
from ._flags import JIT_OPTIONS, PRECOMPUTE_MIN_ELEMENTS, REDUCE_TASKS
from ._math import cst

#: Rows a layout can address (the magic division is exact below this).
MAX_ROWS = 1 << 31


def magic(inner: int) -> tuple[int, int]:
    """``(magic, shift)`` with ``r // inner == (r * magic) >> shift`` for ``0 <= r < 2**31`` (module doc).

    An empty input (``inner == 0``, no rows to address) gets the layout of ``inner == 1``.
    """
    inner = max(inner, 1)
    shift = 31 + (inner - 1).bit_length()
    return -(-(1 << shift) // inner), shift


def layout(inner: int, outer_stride: int, inner_stride: int) -> tuple[int, int, int, int, int]:
    """The 5-tuple the kernels take (see the module doc)."""
    return (inner, outer_stride, inner_stride, *magic(inner))


#: Layout passed with inputs that are None (never read).
NO_LAYOUT = layout(1, 0, 0)


def row(a, layout, r, D):  # pragma: no cover - replaced by the overload inside numba
    """Row ``r`` (``D`` elements) of ``a`` under ``layout``, or None when ``a`` is None."""
    if a is None:
        return None
    inner, so, si, m, sh = layout
    q = (r * m) >> sh
    base = q * so + (r - q * inner) * si
    return a[base : base + D]


@overload(row, inline="always")
def _row_impl(a, layout, r, D):
    if isinstance(a, types.NoneType):
        return lambda a, layout, r, D: None
    if isinstance(a, types.Array):

        def impl(a, layout, r, D):
            q = np.int64((np.uint64(r) * np.uint64(layout[3])) >> np.uint64(layout[4]))
            base = q * layout[1] + (r - q * layout[0]) * layout[2]
            return a[base : base + D]

        return impl
    return None


def collapse(shape, strides, D: int) -> tuple[int, int, int, int] | None:
    """``(inner, outer_stride, inner_stride, extent)`` of a ``[..., D]`` view, or None.

    ``extent`` is how many elements from the view's first one the rows span. None
    when the last dim is not unit-stride (with ``D > 1``) or the leading dims do
    not collapse to two.
    """
    if D > 1 and strides[-1] != 1:
        return None
    dims: list[list[int]] = []  # (size, stride), innermost last
    for n, s in zip(shape[:-1], strides[:-1], strict=True):
        if n == 1:
            continue
        dims.append([n, s])
    merged: list[list[int]] = []
    for n, s in reversed(dims):
        if merged and s == merged[0][0] * merged[0][1]:
            merged[0] = [n * merged[0][0], merged[0][1]]
        else:
            merged.insert(0, [n, s])
    if len(merged) > 2:
        return None
    extent = D + sum((n - 1) * s for n, s in merged)
    if not merged:
        return 1, 0, 0, extent
    if len(merged) == 1:
        return merged[0][0], 0, merged[0][1], extent
    (_, so), (ni, si) = merged
    return ni, so, si, extent


def strided(t: torch.Tensor | None, R: int, D: int, shape=None):
    """``(array, layout)`` to read ``t`` (shape ``[R rows, D]``) in place; None -> ``(None, NO_LAYOUT)``.

    Contiguous tensors take the fast path ``(flat view, (R, 0, D))``; views that
    :func:`collapse` describes are read through a 1-D array over their storage;
    anything else is made contiguous (a copy). The plan of a ``(shape, strides)``
    is cached (:func:`_plan`): training calls the same few shapes every step, and
    at small batches this Python glue, not the kernel, is most of an op's time.

    ``shape``: read ``t`` as if expanded to ``shape`` (torch's broadcasting rules)
    without calling ``expand``: the lean autograd path takes its inputs
    unexpanded, which saves an expand node and its backward per input.
    """
    if t is None:
        return None, NO_LAYOUT
    t = t.detach()
    if shape is None or t.shape == shape:
        extent, lay = _plan(t.shape, t.stride(), D)
    else:
        extent, lay = _plan(shape, broadcast_strides(t.shape, t.stride(), shape), D)
    if extent == 0:  # contiguous (an expansion that only prepends size-1 dims stays so)
        a = t.numpy()
        a.shape = (a.size,)  # a view, or an error (never a silent copy)
        return a, lay
    if extent > 0:
        return t.as_strided((extent,), (1,)).numpy(), lay
    if shape is not None:
        t = t.expand(shape)
    t = _compact(t)  # only the distinct rows copied, e.g. a scalar expanded everywhere (stride 0 in D too)
    lay = collapse(t.shape, t.stride(), D)
    if lay is None:
        return flat(t.contiguous()), _contiguous(R, D)
    inner, so, si, extent = lay
    return t.as_strided((extent,), (1,)).numpy(), layout(inner, so, si)


# --------------------------------------------------------------------------- small calls: addresses, not arrays

#: Below this many elements (short rows only in fewer than two chunks, see
#: :func:`small`) the plain-autograd and no-grad ops hand their kernels addresses
#: instead of numpy arrays (:func:`address`, :func:`view`). This is the regime of
#: VAE training at small batches (``[20, 50]`` latents, ``[20, 784]`` pixels;
#: digits' ``[100, 16]``), where the Python around a kernel, not the
#: kernel, is most of an op's time. Those calls run between the training step's
#: matrix products and optimizer update, which evict the glue's code and data from
#: the caches, and there building numpy views and passing arrays and layouts costs
#: several times more than passing integers (``docs/numba-backend.md``). It equals
#: PRECOMPUTE_MIN_ELEMENTS, below which (strictly) no launcher precomputes a
#: broadcast exp or sums a broadcast gradient in the kernel, so the arrays a small
#: call reads are the inputs' own (or the copies :func:`strided` makes).
SMALL_MAX_ELEMENTS = PRECOMPUTE_MIN_ELEMENTS

#: One empty array per dtype: the kernels' ``w`` argument, whose dtype the views take.
WITNESS = {torch.float32: np.empty(0, np.float32), torch.float64: np.empty(0, np.float64)}


def small(shape, D: int) -> bool:
    """Whether a call of the broadcast ``shape`` (rows of ``D``) takes the address path (non-empty).

    Short rows (``D < SHORT_ROW``, the chunked kernels) only in fewer than two
    chunks, which :func:`chunk_tiled` leaves as they are: the layouts are then
    the ones :func:`address` gives.
    """
    n = math.prod(shape)
    return 0 < n < SMALL_MAX_ELEMENTS and (D >= SHORT_ROW or n < 2 * CHUNK_ROWS * D)


@intrinsic
def _voidptr(typingctx, addr):
    """The integer ``addr`` as a ``void *`` (for :func:`numba.carray`)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(addr), codegen


def view(p, n, w):  # pragma: no cover - replaced by the overload inside numba
    """The 1-D array of ``n`` elements of ``w``'s dtype at address ``p``; None when ``p`` is None."""
    if p is None:
        return None
    return np.frombuffer((ctypes.c_char * (n * w.itemsize)).from_address(p), dtype=w.dtype)


@overload(view, inline="always")
def _view_impl(p, n, w):
    if isinstance(p, types.NoneType):
        return lambda p, n, w: None
    return lambda p, n, w: carray(_voidptr(p), (n,), w.dtype)


def address(t: torch.Tensor | None, R: int, D: int, shape, keep: list):
    """``(address, length, layout)`` to read ``t`` as :func:`strided` does, without a numpy array.

    ``address`` is None for ``t`` None. A view that :func:`strided` reads in place
    is read at ``t.data_ptr()`` (its first element) through the same layout over
    ``length`` elements; anything else is the copy :func:`strided` makes, appended
    to ``keep`` so that it outlives the kernel call. The caller keeps ``t`` alive.
    """
    if t is None:
        return None, 0, NO_LAYOUT
    if shape is None or t.shape == shape:
        extent, lay = _plan(t.shape, t.stride(), D)
    else:
        extent, lay = _plan(shape, broadcast_strides(t.shape, t.stride(), shape), D)
    if extent == 0:
        return t.data_ptr(), t.numel(), lay
    if extent > 0:
        return t.data_ptr(), extent, lay
    a, lay = strided(t, R, D, shape)
    keep.append(a)
    return a.ctypes.data, a.shape[0], lay


def small_call(shape, R: int, D: int, *tensors):
    """``(R, D, kernel input addresses, copies to keep)`` of a small call: :func:`address` of each input in turn."""
    keep: list = []
    args: tuple = ()
    for t in tensors:
        args += address(t, R, D, shape, keep)
    return R, D, args, keep


def kept_for_backward(key: tuple, small_args, prepared, saved: tuple, shape, prepare):
    """``(small-call arguments, prepared arrays)`` a plain Function's forward kept for its backward.

    ``key``: :func:`._common.saved_key` of the forward's inputs; ``saved``: the
    backward's ``ctx.saved_tensors``. When those lie where and as the forward read
    them, what it kept is returned as is; otherwise (saved-tensor hooks gave other
    tensors) it is rebuilt from ``saved``: :func:`small_call` for a small call,
    ``prepare(*saved, shape)`` else.
    """
    if saved_key(*saved) == key:
        return small_args, prepared
    if small_args is not None:
        return small_call(shape, *rows(shape), *saved), None
    return None, prepare(*saved, shape)


def new_output(shape, dtype: torch.dtype, wanted: bool = True):
    """``(tensor, its address)`` of a new contiguous output of a small call, or ``(None, None)`` when not wanted.

    ``torch.empty``: the small calls run outside ``torch.func`` transforms only,
    where it has storage (under one, see :func:`._common.output`).
    """
    if not wanted:
        return None, None
    t = torch.empty(shape, dtype=dtype)
    return t, t.data_ptr()


@functools.lru_cache(maxsize=1024)
def broadcast_strides(tshape: tuple[int, ...], tstrides: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of ``t.expand(shape)`` from ``t``'s shape and strides (size-1 and new leading dims get 0)."""
    off = len(shape) - len(tshape)
    out = [0] * off
    for n, s, m in zip(tshape, tstrides, shape[off:], strict=True):
        out.append(0 if (n == 1 and m != 1) else s)
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _plan(shape: tuple[int, ...], strides: tuple[int, ...], D: int) -> tuple[int, tuple]:
    """``(0, layout)`` for a contiguous view, ``(extent, layout)`` for one read in place, ``(-1, None)`` else."""
    R = math.prod(shape[:-1])
    if R >= MAX_ROWS:
        raise ValueError(f"the numba kernels address at most 2**31 - 1 rows, got {R} rows of {D}")
    if 0 in shape:  # empty: nothing is read (a flat view of its no elements)
        return 0, _contiguous(R, D)
    expected = 1
    contiguous = True
    for n, s in zip(reversed(shape), reversed(strides), strict=True):
        if n != 1 and s != expected:
            contiguous = False
            break
        expected *= n
    if contiguous:
        return 0, _contiguous(R, D)
    lay = collapse(shape, strides, D)
    if lay is None:
        return -1, None
    inner, so, si, extent = lay
    return extent, layout(inner, so, si)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its distinct rows made contiguous, broadcast back to its shape.

    Leading dims with stride 0 keep one entry, the rest (the last dim included)
    is copied: a scalar expanded to ``[S, R, B, D]`` becomes one row of ``D``
    values read by every row, instead of ``S * R * B * D`` copies. When no leading
    dim is broadcast this is ``t`` itself (and the caller copies it whole).
    """
    idx = tuple(
        slice(0, 1) if (s == 0 and n > 1) else slice(None) for n, s in zip(t.shape[:-1], t.stride()[:-1], strict=True)
    )
    if all(i == slice(None) for i in idx):
        return t
    return t[idx].contiguous().expand(t.shape)


@functools.lru_cache(maxsize=256)
def _contiguous(R: int, D: int) -> tuple[int, int, int, int, int]:
    return layout(R, 0, D)


# --------------------------------------------------------------------------- parallel tasks

#: Elements per task of the parallel row kernels: a task is a run of whole rows
#: handed to one call of the kernel's rows function. One call per row cost more
#: than the row's work at short rows (the call passes every array and layout;
#: ``docs/numba-backend.md``).
TASK_ELEMENTS = 4096


@njit(inline="always", **JIT_OPTIONS)
def tasks(R, D):
    """Number of tasks over ``R`` rows of ``D`` elements (about TASK_ELEMENTS each, whole rows)."""
    per = max(1, TASK_ELEMENTS // max(D, 1))
    return (R + per - 1) // per


def num_tasks(R: int, D: int) -> int:
    """:func:`tasks` in Python (the launchers pass the count to the kernels)."""
    per = max(1, TASK_ELEMENTS // max(D, 1))
    return (R + per - 1) // per


def rows_backward(parallel, serial, shape, dtype, wanted, out, reduce, inputs, arrays_in, R, D):
    """``(results, arrays, kernel, task count)`` of a rows backward kernel (rows of at least SHORT_ROW).

    With ``reduce`` (and no ``out``) the gradients of broadcast inputs are summed
    in the kernel (:func:`._common.grad_outputs`); the kernel then runs
    REDUCE_TASKS tasks whether serial or parallel, so the sums do not depend on
    the thread count. Else one task (serial) or :func:`num_tasks` (parallel).
    """
    if reduce and out is None:
        res, arrays = grad_outputs(shape, dtype, wanted, inputs, arrays_in)
    else:
        res, arrays = outputs(shape, dtype, wanted, out)
    par = use_parallel(R * D)
    if any(a is not None and a.ndim == 2 for a in arrays):
        return res, arrays, (parallel if par else serial), REDUCE_TASKS
    if par:
        return res, arrays, parallel, num_tasks(R, D)
    return res, arrays, serial, 1


@njit(inline="always", **JIT_OPTIONS)
def task(t, n, R):
    """Rows ``[lo, hi)`` of task ``t`` of ``n`` over ``R`` rows (contiguous, sizes differing by at most 1)."""
    return (t * R) // n, ((t + 1) * R) // n


def out_row(out, slot, layout, r, D):  # pragma: no cover - replaced by the overload inside numba
    """Where a backward kernel writes row ``r`` of a gradient.

    A 1-D ``out`` is a full-size gradient: elements ``[r * D, (r + 1) * D)``. A 2-D
    ``out`` ``[REDUCE_TASKS, n_in]`` accumulates the gradient of a broadcast input
    (:func:`._common.grad_outputs`): row ``slot`` (the task's own), read through
    the input's ``layout``, so that every broadcast copy of an input row adds to
    that row. None stays None.
    """
    if out is None:
        return None
    if out.ndim == 1:
        return out[r * D : (r + 1) * D]
    return row(out[slot], layout, r, D)


@overload(out_row, inline="always")
def _out_row_impl(out, slot, layout, r, D):
    if isinstance(out, types.NoneType):
        return lambda out, slot, layout, r, D: None
    if isinstance(out, types.Array) and out.ndim == 1:
        return lambda out, slot, layout, r, D: out[r * D : (r + 1) * D]
    if isinstance(out, types.Array) and out.ndim == 2:
        return lambda out, slot, layout, r, D: row(out[slot], layout, r, D)
    return None


def put(out, o_, j, v):  # pragma: no cover - replaced by the overload inside numba
    """``o_[j] = v`` for a full-size gradient (1-D ``out``), ``o_[j] += v`` for an accumulator (2-D)."""
    if out.ndim == 1:
        o_[j] = v
    else:
        o_[j] += v


@overload(put, inline="always")
def _put_impl(out, o_, j, v):
    if isinstance(out, types.Array) and out.ndim == 2:

        def acc(out, o_, j, v):
            o_[j] += v

        return acc

    def store(out, o_, j, v):
        o_[j] = v

    return store


# --------------------------------------------------------------------------- short rows

#: Rows shorter than this run the chunked kernels: with ``D`` below two AVX2
#: iterations of the unrolled loop (16 float32 lanes) the per-row loop never
#: reaches its vector body and every ``exp`` is scalar (ppca: ``D`` = 3 and 10).
SHORT_ROW = 32

#: Rows per chunk of the short-row kernels (the chunk's elements are one flat,
#: vectorized loop).
CHUNK_ROWS = 512


def chunk_tiled(lay, R: int, D: int, *arrays):
    """``(layout, *arrays)`` reading the same rows as ``arrays`` under ``lay``, gathered once instead of per chunk.

    A short-row kernel gathers, for every chunk, the rows of each input that are
    not consecutive in memory (:func:`rows_flat`). When an input's rows repeat with
    a period that divides CHUNK_ROWS (``outer_stride == 0`` and ``inner`` dividing
    CHUNK_ROWS, or one row for all: ``inner_stride == 0``) every chunk gathers the
    same rows: the data ``x [B, D]`` under a decoder mean ``[S, R, B, D]``, a scalar
    variance expanded everywhere. Such an input is tiled here once into one chunk of
    rows, laid out ``(CHUNK_ROWS, 0, D)``, which each chunk then reads in place.
    Arrays sharing ``lay`` (a log variance and its precomputed exp) are tiled
    together; None stays None. Other inputs, rows of at least SHORT_ROW and calls
    of fewer than two chunks are returned as they are.
    """
    if D >= SHORT_ROW or R < 2 * CHUNK_ROWS:  # first: the training path's small calls return here at once
        return (lay, *arrays)
    inner, so, si = lay[0], lay[1], lay[2]
    if so != 0 or not (si == 0 or CHUNK_ROWS % inner == 0) or all(a is None for a in arrays):
        return (lay, *arrays)
    starts = (np.arange(CHUNK_ROWS, dtype=np.int64) % inner) * si  # where row k of a chunk starts in the input
    idx = (starts[:, None] + np.arange(D, dtype=np.int64)).ravel()
    return (_contiguous(CHUNK_ROWS, D), *(None if a is None else a[idx] for a in arrays))


@njit(inline="always", **JIT_OPTIONS)
def _copy(dst, src):
    # An element loop (vectorized), not slice assignment: numba's array setitem
    # checks for overlap and may copy through a temporary, a cost on every call.
    for t in range(dst.shape[0]):
        dst[t] = src[t]


@njit(**JIT_OPTIONS)
def _gather(a, layout, r0, nr, D, out):
    # Rows r0 .. r0 + nr of `a` under `layout` into `out` (nr * D); a function of its
    # own rather than inlined (numba's inliner mishandles its while loops).
    inner, so, si = layout[0], layout[1], layout[2]
    # By runs of rows within one block of `inner` rows, each run one or a few
    # vectorized copies instead of D scalar copies per row.
    k = 0
    while k < nr:
        r = r0 + k
        q = np.int64((np.uint64(r) * np.uint64(layout[3])) >> np.uint64(layout[4]))
        rem = r - q * inner
        b = q * so + rem * si
        run = min(inner - rem, nr - k)
        if si == D:  # consecutive rows
            _copy(out[k * D : (k + run) * D], a[b : b + run * D])
        elif si == 0:  # the same row repeated: copy it once, then double the filled part
            _copy(out[k * D : (k + 1) * D], a[b : b + D])
            filled = 1
            while filled < run:
                c = min(filled, run - filled)
                _copy(out[(k + filled) * D : (k + filled + c) * D], out[k * D : (k + c) * D])
                filled += c
        else:  # rows a fixed stride apart (a column slice)
            for kk in range(run):
                bb = b + kk * si
                _copy(out[(k + kk) * D : (k + kk + 1) * D], a[bb : bb + D])
        k += run
    return out


def rows_flat(a, layout, r0, nr, D, buf):  # pragma: no cover - replaced by the overload inside numba
    """Rows ``r0 .. r0 + nr`` of ``a`` under ``layout`` as one flat ``nr * D`` array (None stays None).

    A slice of ``a`` when the rows are consecutive in memory (contiguous inputs),
    else gathered into ``buf``.
    """
    if a is None:
        return None
    out = buf[: nr * D]
    for k in range(nr):
        out[k * D : (k + 1) * D] = row(a, layout, r0 + k, D)
    return out


@overload(rows_flat, inline="always")
def _rows_flat_impl(a, layout, r0, nr, D, buf):
    if isinstance(a, types.NoneType):
        return lambda a, layout, r0, nr, D, buf: None
    if isinstance(a, types.Array):

        def impl(a, layout, r0, nr, D, buf):
            q0 = np.int64((np.uint64(r0) * np.uint64(layout[3])) >> np.uint64(layout[4]))
            q1 = np.int64((np.uint64(r0 + nr - 1) * np.uint64(layout[3])) >> np.uint64(layout[4]))
            base = q0 * layout[1] + (r0 - q0 * layout[0]) * layout[2]
            if layout[2] == D and q0 == q1:  # consecutive rows: read in place
                return a[base : base + nr * D]
            return _gather(a, layout, r0, nr, D, buf[: nr * D])

        return impl
    return None


def scratch(like, n):  # pragma: no cover - replaced by the overload inside numba
    """``np.empty(n)`` of ``like``'s dtype, or a 0-length placeholder when ``like`` is None."""
    return None if like is None else np.empty(n, like.dtype)


@overload(scratch, inline="always")
def _scratch_impl(like, n):
    if isinstance(like, types.NoneType):
        return lambda like, n: np.empty(0, np.float32)
    if isinstance(like, types.Array):
        return lambda like, n: np.empty(n, like.dtype)
    return None


# Per-row loops of the short-row chunks. A plain ``for k: for j in range(D)`` over
# rows of D < SHORT_ROW elements is one dependent add (or store) chain per row
# whose inner loop is too short for the vectorizer: each element costs an add's
# latency, not its throughput. Eight rows at a time, each with its own scalar
# accumulator (or value), keep eight independent chains in flight, several times
# faster at D = 3 to 20 (docs/numba-backend.md). Each row is still summed in order
# j = 0 .. D - 1, in the input dtype.


@njit(inline="always", **JIT_OPTIONS)
def sum_rows(t, nr, D, scale, out, o):
    """``out[o + k] = scale * sum_j t[k * D + j]`` for the ``nr`` rows of the flat ``t``, cast to ``out``'s dtype."""
    q8 = nr // 8
    for q in range(q8):
        b = t[q * 8 * D : (q + 1) * 8 * D]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = cst(t, 0.0)
        for j in range(D):
            a0 += b[j]
            a1 += b[D + j]
            a2 += b[2 * D + j]
            a3 += b[3 * D + j]
            a4 += b[4 * D + j]
            a5 += b[5 * D + j]
            a6 += b[6 * D + j]
            a7 += b[7 * D + j]
        d = out[o + q * 8 : o + q * 8 + 8]
        d[0] = cst(out, scale * a0)
        d[1] = cst(out, scale * a1)
        d[2] = cst(out, scale * a2)
        d[3] = cst(out, scale * a3)
        d[4] = cst(out, scale * a4)
        d[5] = cst(out, scale * a5)
        d[6] = cst(out, scale * a6)
        d[7] = cst(out, scale * a7)
    for k in range(q8 * 8, nr):
        acc = cst(t, 0.0)
        for j in range(k * D, (k + 1) * D):
            acc += t[j]
        out[o + k] = cst(out, scale * acc)


@njit(inline="always", **JIT_OPTIONS)
def spread_rows(g, o, nr, D, gs):
    """``gs[k * D + j] = g[o + k]``: the value of each of ``nr`` rows over its ``D`` elements."""
    if D == 1:
        for k in range(nr):
            gs[k] = g[o + k]
        return gs
    q8 = nr // 8
    for q in range(q8):
        b = gs[q * 8 * D : (q + 1) * 8 * D]
        v = g[o + q * 8 : o + q * 8 + 8]
        v0, v1, v2, v3, v4, v5, v6, v7 = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        for j in range(D):
            b[j] = v0
            b[D + j] = v1
            b[2 * D + j] = v2
            b[3 * D + j] = v3
            b[4 * D + j] = v4
            b[5 * D + j] = v5
            b[6 * D + j] = v6
            b[7 * D + j] = v7
    for k in range(q8 * 8, nr):
        vk = g[o + k]
        for j in range(k * D, (k + 1) * D):
            gs[j] = vk
    return gs
