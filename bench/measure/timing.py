"""The one timer and the one quantile rule of every timing in the suite.

Every timing (estimator and training throughput, kernel speed and scaling, the
GPU kernels, the pytest-benchmark suite where it times by hand) goes through
:func:`time_call` (one callable) or :func:`time_round_robin` (several, interleaved),
and every p20/p50/p80 is :func:`quantile`: numpy's linear interpolation between
order statistics (``numpy.quantile(..., method="linear")``; Hyndman & Fan 1996,
definition 7).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["balanced_orders", "quantile", "quantiles", "time_call", "time_round_robin"]


def quantile(ts: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``ts`` by linear interpolation (numpy's default); NaN for no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    if len(ts) == 0:
        return math.nan
    return float(np.quantile(np.asarray(ts, dtype=np.float64), q, method="linear"))


def quantiles(ts: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """``{"p20", "p50", "p80"}`` of ``ts`` (times ``scale``, e.g. 1e3 for seconds to ms)."""
    return {f"p{round(100 * q)}": quantile(ts, q) * scale for q in (0.2, 0.5, 0.8)}


def time_call(
    fn: Callable[[], object],
    *,
    repeats: int = 20,
    warmup: int = 2,
    min_time: float = 0.0,
    sync: Callable[[], object] | None = None,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed ones.

    Args:
        fn: the call to time.
        repeats: timed calls (at least).
        warmup: untimed calls first (compilation, allocation, caches).
        min_time: keep timing until this many seconds have passed as well.
        sync: called after ``fn()`` inside the timed interval (and before it,
            outside), for asynchronous devices (``torch.cuda.synchronize``).
        setup: called before each timed call, outside the timed interval (for
            example, a cache flush).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    out: list[float] = []
    t_start = time.perf_counter()
    while len(out) < repeats or (time.perf_counter() - t_start) < min_time:
        if setup is not None:
            setup()
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``range(n)`` in which every item runs right after every other one equally often.

    A Williams design (Williams, 1949, "Experimental designs balanced for the
    estimation of residual effects of treatments", Aust. J. Sci. Res. A 2): the
    first order is ``0, 1, n-1, 2, n-2, ...``, order ``i`` adds ``i`` to it modulo
    ``n``; for odd ``n`` the reversed orders follow. Within one order, each item
    follows each other item once over the ``n`` orders (``n`` even) or twice over
    the ``2 n`` orders (``n`` odd). A plain rotation would not do that: with four
    callables, one of them runs after the same neighbour in three rounds of four.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    orders = [[(v + i) % n for v in first] for i in range(n)]
    if n % 2:
        orders += [o[::-1] for o in orders]
    return orders


def time_round_robin(
    fns: dict[str, Callable], *, repeats: int, warmup: int = 2, around: Callable | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name]()``, timed in rounds: one call of each per round, in balanced orders.

    Timing one callable's repeats after another's lets a burst of load on a shared
    machine (another tenant's memory traffic) land on one of them only; in rounds
    it hits all of them alike (as :func:`bench.measure.train.lockstep_throughput` does for
    whole trainings). The rounds take their orders from :func:`balanced_orders`, so
    no callable always runs right after the same neighbour (whose writes it would
    find in cache, or whose evictions it would pay for). What a call finds in cache
    is then whatever the other callables left: give each its own inputs when they
    should not warm each other's. ``around(name)``, when given, is a context
    manager entered around each of ``name``'s calls (``kernels.use_backend``, say),
    outside the timed interval.
    """
    names = list(fns)
    if not names:
        return {}
    enter = around if around is not None else (lambda _name: contextlib.nullcontext())
    for name in names:
        with enter(name):
            for _ in range(warmup):
                fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    orders = balanced_orders(len(names))
    for i in range(repeats):
        for k in orders[i % len(orders)]:
            name = names[k]
            with enter(name):
                t0 = time.perf_counter()
                fns[name]()
                out[name].append(time.perf_counter() - t0)
    return out
