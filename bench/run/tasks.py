"""A sweep as independent tasks: one configuration each, run by an executor, rows written by one writer.

A :class:`Task` is one unit of a sweep: a variance configuration (one estimator
at one point of training), a training run, or a timing (the kernel cells, one
estimator's steps at one batch size). :func:`execute` runs a task wherever the
executor puts it (this process, a worker process, a Dask worker): it loads the
run's plugins, sets torch's and numba's thread counts to the task's (reduction
order depends on them, so they are part of the task's configuration), runs the
task's kind and returns its rows, stamped with the host that ran it.
:func:`run_tasks` hands a sweep to an executor and appends each task's rows
to the run's ``results.csv`` as it finishes, in the client: one writer, nothing
written twice, a lost worker loses only its unfinished tasks.

Statistical tasks (variance, training curves, test log-likelihoods) run in
parallel; timing tasks run after all of them, one at a time, so nothing else
runs beside a timing (``Task.timing``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bench.results import Result, ResultsWriter, config_hash

__all__ = ["Task", "execute", "kinds", "needs_gpu", "register_kind", "run_tasks", "set_threads"]

#: kind -> ``fn(task, run_dir, resume) -> list[Result]``, run where the task runs.
_KINDS: dict[str, Callable] = {}


def register_kind(name: str, fn: Callable, *, replace: bool = False) -> Callable:
    """Register a task kind: ``fn(task, run_dir, resume) -> list[Result]``.

    The built-in kinds are ``variance``, ``train`` and ``speed``; a plugin may add
    its own (the module must be importable on the workers: it is one of the
    run's plugins).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"task kind must be an identifier, got {name!r}")
    if name in _KINDS and not replace and _KINDS[name] is not fn:
        raise ValueError(f"task kind {name!r} is already registered")
    _KINDS[name] = fn
    return fn


def kinds() -> list[str]:
    """Registered task kinds."""
    _load_builtin_kinds()
    return list(_KINDS)


def _load_builtin_kinds() -> None:
    # each measurement module registers its kind on import
    import bench.measure.speed  # noqa: F401
    import bench.measure.train  # noqa: F401
    import bench.measure.variance  # noqa: F401


@dataclass(frozen=True, eq=False)
class Task:
    """One independent unit of a sweep.

    Attributes:
        kind: a registered kind (``variance``, ``train``, ``speed``).
        config: what the kind's function takes (a ``VarianceConfig``, a
            ``TrainConfig``, a dict of keyword arguments).
        keys: the configuration key of every row set the task writes; the task
            is done when all their hashes are in ``results.csv``.
        threads: torch and numba threads the task runs with (None: the process's).
        timing: the task times code: it runs after the statistical tasks, alone.
        stage: statistical tasks of a lower stage all finish before those of a
            higher one start (a stage computes what the next one reads).
        gpu: it needs a GPU (a Dask worker started with ``--resources GPU=1``).
        label: a short description for progress and errors.
    """

    kind: str
    config: object
    keys: tuple[dict, ...]
    threads: int | None = None
    timing: bool = False
    stage: int = 0
    gpu: bool = False
    label: str = ""
    hashes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError(f"task {self.label or self.kind!r}: keys must name at least one configuration")
        object.__setattr__(self, "hashes", tuple(config_hash(k) for k in self.keys))

    @property
    def name(self) -> str:
        """A stable identifier: kind and the first configuration's hash."""
        return f"{self.kind}-{self.hashes[0]}"


def needs_gpu(backends: Iterable[str]) -> bool:
    """Whether a task on these kernel backends needs a GPU worker: one of them serves CUDA but cannot run on CPU here."""
    from kernels import registry

    for b in backends:
        if b not in registry.names():
            continue
        devices = registry.info(b).devices
        if "cuda" in devices and registry.unavailable_reason(b, "cpu") is not None:
            return True
    return False


def set_threads(threads: int | None) -> None:
    """Set torch's and numba's thread counts (numba's capped at its pool size); None leaves them."""
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:  # pragma: no cover
        return
    n = min(int(threads), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


def execute(task: Task, run_dir: str | None = None, resume: bool = False, plugins: Sequence[str] = ()) -> list[Result]:
    """Run ``task`` here: load ``plugins``, set its threads, run its kind; its rows, stamped with this host.

    Args:
        task: the task.
        run_dir: the run directory (training checkpoints go to ``<run_dir>/checkpoints``).
        resume: continue a training run from its checkpoint.
        plugins: the run's plugins (imported once per process).
    """
    from bench import plugins as plugins_mod
    from bench.results.manifest import host_name

    for spec in plugins:
        plugins_mod.load(spec)
    _load_builtin_kinds()
    if task.kind not in _KINDS:
        raise ValueError(f"task kind must be one of {list(_KINDS)}, got {task.kind!r} (a plugin not loaded here?)")
    set_threads(task.threads)
    rows = _KINDS[task.kind](task, run_dir, resume)
    host = host_name()
    return [r if r.host == host else dataclasses.replace(r, host=host) for r in rows]


def run_tasks(
    tasks: Iterable[Task],
    *,
    writer: ResultsWriter | None = None,
    executor=None,
    resume: bool = False,
    progress: bool = False,
    desc: str = "tasks",
    plugins: Sequence[str] | None = None,
    timings: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Result]:
    """Run the tasks not yet done, writing each one's rows as it finishes; return every new row.

    Statistical tasks go to ``executor`` (default: this process, one after
    another) all at once; timing tasks follow, one at a time, after the last
    statistical one has finished.

    Args:
        tasks: the sweep.
        writer: the run's results writer (None: rows only returned).
        executor: from :func:`bench.run.executors.make_executor` (None: in process).
        resume: continue interrupted training runs from their checkpoints.
        progress: a tqdm bar on stderr.
        desc: the bar's label.
        plugins: plugin specs every worker loads (default: those loaded here).
        timings: filled with the seconds of each phase (``statistical``, ``timing``).
        log: ``log(message)`` once per finished phase.
    """
    from bench import plugins as plugins_mod
    from bench.run.executors import InProcess

    executor = executor if executor is not None else InProcess()
    plugins = list(plugins_mod.loaded() if plugins is None else plugins)
    todo = [t for t in tasks if writer is None or not all(writer.is_done(k) for k in t.keys)]
    run_dir = str(writer.out) if writer is not None else None
    rows: list[Result] = []
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def done(task: Task, result: list[Result]) -> None:
        if writer is not None:
            # a task whose row sets are partly in the file (an interrupted group) writes only the rest
            result = [r for r in result if not writer.has_hash(r.config_hash)]
            writer.append(result)
        rows.extend(result)
        if bar is not None:
            bar.update(1)

    try:
        statistical = [t for t in todo if not t.timing]
        timing = [t for t in todo if t.timing]
        for phase, part in (("statistical", statistical), ("timing", timing)):
            if not part:
                continue
            t0 = time.perf_counter()
            for stage in sorted({t.stage for t in part}):
                executor.run(
                    [t for t in part if t.stage == stage],
                    run_dir=run_dir,
                    resume=resume,
                    plugins=plugins,
                    on_done=done,
                    one_at_a_time=phase == "timing",
                )
            seconds = time.perf_counter() - t0
            if timings is not None:
                timings[phase] = seconds
            if log is not None:
                log(f"{phase} tasks ({len(part)}) done in {seconds:.1f} s")
    finally:
        if bar is not None:
            bar.close()
    return rows
