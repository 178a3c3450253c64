"""The ``elbobench`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
and ``main(args) -> int``; this file only lists them, so a module is imported
only when its subcommand runs (``elbobench --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from bench import plugins
from bench.cli.options import RESUME_FREE, OptionError

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
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--out", default=None)
    known = pre.parse_known_args(argv[1:])[0]
    try:
        for spec in known.plugin:
            plugins.load(spec)
        if known.resume and known.out:  # the run's own plugins, as its manifest records them
            from bench.results.manifest import read_manifest

            for spec in read_manifest(known.out).get("plugins", []):
                plugins.load(spec, source=f"the plugins of {known.out}/manifest.json")
    except plugins.PluginError as exc:
        print(f"elbobench {name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"elbobench {name}: not available ({exc})", file=sys.stderr)
        return 2
    sub = _subparser(name, module, help_)
    args = sub.parse_args(argv[1:])
    args._command = name
    try:
        args = _resume_from_manifest(name, module, help_, args, argv[1:])
    except OptionError as exc:
        print(f"elbobench {name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(
            f"\nelbobench {name}: interrupted; finished configurations are kept (rerun with --resume)", file=sys.stderr
        )
        return 130


def _subparser(name: str, module, help_: str, *, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser(
        prog=f"elbobench {name}",
        description=(module.__doc__ or help_).strip().split("\n\n")[0],
        epilog=getattr(module, "EXAMPLES", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    sub.add_argument(
        "--plugin",
        action="append",
        default=argparse.SUPPRESS if suppress_defaults else [],
        metavar="MODULE",
        help="import MODULE first (a dotted module on sys.path, working directory first, or a .py path); "
        "repeatable. Plugins register estimators, control variates, models, datasets or kernel backends",
    )
    module.add_arguments(sub)
    if suppress_defaults:
        for action in sub._actions:
            action.default = argparse.SUPPRESS
    return sub


def _resume_from_manifest(name: str, module, help_: str, args: argparse.Namespace, argv: list[str]):
    """``--resume``: continue the run as its manifest recorded it; options that contradict it are refused.

    Options that say where and how to run (:data:`bench.cli.options.RESUME_FREE`) may
    change; every other option given must equal the run's. A run directory from
    before manifests kept options is continued with the options given.
    """
    if not getattr(args, "resume", False) or not getattr(args, "out", None):
        return args
    from bench.results.manifest import read_manifest

    saved = (read_manifest(args.out).get("extra") or {}).get("options")
    if not saved:
        return args
    if saved.get("command") and saved["command"] != name:
        raise OptionError(
            f"--resume: {args.out} holds a run of `elbobench {saved['command']}`, not `elbobench {name}`; "
            f"continue it with `elbobench {saved['command']} --out {args.out} --resume`"
        )
    given = vars(_subparser(name, module, help_, suppress_defaults=True).parse_args(argv))
    values = saved["values"]
    bad = []
    for dest, value in given.items():
        if dest in RESUME_FREE or dest not in values:
            continue
        if json.loads(json.dumps(value, default=str)) != values[dest]:
            flag = "--" + dest.replace("_", "-")
            bad.append(f"{flag} {value!r} (the run has {values[dest]!r})")
    if bad:
        raise OptionError(
            "--resume continues the run in --out as it was started, and these options contradict its "
            f"manifest: {'; '.join(bad)}. Drop them, or start a new run with another --out"
        )
    merged = {**vars(args), **values}
    merged.update({k: v for k, v in vars(args).items() if k in RESUME_FREE or k.startswith("_")})
    return argparse.Namespace(**merged)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
