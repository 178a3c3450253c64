"""Is a numba kernel compute-bound or bandwidth-bound here? Time per element against size and thread count.

:func:`bench.measure.kernel_speed.kernel_speed` holds each op to a copy of the same
``[R, D]`` shape. That copy moves ``2 R D`` elements, while the fused ops move
2-6 times as many (see :data:`bench.measure.kernel_speed.BYTE_MODEL`), so the copy can
sit in the last-level cache where the op cannot, and a ratio below 1 does not by
itself say whether the op is held back by memory or by its arithmetic. Two
measurements tell them apart (the roofline reasoning of S. Williams, A. Waterman,
D. Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 52(4), 2009):

* **time per element against size.** A bandwidth-bound kernel gets slower per
  element once its working set leaves the cache; a compute-bound one takes the
  same time per element from a cache-resident size up to DRAM sizes.
  ``ns_vs_smallest`` is a cell's ns per element over that of the smallest size
  measured, at the same thread count.
* **time against threads.** Compute scales with cores; a memory stream that
  already saturates the memory system does not. ``thread_speedup`` is the
  time at one thread over the time at the most threads measured.

Next to them, ``copy_GBps`` is a ``Tensor.copy_`` that moves as many bytes as
the op's byte model (half read, half written), so it has the op's footprint,
and ``frac_of_copy`` the op's GB/s (at the most threads) over it.

Every cell is the numba launcher with preallocated outputs (as the ``forward``
and ``backward`` rows of :func:`~bench.measure.kernel_speed.kernel_speed`), timed at
each thread count in turn, ``numba.set_num_threads`` restored afterwards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from bench.measure.kernel_speed import (
    BYTE_MODEL,
    DEFAULT_OPS,
    _make_inputs,
    _preallocated,
    _upstream,
    op_bytes,
)
from bench.measure.timing import quantile, time_call
from bench.results import size_numel

__all__ = ["SCALING_PASSES", "SCALING_SIZES", "kernel_scaling", "scaling_figure", "scaling_summary"]

#: From 1 MiB per float32 input (cache-resident on most server CPUs' L3) to 64 MiB (DRAM).
SCALING_SIZES = ((256, 1024), (1024, 1024), (4096, 1024), (16384, 1024))
SCALING_PASSES = ("forward", "backward")


def _max_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def kernel_scaling(
    sizes: Sequence[Sequence[int]] = SCALING_SIZES,
    ops: Sequence[str] = DEFAULT_OPS,
    threads: Sequence[int] | None = None,
    passes: Sequence[str] = SCALING_PASSES,
    repeats: int = 15,
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Time the numba kernels per op, pass, size and numba thread count.

    Args:
        sizes: ``[(R, D), ...]`` input shapes.
        ops: ops of :data:`bench.measure.kernel_speed.DEFAULT_OPS`.
        threads: numba thread counts, each in ``1 .. numba.config.NUMBA_NUM_THREADS``;
            default ``(1, NUMBA_NUM_THREADS)`` (just ``(1,)`` on one core).
        passes: ``"forward"`` and/or ``"backward"`` (the fused kernels alone).
        repeats: timed calls per cell (after 2 warm-up calls).
        dtype: ``torch.float32`` or ``torch.float64``.
        seed: seed of the random inputs.

    Returns:
        One row per (op, pass, size, threads): ``op``, ``pass``, ``size``
        (``"RxD"``), ``threads``, ``ms`` (median), ``p20_ms``, ``p80_ms``,
        ``ns_per_element`` (median over ``R D``), ``bytes`` (byte model),
        ``GBps`` (bytes / median) and ``copy_GBps`` (the same-footprint copy,
        measured once per byte count at torch's thread count).
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    ops, passes = list(dict.fromkeys(ops)), list(dict.fromkeys(passes))
    bad = [o for o in ops if o not in DEFAULT_OPS]
    if bad or not ops:
        raise ValueError(f"ops must be a non-empty subset of {list(DEFAULT_OPS)}, got {ops}")
    bad = [p for p in passes if p not in SCALING_PASSES]
    if bad or not passes:
        raise ValueError(f"passes must be a non-empty subset of {list(SCALING_PASSES)}, got {passes}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def pair(s) -> bool:
        return (
            isinstance(s, Sequence)
            and len(s) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)
        )

    sizes = list(sizes)
    if not sizes or not all(pair(s) for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of (rows, cols) pairs of positive ints, got {sizes}")
    sizes = list(dict.fromkeys(tuple(s) for s in sizes))
    top = _max_threads()
    threads = ((1, top) if top > 1 else (1,)) if threads is None else tuple(dict.fromkeys(threads))
    if not threads or any(not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= top for t in threads):
        raise ValueError(f"threads must be ints in 1..{top} (numba.config.NUMBA_NUM_THREADS), got {list(threads)}")
    import numba

    itemsize = torch.empty((), dtype=dtype).element_size()
    copies: dict[int, float] = {}

    def copy_gbps(nbytes: int) -> float:
        if nbytes not in copies:
            n = max(1, nbytes // (2 * itemsize))
            src = torch.randn(n).to(dtype)
            dst = torch.empty_like(src)
            ts = time_call(lambda: dst.copy_(src), repeats=repeats)
            copies[nbytes] = 2 * n * itemsize / quantile(ts, 0.5) / 1e9
        return copies[nbytes]

    rows = []
    before = numba.get_num_threads()
    try:
        for R, D in sizes:
            for op in ops:
                inputs = _make_inputs(op, R, D, dtype, seed)
                ups = _upstream(op, R, D, dtype, seed)
                fwd, bwd = _preallocated(op, "numba", inputs, ups)
                for pass_ in passes:
                    fn = fwd if pass_ == "forward" else bwd
                    nb = op_bytes(op, R, D, itemsize, pass_)
                    ref = copy_gbps(nb)
                    for t in threads:
                        numba.set_num_threads(t)
                        ts = time_call(fn, repeats=repeats)
                        med = quantile(ts, 0.5)
                        rows.append(
                            {
                                "op": op,
                                "pass": pass_,
                                "size": f"{R}x{D}",
                                "threads": t,
                                "ms": med * 1e3,
                                "p20_ms": quantile(ts, 0.2) * 1e3,
                                "p80_ms": quantile(ts, 0.8) * 1e3,
                                "ns_per_element": med / (R * D) * 1e9,
                                "bytes": nb,
                                "GBps": nb / med / 1e9,
                                "copy_GBps": ref,
                            }
                        )
    finally:
        numba.set_num_threads(before)
    return pd.DataFrame(rows)


def scaling_summary(runs: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per (op, pass, size): medians over the runs of each run's values.

    Columns: ``ns[<t>t]`` (ns per element at ``t`` threads), ``thread_speedup``
    (time at the fewest threads over time at the most), ``ns_vs_smallest``
    (ns per element at the most threads over the smallest size's, same op and
    pass), ``GBps`` (at the most threads), ``copy_GBps`` (same footprint) and
    ``frac_of_copy`` (their ratio). Every ratio is taken inside one run first.
    """
    if not runs:
        raise ValueError("scaling_summary: runs is empty; expected at least one kernel_scaling DataFrame")
    keys = ["op", "pass", "size"]
    per_run = []
    for i, df in enumerate(runs):
        need = {*keys, "threads", "ns_per_element", "GBps", "copy_GBps"}
        missing = need - set(df.columns)
        if missing:
            raise ValueError(
                f"scaling_summary: run {i} lacks columns {sorted(missing)}; expected kernel_scaling output"
            )
        counts = sorted(set(df["threads"]))
        if i == 0:
            first = counts
        elif counts != first:
            raise ValueError(
                f"scaling_summary: run {i} has threads {counts}, run 0 has {first}; expected the same in every run"
            )
        if df.duplicated([*keys, "threads"]).any():
            cell = df.loc[df.duplicated([*keys, "threads"]), [*keys, "threads"]].iloc[0].tolist()
            raise ValueError(f"scaling_summary: run {i} has cell {cell} more than once; expected one row per cell")
        lo, hi = counts[0], counts[-1]
        wide = df.pivot_table(index=keys, columns="threads", values="ns_per_element", aggfunc="median")
        out = pd.DataFrame({f"ns[{t}t]": wide[t] for t in sorted(wide.columns)})
        out["thread_speedup"] = wide[lo] / wide[hi] if hi != lo else math.nan
        top = df[df["threads"] == hi].set_index(keys)
        out["GBps"] = top["GBps"]
        out["copy_GBps"] = top["copy_GBps"]
        out["frac_of_copy"] = out["GBps"] / out["copy_GBps"]
        out = out.reset_index()
        by_size = out.assign(_n=out["size"].map(size_numel)).sort_values("_n")
        smallest = by_size.groupby(["op", "pass"])[f"ns[{hi}t]"].transform("first")
        out["ns_vs_smallest"] = out[f"ns[{hi}t]"] / smallest  # aligned on the index
        out["run"] = i
        per_run.append(out)
    allruns = pd.concat(per_run, ignore_index=True)
    cols = [c for c in allruns.columns if c not in (*keys, "run")]
    med = allruns.groupby(keys, sort=False)[cols].median().reset_index()
    med["runs"] = len(runs)
    rank = {op: i for i, op in enumerate(BYTE_MODEL)}
    passes = {p: i for i, p in enumerate(SCALING_PASSES)}
    med = med.assign(_o=med["op"].map(rank), _p=med["pass"].map(passes), _n=med["size"].map(size_numel))
    med = med.sort_values(["_o", "_p", "_n"]).drop(columns=["_o", "_p", "_n"])
    return med.reset_index(drop=True)


def scaling_figure(summary: pd.DataFrame, path: str | Path) -> Path:
    """Draw :func:`scaling_summary` as GB/s against size: one line per thread count, the copy dashed.

    One panel per op and pass. A compute-bound kernel is a flat line below the
    copy at the cache-resident sizes; a bandwidth-bound one follows the copy
    down. Written to ``path`` (its suffix picks the format, e.g. ``.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    if summary.empty:
        raise ValueError("scaling_figure: summary is empty; expected scaling_summary output")
    cols = sorted((c for c in summary.columns if re.fullmatch(r"ns\[\d+t\]", c)), key=lambda c: int(c[3:-2]))
    if not cols or not {"op", "pass", "size", "GBps", "copy_GBps"} <= set(summary.columns):
        raise ValueError(f"scaling_figure: expected scaling_summary columns, got {list(summary.columns)}")
    top = cols[-1]
    d = summary.assign(numel=summary["size"].map(size_numel))
    ops = list(dict.fromkeys(d["op"]))
    passes = list(dict.fromkeys(d["pass"]))
    sns.set_theme(style="whitegrid", palette="colorblind")
    colors = sns.color_palette("colorblind", len(cols))
    fig, axes = plt.subplots(
        len(passes), len(ops), figsize=(3.2 * len(ops), 2.8 * len(passes)), squeeze=False, sharex=True
    )
    for i, pass_ in enumerate(passes):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            sub = d[(d["op"] == op) & (d["pass"] == pass_)].sort_values("numel")
            if sub.empty:
                ax.set_visible(False)
                continue
            for c, color in zip(cols, colors, strict=True):
                ax.plot(
                    sub["numel"], sub["GBps"] * sub[top] / sub[c], marker="o", color=color, label=f"{c[3:-2]} thread(s)"
                )
            ax.plot(sub["numel"], sub["copy_GBps"], ls="--", color="black", label="copy, same bytes")
            ax.set_xscale("log")
            ax.set_xticks(sub["numel"], sub["size"], rotation=30, ha="right")
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.set_title(f"{op} · {pass_}", fontsize=9)
            if j == 0:
                ax.set_ylabel("GB/s (byte model)")
    handles, labels = next(a for row in axes for a in row if a.get_visible()).get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle("numba kernels: throughput against size and threads (preallocated outputs, medians)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
