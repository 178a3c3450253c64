"""Shared command-line options of ``elbobench variance|speed|train|run`` and their validation.

Every list option is comma-separated. :func:`validate` checks all of them before
any work starts and raises :class:`OptionError` naming the option, what it got and
what it expects; the subcommands print that message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "control_variate_names",
    "OptionError",
    "add_common",
    "default_out",
    "estimator_names",
    "fail",
    "parse_floats",
    "parse_ints",
    "parse_list",
    "validate_backends",
    "validate_control_variates",
    "validate_datasets",
    "validate_estimators",
]


class OptionError(ValueError):
    """A bad command-line option; the message names it, what it got and what it expects."""


def fail(prog: str, exc: Exception) -> int:
    """Print ``prog: error: message`` to stderr and return the exit status 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def parse_list(text: str | None, option: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (duplicates dropped, order kept)."""
    if text is None:
        return []
    items = [t.strip() for t in str(text).split(",")]
    if any(not t for t in items):
        raise OptionError(f"{option}: empty item in {text!r}; expected a comma-separated list like 'a,b'")
    return list(dict.fromkeys(items))


def parse_sizes(text: str | None, option: str) -> list[tuple[int, int]]:
    """``"256x64,4096x1024"`` -> ``[(256, 64), (4096, 1024)]``: ROWSxCOLS pairs of positive ints."""
    out = []
    for item in parse_list(text, option):
        try:
            r, c = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise OptionError(f"{option}: {item!r} is not ROWSxCOLS (e.g. 4096x1024)") from None
        if r < 1 or c < 1:
            raise OptionError(f"{option}: got {item!r}; expected positive sizes")
        out.append((r, c))
    return list(dict.fromkeys(out))


def parse_ints(text: str | None, option: str, *, minimum: int = 1) -> list[int]:
    """Comma-separated ints (``"0,1,2"``; ranges ``"0-4"`` allowed), each ``>= minimum``."""
    out: list[int] = []
    for item in parse_list(text, option):
        try:
            if "-" in item[1:]:
                lo, hi = item.split("-", 1) if not item.startswith("-") else (item, item)
                vals = list(range(int(lo), int(hi) + 1))
                if not vals:
                    raise ValueError
            else:
                vals = [int(item)]
        except ValueError:
            raise OptionError(f"{option}: {item!r} is not an integer (or range a-b) in {text!r}") from None
        for v in vals:
            if v < minimum:
                raise OptionError(f"{option}: got {v}; expected integers >= {minimum}")
        out.extend(vals)
    return list(dict.fromkeys(out))


def parse_floats(text: str | None, option: str) -> list[float]:
    out = []
    for item in parse_list(text, option):
        try:
            v = float(item)
        except ValueError:
            raise OptionError(f"{option}: {item!r} is not a number in {text!r}") from None
        if not math.isfinite(v):
            raise OptionError(f"{option}: got {item!r}; expected finite numbers")
        out.append(v)
    return out


def positive_int(value: str) -> int:
    """argparse ``type=`` for counts: a clear error for zero, negatives and non-numbers."""
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def positive_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return v


# --------------------------------------------------------------------------- registries
def estimator_names(family: str | None = "normal") -> list[str]:
    """Names in the estimator registry that support latent ``family`` (all with None).

    Empty when the estimators package is missing. The Gaussian benchmarks' defaults
    are the estimators of the ``"normal"`` family.
    """
    try:
        import estimators
    except ModuleNotFoundError as exc:
        if exc.name != "estimators":
            raise
        return []
    available = getattr(estimators, "available", None)
    if not callable(available):
        raise OptionError(
            f"the estimators package at {list(getattr(estimators, '__path__', []))} has no available(); "
            "if it was installed before estimators/__init__.py existed, reinstall it: pip install -e ."
        )
    names = list(available())
    if family is None:
        return names
    return [n for n in names if family in getattr(estimators.estimator_class(n), "families", ("normal",))]


def control_variate_names() -> list[str]:
    """Registered control variates of the score-function estimator (``"none"`` first)."""
    from estimators import control_variates

    return control_variates.names()


def validate_estimators(names: list[str], option: str = "--estimators", family: str | None = "normal") -> list[str]:
    known = estimator_names(family)
    if not known:
        raise OptionError(f"{option}: the estimators package is not available (no estimators.available())")
    bad = [n for n in names if n not in known]
    if bad:
        if bad[0] in estimator_names(None):
            raise OptionError(
                f"{option}: {bad[0]!r} estimates gradients of discrete latents only; "
                f"the Gaussian benchmarks take some of {known}"
            )
        raise OptionError(f"{option}: unknown estimator {bad[0]!r}; expected some of {known}")
    if not names:
        raise OptionError(f"{option}: expected at least one of {known}")
    return names


def validate_control_variates(names: list[str], option: str = "--control-variates") -> list[str]:
    known = control_variate_names()
    bad = [n for n in names if n not in known]
    if bad:
        raise OptionError(f"{option}: unknown control variate {bad[0]!r}; expected some of {known}")
    return names


def validate_backends(names: list[str], option: str = "--backends", device: str = "cpu") -> list[str]:
    import kernels
    from kernels import registry

    known = registry.names()
    for n in names:
        if n not in known:
            raise OptionError(f"{option}: unknown backend {n!r}; expected some of {known}")
        reason = registry.unavailable_reason(n, device)
        if reason is not None:
            raise OptionError(f"{option}: backend {n!r} cannot run on {device}: {reason}")
    if not names:
        raise OptionError(f"{option}: expected at least one of {kernels.available_backends(device)}")
    return names


def validate_datasets(names: list[str], option: str = "--dataset") -> list[str]:
    from bench.problems import datasets

    known = datasets.available()
    bad = [n for n in names if n not in known]
    if bad:
        raise OptionError(f"{option}: unknown dataset {bad[0]!r}; expected one of {known}")
    return names


def validate_model(name: str, option: str = "--model") -> str:
    from bench.problems import models

    if name not in models.available():
        raise OptionError(f"{option}: unknown model {name!r}; expected one of {models.available()}")
    return name


def default_backends() -> str:
    """``numba,torch`` where numba runs, else ``torch``."""
    from kernels import registry

    try:
        ok = registry.unavailable_reason("numba", "cpu") is None
    except ValueError:
        ok = False
    return "numba,torch" if ok else "torch"


def default_out() -> Path:
    """``reports/<UTC timestamp>-<short git hash>/``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        short = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        short = ""
    return Path("reports") / (f"{stamp}-{short}" if short else stamp)


# --------------------------------------------------------------------------- argparse
def add_common(parser: argparse.ArgumentParser, *, datasets_default: str = "digits") -> None:
    """The options every benchmark subcommand shares."""
    g = parser.add_argument_group("common options")
    g.add_argument("--dataset", default=datasets_default, help="comma-separated datasets (default %(default)s)")
    g.add_argument("--estimators", default=None, help="comma-separated estimator names (default: a per-command set)")
    g.add_argument(
        "--control-variates",
        default=None,
        help=f"comma-separated control variates of score_function, from {','.join(control_variate_names())}",
    )
    g.add_argument("--backends", default=None, help="comma-separated kernel backends (default numba,torch)")
    g.add_argument("--model", default="default", help="a registered model (default: the dataset's default)")
    g.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds or ranges, e.g. 0,1,2 or 0-4 (default 0; `run --quick` trains 0,1)",
    )
    g.add_argument("--steps", type=positive_int, default=None, help="training steps (per configuration)")
    g.add_argument("--out", default=None, help="run directory (default reports/<UTC timestamp>-<git hash>/)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished configurations")
    g.add_argument("--quick", action="store_true", help="the small preset of the README's main job")
    g.add_argument("--data-dir", default=None, help="directory of IDX files for fashion-mnist (or MNIST)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_execution(parser)


def add_execution(parser: argparse.ArgumentParser) -> None:
    """Where the sweep's tasks run: ``--executor``, ``--workers``, ``--scheduler``, ``--threads``."""
    g = parser.add_argument_group("execution (see bench.run.executors)")
    g.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="local: this machine's processes (default); dask: a dask.distributed cluster",
    )
    g.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="worker processes (default 1; with --executor dask, the LocalCluster's workers)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a running Dask scheduler, e.g. tcp://10.0.0.1:8786 (implies --executor dask)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch and numba threads per worker, part of each configuration (default: this machine's "
        "cores over --workers; 1 with --scheduler)",
    )


def resolve_execution(args: argparse.Namespace) -> dict:
    """``{"executor", "workers", "scheduler", "threads"}`` of the execution options (raises :class:`OptionError`)."""
    from bench.run.executors import default_threads

    scheduler = getattr(args, "scheduler", None)
    workers = getattr(args, "workers", None)
    if scheduler is not None and workers is not None:
        raise OptionError(
            f"--workers {workers} with --scheduler {scheduler}: the cluster at --scheduler has the workers it has; "
            "drop --workers (or drop --scheduler for a LocalCluster of --workers processes)"
        )
    if scheduler is not None and not str(scheduler).strip():
        raise OptionError("--scheduler: got an empty address; expected e.g. tcp://HOST:8786")
    executor = "dask" if scheduler is not None else getattr(args, "executor", "local")
    workers = workers or 1
    threads = getattr(args, "threads", None)
    if threads is None:
        threads = 1 if scheduler is not None else default_threads(workers)
    return {"executor": executor, "workers": workers, "scheduler": scheduler, "threads": threads}


def make_executor(execution: dict):
    """The executor of resolved execution options (:func:`bench.run.executors.make_executor`)."""
    from bench.run.executors import ExecutorError
    from bench.run.executors import make_executor as make

    try:
        return make(execution["executor"], workers=execution["workers"], scheduler=execution["scheduler"])
    except ExecutorError as exc:
        raise OptionError(str(exc)) from None


#: Options that --resume may change: where and how the run continues, not what it measures.
RESUME_FREE = ("out", "resume", "no_progress", "executor", "workers", "scheduler", "plugin")


def run_subcommand(prog: str, args: argparse.Namespace, benchmark: str, plan: Callable) -> int:
    """The body every benchmark subcommand shares: plan, manifest, run on the executor, summary.

    Args:
        prog: ``"elbobench NAME"`` for messages.
        args: the parsed options (after ``--resume`` merged the manifest's).
        benchmark: the manifest's ``benchmark`` entry.
        plan: ``plan() -> (common, n_configurations, work)``: validates the
            options (raising :class:`OptionError`); ``common`` from
            :func:`resolve_common`; ``work(writer, executor) -> summary text`` runs it.

    Returns:
        The exit status: 0, 2 for bad options or an executor that cannot start,
        1 when a task failed (finished tasks' rows are kept for ``--resume``).
    """
    from bench.results import Manifest, ResultsWriter
    from bench.run.executors import ExecutorError, TaskFailedError

    saved = saved_options(args)
    try:
        common, n, work = plan()
        writer = ResultsWriter(common["out"], resume=args.resume)
        executor = make_executor(common)
    except (OptionError, ValueError, FileExistsError) as exc:
        return fail(prog, exc)
    saved["values"]["threads"] = common["threads"]  # resolved: --resume keeps the configurations' hashes
    Manifest.collect(benchmark=benchmark, options=saved, execution=executor.describe()).write(common["out"])
    print(f"{prog}: {n} configurations -> {writer.path}", file=sys.stderr)
    try:
        text = work(writer, executor)
    except ExecutorError as exc:
        return fail(prog, exc)
    except TaskFailedError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        executor.close()
    print(text)
    print(f"results: {writer.path}")
    return 0


def saved_options(args: argparse.Namespace) -> dict:
    """What the manifest keeps of the options: the subcommand and every option that shapes the results.

    Take it before the options are resolved (resolution fills defaults in place);
    the caller records the resolved ``threads`` in it.
    """
    values = {}
    for k, v in vars(args).items():
        if k.startswith("_") or k in RESUME_FREE:
            continue
        values[k] = str(v) if isinstance(v, Path) else v
    return {"command": getattr(args, "_command", ""), "values": json.loads(json.dumps(values, default=str))}


def resolve_common(
    args: argparse.Namespace, *, default_estimators: str, need_out: bool = True, family: str | None = "normal"
) -> dict:
    """Validate the shared options; return them parsed (lists, out path).

    ``family``: the latent family the estimators must support (None: any; the
    variance benchmark's grid then skips the combinations that do not apply).
    """
    out = {
        "datasets": validate_datasets(parse_list(args.dataset, "--dataset")),
        "estimators": validate_estimators(
            parse_list(args.estimators or default_estimators, "--estimators"), family=family
        ),
        "control_variates": validate_control_variates(
            parse_list(args.control_variates or "none,leave_one_out", "--control-variates")
        ),
        "backends": validate_backends(parse_list(args.backends or default_backends(), "--backends")),
        "seeds": parse_ints(args.seeds or "0", "--seeds", minimum=0),
        "model": validate_model(getattr(args, "model", "default")),
    }
    out.update(resolve_execution(args))
    if args.resume and not args.out:
        raise OptionError("--resume needs --out DIR: the run directory to continue")
    if args.out:
        p = Path(args.out)
        if p.exists() and not p.is_dir():
            raise OptionError(f"--out: {str(p)!r} exists and is not a directory")
        if args.resume and not p.is_dir():
            raise OptionError(f"--resume: no run directory at {str(p)!r} to continue")
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        if not Path(data_dir).is_dir():
            raise OptionError(f"--data-dir: {data_dir!r} is not a directory")
        import os

        from bench.problems.datasets import DATA_DIR_ENV

        os.environ[DATA_DIR_ENV] = str(Path(data_dir).resolve())  # read by the IDX loader; lands in the manifest
    out["out"] = Path(args.out) if args.out else (default_out() if need_out else None)
    return out


def add_series_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """``--runs``, ``--repeats``, ``--out``, ``--resume``/``--evaluate`` of a script that repeats one measurement.

    See :func:`bench.results.run_series`, which takes what they parse.
    """
    parser.add_argument("--runs", type=positive_int, default=3, help="how many runs (default 3)")
    parser.add_argument("--repeats", type=positive_int, default=15, help="timed calls per cell and run (default 15)")
    parser.add_argument(
        "--out", type=Path, default=Path(default_out), help=f"directory of the run CSVs (default {default_out})"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep the runs already in --out, run the rest")
    mode.add_argument("--evaluate", action="store_true", help="run nothing: evaluate the runs already in --out")
