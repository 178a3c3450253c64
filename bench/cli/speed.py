"""``elbobench speed``: kernel and estimator throughput against torch eager, torch.compile and copy."""

from __future__ import annotations

import argparse

from bench.cli import options as opt
from bench.measure.speed import speed_benchmark, summary

EXAMPLES = """examples:
  elbobench speed --quick
  elbobench speed --dataset mnist5k --estimators reparam --backends numba,torch --batch-sizes 20,128,1024
  elbobench speed --kernel-sizes 256x64,4096x1024 --backends numba,torch --no-estimators
  elbobench speed --kernel-sizes 4096x1024,16384x1024 --no-estimators --interleave-kernels
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    opt.add_common(parser)
    g = parser.add_argument_group("speed")
    g.add_argument("--batch-sizes", default="100", help="comma-separated batch sizes (default 100)")
    g.add_argument(
        "--kernel-sizes", default=None, help="comma-separated ROWSxCOLS for the kernel ops (default 256x64,4096x256)"
    )
    g.add_argument("--no-kernels", action="store_true", help="skip the kernel benchmarks")
    g.add_argument(
        "--interleave-kernels",
        action="store_true",
        help="time each kernel cell's backends and a same-size copy in balanced rounds "
        "(bench.measure.timing.time_round_robin) instead of one backend after the other",
    )
    g.add_argument("--no-estimators", action="store_true", help="skip the estimator/training throughput")
    g.add_argument("--repeats", type=opt.positive_int, default=20, help="timed repeats per measurement")


def resolve(args: argparse.Namespace) -> tuple[dict, dict]:
    common = opt.resolve_common(args, default_estimators="reparam" if args.quick else "reparam,stl,score_function,iwae")
    kw = {
        "dataset": common["datasets"][0],
        "estimators": [] if args.no_estimators else common["estimators"],
        "backends": common["backends"],
        "batch_sizes": opt.parse_ints(args.batch_sizes, "--batch-sizes"),
        "kernel_sizes": None
        if args.no_kernels
        else opt.parse_sizes(args.kernel_sizes or "256x64,4096x256", "--kernel-sizes"),
        "repeats": args.repeats,
        "model": common["model"],
        "threads": common["threads"],
    }
    if args.interleave_kernels:
        kw["kernel_options"] = {"interleave": True}
    return common, kw


def main(args: argparse.Namespace) -> int:
    def plan():
        common, kw = resolve(args)
        n = (1 if kw["kernel_sizes"] else 0) + len(kw["estimators"]) * len(kw["batch_sizes"])

        def work(writer, executor):
            return summary(speed_benchmark(**kw, writer=writer, progress=not args.no_progress, executor=executor))

        return common, n, work

    return opt.run_subcommand("elbobench speed", args, "speed", plan)
