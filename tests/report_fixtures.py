"""Synthetic run directories for the report tests.

:func:`build_run` writes a small but complete run — ``results.csv`` rows of all
three benchmarks made with :func:`bench.results.make_result`, ``manifest.json``
with ``planned_configs`` and ``samples.npz`` — whose values are deterministic
functions of the configuration, so two runs built with the same arguments are
identical and a regression can be planted by ``scale``.
:func:`write_benchmark_json` writes a pytest-benchmark JSON file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench.report import save_image_grid_arrays
from bench.results import Manifest, ResultsWriter, make_result

VARIANCE_PROBLEMS = ("digits", "ppca")
VARIANCE_ESTIMATORS = (("reparam", "none"), ("score_function", "none"), ("score_function", "leave_one_out"))
VARIANCE_STEPS = (0, 100)
NUM_SAMPLES = (1, 10, 100)
KERNEL_OPS = ("normal_rsample_kl", "bernoulli_log_prob")
KERNEL_SIZES = ("256x64", "4096x1024")
KERNEL_BACKENDS = ("torch", "torch_compile", "numba")
TRAIN_ESTIMATORS = ("reparam", "iwae")
TRAIN_BACKENDS = ("torch", "numba")
TRAIN_SEEDS = (0, 1)
TRAIN_STEPS = tuple(range(0, 201, 50))


def _factor(scale: Mapping | None, metric: str, backend: str) -> float:
    """Multiplier planted for ``(metric, backend)`` or ``metric`` (1 when none)."""
    if not scale:
        return 1.0
    return float(scale.get((metric, backend), scale.get(metric, 1.0)))


def build_run(
    out: str | Path,
    *,
    scale: Mapping | None = None,
    benchmarks: tuple[str, ...] = ("variance", "speed", "train"),
    missing: int = 0,
    images: bool = True,
) -> Path:
    """Write a synthetic run directory.

    Args:
        out: the run directory to create.
        scale: ``{metric: factor}`` or ``{(metric, backend): factor}`` multiplying those
            values (plants a regression or an improvement).
        benchmarks: which benchmarks to write rows for.
        missing: number of extra planned configurations without rows (a partial run).
        images: also write ``samples.npz``.

    Returns:
        The run directory.
    """
    out = Path(out)
    writer = ResultsWriter(out)
    planned = []

    def add(config: dict, rows: list[dict], label: str) -> None:
        results = [make_result(config, device="cpu", **r) for r in rows]
        writer.append(results)
        planned.append({"config_hash": results[0].config_hash, "label": label})

    if "variance" in benchmarks:
        for p_i, problem in enumerate(VARIANCE_PROBLEMS):
            for e_i, (est, cv) in enumerate(VARIANCE_ESTIMATORS):
                for backend in TRAIN_BACKENDS:
                    for s in NUM_SAMPLES:
                        cfg = {"benchmark": "variance", "problem": problem, "estimator": est, "cv": cv}
                        cfg |= {"backend": backend, "num_samples": s}
                        rows = []
                        for step in VARIANCE_STEPS:
                            base = 10.0 ** (e_i + p_i) * (1 + step / 100) / s
                            common = dict(
                                benchmark="variance",
                                problem=problem,
                                estimator=est,
                                control_variate=cv,
                                backend=backend,
                                size=f"S={s}",
                                step=step,
                                seed=0,
                            )
                            vals = {
                                "total_variance": base,
                                "encoder_variance": 0.3 * base,
                                "decoder_variance": 0.7 * base,
                                "snr": 3.0 / math.sqrt(base),
                                "encoder_snr": 2.0 / math.sqrt(base),
                                "variance_x_seconds": base * 1e-3 * s * (0.5 if backend == "numba" else 1.0),
                                "variance_x_evals": base * s,
                            }
                            if problem == "ppca":
                                vals |= {
                                    "bias": 0.01 * base**0.5,
                                    "rel_bias": 0.001 * base**0.5,
                                    "cosine": 1 - 0.01 * e_i,
                                }
                            for metric, v in vals.items():
                                v *= _factor(scale, metric, backend)
                                ci = (0.8 * v, 1.25 * v) if "variance" in metric else (math.nan, math.nan)
                                unit = "grad^2" if metric.endswith("variance") else ""
                                rows.append(
                                    dict(common, metric=metric, unit=unit, value=v, ci_low=ci[0], ci_high=ci[1])
                                )
                        add(cfg, rows, f"variance {problem} {est}+{cv} {backend} S={s}")

    if "speed" in benchmarks:
        for op in (*KERNEL_OPS, "copy"):
            for size in KERNEL_SIZES:
                numel = math.prod(int(t) for t in size.split("x"))
                for b_i, backend in enumerate(("torch",) if op == "copy" else KERNEL_BACKENDS):
                    cfg = {"benchmark": "speed", "op": op, "size": size, "backend": backend}
                    nbytes = 3 * 4 * numel
                    ms = 1e-4 * numel / (1 + b_i) * (0.5 if op == "copy" else 1.0) * 1e-2 + 0.01
                    ms *= _factor(scale, "ms", backend)
                    gbs = nbytes / (ms * 1e-3) / 1e9 * _factor(scale, "GB/s", backend)
                    common = dict(benchmark="speed", problem="", op=op, size=size, backend=backend, seed=0)
                    rows = [
                        dict(common, metric="ms", unit="ms", value=ms, p20=0.95 * ms, p50=ms, p80=1.1 * ms),
                        dict(common, metric="GB/s", unit="GB/s", value=gbs),
                    ]
                    add(cfg, rows, f"speed {op} {size} {backend}")
        for est in TRAIN_ESTIMATORS:
            for b_i, backend in enumerate(TRAIN_BACKENDS):
                cfg = {"benchmark": "speed", "part": "estimator", "estimator": est, "backend": backend}
                common = dict(benchmark="speed", problem="digits", estimator=est, size="B=128", backend=backend)
                eps = 5000.0 * (1 + 0.5 * b_i) * _factor(scale, "examples_per_s", backend)
                step_ms = 128 / eps * 1e3
                ms = dict(metric="ms", unit="ms", p20=0.9 * step_ms, p50=step_ms, p80=1.2 * step_ms)
                rows = [
                    dict(common, op="estimate", value=0.8 * step_ms, **ms | {"p50": 0.8 * step_ms}),
                    dict(common, op="estimate", metric="steps_per_s", unit="steps/s", value=1e3 / (0.8 * step_ms)),
                    dict(common, op="train_step", value=step_ms, **ms),
                    dict(common, op="train_step", metric="examples_per_s", unit="examples/s", value=eps),
                    dict(common, op="train_step", metric="kernel_share", unit="fraction", value=0.3 - 0.1 * b_i),
                    dict(common, op="normal_rsample_kl", metric="profile_ms", unit="ms", value=0.1 * step_ms),
                ]
                add(cfg, rows, f"speed train_step {est} {backend}")

    if "train" in benchmarks:
        for e_i, est in enumerate(TRAIN_ESTIMATORS):
            for b_i, backend in enumerate(TRAIN_BACKENDS):
                for seed in TRAIN_SEEDS:
                    cfg = {"benchmark": "train", "problem": "digits", "estimator": est, "backend": backend}
                    cfg |= {"seed": seed}
                    common = dict(benchmark="train", problem="digits", estimator=est, backend=backend, seed=seed)
                    rows = []
                    for step in TRAIN_STEPS:
                        elbo = -40.0 - 30.0 * math.exp(-step / 60) + e_i - 0.3 * seed
                        elbo *= _factor(scale, "val_elbo", backend)
                        wall = 0.02 * step / (1 + 0.5 * b_i) * _factor(scale, "wall_s", backend)
                        rows += [
                            dict(common, metric="train_elbo", unit="nats", step=step, value=elbo + 0.5),
                            dict(common, metric="val_elbo", unit="nats", step=step, value=elbo),
                            dict(common, metric="wall_s", unit="s", step=step, value=wall),
                        ]
                    last = TRAIN_STEPS[-1]
                    rows.append(dict(common, metric="examples_per_s", unit="examples/s", step=last, value=3000.0))
                    if not (est == "iwae" and seed == 1):  # like the harness: no row when never reached
                        hit = 100
                        t = 0.02 * hit / (1 + 0.5 * b_i)
                        rows.append(dict(common, metric="time_to_target_s", unit="s", step=hit, value=t))
                    test_elbo = -44.0 + e_i - 0.2 * seed
                    test_ll = -42.0 + e_i - 0.2 * seed
                    rows += [
                        dict(
                            common,
                            metric="test_elbo",
                            unit="nats",
                            step=last,
                            value=test_elbo,
                            ci_low=test_elbo - 1.96 * 0.3,
                            ci_high=test_elbo + 1.96 * 0.3,
                        ),
                        dict(
                            common,
                            metric="test_ll",
                            unit="nats",
                            step=last,
                            value=test_ll,
                            ci_low=test_ll - 1.96 * 0.3,
                            ci_high=test_ll + 1.96 * 0.3,
                        ),
                        dict(common, metric="test_ll_se", unit="nats", step=last, value=0.3),
                    ]
                    add(cfg, rows, f"train digits {est} {backend} seed {seed}")

    for i in range(missing):
        planned.append({"config_hash": f"{i:012x}", "label": f"train digits vimco numba seed {i}"})
    Manifest(
        command="elbobench run --quick --out " + str(out),
        cpu="Fixture CPU @ 2.0GHz",
        torch_threads=2,
        backends={"numba": {"threads": 2}},
        extra={"planned_configs": planned},
    ).write(out)

    if images:
        rng = np.random.default_rng(0)
        originals = (rng.random((20, 8, 8)) > 0.5).astype(np.float32)
        save_image_grid_arrays(out, "samples", rng.random((30, 8, 8)))
        save_image_grid_arrays(out, "originals", originals)
        save_image_grid_arrays(out, "reconstructions", 0.8 * originals + 0.1)
    return out


def write_benchmark_json(path: str | Path, *, scale: Mapping | None = None) -> Path:
    """Write a pytest-benchmark JSON file (the format of ``--benchmark-json``) with three tests."""
    benchmarks = []
    for i, name in enumerate(("test_rsample_kl[numba-4096x1024]", "test_rsample_kl[torch-4096x1024]", "test_vae_step")):
        median = 1e-3 * (i + 1) * _factor(scale, "median_s", name)
        stats = {
            "min": 0.9 * median,
            "max": 1.3 * median,
            "mean": 1.02 * median,
            "stddev": 0.05 * median,
            "rounds": 20,
            "median": median,
            "iqr": 0.1 * median,
            "q1": 0.95 * median,
            "q3": 1.05 * median,
            "iqr_outliers": 0,
            "stddev_outliers": 1,
            "outliers": "1;0",
            "ld15iqr": 0.9 * median,
            "hd15iqr": 1.2 * median,
            "ops": 1.0 / (1.02 * median),
            "total": 20 * median,
            "iterations": 1,
        }
        benchmarks.append(
            {
                "group": "kernels" if i < 2 else "train",
                "name": name.split("::")[-1],
                "fullname": f"tests/benchmarks/test_speed.py::{name}",
                "params": None,
                "param": None,
                "extra_info": {"total_variance": 0.5 * (i + 1), "backend": "numba"},
                "options": {"disable_gc": True, "timer": "perf_counter", "min_rounds": 5},
                "stats": stats,
            }
        )
    data = {
        "machine_info": {"node": "fixture", "processor": "x86_64", "cpu": {"count": 2}},
        "commit_info": {"id": "0" * 40, "dirty": False},
        "benchmarks": benchmarks,
        "datetime": "2026-11-25T03:00:00.000000+00:00",
        "version": "5.3.1",
    }
    path = Path(path)
    path.write_text(json.dumps(data, indent=2))
    return path
