"""The ``elbobench`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
and ``main(args) -> int``; this file only lists them, so a module is imported
only when its subcommand runs (``elbobench --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench import plugins

# name -> (module, one-line help). Modules are imported lazily.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "backends": ("bench.cli.backends", "list kernel backends, whether each runs here, and why not"),
    "variance": ("bench.cli.variance", "gradient variance / SNR / bias of every estimator and control variate"),
    "speed": ("bench.cli.speed", "kernel and estimator throughput against torch eager, torch.compile and copy"),
    "train": ("bench.cli.train", "ELBO convergence of full VAE training per estimator and backend"),
    "run": ("bench.cli.run", "variance + speed + train, then a report (the README's main job with --quick)"),
    "report": ("bench.cli.report", "tables and figures (HTML/Markdown) from a run directory"),
    "gpu-kernels": (
        "bench.cli.gpu_kernels",
        "time the triton kernels on a CUDA GPU vs torch eager, torch.compile, copy",
    ),
}

EPILOG = """examples:
  elbobench backends
  elbobench run --quick                       # the README's main job (< 5 min on 2 cores)
  elbobench variance --dataset digits --estimators reparam,score_function \\
      --control-variates none,leave_one_out --backends numba,torch
  elbobench train --dataset mnist5k --estimators reparam,iwae --steps 2000 --out reports/mnist
  elbobench train --out reports/mnist --resume  # continue an interrupted run
  elbobench report reports/mnist --compare reports/older
  elbobench variance --plugin my_estimators.py --estimators mine,reparam   # your own estimator

every subcommand takes --plugin MODULE; ELBOBENCH_PLUGINS=a,b and the entry-point
group elbobench.plugins load plugins too. `elbobench COMMAND --help` shows its options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elbobench",
        description="Benchmarks of Monte Carlo ELBO gradient estimators and their fused kernels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(
                f"elbobench: error: unknown command {argv[0]!r}; expected one of {', '.join(SUBCOMMANDS)}",
                file=sys.stderr,
            )
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_ = SUBCOMMANDS[name]
    # plugins first: they may register estimators, control variates, datasets,
    # models or backends that the subcommand's options then accept
    if plugins.STARTUP_ERROR is not None:
        print(f"elbobench {name}: error: {plugins.STARTUP_ERROR}", file=sys.stderr)
        return 2
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    try:
        for spec in pre.parse_known_args(argv[1:])[0].plugin:
            plugins.load(spec)
    except plugins.PluginError as exc:
        print(f"elbobench {name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"elbobench {name}: not available ({exc})", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(
        prog=f"elbobench {name}",
        description=(module.__doc__ or help_).strip().split("\n\n")[0],
        epilog=getattr(module, "EXAMPLES", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (a dotted module on sys.path, working directory first, or a .py path); "
        "repeatable. Plugins register estimators, control variates, models, datasets or kernel backends",
    )
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(
            f"\nelbobench {name}: interrupted; finished configurations are kept (rerun with --resume)", file=sys.stderr
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
