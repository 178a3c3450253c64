"""``elbobench variance``: gradient variance, SNR and bias of estimators and control variates."""

from __future__ import annotations

import argparse

from bench.cli import options as opt
from bench.measure.variance import PILOT_REPLICATES, TOYS, VarianceConfig, configs, summary, variance_benchmark
from bench.problems.toys import toy_family

EXAMPLES = """examples:
  elbobench variance --quick
  elbobench variance --dataset digits --estimators reparam,score_function,stl \\
      --control-variates none,leave_one_out,optimal --backends numba,torch --num-samples 1,10
  elbobench variance --dataset ppca,gauss_quadratic --estimators reparam,measure_valued --num-samples 1000
  elbobench variance --dataset digits --train-points 0,500,2000 --replicates 256
  elbobench variance --dataset bernoulli_toy --toy-dim 4 --estimators score_function,arm,disarm,relax
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    opt.add_common(parser)
    g = parser.add_argument_group("variance")
    g.add_argument("--num-samples", default="1", help="comma-separated S values (default 1)")
    g.add_argument(
        "--replicates",
        type=int,
        default=None,
        help="R estimates per configuration (>= 2); default: chosen per configuration by a pilot so that a "
        "relative bias of --target-rel-bias is detectable, at most --max-replicates",
    )
    g.add_argument("--max-replicates", type=opt.positive_int, default=1024, help="the cap on a chosen R (default 1024)")
    g.add_argument(
        "--target-rel-bias",
        type=opt.positive_float,
        default=0.1,
        help="relative bias a chosen R should detect (one-sided 5%%, power 80%%; default 0.1)",
    )
    g.add_argument(
        "--train-estimator",
        default="reparam",
        help="the estimator that trains the model to the train points (default reparam)",
    )
    g.add_argument("--train-points", default=None, help="comma-separated training steps to measure at (default 0,200)")
    g.add_argument("--batch-size", type=opt.positive_int, default=32, help="examples in the fixed batch (default 32)")
    g.add_argument("--toy-dim", type=opt.positive_int, default=16, help="dimension of the toys")
    g.add_argument("--bootstrap", type=opt.positive_int, default=200, help="bootstrap replicates for the CIs")


def _validate_problems(names: list[str]) -> list[str]:
    from bench.problems import datasets

    known = [*datasets.available(), *TOYS]
    bad = [n for n in names if n not in known]
    if bad:
        raise opt.OptionError(f"--dataset: unknown dataset or problem {bad[0]!r}; expected some of {known}")
    return names


def grid_from_args(args: argparse.Namespace, common: dict) -> list[VarianceConfig]:
    replicates = args.replicates
    if replicates is not None and replicates < 2:
        raise opt.OptionError(f"--replicates: got {replicates}; expected an integer >= 2")
    if args.max_replicates < PILOT_REPLICATES:
        raise opt.OptionError(f"--max-replicates: got {args.max_replicates}; expected at least {PILOT_REPLICATES}")
    opt.validate_estimators([args.train_estimator], "--train-estimator")
    points = opt.parse_ints(args.train_points or ("0,200" if args.quick else "0"), "--train-points", minimum=0)
    if args.steps is not None and args.train_points is None:
        points = [0, args.steps]
    return configs(
        problems=common["datasets"],
        estimators=common["estimators"],
        control_variates=common["control_variates"],
        backends=common["backends"],
        num_samples=opt.parse_ints(args.num_samples, "--num-samples"),
        train_steps=points,
        seeds=common["seeds"],
        replicates=replicates,
        batch_size=args.batch_size,
        toy_dim=args.toy_dim,
        bootstrap=args.bootstrap,
        model=common["model"],
        threads=common["threads"],
        max_replicates=args.max_replicates,
        target_rel_bias=args.target_rel_bias,
        train_estimator=args.train_estimator,
    )


def resolve(args: argparse.Namespace) -> tuple[dict, list[VarianceConfig]]:
    """Validate the CLI options and build the grid (raises :class:`OptionError`)."""
    problems = _validate_problems(opt.parse_list(args.dataset, "--dataset"))
    real = [p for p in problems if p not in TOYS]
    saved = args.dataset
    args.dataset = ",".join(real) or "digits"
    try:
        all_est = ",".join(opt.estimator_names())
        cvs = ",".join(opt.control_variate_names()) if args.quick else "none,leave_one_out"
        if args.control_variates is None:
            args.control_variates = cvs
        default = all_est if args.quick else "reparam,score_function,stl"
        if problems and all(p in TOYS and toy_family(p) != "normal" for p in problems):
            default = ",".join(opt.estimator_names("bernoulli"))
        common = opt.resolve_common(args, default_estimators=default, family=None)
    finally:
        args.dataset = saved
    common["datasets"] = problems
    grid = grid_from_args(args, common)
    if not grid:
        raise opt.OptionError(
            f"--estimators: none of {common['estimators']} is defined for the latent family of "
            f"{problems} (the Bernoulli toy takes {opt.estimator_names('bernoulli')})"
        )
    return common, grid


def main(args: argparse.Namespace) -> int:
    def plan():
        common, grid = resolve(args)

        def work(writer, executor):
            df = variance_benchmark(
                grid, writer=writer, resume=args.resume, progress=not args.no_progress, executor=executor
            )
            return summary(df)

        return common, len(grid), work

    return opt.run_subcommand("elbobench variance", args, "variance", plan)
