"""Speed targets of the numba kernels, evaluated over several runs of the kernel benchmark.

A :class:`Target` holds a column of :func:`bench.measure.kernel_speed.summary`
(a ratio taken within one run: numba over torch eager, ``torch.compile`` or a
same-size copy) to a threshold; :func:`targets` takes its median over runs.
``scripts/kernel_targets.py`` runs the series and prints the table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pandas as pd

from bench.measure.kernel_speed import DEFAULT_OPS, PASSES, summary
from bench.results import size_numel

__all__ = ["KERNEL_TARGETS", "Target", "targets"]


@dataclasses.dataclass(frozen=True)
class Target:
    """One speed target on :func:`summary` columns: ``column >= threshold`` for every matching cell.

    ``ops``/``passes``: which rows; ``sizes``: which sizes (None: every size in the
    data with at least ``min_elements`` elements). A target over several cells
    holds when its lowest cell does, so its value is the lowest cell's median.
    """

    name: str
    ops: tuple[str, ...]
    passes: tuple[str, ...]
    column: str
    threshold: float
    sizes: tuple[str, ...] | None = None
    min_elements: int = 0


_LOG_PROBS = ("normal_log_prob", "bernoulli_log_prob")

#: The numba kernels' speed targets, float32 on a 2-core CPU. The log-probs'
#: 0.8x-of-copy target applies where the op is bandwidth-bound:
#: normal_log_prob (one exp per element, like the Gaussian ops), not
#: bernoulli_log_prob (an exp and a log1p per element forward, an exp and a
#: division backward: compute-bound on 2 cores).
KERNEL_TARGETS: tuple[Target, ...] = (
    Target("rsample_kl fwd >= 1.5x torch.compile", ("normal_rsample_kl",), ("forward",), "speedup_vs_torch_compile", 1.5, ("4096x1024",)),
    Target("rsample_kl fwd >= 10x torch eager", ("normal_rsample_kl",), ("forward",), "speedup_vs_torch", 10.0, ("4096x1024",)),
    Target("rsample_kl fwd >= 0.8x copy", ("normal_rsample_kl",), ("forward",), "numba_frac_of_copy", 0.8, ("16384x1024",)),
    Target("rsample_kl fwd+bwd >= 1.2x torch.compile", ("normal_rsample_kl",), ("forward_backward",), "speedup_vs_torch_compile", 1.2, ("4096x1024", "16384x1024")),
    Target("rsample_kl bwd kernel >= 0.8x copy", ("normal_rsample_kl",), ("backward",), "numba_frac_of_copy", 0.8, ("4096x1024", "16384x1024")),
    Target("log-probs fwd, fwd+bwd >= 1.0x torch.compile", _LOG_PROBS, ("forward", "forward_backward"), "speedup_vs_torch_compile", 1.0),
    Target("normal_log_prob fwd, fwd+bwd >= 0.8x copy", ("normal_log_prob",), ("forward", "forward_backward"), "numba_frac_of_copy", 0.8, ("4096x1024", "16384x1024")),
    Target("no numba op slower than eager from [1024, 256] up", DEFAULT_OPS, PASSES, "speedup_vs_torch", 1.0, None, 1024 * 256),
)  # fmt: skip


def targets(runs: Sequence[pd.DataFrame], goals: Sequence[Target] = KERNEL_TARGETS) -> pd.DataFrame:
    """Evaluate speed targets over one or more runs of :func:`kernel_speed`.

    Every ratio is taken inside one run (numba against the baselines and the
    copy measured in that run), then its median over the runs is what a target
    is held to: a shared machine's bandwidth moves between runs, and a ratio of
    same-run medians is what stays comparable.

    Returns one row per target: ``target``, ``threshold``, ``cell`` (the
    op/pass/size of its lowest median), ``median`` (that cell's median over the
    runs), ``runs`` (its per-run values), ``met`` (median >= threshold),
    ``runs_met`` (in how many runs that cell met it, ``"k/N"``) and ``cells``
    (how many cells the target covers). A target with no matching cell in the
    data has ``met`` None.
    """
    if not runs:
        raise ValueError("targets: runs is empty; expected at least one kernel_speed DataFrame")
    tables = []
    for i, df in enumerate(runs):
        s = summary(df)
        s["run"] = i
        tables.append(s)
    allruns = pd.concat(tables, ignore_index=True)
    out = []
    for goal in goals:
        sel = allruns[allruns["op"].isin(goal.ops) & allruns["pass"].isin(goal.passes)]
        if goal.sizes is not None:
            sel = sel[sel["size"].isin(goal.sizes)]
        sel = sel[sel["size"].map(size_numel) >= goal.min_elements]
        row = {"target": goal.name, "threshold": goal.threshold, "cell": None, "median": math.nan, "runs": [],
               "met": None, "runs_met": f"0/{len(runs)}", "cells": 0}  # fmt: skip
        if goal.column in sel and sel[goal.column].notna().any():
            sel = sel[sel[goal.column].notna()]
            cells = sel.groupby(["op", "pass", "size"], sort=False)[goal.column]
            med = cells.median()
            (op, pass_, size) = med.idxmin()
            values = cells.get_group((op, pass_, size)).tolist()
            row.update(
                cell=f"{op}:{pass_} {size}",
                median=float(med.min()),
                runs=[round(float(v), 3) for v in values],
                met=bool(med.min() >= goal.threshold),
                runs_met=f"{sum(v >= goal.threshold for v in values)}/{len(values)}",
                cells=len(med),
            )
        out.append(row)
    return pd.DataFrame(out)
