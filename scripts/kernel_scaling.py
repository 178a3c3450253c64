"""Compute-bound or bandwidth-bound? The numba kernels' time per element against size and thread count.

Each run times every op's fused forward and backward kernel (preallocated
outputs) at each size and numba thread count, next to a copy that moves as many
bytes as the op (:func:`bench.measure.kernel_scaling.kernel_scaling`), and is written to
``OUT/run-<k>.csv`` as soon as it finishes, so an interrupted session keeps the
runs it completed and ``--resume`` carries on from there. The medians over the
runs (:func:`bench.measure.kernel_scaling.scaling_summary`) are printed and written to
``OUT/summary.csv``, drawn in ``OUT/scaling.png``. A compute-bound kernel keeps its ns per element from the
smallest size to the largest (``ns_vs_smallest`` near 1) and speeds up with
threads; a bandwidth-bound one slows per element once it leaves the cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.cli.options import add_series_arguments, parse_ints, parse_list, parse_sizes
from bench.measure.kernel_scaling import SCALING_PASSES, SCALING_SIZES, kernel_scaling, scaling_figure, scaling_summary
from bench.measure.kernel_speed import DEFAULT_OPS
from bench.results import run_series

EXAMPLES = """examples:
  python scripts/kernel_scaling.py                                # 3 runs into reports/kernel_scaling
  python scripts/kernel_scaling.py --ops normal_log_prob --passes forward --threads 1,2 --out /tmp/ks
  python scripts/kernel_scaling.py --sizes 256x1024,16384x1024 --runs 5 --out /tmp/ks
  python scripts/kernel_scaling.py --out /tmp/ks --runs 5 --resume   # continue after an interruption
  python scripts/kernel_scaling.py --out /tmp/ks --evaluate          # only re-read the runs and print
"""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kernel_scaling.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_sizes = ",".join(f"{r}x{d}" for r, d in SCALING_SIZES)
    p.add_argument(
        "--ops", default=",".join(DEFAULT_OPS), help=f"comma-separated ops (default {','.join(DEFAULT_OPS)})"
    )
    p.add_argument("--passes", default=",".join(SCALING_PASSES), help="forward and/or backward (default both)")
    p.add_argument("--sizes", default=default_sizes, help=f"ROWSxCOLS list (default {default_sizes})")
    p.add_argument("--threads", default=None, help="numba thread counts, e.g. 1,2 (default 1 and the most)")
    add_series_arguments(p, "reports/kernel_scaling")
    args = p.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.sizes, "--sizes")
        args.ops = parse_list(args.ops, "--ops")
        args.passes = parse_list(args.passes, "--passes")
        args.threads = None if args.threads is None else parse_ints(args.threads, "--threads")
    except ValueError as exc:
        p.error(str(exc))
    for option, got, allowed in (("--ops", args.ops, DEFAULT_OPS), ("--passes", args.passes, SCALING_PASSES)):
        bad = [v for v in got if v not in allowed]
        if bad:
            p.error(f"{option}: got {', '.join(bad)}; expected a comma list of {', '.join(allowed)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out: Path = args.out

    def measure() -> pd.DataFrame:
        kw = dict(sizes=args.sizes, ops=args.ops, threads=args.threads, passes=args.passes, repeats=args.repeats)
        return kernel_scaling(**kw)

    try:
        runs = run_series("kernel_scaling.py", out, args.runs, measure, resume=args.resume, evaluate=args.evaluate)
    except (TypeError, ValueError) as exc:
        print(f"kernel_scaling.py: {exc}", file=sys.stderr)
        return 2
    if runs is None:
        return 2
    table = scaling_summary(runs)
    table.to_csv(out / "summary.csv", index=False)
    figure = scaling_figure(table, out / "scaling.png")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(f"\nmedians over {len(runs)} run(s) in {out} (ns per element; GB/s and copy at the most threads):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\nfigure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
