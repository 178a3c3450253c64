"""Throughput benchmark: kernels, estimator steps and training examples per second, per backend.

Three parts, all rows in the results schema (``benchmark="speed"``):

* kernel ops against torch eager, torch.compile and copy bandwidth:
  :func:`bench.measure.kernel_speed.kernel_speed` (the backend issues' benchmark);
* per estimator x backend on the dataset's default model at batch size B:
  ``steps_per_s`` (one ``vae_loss`` + ``backward``, op ``"estimate"``) and
  ``examples_per_s`` (the same plus the optimizer step, op ``"train_step"``),
  medians over repeats with p20/p50/p80 of the per-step time in ``ms``;
* ``kernel_share``: the fraction of a training step spent in kernel ops. One step
  is run with the public kernel API wrapped to record every call's inputs; each
  recorded call is then replayed alone (forward and backward, with the same
  inputs and which of them need gradients) and timed; the share is the sum of the
  replayed medians over the median step time. Replaying leaves out the ops'
  share of cache effects, so it is an estimate (stated next to the number).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

import kernels
from bench.measure.timing import quantile, quantiles, time_call, time_round_robin
from bench.problems import datasets as ds_mod
from bench.problems import models as models_mod
from bench.results import FIELDS, Result, ResultsWriter, make_result, to_frame
from bench.run.tasks import Task, register_kind, run_tasks

__all__ = ["estimator_speed", "kernel_profile", "speed_benchmark", "time_interleaved"]


PROFILED_OPS = ("normal_rsample", "normal_kl_std", "normal_rsample_kl", "normal_log_prob", "bernoulli_log_prob")


def _step_fns(est, model, x, num_samples: int, seed: int):
    from bench.measure.train import make_optimizer, step_noise

    with torch.no_grad():
        z_dim = int(model.encode(x[:1])[0].shape[-1])
    eps = step_noise(est, num_samples, x.shape[0], z_dim, seed)
    optim = make_optimizer("adam", model.parameters(), 1e-3)

    def estimate():
        model.zero_grad(set_to_none=True)
        loss, _ = est.vae_loss(model, x, num_samples=num_samples, eps=eps)
        loss.backward()

    def train_step():
        optim.zero_grad(set_to_none=True)
        loss, _ = est.vae_loss(model, x, num_samples=num_samples, eps=eps)
        loss.backward()
        optim.step()

    return estimate, train_step


def kernel_profile(est, model, x, *, num_samples: int = 1, repeats: int = 10, seed: int = 0) -> dict[str, float]:
    """Share of one training step spent in kernel ops (see the module docstring).

    Returns:
        ``{"step_s", "kernel_s", "kernel_share", "<op>_s" per op}`` (medians, seconds).
    """
    _, train_step = _step_fns(est, model, x, num_samples, seed)
    calls: list[tuple[str, list, dict]] = []
    originals = {op: getattr(kernels, op) for op in PROFILED_OPS}

    def wrap(op):
        def recorder(*args, **kwargs):
            snap = [(a.detach().clone(), a.requires_grad) if isinstance(a, torch.Tensor) else (a, False) for a in args]
            kw = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            calls.append((op, snap, kw))
            return originals[op](*args, **kwargs)

        return recorder

    train_step()  # warm-up (compilation) outside the recording
    for op in PROFILED_OPS:
        setattr(kernels, op, wrap(op))
    try:
        train_step()
    finally:
        for op, fn in originals.items():
            setattr(kernels, op, fn)
    step = quantile(time_call(train_step, repeats=repeats, warmup=1), 0.5)
    per_op: dict[str, float] = {}
    for op, snap, kw in calls:
        fn = originals[op]

        def replay(fn=fn, snap=snap, kw=kw):
            args = [a.clone().requires_grad_(True) if rg else a for a, rg in snap]
            out = fn(*args, **kw)
            outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
            if outs:
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

        t = quantile(time_call(replay, repeats=repeats, warmup=1), 0.5)
        per_op[f"{op}_s"] = per_op.get(f"{op}_s", 0.0) + t
    kernel = sum(per_op.values())
    return {"step_s": step, "kernel_s": kernel, "kernel_share": kernel / step if step > 0 else float("nan"), **per_op}


def time_interleaved(fns: dict, *, repeats: int = 20, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[backend]()``, the calls interleaved (balanced orders), each under its backend.

    :func:`bench.measure.timing.time_round_robin` with ``kernels.use_backend`` around each call.
    """
    return time_round_robin(fns, repeats=repeats, warmup=warmup, around=kernels.use_backend)


def _estimator_key(dataset, e, b, bs, s, repeats, profile, seed, model, threads) -> dict:
    key = {
        "benchmark": "speed",
        "part": "estimator",
        "dataset": dataset,
        "estimator": e,
        "backend": b,
        "batch_size": bs,
        "num_samples": s,
        "repeats": repeats,
        "profile": profile,
        "seed": seed,
    }
    if model != "default":
        key["model"] = model
    if threads is not None:
        key["threads"] = threads
    return key


def estimator_speed_tasks(
    *,
    dataset: str = "digits",
    estimators: Sequence[str] = ("reparam",),
    backends: Sequence[str] = ("torch",),
    batch_sizes: Sequence[int] = (100,),
    num_samples: int = 1,
    repeats: int = 20,
    profile: bool = True,
    seed: int = 0,
    model: str = "default",
    threads: int | None = None,
) -> list[Task]:
    """One timing task per (estimator, batch size): its backends timed interleaved (:mod:`bench.run.tasks`)."""
    from bench.measure.train import make_estimator

    tasks = []
    for e in estimators:
        s = max(num_samples, make_estimator(e).min_samples)
        for bs in batch_sizes:
            group = list(dict.fromkeys(backends))  # a backend named twice is timed once
            keys = tuple(_estimator_key(dataset, e, b, bs, s, repeats, profile, seed, model, threads) for b in group)
            config = {"part": "estimator", "dataset": dataset, "estimator": e, "backends": group, "batch_size": bs,
                      "num_samples": s, "repeats": repeats, "profile": profile, "seed": seed, "model": model}  # fmt: skip
            tasks.append(Task("speed", config, keys, threads=threads, timing=True, label=f"speed {e} B={bs}"))
    return tasks


def _estimator_group(c: dict, keys: Sequence[dict]) -> list[Result]:
    """Time one estimator at one batch size on each backend (interleaved, ``keys`` in the backends' order)."""
    from bench.measure.train import make_estimator

    dataset, e, bs, s, seed = c["dataset"], c["estimator"], c["batch_size"], c["num_samples"], c["seed"]
    repeats, profile = c["repeats"], c["profile"]
    data = ds_mod.load(dataset, seed=0, binarize="static")
    setups = {}
    for b, key in zip(c["backends"], keys, strict=True):
        est = make_estimator(e)
        n = data.train.shape[0]
        x = data.train[torch.arange(bs) % n]
        model_ = models_mod.build_model(data, model=c["model"], seed=seed)
        with kernels.use_backend(b):
            estimate, train_step = _step_fns(est, model_, x, s, seed)
        setups[b] = {"est": est, "key": key, "x": x, "model": model_, "fns": (estimate, train_step)}
    timings = {}
    for i, (op, per) in enumerate((("estimate", 1), ("train_step", bs))):
        timed = time_interleaved({b: v["fns"][i] for b, v in setups.items()}, repeats=repeats, warmup=2)
        for b, ts in timed.items():
            timings[(b, op)] = (ts, per)
    rows: list[Result] = []
    for b, v in setups.items():
        common = {
            "benchmark": "speed",
            "problem": dataset,
            "estimator": e,
            "backend": b,
            "size": f"B={bs}",
            "seed": seed,
        }
        key = v["key"]
        for op in ("estimate", "train_step"):
            ts, per = timings[(b, op)]
            q = quantiles(ts, 1e3)
            rows.append(make_result(key, **common, op=op, metric="ms", unit="ms", value=q["p50"], **q))
            metric, unit = ("steps_per_s", "steps/s") if per == 1 else ("examples_per_s", "examples/s")
            rows.append(make_result(key, **common, op=op, metric=metric, unit=unit, value=per / (q["p50"] / 1e3)))
        if profile:
            with kernels.use_backend(b):
                prof = kernel_profile(
                    v["est"], v["model"], v["x"], num_samples=s, repeats=max(3, repeats // 2), seed=seed
                )
            rows.append(make_result(key, **common, op="train_step", metric="kernel_share", unit="fraction",
                                    value=prof["kernel_share"]))  # fmt: skip
            for k, val in prof.items():
                if k.endswith("_s"):
                    rows.append(make_result(key, **common, op=k[:-2], metric="profile_ms", unit="ms", value=val * 1e3))
    return rows


def estimator_speed(
    *,
    dataset: str = "digits",
    estimators: Sequence[str] = ("reparam",),
    backends: Sequence[str] = ("torch",),
    batch_sizes: Sequence[int] = (100,),
    num_samples: int = 1,
    repeats: int = 20,
    profile: bool = True,
    seed: int = 0,
    model: str = "default",
    writer: ResultsWriter | None = None,
    progress: bool = False,
    executor=None,
) -> pd.DataFrame:
    """Estimator steps/s, training examples/s and the kernel share per estimator x backend x batch size.

    The backends of one (estimator, batch size) are timed interleaved
    (:func:`time_interleaved`), so load on a shared machine hits them alike; each
    configuration's rows are still written on their own (resume skips finished ones).

    Args:
        dataset: dataset whose model is timed.
        estimators, backends, batch_sizes: the grid.
        num_samples: S per estimate (raised to the estimator's ``min_samples``).
        repeats: timed steps per measurement.
        profile: also measure :func:`kernel_profile`.
        seed: model and noise seed.
        model: a registered model (:func:`bench.problems.models.register_model`).
        writer: append each configuration's rows as it finishes (skipping done ones).
        progress: tqdm bar on stderr.
        executor: where the timings run, one at a time (default this process).

    Returns:
        The rows as a DataFrame in the results schema.
    """
    tasks = estimator_speed_tasks(
        dataset=dataset, estimators=estimators, backends=backends, batch_sizes=batch_sizes, num_samples=num_samples,
        repeats=repeats, profile=profile, seed=seed, model=model,
    )  # fmt: skip
    return to_frame(run_tasks(tasks, writer=writer, executor=executor, progress=progress, desc="speed"))


def kernel_rows(df: pd.DataFrame) -> list[Result]:
    """Rows of a results-schema DataFrame as :class:`Result` objects (for the writer)."""
    out = []
    for rec in df.to_dict("records"):
        vals = {k: rec[k] for k in FIELDS if k in rec}
        out.append(Result(**vals))
    return out


def kernel_speed_task(
    *,
    sizes: Sequence,
    backends: Sequence[str],
    options: dict | None = None,
    threads: int | None = None,
) -> Task:
    """The kernel cells as one timing task (:func:`bench.measure.kernel_speed.kernel_speed`)."""
    key = {"benchmark": "speed", "part": "kernels", "sizes": [list(s) for s in sizes], "backends": list(backends),
           **(options or {})}  # fmt: skip
    if threads is not None:
        key["threads"] = threads
    config = {
        "part": "kernels",
        "sizes": [tuple(s) for s in sizes],
        "backends": list(backends),
        "options": options or {},
    }
    return Task("speed", config, (key,), threads=threads, timing=True, label="speed kernels")


def _run_task(task: Task, run_dir, resume) -> list[Result]:
    c = task.config
    if c["part"] == "kernels":
        from dataclasses import replace

        from bench.measure.kernel_speed import kernel_speed

        kdf = kernel_speed(sizes=c["sizes"], backends=c["backends"], **c["options"])
        # the kernel part is done under one hash; each row keeps its own config text
        return [replace(r, config_hash=task.hashes[0]) for r in kernel_rows(kdf)]
    return _estimator_group(c, task.keys)


register_kind("speed", _run_task)


def speed_benchmark(
    *,
    dataset: str = "digits",
    estimators: Sequence[str] = ("reparam",),
    backends: Sequence[str] = ("torch",),
    batch_sizes: Sequence[int] = (100,),
    kernel_sizes: Sequence | None = ((256, 64), (4096, 256)),
    kernel_backends: Sequence[str] | None = None,
    kernel_options: dict | None = None,
    repeats: int = 20,
    model: str = "default",
    threads: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    writer: ResultsWriter | None = None,
    progress: bool = False,
    executor=None,
) -> pd.DataFrame:
    """Kernel benchmarks (if ``kernel_sizes``) plus :func:`estimator_speed`; rows as a DataFrame.

    Args:
        kernel_backends: backends of the kernel benchmarks (default: ``backends`` plus
            ``"torch_compile"``); ``kernel_options`` go to
            :func:`bench.measure.kernel_speed.kernel_speed` (e.g. ``repeats``).
        threads: torch and numba threads of every timing (None: the process's).
        executor: where the timings run, one at a time (default this process).
        Others: as :func:`estimator_speed`.
    """
    if writer is None and out is not None:
        writer = ResultsWriter(out, resume=resume)
    return to_frame(run_tasks(speed_tasks(
        dataset=dataset, estimators=estimators, backends=backends, batch_sizes=batch_sizes, kernel_sizes=kernel_sizes,
        kernel_backends=kernel_backends, kernel_options=kernel_options, repeats=repeats, model=model, threads=threads,
    ), writer=writer, executor=executor, progress=progress, desc="speed"))  # fmt: skip


def speed_tasks(
    *,
    dataset: str = "digits",
    estimators: Sequence[str] = ("reparam",),
    backends: Sequence[str] = ("torch",),
    batch_sizes: Sequence[int] = (100,),
    kernel_sizes: Sequence | None = ((256, 64), (4096, 256)),
    kernel_backends: Sequence[str] | None = None,
    kernel_options: dict | None = None,
    repeats: int = 20,
    model: str = "default",
    threads: int | None = None,
) -> list[Task]:
    """The timing tasks of :func:`speed_benchmark`: the kernel cells, then one per (estimator, batch size)."""
    tasks = []
    if kernel_sizes:
        kb = list(kernel_backends) if kernel_backends is not None else [*backends, "torch_compile"]
        tasks.append(kernel_speed_task(sizes=kernel_sizes, backends=kb, options=kernel_options, threads=threads))
    if estimators:
        tasks += estimator_speed_tasks(
            dataset=dataset, estimators=estimators, backends=backends, batch_sizes=batch_sizes, repeats=repeats,
            model=model, threads=threads,
        )  # fmt: skip
    return tasks


def summary(df: pd.DataFrame) -> str:
    """One-screen table of the throughput rows."""
    if df.empty:
        return "(no speed results)"
    want = ["steps_per_s", "examples_per_s", "kernel_share"]
    sub = df[df.metric.isin(want)]
    lines = []
    if not sub.empty:
        t = sub.pivot_table(index=["problem", "estimator", "size"], columns=["metric", "backend"], values="value")
        lines.append(t.to_string(float_format=lambda v: f"{v:,.3g}"))
    k = df[(df.benchmark != "speed") | (~df.metric.isin([*want, "ms", "profile_ms"]))]
    if not k.empty:
        lines.append(f"(+ {len(k)} kernel benchmark rows)")
    return "\n".join(lines) or "(no speed results)"
