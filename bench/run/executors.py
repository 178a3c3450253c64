"""Executors: where a sweep's tasks run.

* :class:`InProcess` -- this process, one task after another (``--executor local
  --workers 1``, the default);
* :class:`LocalProcesses` -- ``--workers N`` worker processes on this machine
  (``concurrent.futures`` with spawned processes);
* :class:`Dask` -- a ``dask.distributed`` cluster: with no address a
  ``LocalCluster`` of ``--workers`` one-thread processes here, with
  ``--scheduler tcp://HOST:PORT`` a running cluster on any number of machines.
  A lost worker's tasks are rerun by the scheduler; tasks that need a GPU ask for
  the worker resource ``GPU`` (start such workers with ``--resources GPU=1``).

Every executor runs :func:`bench.run.tasks.execute` on each task and hands the
rows back to the client, which writes them (:func:`bench.run.tasks.run_tasks`).
Timing tasks are run one at a time (``one_at_a_time``), after the statistical
ones, so nothing else of the sweep runs beside them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from bench.run.tasks import Task, execute

__all__ = [
    "EXECUTORS",
    "Dask",
    "ExecutorError",
    "InProcess",
    "LocalProcesses",
    "TaskFailedError",
    "default_threads",
    "make_executor",
]

EXECUTORS = ("local", "dask")
#: How to get Dask when it is missing (the Makefile installs the extra).
DASK_INSTALL = "pip install 'dask[distributed]>=2024.1' (or the suite's extra: pip install -e '.[dask]')"
CONNECT_TIMEOUT_S = 5.0


class ExecutorError(RuntimeError):
    """An executor cannot start (Dask missing, no scheduler at the address); the message says why."""


class TaskFailedError(RuntimeError):
    """A task raised; finished tasks' rows are written, the rest stay for ``--resume``."""


def default_threads(workers: int) -> int:
    """Threads per worker that fill this machine: its usable cores over the workers (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _failed(task: Task, exc: BaseException, remaining: int) -> TaskFailedError:
    return TaskFailedError(
        f"task {task.label or task.name} failed: {type(exc).__name__}: {exc}; "
        f"{remaining} task(s) unfinished: rerun with --resume to finish them"
    )


class InProcess:
    """Run tasks in this process, one after another."""

    name = "local"
    workers = 1

    def run(
        self,
        tasks: Sequence[Task],
        *,
        run_dir: str | None,
        resume: bool,
        plugins: Sequence[str],
        on_done: Callable,
        one_at_a_time: bool = False,
    ) -> None:
        before = _threads_now()
        try:
            for i, task in enumerate(tasks):
                try:
                    rows = execute(task, run_dir, resume, plugins)
                except Exception as exc:
                    raise _failed(task, exc, len(tasks) - i) from exc
                on_done(task, rows)
        finally:
            _restore_threads(before)  # this process's own settings, as they were

    def describe(self) -> dict:
        return {"executor": "local", "workers": 1}

    def close(self) -> None:
        pass


class LocalProcesses:
    """``workers`` spawned worker processes on this machine; timing tasks run in this process, alone."""

    name = "local"

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def run(
        self,
        tasks: Sequence[Task],
        *,
        run_dir: str | None,
        resume: bool,
        plugins: Sequence[str],
        on_done: Callable,
        one_at_a_time: bool = False,
    ) -> None:
        if one_at_a_time:  # the workers are idle: nothing else runs beside a timing
            InProcess().run(tasks, run_dir=run_dir, resume=resume, plugins=plugins, on_done=on_done)
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        pool = self._get_pool()
        pending = {pool.submit(execute, t, run_dir, resume, list(plugins)): t for t in tasks}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task = pending.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        raise _failed(task, exc, len(pending) + 1) from exc
                    on_done(task, fut.result())
        finally:
            for fut in pending:
                fut.cancel()

    def describe(self) -> dict:
        return {"executor": "local", "workers": self.workers}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class Dask:
    """A ``dask.distributed`` cluster: a ``LocalCluster`` of ``workers`` processes, or the one at ``scheduler``."""

    name = "dask"

    def __init__(self, *, scheduler: str | None = None, workers: int = 1, connect_timeout: float = CONNECT_TIMEOUT_S):
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ExecutorError(
                f"--executor dask needs dask.distributed, which is not installed: {DASK_INSTALL}"
            ) from exc
        self.scheduler = scheduler
        self.workers = workers
        self.connect_timeout = connect_timeout
        self._client = None
        self._cluster = None

    @property
    def client(self):
        """The ``distributed.Client`` (the cluster starts, or is connected to, on first use)."""
        if self._client is None:
            from distributed import Client, LocalCluster

            if self.scheduler is not None:
                try:
                    self._client = Client(self.scheduler, timeout=self.connect_timeout)
                except (OSError, TimeoutError) as exc:
                    raise ExecutorError(
                        f"--scheduler: no Dask scheduler answered at {self.scheduler!r} within "
                        f"{self.connect_timeout:g} s ({type(exc).__name__}: {exc}); start one with "
                        "`dask scheduler` and point --scheduler at the address it prints"
                    ) from None
            else:
                import dask

                resources = {"GPU": 1} if _cuda_count() else None
                # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, so glibc hands back
                # and page-faults in every large buffer again: the batched per-sample gradients
                # ran 1.5-1.8x slower in such workers; None leaves glibc's own policy
                with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                    self._cluster = LocalCluster(
                        n_workers=self.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        resources=resources,
                    )
                self._client = Client(self._cluster)
        return self._client

    def run(
        self,
        tasks: Sequence[Task],
        *,
        run_dir: str | None,
        resume: bool,
        plugins: Sequence[str],
        on_done: Callable,
        one_at_a_time: bool = False,
    ) -> None:
        from distributed import as_completed

        client = self.client

        def submit(task: Task):
            return client.submit(
                execute,
                task,
                run_dir,
                resume,
                list(plugins),
                key=f"{task.name}-{os.getpid()}-{id(task):x}",
                pure=False,
                resources={"GPU": 1} if task.gpu else None,
            )

        if one_at_a_time:
            for i, task in enumerate(tasks):
                fut = submit(task)
                try:
                    rows = fut.result()
                except Exception as exc:
                    raise _failed(task, exc, len(tasks) - i) from exc
                on_done(task, rows)
            return
        futures = {submit(t): t for t in tasks}
        left = len(futures)
        try:
            for fut in as_completed(list(futures)):
                task = futures[fut]
                try:
                    rows = fut.result()
                except Exception as exc:
                    raise _failed(task, exc, left) from exc
                left -= 1
                on_done(task, rows)
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def describe(self) -> dict:
        info = {"executor": "dask", "scheduler": self.scheduler or "LocalCluster"}
        if self.scheduler is None:
            info["workers"] = self.workers
        return info

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _threads_now() -> tuple[int, int | None]:
    import torch

    try:
        import numba

        return torch.get_num_threads(), numba.get_num_threads()
    except ImportError:  # pragma: no cover
        return torch.get_num_threads(), None


def _restore_threads(before: tuple[int, int | None]) -> None:
    import torch

    torch_threads, numba_threads = before
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    if numba_threads is not None:
        import numba

        if numba.get_num_threads() != numba_threads:
            numba.set_num_threads(numba_threads)


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        return 0


def make_executor(executor: str = "local", *, workers: int = 1, scheduler: str | None = None):
    """The executor of ``--executor``/``--workers``/``--scheduler``.

    Raises:
        ValueError: an unknown executor, or ``workers`` < 1.
        ExecutorError: Dask is missing.
    """
    if scheduler is not None:
        executor = "dask"
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if executor == "dask":
        return Dask(scheduler=scheduler, workers=workers)
    return InProcess() if workers == 1 else LocalProcesses(workers)
