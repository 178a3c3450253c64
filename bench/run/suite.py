"""The whole suite: variance, speed and convergence benchmarks into one run directory, then a report.

``elbobench run --quick`` is the README's main job: on the embedded ``digits``
data, with the numba and torch backends and no torch.compile warm-ups, it runs

* the variance benchmark for every estimator and every control variate of
  ``score_function`` at initialisation and after a short training;
* the kernel benchmarks at two sizes and the estimator/training throughput;
* convergence for ``reparam``, ``stl``, ``score_function`` (none and
  leave-one-out), ``iwae``, ``dreg`` and ``vimco``, one seed, a few hundred steps,
  with the test log-likelihood by importance sampling with k = 100;

appending every finished configuration to ``<out>/results.csv``, then builds the
report (:func:`bench.report.build_report`). It is sized to finish within 5
minutes on a 2-core CPU.

:func:`build_plan` turns the resolved options into the three grids;
:func:`run_suite` runs them into a run directory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

import estimators as estimators_mod
from bench.measure import speed as speed_mod
from bench.measure import train as train_mod
from bench.measure import variance as var_mod
from bench.results import ResultsWriter, to_frame
from bench.run.tasks import run_tasks

#: The quick preset: small enough for a 2-core CPU in under 5 minutes.
QUICK = {
    "variance_points": (0, 100),
    "variance_max_replicates": 32,  # the cap on the R a pilot chooses per configuration
    "variance_target_rel_bias": 0.25,  # the relative bias that R should detect
    "variance_batch": 32,
    "cv_warmup": 50,
    "train_steps": 300,
    "train_batch": 50,
    "multi_k": 5,
    # convergence with a 95% interval across seeds: two, as three did not fit the
    # 3 minutes of variance and convergence with a cold numba cache on 2 cores
    "train_seeds": (0, 1),
    "workers": 2,  # worker processes where the machine has the cores
    "is_k": 100,
    "kernel_sizes": ((256, 64), (4096, 256)),
    "speed_estimators": ("reparam",),
    "speed_batch": (100,),
}

PARTS = ("variance", "speed", "train", "report")


def build_plan(
    *,
    dataset: str,
    estimators: list[str],
    control_variates: list[str],
    backends: list[str],
    seeds: list[int],
    train_estimators: list[str],
    train_control_variates: list[str],
    steps: int | None = None,
    replicates: int | None = None,
    is_k: int | None = None,
    model: str = "default",
    threads: int | None = None,
    quick: bool = False,
    skip: set[str] | frozenset[str] = frozenset(),
) -> dict:
    """The variance, training and speed grids of one suite run.

    Args:
        dataset: the registered dataset every part runs on.
        estimators, control_variates: the variance grid's estimators (each that
            takes a control variate runs with every one of ``control_variates``).
        backends: kernel backends every part runs on.
        seeds: training seeds (the variance grid uses the first).
        train_estimators, train_control_variates: the convergence grid's.
        steps: training steps (default the quick preset's); the variance grid is
            measured at step 0 and at ``min(100, steps)``.
        replicates: R per variance configuration (default: chosen by a pilot, at most the
            quick preset's cap).
        is_k: importance samples of the test log-likelihood (default 100).
        model: a registered model, for the variance and convergence grids.
        threads: torch and numba threads of every configuration (None: the process's).
        quick: the variance grid on the first backend only (the backends draw the same
            noise, so their statistics agree to rounding), the kernels timed without
            ``torch.compile`` and with fewer repeats.
        skip: parts not to run, from :data:`PARTS`.

    Returns:
        ``{"skip", "dataset", "backends", "seeds", "variance": [VarianceConfig],
        "train": [TrainConfig], "speed": {speed_benchmark keyword arguments}}``.
    """
    bad = set(skip) - set(PARTS)
    if bad:
        raise ValueError(f"skip: unknown part {sorted(bad)[0]!r}; expected some of {list(PARTS)}")
    if replicates is not None and replicates < 2:
        raise ValueError(f"replicates: got {replicates}; expected an integer >= 2")
    if is_k is not None and is_k < 0:
        raise ValueError(f"is_k: got {is_k}; expected a non-negative integer")
    steps = steps or QUICK["train_steps"]
    var_grid = var_mod.configs(
        problems=[dataset],
        estimators=estimators,
        control_variates=control_variates,
        # the backends draw the same noise, so their variances agree; quick measures one
        backends=backends[:1] if quick else backends,
        num_samples=[1],
        train_steps=sorted({0, min(QUICK["variance_points"][1], steps)}),
        seeds=seeds[:1],
        replicates=replicates,
        max_replicates=QUICK["variance_max_replicates"],
        target_rel_bias=QUICK["variance_target_rel_bias"],
        batch_size=QUICK["variance_batch"],
        cv_warmup=QUICK["cv_warmup"],
        model=model,
        threads=threads,
    )
    train_kw = dict(
        datasets=[dataset],
        control_variates=train_control_variates,
        backends=backends,
        seeds=seeds,
        steps=steps,
        batch_size=QUICK["train_batch"],
        eval_every=max(1, steps // 10),
        is_k=is_k if is_k is not None else QUICK["is_k"],
        checkpoint_every=max(1, steps // 3),
        model=model,
        threads=threads,
    )
    # the K-sample bounds train with K = multi_k samples (at K = 1 iwae is the ELBO
    # with a Monte Carlo KL and dreg equals stl); the others with one sample
    multi = [e for e in train_estimators if estimators_mod.estimator_class(e).multi_sample]
    single = [e for e in train_estimators if e not in multi]
    train_grid = train_mod.configs(estimators=single, **train_kw) if single else []
    if multi:
        train_grid += train_mod.configs(estimators=multi, num_samples=QUICK["multi_k"], **train_kw)
    speed_kw = {
        "dataset": dataset,
        "estimators": list(QUICK["speed_estimators"]),
        "backends": backends,
        "batch_sizes": list(QUICK["speed_batch"]),
        "kernel_sizes": QUICK["kernel_sizes"],
        # quick: no torch.compile (its ~10 s warm-ups would dominate the budget)
        "kernel_backends": backends if quick else None,
        "kernel_options": {"repeats": 10} if quick else None,
        "repeats": 10 if quick else 20,
        "threads": threads,
    }
    return {
        "skip": set(skip),
        "dataset": dataset,
        "backends": list(backends),
        "seeds": list(seeds),
        "variance": var_grid,
        "train": train_grid,
        "speed": speed_kw,
    }


def planned_configs(p: dict) -> list[dict]:
    """``[{"config_hash", "label"}]`` of the variance and train configurations (for the report)."""
    from bench.results import config_hash

    out = []
    if "variance" not in p["skip"]:
        for c in p["variance"]:
            label = f"variance {c.problem} step {c.train_step} {c.estimator}/{c.control_variate}/{c.backend} S={c.num_samples}"
            out.append({"config_hash": config_hash(c.key()), "label": label})
    if "train" not in p["skip"]:
        for c in p["train"]:
            label = f"train {c.dataset} {c.estimator}/{c.control_variate}/{c.backend} seed {c.seed}"
            out.append({"config_hash": config_hash(c.key()), "label": label})
    return out


def save_images(run_dir: Path, dataset_name: str, backend: str, seed: int = 0, steps: int = 300) -> None:
    """Decoded samples and reconstructions of a reparam-trained model for the report's image grids."""
    import torch

    from bench import report
    from bench.problems import datasets as ds_mod
    from bench.results import load_checkpoint

    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    data = ds_mod.load(dataset_name, seed=0, binarize="dynamic")
    from bench.problems import models as models_mod

    model = None
    for path in ckpts:
        state = load_checkpoint(path)
        cfg = state.get("config", {})
        if cfg.get("estimator") == "reparam" and cfg.get("backend") == backend and cfg.get("seed") == seed:
            model = models_mod.build_model(data, model=cfg.get("model", "default"), seed=seed)
            model.load_state_dict(state["model"])
            break
    if model is None or data.likelihood != "bernoulli" or len(data.image_shape) != 2:
        return
    h, w = data.image_shape
    with torch.no_grad():
        z = torch.randn(64, model.z_dim, generator=torch.Generator().manual_seed(seed))
        samples = torch.sigmoid(model.decode(z)).reshape(-1, h, w)
        x = data.test[:32]
        mu, _ = model.encode(x)
        recon = torch.sigmoid(model.decode(mu)).reshape(-1, h, w)
    report.save_image_grid_arrays(run_dir, "samples__reparam", samples)
    report.save_image_grid_arrays(run_dir, "originals__reparam", x.reshape(-1, h, w))
    report.save_image_grid_arrays(run_dir, "reconstructions__reparam", recon)


def suite_tasks(plan: dict) -> list:
    """The plan's tasks: variance and training (statistical), then the speed part's timings."""
    tasks = []
    if "variance" not in plan["skip"]:
        tasks += var_mod.variance_tasks(plan["variance"])
    if "train" not in plan["skip"]:
        tasks += train_mod.train_tasks(plan["train"])
    if "speed" not in plan["skip"]:
        tasks += speed_mod.speed_tasks(**plan["speed"])
    return tasks


def run_suite(
    plan: dict, writer: ResultsWriter, *, resume: bool = False, progress: bool = True, log=None, executor=None
) -> dict:
    """Run the plan's tasks into ``writer``'s run directory, then build the report.

    The statistical tasks (variance, training) go to ``executor`` together; the
    timings (speed) follow, one at a time (:func:`bench.run.tasks.run_tasks`).

    Args:
        plan: from :func:`build_plan`.
        writer: the run's results writer (its directory is the run directory).
        resume: skip finished configurations and continue training from checkpoints.
        progress: progress bars.
        log: ``log(message)`` for one line per finished phase (default: stderr).
        executor: where the tasks run (:func:`bench.run.executors.make_executor`; default this process).

    Returns:
        ``{"frames": {part: DataFrame}, "timings": {phase: seconds}, "report": path or None}``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = writer.path.parent
    var_mod.reset_cache()
    timings: dict[str, float] = {}
    rows = run_tasks(
        suite_tasks(plan), writer=writer, executor=executor, resume=resume, progress=progress, desc="run",
        timings=timings, log=log,
    )  # fmt: skip
    df = to_frame(rows)
    frames = {part: df[df["benchmark"] == part] for part in ("variance", "speed", "train") if part not in plan["skip"]}
    if "train" not in plan["skip"]:
        save_images(out, plan["dataset"], plan["backends"][0], plan["seeds"][0])
    report_path = None
    if "report" not in plan["skip"]:
        from bench.report import build_report

        t = time.perf_counter()
        report_path = build_report(out)
        timings["report"] = time.perf_counter() - t
    return {"frames": frames, "timings": timings, "report": report_path}


def summary(frames: dict[str, pd.DataFrame]) -> str:
    """The one-screen summary: a short table per benchmark."""
    out = []
    df = frames.get("variance")
    if df is not None and not df.empty:
        sub = df[(df.metric.isin(["total_variance", "snr", "variance_x_seconds"])) & (df.backend == df.backend.iloc[0])]
        t = sub.pivot_table(index=["step", "estimator", "control_variate"], columns="metric", values="value")
        out.append(f"== gradient variance ({df.problem.iloc[0]}, backend {df.backend.iloc[0]}) ==")
        out.append(t.to_string(float_format=lambda v: f"{v:.3g}"))
    df = frames.get("speed")
    if df is not None and not df.empty:
        sub = df[df.metric.isin(["examples_per_s", "kernel_share"]) & (df.benchmark == "speed")]
        if not sub.empty:
            t = sub.pivot_table(index=["estimator", "size"], columns=["metric", "backend"], values="value")
            out.append("== throughput ==")
            out.append(t.to_string(float_format=lambda v: f"{v:,.3g}"))
    df = frames.get("train")
    if df is not None and not df.empty:
        out.append("== convergence ==")
        out.append(train_mod.summary(df))
    return "\n".join(out) if out else "(nothing run)"
