"""The foundation issue's kernel speed targets over several runs: float32, medians, ratios taken within each run.

Each run times every op x backend x pass at the issue's sizes
(:func:`bench.kernel_speed.kernel_speed`) and is written to ``OUT/run-<k>.csv``
as soon as it finishes, so an interrupted session keeps the runs it completed
and ``--resume`` carries on from there. The summary table (numba against torch
eager, ``torch.compile`` and the same run's copy bandwidth) of the last run and
the targets table (:func:`bench.kernel_speed.targets`: each ratio's median over
the runs, and in how many runs it was met) are printed and written to
``OUT/summary.csv`` and ``OUT/targets.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import pandas as pd
import torch

from bench.kernel_speed import ISSUE2_TARGETS, kernel_speed, summary, targets
from bench.options import positive_int

SIZES = ((1024, 256), (4096, 1024), (16384, 1024))

EXAMPLES = """examples:
  python scripts/kernel_targets.py                       # 3 runs of 15 repeats into reports/kernel_targets
  python scripts/kernel_targets.py --runs 5 --out /tmp/kt
  python scripts/kernel_targets.py --out /tmp/kt --runs 5 --resume   # continue after an interruption
  python scripts/kernel_targets.py --out /tmp/kt --evaluate          # only re-read the runs and print
"""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kernel_targets.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=positive_int, default=3, help="how many runs (default 3)")
    p.add_argument("--repeats", type=positive_int, default=15, help="timed calls per cell and run (default 15)")
    p.add_argument("--out", type=Path, default=Path("reports/kernel_targets"), help="directory of the run CSVs")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep the runs already in --out, run the rest")
    mode.add_argument("--evaluate", action="store_true", help="run nothing: evaluate the runs already in --out")
    return p.parse_args(argv)


def _free_path(out: Path) -> Path:
    """``out/run-<k>.csv`` for the smallest k not taken (a run deleted by hand leaves a gap)."""
    k = 0
    while (out / f"run-{k}.csv").exists():
        k += 1
    return out / f"run-{k}.csv"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out: Path = args.out
    done = sorted(out.glob("run-*.csv"))
    if done and not (args.resume or args.evaluate):
        print(f"kernel_targets.py: --out {out} already holds {len(done)} run(s); pass --resume to keep them "
              "and run the rest, --evaluate to only read them, or another --out", file=sys.stderr)  # fmt: skip
        return 2
    if args.evaluate and not done:
        print(f"kernel_targets.py: --evaluate found no run-*.csv in {out}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, numba threads {numba.get_num_threads()}", flush=True)
    k = len(done)
    while not args.evaluate and k < args.runs:
        t0 = time.perf_counter()
        df = kernel_speed(sizes=SIZES, passes=("forward", "backward", "forward_backward"), repeats=args.repeats)
        path = _free_path(out)
        df.to_csv(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").replace(path)  # a run is there whole or not at all
        k += 1
        print(f"run {k}/{args.runs} written to {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = [pd.read_csv(p) for p in sorted(out.glob("run-*.csv"))]
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 60)
    last = summary(runs[-1])
    last.to_csv(out / "summary.csv", index=False)
    table = targets(runs, ISSUE2_TARGETS)
    table.to_csv(out / "targets.csv", index=False)
    print(f"\nlast run ({len(runs)} in {out}):")
    print(last.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\ntargets (median over {len(runs)} runs of each same-run ratio):")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
