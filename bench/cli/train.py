"""``elbobench train``: ELBO convergence of full VAE training per estimator and backend."""

from __future__ import annotations

import argparse

from bench.cli import options as opt
from bench.measure.train import OPTIMIZERS, QUICK_ESTIMATORS, TrainConfig, configs, summary, train_benchmark
from bench.problems import datasets as ds_mod

EXAMPLES = """examples:
  elbobench train --quick
  elbobench train --dataset digits --estimators reparam,stl,iwae --backends numba,torch --steps 500
  elbobench train --dataset mnist5k --estimators reparam --optimizer rmsprop --lr 1e-3 --seeds 0-2 --out reports/m
  elbobench train --out reports/m --resume        # continue an interrupted run from its checkpoints
  elbobench train --estimators score_function --control-variates none,leave_one_out --num-samples 4
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    opt.add_common(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--batch-size", type=opt.positive_int, default=None, help="examples per step (default 100)")
    g.add_argument("--num-samples", type=opt.positive_int, default=1, help="samples per example (K) (default 1)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--lr", type=opt.positive_float, default=1e-3)
    g.add_argument("--kl", choices=("analytic", "mc"), default=None, help="KL term (default: the estimator's)")
    g.add_argument("--eval-every", type=opt.positive_int, default=None, help="steps between evaluations")
    g.add_argument("--is-k", type=int, default=None, help="importance samples for the test log-likelihood (1000)")
    g.add_argument("--target-elbo", type=float, default=None, help="validation ELBO whose first crossing is timed")
    g.add_argument("--binarize", choices=ds_mod.BINARIZATIONS, default="dynamic")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: none)")


def grid_from_args(args: argparse.Namespace, common: dict) -> list[TrainConfig]:
    """The training grid of parsed CLI options (``--quick`` sets the preset's defaults)."""
    if args.is_k is not None and args.is_k < 0:
        raise opt.OptionError(f"--is-k: got {args.is_k}; expected a non-negative integer (0 skips the estimate)")
    if args.checkpoint_every < 0:
        raise opt.OptionError(f"--checkpoint-every: got {args.checkpoint_every}; expected >= 0")
    quick = args.quick
    steps = args.steps or (300 if quick else 1000)
    return configs(
        datasets=common["datasets"],
        estimators=common["estimators"],
        control_variates=common["control_variates"],
        backends=common["backends"],
        seeds=common["seeds"],
        steps=steps,
        batch_size=args.batch_size or 100,
        num_samples=args.num_samples,
        kl=args.kl,
        optimizer=args.optimizer,
        lr=args.lr,
        eval_every=args.eval_every or max(1, steps // 10),
        is_k=args.is_k if args.is_k is not None else (100 if quick else 1000),
        target_elbo=args.target_elbo,
        binarize=args.binarize,
        checkpoint_every=args.checkpoint_every,
        model=common["model"],
        threads=common["threads"],
    )


def main(args: argparse.Namespace) -> int:
    def plan():
        common = opt.resolve_common(args, default_estimators=",".join(QUICK_ESTIMATORS) if args.quick else "reparam")
        grid = grid_from_args(args, common)

        def work(writer, executor):
            df = train_benchmark(
                grid, writer=writer, resume=args.resume, progress=not args.no_progress, executor=executor
            )
            return summary(df)

        return common, len(grid), work

    return opt.run_subcommand("elbobench train", args, "train", plan)
