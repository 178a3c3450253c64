"""A reuse pool for the numba backend's new outputs (numpy arrays wrapped by ``torch.from_numpy``).

Why. A new output of ``n`` bytes comes from glibc's ``malloc``. Above the mmap
threshold (128 KiB, raised dynamically up to 32 MiB on 64-bit) each allocation
is a fresh mapping, unmapped again on free; below it, a freed block at the top
of the heap is returned to the kernel once more than ``M_TRIM_THRESHOLD``
(128 KiB, twice the dynamic mmap threshold) lies free there (glibc ``mallopt(3)``,
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``). Either way a training step that
allocates the same outputs again page-faults them back in and the kernel
zero-fills them: ``strace`` of ``normal_log_prob`` forward+backward at
[256, 1024] shows the heap grown by two 1 MiB ``brk`` calls and trimmed by 2 MiB
again on every step. Handing a freed buffer out again skips all of it, which
makes large forward+backward calls markedly faster (see
``docs/measurements/output-pool-amd-epyc.md``).

When a buffer is free. ``torch.from_numpy`` keeps a reference to the array for
the lifetime of the tensor's storage, which every view shares (torch docs:
"the returned tensor and ndarray share the same memory"); a numpy view holds
its base; ``Tensor.numpy()`` and DLPack hold the tensor. So while any tensor,
view or array uses a buffer its reference count (``sys.getrefcount``) is above
the count the pool's own bookkeeping gives it, and a buffer whose count is
exactly that is used by nothing and is handed out again. That count is
calibrated at import through the same function the pool checks with, so it
holds on any CPython version. A reference cycle that keeps a dead tensor
alive until the garbage collector runs only keeps its buffer out of reuse
longer. Free-threaded builds (no GIL), where counts seen from another thread
can lag, bypass the pool.

One thing no count can see: ``Tensor.share_memory_()`` moves a tensor's data
to shared memory and drops the storage's reference to the old buffer, so a
``.numpy()`` or DLPack alias taken *before* it points at memory the pool then
hands out again (without the pool the same alias points at freed memory).
Take such aliases after ``share_memory_()``, or from a clone.

Bounds. Only outputs of at least :data:`MIN_BYTES` go through the pool; the
bytes it tracks (in use and free) stay under a cap, ``ELBOBENCH_NUMBA_POOL_MB``
(default 512, read at import; 0 turns the pool off): a request that would pass
it first drops the least recently used free buffers, and is served by a plain
``np.empty`` if that does not make room. :func:`release` drops every free buffer.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

#: Outputs smaller than this come from ``np.empty`` (glibc's heap serves them from memory it keeps).
MIN_BYTES = 128 << 10

#: Default cap on the bytes the pool tracks, in MiB.
DEFAULT_CAP_MB = 512

ENV_VAR = "ELBOBENCH_NUMBA_POOL_MB"


def _cap_from_env() -> int:
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw.strip() == "":
        return DEFAULT_CAP_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not (mb >= 0 and math.isfinite(mb)):
        raise ValueError(f"{ENV_VAR} must be a finite number of MiB >= 0 (0 turns the pool off), got {raw!r}")
    return int(mb * (1 << 20))


class _Entry:
    __slots__ = ("array", "stamp")

    def __init__(self, array: np.ndarray, stamp: int):
        self.array = array
        self.stamp = stamp


def _refs(entry: _Entry) -> int:
    """The reference count of ``entry``'s array as the pool sees it (the one place it is read)."""
    return sys.getrefcount(entry.array)


#: The count :func:`_refs` gives an array that only its pool entry holds.
IDLE_REFS = _refs(_Entry(np.empty(1), 0))


class BufferPool:
    """Flat numpy buffers by ``(dtype, numel)``, handed out again once nothing refers to them.

    Args:
        cap_bytes: the most bytes the pool tracks, in use and free (0: off).
        min_bytes: smaller requests are not pooled.
    """

    def __init__(self, cap_bytes: int, min_bytes: int = MIN_BYTES):
        self.cap_bytes = int(cap_bytes)
        self.min_bytes = int(min_bytes)
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        self.enabled = self.cap_bytes > 0 and gil
        self._lock = threading.Lock()
        self._buffers: dict[tuple[str, int], list[_Entry]] = {}
        self._tracked = 0
        self._clock = 0
        self.hits = 0
        self.misses = 0

    def take(self, n: int, dtype) -> np.ndarray:
        """A flat array of ``n`` elements of ``dtype``, uninitialised (as ``np.empty``)."""
        dtype = np.dtype(dtype)
        nbytes = n * dtype.itemsize
        if not self.enabled or nbytes < self.min_bytes:
            return np.empty(n, dtype)
        key = (dtype.str, n)
        with self._lock:
            self._clock += 1
            for e in self._buffers.get(key, ()):
                if _refs(e) == IDLE_REFS:
                    e.stamp = self._clock
                    self.hits += 1
                    return e.array
            self.misses += 1
            if self._tracked + nbytes > self.cap_bytes:
                need = self._tracked + nbytes - self.cap_bytes
                if self._free_bytes() < need:
                    return np.empty(n, dtype)  # no room even without the free buffers: an untracked one
                self._evict(need)
            a = np.empty(n, dtype)
            self._buffers.setdefault(key, []).append(_Entry(a, self._clock))
            self._tracked += nbytes
            return a

    def _free_bytes(self) -> int:
        return sum(e.array.nbytes for v in self._buffers.values() for e in v if _refs(e) == IDLE_REFS)

    def _evict(self, need: int) -> int:
        """Drop free buffers, least recently used first, until ``need`` bytes are freed; return the bytes freed."""
        idle = sorted(
            ((e.stamp, key, e) for key, entries in self._buffers.items() for e in entries if _refs(e) == IDLE_REFS),
            key=lambda t: t[0],
        )
        freed = 0
        for _, key, e in idle:
            if freed >= need:
                break
            entries = self._buffers[key]
            entries.remove(e)
            if not entries:
                del self._buffers[key]
            freed += e.array.nbytes
        self._tracked -= freed
        return freed

    def release(self) -> int:
        """Drop every free buffer; return the bytes released (buffers in use stay tracked)."""
        with self._lock:
            return self._evict(self._tracked)

    def info(self) -> dict:
        """``enabled``, ``cap_bytes``, ``tracked_bytes``, ``free_bytes``, ``buffers``, ``hits``, ``misses``."""
        with self._lock:
            return {
                "enabled": self.enabled,
                "cap_bytes": self.cap_bytes,
                "tracked_bytes": self._tracked,
                "free_bytes": self._free_bytes(),
                "buffers": sum(len(v) for v in self._buffers.values()),
                "hits": self.hits,
                "misses": self.misses,
            }


#: The pool every numba output comes from.
POOL = BufferPool(_cap_from_env())


def release() -> int:
    """Drop the pool's free buffers (see :class:`BufferPool`); return the bytes released."""
    return POOL.release()


def info() -> dict:
    """The pool's state (see :meth:`BufferPool.info`)."""
    return POOL.info()
