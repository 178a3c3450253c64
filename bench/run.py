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
report (:func:`bench.report.build_report`) when that module is present. It is
sized to finish within 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from bench import options as opt
from bench import speed as speed_mod
from bench import train as train_mod
from bench import variance as var_mod
from bench.results import Manifest, ResultsWriter

MULTI_SAMPLE = ("iwae", "dreg", "vimco")

EXAMPLES = """examples:
  elbobench run --quick                                   # the README's main job, < 5 min on 2 cores
  elbobench run --quick --out reports/mine                # choose the run directory
  elbobench run --quick --out reports/mine --resume       # finish an interrupted run
  elbobench run --dataset mnist5k --steps 2000 --seeds 0-2 --backends numba,torch
"""

QUICK = {
    "variance_points": (0, 100),
    "variance_replicates": 32,
    "variance_batch": 32,
    "cv_warmup": 50,
    "train_steps": 300,
    "train_batch": 50,
    "multi_k": 5,
    "is_k": 100,
    "kernel_sizes": ((256, 64), (4096, 256)),
    "speed_estimators": ("reparam",),
    "speed_batch": (100,),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    opt.add_common(parser)
    g = parser.add_argument_group("run")
    g.add_argument("--skip", default="", help="comma-separated parts to skip: variance,speed,train,report")
    g.add_argument("--is-k", type=int, default=None, help="importance samples for the test log-likelihood")
    g.add_argument("--replicates", type=int, default=None, help="R estimates per variance configuration")


def plan(args: argparse.Namespace) -> dict:
    """Validate every option and build the three grids (raises :class:`OptionError`)."""
    skip = set(opt.parse_list(args.skip, "--skip")) if args.skip else set()
    bad = skip - {"variance", "speed", "train", "report"}
    if bad:
        raise opt.OptionError(f"--skip: unknown part {sorted(bad)[0]!r}; expected some of variance,speed,train,report")
    all_est = opt.estimator_names()
    cv_default = ",".join(opt.CONTROL_VARIATES)
    saved_cv = args.control_variates
    args.control_variates = saved_cv or cv_default
    common = opt.resolve_common(args, default_estimators=",".join(all_est))
    args.control_variates = saved_cv
    if args.is_k is not None and args.is_k < 0:
        raise opt.OptionError(f"--is-k: got {args.is_k}; expected a non-negative integer")
    replicates = args.replicates if args.replicates is not None else QUICK["variance_replicates"]
    if replicates < 2:
        raise opt.OptionError(f"--replicates: got {replicates}; expected an integer >= 2")
    steps = args.steps or QUICK["train_steps"]
    dataset = common["datasets"][0]
    # convergence: the quick preset's estimators (those of --estimators when given)
    if args.estimators:
        train_est = common["estimators"]
        train_cv = opt.validate_control_variates(opt.parse_list(saved_cv or "none,leave_one_out", "--control-variates"))
    else:
        train_est = [e for e in train_mod.QUICK_ESTIMATORS if e in all_est]
        train_cv = ["none", "leave_one_out"]
    var_grid = var_mod.configs(
        problems=[dataset],
        estimators=common["estimators"],
        control_variates=common["control_variates"],
        backends=common["backends"],
        num_samples=[1],
        train_steps=sorted({0, min(QUICK["variance_points"][1], steps)}),
        seeds=common["seeds"][:1],
        replicates=replicates,
        batch_size=QUICK["variance_batch"],
        cv_warmup=QUICK["cv_warmup"],
    )
    train_kw = dict(
        datasets=[dataset],
        control_variates=train_cv,
        backends=common["backends"],
        seeds=common["seeds"],
        steps=steps,
        batch_size=QUICK["train_batch"],
        eval_every=max(1, steps // 10),
        is_k=args.is_k if args.is_k is not None else QUICK["is_k"],
        checkpoint_every=max(1, steps // 3),
    )
    # the K-sample bounds train with K = multi_k samples (at K = 1 iwae is the ELBO
    # with a Monte Carlo KL and dreg equals stl); the others with one sample
    single = [e for e in train_est if e not in MULTI_SAMPLE]
    multi = [e for e in train_est if e in MULTI_SAMPLE]
    train_grid = train_mod.configs(estimators=single, **train_kw) if single else []
    if multi:
        train_grid += train_mod.configs(estimators=multi, num_samples=QUICK["multi_k"], **train_kw)
    speed_kw = {
        "dataset": dataset,
        "estimators": list(QUICK["speed_estimators"]),
        "backends": common["backends"],
        "batch_sizes": list(QUICK["speed_batch"]),
        "kernel_sizes": QUICK["kernel_sizes"],
        # --quick: no torch.compile (its ~10 s warm-ups would dominate the budget)
        "kernel_backends": common["backends"] if args.quick else None,
        "kernel_options": {"repeats": 10} if args.quick else None,
        "repeats": 10 if args.quick else 20,
    }
    return {"common": common, "skip": skip, "variance": var_grid, "train": train_grid, "speed": speed_kw}


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

    from bench import datasets as ds_mod
    from bench import report

    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    data = ds_mod.load(dataset_name, seed=0, binarize="dynamic")
    from bench import models as models_mod

    model = None
    for path in ckpts:
        state = torch.load(path, weights_only=False)
        cfg = state.get("config", {})
        if cfg.get("estimator") == "reparam" and cfg.get("backend") == backend and cfg.get("seed") == seed:
            model = models_mod.build_model(data, seed=seed)
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


def main(args: argparse.Namespace) -> int:
    prog = "elbobench run"
    try:
        p = plan(args)
        out = p["common"]["out"]
        writer = ResultsWriter(out, resume=args.resume)
    except (opt.OptionError, ValueError, FileExistsError) as exc:
        return opt.fail(prog, exc)
    progress = not args.no_progress
    Manifest.collect(benchmark="run", quick=bool(args.quick), planned_configs=planned_configs(p)).write(out)
    n = len(p["variance"]) + len(p["train"])
    print(f"{prog}: {n} configurations + speed -> {writer.path}", file=sys.stderr)
    t0 = time.perf_counter()
    frames, timings = {}, {}
    for part in ("variance", "speed", "train"):
        if part in p["skip"]:
            continue
        t = time.perf_counter()
        if part == "variance":
            frames[part] = var_mod.variance_benchmark(p["variance"], writer=writer, progress=progress)
        elif part == "speed":
            frames[part] = speed_mod.speed_benchmark(**p["speed"], writer=writer, progress=progress)
        else:
            frames[part] = train_mod.train_benchmark(p["train"], writer=writer, resume=args.resume, progress=progress)
        timings[part] = time.perf_counter() - t
        print(f"{prog}: {part} done in {timings[part]:.1f} s", file=sys.stderr)
    if "train" not in p["skip"]:
        try:
            save_images(Path(out), p["common"]["datasets"][0], p["common"]["backends"][0], p["common"]["seeds"][0])
        except ImportError:
            pass
    print(summary(frames))
    report_path = None
    if "report" not in p["skip"]:
        try:
            from bench.report import build_report
        except ImportError:
            build_report = None
        if build_report is not None:
            t = time.perf_counter()
            report_path = build_report(out)
            timings["report"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    print(f"\ntotal {total:.0f} s ({parts}); results: {writer.path}")
    if report_path is not None:
        print(f"report: {report_path}")
    return 0


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
