"""The numba kernels' speed targets over several runs: float32, medians, ratios taken within each run.

Each run times every op x backend x pass at the issue's sizes
(:func:`bench.measure.kernel_speed.kernel_speed`), each cell's backends and a copy of
the same size in rounds (one call of each per round, in balanced orders, each
backend on its own copy of the inputs), so that every
ratio compares calls made in the same seconds of a shared machine; ``--sequential``
times them one backend after the other instead. Each run is written to ``OUT/run-<k>.csv``
as soon as it finishes, so an interrupted session keeps the runs it completed
and ``--resume`` carries on from there. The summary table (numba against torch
eager, ``torch.compile`` and the same run's copy bandwidth) of the last run and
the targets table (:func:`bench.measure.kernel_speed.targets`: each ratio's median over
the runs, and in how many runs it was met) are printed and written to
``OUT/summary.csv`` and ``OUT/targets.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numba
import pandas as pd
import torch

from bench.cli.options import add_series_arguments
from bench.measure.kernel_speed import kernel_speed, summary
from bench.measure.targets import KERNEL_TARGETS, targets
from bench.results import run_series

SIZES = ((1024, 256), (4096, 1024), (16384, 1024))

EXAMPLES = """examples:
  python scripts/kernel_targets.py                       # 3 runs of 15 repeats into reports/kernel_targets
  python scripts/kernel_targets.py --runs 5 --out /tmp/kt
  python scripts/kernel_targets.py --out /tmp/kt --runs 5 --resume   # continue after an interruption
  python scripts/kernel_targets.py --out /tmp/kt --evaluate          # only re-read the runs and print
  python scripts/kernel_targets.py --sequential --out /tmp/kt-seq    # backends one after the other
"""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kernel_targets.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_series_arguments(p, "reports/kernel_targets")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="time each backend's repeats one after the other, and the copy once per size, as before "
        "interleaving (default: every cell's backends and a same-size copy in balanced rounds)",
    )
    return p.parse_args(argv)


def interleaved(run: pd.DataFrame) -> bool:
    """Whether a run's cells were timed in rounds (``kernel_speed(interleave=True)``); runs from before it were not."""
    if "config" not in run or run.empty:
        return False
    return any(json.loads(c).get("interleaved", False) for c in run["config"].dropna())


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out: Path = args.out

    def measure() -> pd.DataFrame:
        print(f"torch threads {torch.get_num_threads()}, numba threads {numba.get_num_threads()}", flush=True)
        return kernel_speed(
            sizes=SIZES,
            passes=("forward", "backward", "forward_backward"),
            repeats=args.repeats,
            interleave=not args.sequential,
        )

    if args.resume:
        mixed = [p.name for p in sorted(out.glob("run-*.csv")) if interleaved(pd.read_csv(p)) == args.sequential]
        if mixed:
            how = "sequential" if args.sequential else "interleaved"
            print(f"kernel_targets.py: --resume would add {how} runs to runs timed the other way ({', '.join(mixed)} "
                  f"in {out}); {'drop' if args.sequential else 'pass'} --sequential, or use another --out", file=sys.stderr)  # fmt: skip
            return 2
    runs = run_series("kernel_targets.py", out, args.runs, measure, resume=args.resume, evaluate=args.evaluate)
    if runs is None:
        return 2
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 60)
    last = summary(runs[-1])
    last.to_csv(out / "summary.csv", index=False)
    table = targets(runs, KERNEL_TARGETS)
    table.to_csv(out / "targets.csv", index=False)
    print(f"\nlast run ({len(runs)} in {out}):")
    print(last.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\ntargets (median over {len(runs)} runs of each same-run ratio):")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
