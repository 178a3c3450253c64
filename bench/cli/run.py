"""``elbobench run``: variance, speed and convergence into one run directory, then a report."""

from __future__ import annotations

import argparse
import sys
import time

from bench.cli import options as opt
from bench.measure import train as train_mod
from bench.results import Manifest, ResultsWriter
from bench.run import suite
from bench.run.executors import ExecutorError, TaskFailedError

EXAMPLES = """examples:
  elbobench run --quick                                   # the README's main job, < 5 min on 2 cores
  elbobench run --quick --out reports/mine                # choose the run directory
  elbobench run --quick --out reports/mine --resume       # finish an interrupted run
  elbobench run --dataset mnist5k --steps 2000 --seeds 0-2 --backends numba,torch
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    opt.add_common(parser)
    g = parser.add_argument_group("run")
    g.add_argument("--skip", default="", help="comma-separated parts to skip: variance,speed,train,report")
    g.add_argument("--is-k", type=int, default=None, help="importance samples for the test log-likelihood")
    g.add_argument(
        "--replicates",
        type=int,
        default=None,
        help="R estimates per variance configuration (default: chosen by a pilot, at most 32)",
    )


def plan(args: argparse.Namespace) -> dict:
    """Validate every option and build the suite's plan (raises :class:`OptionError`)."""
    skip = set(opt.parse_list(args.skip, "--skip")) if args.skip else set()
    bad = skip - set(suite.PARTS)
    if bad:
        raise opt.OptionError(f"--skip: unknown part {sorted(bad)[0]!r}; expected some of {','.join(suite.PARTS)}")
    all_est = opt.estimator_names()
    saved_cv = args.control_variates
    args.control_variates = saved_cv or ",".join(opt.control_variate_names())
    try:
        common = opt.resolve_common(args, default_estimators=",".join(all_est))
    finally:
        args.control_variates = saved_cv
    if args.is_k is not None and args.is_k < 0:
        raise opt.OptionError(f"--is-k: got {args.is_k}; expected a non-negative integer")
    if args.replicates is not None and args.replicates < 2:
        raise opt.OptionError(f"--replicates: got {args.replicates}; expected an integer >= 2")
    # convergence: the quick preset's estimators (those of --estimators when given)
    if args.estimators:
        train_est = common["estimators"]
        train_cv = opt.validate_control_variates(opt.parse_list(saved_cv or "none,leave_one_out", "--control-variates"))
    else:
        train_est = [e for e in train_mod.QUICK_ESTIMATORS if e in all_est]
        train_cv = ["none", "leave_one_out"]
    seeds = common["seeds"]
    if args.quick and args.seeds is None:
        seeds = list(suite.QUICK["train_seeds"])
    if args.quick and args.workers is None and args.scheduler is None and args.executor == "local":
        from bench.run.executors import default_threads

        workers = min(suite.QUICK["workers"], default_threads(1))  # as many as there are cores, up to two
        common.update(workers=workers, threads=args.threads or default_threads(workers))
    p = suite.build_plan(
        dataset=common["datasets"][0],
        estimators=common["estimators"],
        control_variates=common["control_variates"],
        backends=common["backends"],
        seeds=seeds,
        train_estimators=train_est,
        train_control_variates=train_cv,
        steps=args.steps,
        replicates=args.replicates,
        is_k=args.is_k,
        model=common["model"],
        threads=common["threads"],
        quick=bool(args.quick),
        skip=skip,
    )
    p["common"] = common
    return p


def main(args: argparse.Namespace) -> int:
    prog = "elbobench run"
    saved = opt.saved_options(args)
    try:
        p = plan(args)
        out = p["common"]["out"]
        writer = ResultsWriter(out, resume=args.resume)
        executor = opt.make_executor(p["common"])
    except (opt.OptionError, ValueError, FileExistsError) as exc:
        return opt.fail(prog, exc)
    saved["values"]["threads"] = p["common"]["threads"]  # resolved: --resume keeps the configurations' hashes
    Manifest.collect(
        benchmark="run",
        quick=bool(args.quick),
        planned_configs=suite.planned_configs(p),
        options=saved,
        execution=executor.describe(),
    ).write(out)
    n = len(p["variance"]) + len(p["train"])
    print(f"{prog}: {n} configurations + speed -> {writer.path}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        done = suite.run_suite(
            p,
            writer,
            resume=args.resume,
            progress=not args.no_progress,
            log=lambda msg: print(f"{prog}: {msg}", file=sys.stderr),
            executor=executor,
        )
    except ExecutorError as exc:
        return opt.fail(prog, exc)
    except TaskFailedError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        executor.close()
    print(suite.summary(done["frames"]))
    total = time.perf_counter() - t0
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in done["timings"].items())
    print(f"\ntotal {total:.0f} s ({parts}); results: {writer.path}")
    if done["report"] is not None:
        print(f"report: {done['report']}")
    return 0
