"""``elbobench report``: tables and figures (HTML/Markdown) from a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.build import TABLES_DIR, build_report, parse_formats
from bench.report.tables import ReportError

EXAMPLES = """examples:
  elbobench report reports/quick
  elbobench report reports/new --compare reports/old             # ratio table, regressions > 5% flagged
  elbobench report reports/new --compare reports/old --threshold 0.1
  elbobench report reports/quick --benchmark-json old.json new.json
  elbobench report reports/new --compare reports/old --fail-on-regression   # exit 1 on a regression (CI)
  elbobench report reports/quick --format md --no-svg

  pytest-benchmark JSON comes from `pytest --benchmark --benchmark-json PATH`;
  with several files the first is the baseline (ratio = later / first).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding results.csv and manifest.json")
    parser.add_argument(
        "--compare", metavar="OTHER_RUN_DIR", default=None, help="another run: ratio table this/other and overlays"
    )
    parser.add_argument(
        "--benchmark-json",
        metavar="PATH",
        action="extend",
        nargs="+",
        default=[],
        help="pytest-benchmark JSON files (one or more, repeatable; the first is the baseline of the comparison)",
    )
    parser.add_argument(
        "--format", default="html,md", help="comma-separated output formats out of: html, md (default: html,md)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="relative change beyond which a worse metric is flagged as a regression (default 0.05 = 5%%)",
    )
    parser.add_argument("--no-svg", action="store_true", help="write PNG figures only")
    parser.add_argument(
        "--ratio-reference",
        default="reparam",
        help="the estimator the variance-ratio table compares with (default reparam)",
    )
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit with status 1 when a comparison flags a regression (for CI)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        formats = parse_formats(args.format, "--format")
        path = build_report(
            args.run_dir,
            compare=args.compare,
            benchmark_json=args.benchmark_json,
            formats=formats,
            threshold=args.threshold,
            svg=not args.no_svg,
            ratio_reference=args.ratio_reference,
        )
    except ReportError as exc:
        print(f"elbobench report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report written: {path}")
    regressions = 0
    tables = Path(path).parent / TABLES_DIR
    bj_base = args.benchmark_json[0] if len(args.benchmark_json) > 1 else None
    for name, what in (("ratio_table.csv", args.compare), ("pytest_benchmark_ratio_table.csv", bj_base)):
        if what and (tables / name).exists():
            import pandas as pd

            t = pd.read_csv(tables / name)
            n = int((t["status"] == "regression").sum())
            regressions += n
            print(f"{n} regression(s) beyond {100 * args.threshold:g}% against {what} ({len(t)} shared metrics)")
    return 1 if args.fail_on_regression and regressions else 0
