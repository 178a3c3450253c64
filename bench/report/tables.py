"""Reading run directories and building the report's pandas tables.

The report reads only files: a run directory's ``results.csv`` (the long-format
schema of :mod:`bench.results`, whose ``schema_version`` is checked),
its ``manifest.json``, and pytest-benchmark JSON files (``pytest --benchmark
--benchmark-json PATH``). It never touches live models or estimators.

:data:`METRICS` is the contract with the harness: the metric names the report
knows, which benchmark writes them, whether higher is better (used to flag
regressions in a comparison) and how to draw them. A metric missing from a run is
simply not drawn; an unknown metric still appears in the comparison table, never
flagged.

Comparison rule (``--compare``): rows of both runs are matched on
:data:`COMPARE_KEY` (seeds averaged). For each shared key the table gives
``ratio = this / other`` and the relative change ``(this - other) / |other|``; a
metric whose :attr:`MetricSpec.better` is ``+1`` (higher is better) regresses
when the change is below ``-threshold``, one with ``-1`` when it is above
``+threshold``; ``0`` is never flagged. Curves over training steps (ELBO, wall
time) are compared at the last step both runs reached.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import MANIFEST_FILE, RESULTS_FILE, SCHEMA_VERSION, check_schema, size_numel


class ReportError(ValueError):
    """Bad input to the report (missing run, wrong schema, nothing to compare)."""


@dataclass(frozen=True)
class MetricSpec:
    """How the report treats one metric name.

    Attributes:
        benchmark: the benchmark that writes it (``variance``, ``speed``, ``train``).
        better: ``+1`` higher is better, ``-1`` lower is better, ``0`` neutral.
        label: axis/table label.
        unit: the unit assumed when a row's ``unit`` column is empty.
        magnitude: compare ``|value|`` (a signed bias is better when nearer 0).
    """

    benchmark: str
    better: int
    label: str
    unit: str = ""
    magnitude: bool = False


#: The metric names the report reads, per benchmark (the harness writes them).
METRICS: dict[str, MetricSpec] = {
    # variance benchmark (bench/measure/variance.py); ci_low/ci_high = bootstrap CI
    "total_variance": MetricSpec("variance", -1, "total gradient variance"),
    "encoder_variance": MetricSpec("variance", -1, "encoder gradient variance"),
    "decoder_variance": MetricSpec("variance", -1, "decoder gradient variance"),
    "snr": MetricSpec("variance", +1, "gradient SNR"),
    "variance_x_seconds": MetricSpec("variance", -1, "variance x s/estimate", "s"),
    "variance_x_evals": MetricSpec("variance", -1, "variance x evals/estimate", "evals"),
    "bias": MetricSpec("variance", -1, "bias vs ground truth", magnitude=True),
    "cosine": MetricSpec("variance", +1, "cosine to true gradient"),
    "rel_bias": MetricSpec("variance", -1, "relative bias", magnitude=True),
    "bias_sq": MetricSpec("variance", -1, "squared bias"),
    "bias_p_value": MetricSpec("variance", 0, "p-value of no bias (one-sided)"),
    "bias_mde": MetricSpec("variance", -1, "smallest detectable relative bias (80% power)"),
    "bias_ci_low": MetricSpec("variance", 0, "bias, 95% interval low end"),
    "bias_ci_high": MetricSpec("variance", 0, "bias, 95% interval high end"),
    "cosine_ci_low": MetricSpec("variance", 0, "cosine, 95% interval low end"),
    "cosine_ci_high": MetricSpec("variance", 0, "cosine, 95% interval high end"),
    "snr_ci_low": MetricSpec("variance", 0, "SNR, 95% interval low end"),
    "snr_ci_high": MetricSpec("variance", 0, "SNR, 95% interval high end"),
    "replicates": MetricSpec("variance", 0, "estimates R", "estimates"),
    "replicates_capped": MetricSpec("variance", 0, "R capped by the budget"),
    "seconds_per_estimate": MetricSpec("variance", -1, "seconds per estimate", "s"),
    "evals_per_estimate": MetricSpec("variance", 0, "function evaluations per estimate", "evals"),
    "grad_norm_sq": MetricSpec("variance", 0, "squared norm of the mean gradient"),
    # per-group variants (encoder_/decoder_ for VAEs, mu_/logvar_ for the toys) of
    # "variance", "snr", "bias", "cosine", ... take the spec of the ungrouped name
    "variance": MetricSpec("variance", -1, "gradient variance"),
    # speed benchmark (bench/measure/speed.py, the GPU CSV as benchmark "gpu_kernels")
    "ms": MetricSpec("speed", -1, "time per call", "ms"),
    "profile_ms": MetricSpec("speed", -1, "time of the op's calls in one step", "ms"),
    "GB/s": MetricSpec("speed", +1, "throughput", "GB/s"),
    "examples_per_s": MetricSpec("speed", +1, "training throughput", "examples/s"),
    "steps_per_s": MetricSpec("speed", +1, "estimator throughput", "steps/s"),
    "kernel_share": MetricSpec("speed", 0, "kernel share of a step", "fraction"),
    # train benchmark (bench/measure/train.py); step = training step
    "train_elbo": MetricSpec("train", +1, "train ELBO", "nats"),
    "val_elbo": MetricSpec("train", +1, "validation ELBO", "nats"),
    "wall_s": MetricSpec("train", -1, "wall time", "s"),
    "time_to_target_s": MetricSpec("train", -1, "time to target validation ELBO", "s"),
    "steps_to_target": MetricSpec("train", -1, "steps to target validation ELBO", "steps"),
    "test_elbo": MetricSpec("train", +1, "test ELBO", "nats"),
    "test_ll": MetricSpec("train", +1, "test log-likelihood (IS)", "nats"),
    "test_ll_se": MetricSpec("train", 0, "standard error of test log-likelihood", "nats"),
    # pytest-benchmark JSON (stats of each benchmark, seconds)
    "median_s": MetricSpec("pytest-benchmark", -1, "median time", "s"),
    "mean_s": MetricSpec("pytest-benchmark", -1, "mean time", "s"),
    "min_s": MetricSpec("pytest-benchmark", -1, "min time", "s"),
    "ops": MetricSpec("pytest-benchmark", +1, "operations per second", "1/s"),
}

#: Prefixes of per-parameter-group metrics (``encoder_variance``, ``mu_snr``, ...).
GROUP_PREFIXES = ("encoder_", "decoder_", "mu_", "logvar_")
#: Metrics recorded per training step and compared at the last shared step.
CURVE_METRICS = ("train_elbo", "val_elbo", "wall_s")
#: Columns of the variance table, in order (the others stay in results.csv).
VARIANCE_METRICS = [
    "total_variance",
    "encoder_variance",
    "decoder_variance",
    "mu_variance",
    "logvar_variance",
    "snr",
    "variance_x_seconds",
    "variance_x_evals",
    "seconds_per_estimate",
    "bias",
    "bias_mde",
    "rel_bias",
    "cosine",
    "replicates",
]
#: Below this p-value a bias is reported as detected (one-sided test of no bias).
BIAS_ALPHA = 0.05
SPEED_METRICS = [m for m, s in METRICS.items() if s.benchmark == "speed"]
SPEED_BENCHMARKS = ("speed", "gpu_kernels")
#: The op name whose ``GB/s`` rows are the same-run copy bandwidth (the ceiling).
COPY_OP = "copy"
#: Backend names of the speedup baselines.
EAGER_BACKEND, COMPILE_BACKEND = "torch", "torch_compile"
#: Manifest key listing the configurations a run planned: ``[{"config_hash", "label"}]``
#: (top level or under ``extra``); those without rows are reported missing.
PLANNED_KEY = "planned_configs"

COMPARE_KEY = [
    "benchmark",
    "problem",
    "estimator",
    "control_variate",
    "backend",
    "op",
    "size",
    "num_samples",
    "metric",
    "step",
]


def metric_spec(metric: str) -> MetricSpec:
    """The :class:`MetricSpec` of ``metric``.

    A per-group name (``encoder_snr``) takes the spec of its ungrouped name with the
    group in the label; an unknown name is neutral (never flagged) and labelled as is.
    """
    if metric in METRICS:
        return METRICS[metric]
    for prefix in GROUP_PREFIXES:
        rest = metric[len(prefix) :]
        if metric.startswith(prefix) and rest in METRICS:
            base = METRICS[rest]
            return MetricSpec(base.benchmark, base.better, f"{prefix[:-1]} {base.label}", base.unit, base.magnitude)
    return MetricSpec("", 0, metric)


# --------------------------------------------------------------------------- loading
@dataclass
class RunData:
    """One run directory as the report sees it.

    Attributes:
        path: the run directory.
        name: short name used in legends (the directory name).
        results: ``results.csv`` with derived columns ``num_samples`` (from the
            config's ``num_samples``), ``size_numel`` (product of the integers in
            ``size``), ``label`` (estimator, ``+cv`` when there is one) and ``run``.
        manifest: ``manifest.json`` as a dict (empty when missing).
        missing: planned configurations without rows ``[config_hash, label]``.
        notes: warnings to show in the report.
    """

    path: Path
    name: str
    results: pd.DataFrame
    manifest: dict
    missing: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _num_samples(config: str, size: str) -> float:
    try:
        cfg = json.loads(config) if isinstance(config, str) and config else {}
    except ValueError:
        cfg = {}
    value = cfg.get("num_samples") if isinstance(cfg, dict) else None
    if value is None and isinstance(size, str):
        m = re.search(r"(?:^|[,;\s])(?:S|K|num_samples)=(\d+)", size)
        value = m.group(1) if m else None
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def label_of(estimator: str, control_variate: str) -> str:
    cv = str(control_variate or "none")
    est = str(estimator or "")
    return est if cv in ("none", "", "nan") else f"{est}+{cv}"


def load_run(run_dir: str | Path) -> RunData:
    """Read and validate a run directory.

    Raises:
        ReportError: the directory is missing, has no (or an empty) ``results.csv``,
            or its schema version is not :data:`bench.results.SCHEMA_VERSION`.
    """
    path = Path(run_dir)
    if not path.exists():
        raise ReportError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise ReportError(f"run directory {str(path)!r} is not a directory")
    results_path = path / RESULTS_FILE
    if not results_path.exists():
        present = sorted(p.name for p in path.iterdir())[:8]
        what = "it is empty" if not present else f"it holds {present}"
        raise ReportError(
            f"run directory {str(path)!r} has no {RESULTS_FILE} ({what}); "
            "expected the output directory of `elbobench variance|speed|train|run`"
        )
    if results_path.stat().st_size == 0:
        raise ReportError(f"{results_path} is empty: the run finished no configuration yet")
    try:
        check_schema(results_path)
    except ValueError as exc:
        raise ReportError(f"{exc} (schema_version expected: {SCHEMA_VERSION})") from None
    df = pd.read_csv(
        results_path,
        keep_default_na=False,
        na_values=["", "nan", "NaN"],
        dtype={
            "config_hash": str,
            "size": str,
            "op": str,
            "estimator": str,
            "control_variate": str,
            "backend": str,
            "problem": str,
            "unit": str,
        },
    )
    if df.empty:
        raise ReportError(f"{results_path} has a header but no rows: the run finished no configuration yet")
    manifest: dict = {}
    notes: list[str] = []
    mpath = path / MANIFEST_FILE
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as exc:
            notes.append(f"{MANIFEST_FILE} could not be read ({exc}); provenance taken from the results rows")
    else:
        notes.append(f"no {MANIFEST_FILE}; provenance taken from the results rows")
    df = _derive(df, path.name)
    missing = missing_configs(manifest, df)
    if len(missing):
        notes.append(
            f"partial run: {len(missing)} planned configuration(s) have no results "
            "(interrupted? rerun with --resume): " + ", ".join(missing["label"].astype(str).head(10))
        )
    return RunData(path=path, name=path.name or str(path), results=df, manifest=manifest, missing=missing, notes=notes)


def _derive(df: pd.DataFrame, run: str) -> pd.DataFrame:
    df = df.copy()
    for col in ("estimator", "op", "size", "backend", "problem", "unit"):
        df[col] = df[col].fillna("").astype(str)
    df["control_variate"] = df["control_variate"].fillna("none").replace("", "none").astype(str)
    df["step"] = pd.to_numeric(df["step"], errors="coerce").fillna(-1).astype(int)
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    for col in ("value", "p20", "p50", "p80", "ci_low", "ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["num_samples"] = [_num_samples(c, s) for c, s in zip(df["config"], df["size"], strict=True)]
    df["size_numel"] = df["size"].map(size_numel)
    df["label"] = [label_of(e, c) for e, c in zip(df["estimator"], df["control_variate"], strict=True)]
    df["unit"] = [u if u else metric_spec(m).unit for u, m in zip(df["unit"], df["metric"], strict=True)]
    df["run"] = run
    return df


def planned_configs(manifest: dict) -> list[dict]:
    """The manifest's :data:`PLANNED_KEY` list (top level or under ``extra``)."""
    planned = manifest.get(PLANNED_KEY)
    if planned is None:
        planned = (manifest.get("extra") or {}).get(PLANNED_KEY)
    out = []
    for item in planned or []:
        if isinstance(item, dict) and item.get("config_hash"):
            out.append({"config_hash": str(item["config_hash"]), "label": str(item.get("label", item["config_hash"]))})
        elif isinstance(item, str):
            out.append({"config_hash": item, "label": item})
    return out


def missing_configs(manifest: dict, df: pd.DataFrame) -> pd.DataFrame:
    """Planned configurations (from the manifest) that have no rows in ``df``."""
    done = set(df["config_hash"].dropna().astype(str))
    rows = [p for p in planned_configs(manifest) if p["config_hash"] not in done]
    return pd.DataFrame(rows, columns=["config_hash", "label"])


# --------------------------------------------------------------------------- provenance
def provenance(run: RunData) -> dict[str, str]:
    """Machine, versions, command, commit and start time of a run, as text."""
    m = run.manifest
    df = run.results
    if m:
        machine = str(m.get("cpu") or "unknown CPU")
        if m.get("gpu"):
            machine += f"; GPU {m['gpu']}"
        numba_threads = (m.get("backends") or {}).get("numba", {}).get("threads", m.get("numba_threads", "?"))
        machine += f"; torch threads {m.get('torch_threads', '?')}, numba threads {numba_threads}"
        versions = m.get("versions") or {}
        command = str(m.get("command") or "unknown")
        commit = str(m.get("git_commit") or "")
        started = str(m.get("started") or "")
    else:
        devices = sorted(set(df["device"].dropna().astype(str)))
        machine = "device " + ", ".join(devices) + " (no manifest)"
        try:
            versions = json.loads(df["versions"].dropna().iloc[0])
        except (IndexError, ValueError, TypeError):
            versions = {}
        command = "unknown (no manifest)"
        commits = sorted(set(df["git_commit"].dropna().astype(str)))
        commit = ", ".join(commits)
        started = str(df["timestamp"].dropna().min()) if "timestamp" in df else ""
    vtext = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v) or "unknown"
    return {"machine": machine, "versions": vtext, "command": command, "commit": commit, "started": started}


def provenance_line(run: RunData) -> str:
    p = provenance(run)
    return f"Run {run.name}: machine {p['machine']}; versions {p['versions']}; command `{p['command']}`" + (
        f"; commit {p['commit']}" if p["commit"] else ""
    )


# --------------------------------------------------------------------------- tables
def _mean_over_seeds(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return df.groupby(list(keys), dropna=False, sort=True)["value"].mean().reset_index()


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–" if x is None or math.isnan(x) else str(x)
    return f"{x:.{digits}g}"


def variance_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per problem x estimator x control variate x backend x samples x step.

    Columns are the variance metrics present (mean over seeds); a metric with a
    confidence interval is shown as ``value [ci_low, ci_high]``.
    """
    d = df[(df["benchmark"] == "variance") & df["metric"].isin(VARIANCE_METRICS)]
    if d.empty:
        return pd.DataFrame()
    keys = ["problem", "estimator", "control_variate", "backend", "num_samples", "step"]
    d = d.assign(num_samples=d["num_samples"].fillna(-1))
    g = d.groupby([*keys, "metric"], dropna=False).agg(
        value=("value", "mean"), lo=("ci_low", "mean"), hi=("ci_high", "mean")
    )
    g = g.reset_index()
    g["text"] = [
        _fmt(v) + (f" [{_fmt(lo, 3)}, {_fmt(hi, 3)}]" if math.isfinite(lo) and math.isfinite(hi) else "")
        for v, lo, hi in zip(g["value"], g["lo"], g["hi"], strict=True)
    ]
    extra = df[(df["benchmark"] == "variance") & df["metric"].isin(["bias_p_value", "replicates_capped"])]
    extra = extra.assign(num_samples=extra["num_samples"].fillna(-1))
    flags = extra.groupby([*keys, "metric"], dropna=False)["value"].max().unstack("metric")
    for i, row in g.iterrows():
        k = tuple(row[c] for c in keys)
        if row["metric"] == "bias" and "bias_p_value" in flags.columns and k in flags.index:
            pv = flags.loc[k, "bias_p_value"]
            if math.isfinite(pv):
                g.at[i, "text"] = (
                    f"no detectable bias (p = {pv:.2g})" if pv >= BIAS_ALPHA else f"{row['text']} (p = {pv:.2g})"
                )
        if row["metric"] == "replicates" and "replicates_capped" in flags.columns and k in flags.index:
            g.at[i, "text"] = f"{int(row['value'])}" + (" (capped)" if flags.loc[k, "replicates_capped"] > 0 else "")
    t = g.pivot_table(index=keys, columns="metric", values="text", aggfunc="first")
    t = t[[m for m in VARIANCE_METRICS if m in t.columns]].fillna("–").reset_index()
    t["num_samples"] = t["num_samples"].map(lambda x: "" if x < 0 else int(x))
    t.columns.name = None
    return t.rename(
        columns={
            "control_variate": "control variate",
            "num_samples": "samples",
            "bias_mde": "bias MDE",
            "replicates": "R",
        }
    )


def variance_ratio_table(run: RunData, reference: str = "reparam", *, boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each configuration's total variance over the reference estimator's, with a paired 95% interval.

    Replicate r of every configuration at one (problem, step, backend, samples,
    seed) reads block r of the same noise stream, so the configurations are
    paired by r: with ``d_r = ||g_r - gbar||^2`` of each (``replicates/<hash>.npz``
    in the run directory) the ratio is ``mean(d_A) / mean(d_ref)`` over their first
    ``m = min(R_A, R_ref)`` replicates, and its interval the percentiles of the same
    ratio over ``boot`` resamples of the replicate indices, drawn jointly for the two
    (the paired bootstrap; Efron & Tibshirani 1993, ch. 14). "lower"/"higher" when the
    interval excludes 1, "no difference" otherwise.

    Returns:
        One row per configuration with a reference to compare with (empty when the
        run has no per-replicate files or no such reference).
    """
    d = run.results
    d = d[(d["benchmark"] == "variance") & (d["metric"] == "total_variance")]
    folder = run.path / "replicates"
    if d.empty or not folder.is_dir():
        return pd.DataFrame()
    keys = ["problem", "step", "backend", "num_samples", "seed"]
    d = d.assign(num_samples=d["num_samples"].fillna(-1))
    gen = np.random.default_rng(seed)
    rows = []
    for k, grp in d.groupby(keys, dropna=False, sort=True):
        refs = grp[(grp["estimator"] == reference) & (grp["control_variate"].astype(str).isin(["none", "", "nan"]))]
        if refs.empty:
            continue
        ref_path = folder / f"{refs['config_hash'].iloc[0]}.npz"
        if not ref_path.exists():
            continue
        with np.load(ref_path) as z:
            d_ref = np.asarray(z["total"], dtype=float)
        for _, row in grp.iterrows():
            if row["config_hash"] == refs["config_hash"].iloc[0]:
                continue
            path = folder / f"{row['config_hash']}.npz"
            if not path.exists():
                continue
            with np.load(path) as z:
                d_a = np.asarray(z["total"], dtype=float)
            m = min(len(d_a), len(d_ref))
            a, b = d_a[:m], d_ref[:m]
            if m < 2 or b.mean() <= 0:
                continue
            idx = gen.integers(0, m, size=(boot, m))
            ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-300)
            lo, hi = np.quantile(ratios, [0.025, 0.975])
            ratio = a.mean() / b.mean()
            verdict = "lower" if hi < 1 else ("higher" if lo > 1 else "no difference")
            rows.append(
                {
                    **dict(zip(keys, k, strict=True)),
                    "estimator": row["label"],
                    f"variance / {reference}": f"{_fmt(ratio, 3)} [{_fmt(lo, 3)}, {_fmt(hi, 3)}]",
                    "paired replicates": m,
                    "verdict": verdict,
                    "_ratio": ratio,
                    "_lo": lo,
                    "_hi": hi,
                }
            )
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    t["num_samples"] = t["num_samples"].map(lambda x: "" if x < 0 else int(x))
    return t.rename(columns={"num_samples": "samples"})


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """Kernel and estimator throughput, with speedups over torch eager and torch.compile.

    ``ms`` is shown as median ``[p20, p80]``; speedup = ms(baseline) / ms(backend)
    measured in the same run.
    """
    d = df[df["benchmark"].isin(SPEED_BENCHMARKS) & df["metric"].isin(SPEED_METRICS)]
    if d.empty:
        return pd.DataFrame()
    keys = ["benchmark", "op", "estimator", "size", "backend"]
    d = d.assign(center=d["p50"].where(d["p50"].notna(), d["value"]))
    g = (
        d.groupby([*keys, "metric"], dropna=False)
        .agg(value=("center", "mean"), p20=("p20", "mean"), p80=("p80", "mean"), numel=("size_numel", "first"))
        .reset_index()
    )
    g["text"] = [
        _fmt(v) + (f" [{_fmt(a, 3)}, {_fmt(b, 3)}]" if m == "ms" and math.isfinite(a) and math.isfinite(b) else "")
        for v, a, b, m in zip(g["value"], g["p20"], g["p80"], g["metric"], strict=True)
    ]
    t = g.pivot_table(index=keys, columns="metric", values="text", aggfunc="first").fillna("–").reset_index()
    cols = [m for m in SPEED_METRICS if m in t.columns]
    ms = g[g["metric"] == "ms"].set_index(keys)["value"]
    for base, name in ((EAGER_BACKEND, "speedup vs eager"), (COMPILE_BACKEND, "speedup vs compile")):
        ref = ms[ms.index.get_level_values("backend") == base].droplevel("backend")
        if ref.empty:
            continue
        sp = []
        for row in t[keys].itertuples(index=False):
            k = tuple(row)
            here = ms.get(k, math.nan)
            base_v = ref.get(k[:-1], math.nan)
            sp.append(_fmt(base_v / here, 3) + "x" if math.isfinite(here) and math.isfinite(base_v) else "–")
        t[name] = sp
        cols.append(name)
    order = g.groupby(keys, dropna=False)["numel"].first()
    t["_n"] = [order.get(tuple(r), math.nan) for r in t[keys].itertuples(index=False)]
    t = t.sort_values(["benchmark", "op", "estimator", "_n", "backend"]).drop(columns="_n")
    t.columns.name = None
    return t[[*keys, *cols]]


def _se_of_mean(se: pd.Series) -> float:
    """Standard error of the mean of independent estimates with standard errors ``se``."""
    se = se.dropna()
    return float(np.sqrt((se**2).sum()) / len(se)) if len(se) else math.nan


def t_interval(values) -> tuple[float, float, float]:
    """``(mean, low, high)``: the 95% Student-t interval of the mean of independent values (NaN with one)."""
    v = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return m, m - half, m + half


def _with_interval(m: float, lo: float, hi: float) -> str:
    return _fmt(m) + (f" [{_fmt(lo, 4)}, {_fmt(hi, 4)}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def default_target(df: pd.DataFrame, problem: str) -> float:
    """The default target validation ELBO of a problem: the best final one (mean over seeds) over configurations,
    minus 1 nat."""
    d = df[(df["benchmark"] == "train") & (df["metric"] == "val_elbo") & (df["problem"] == problem)]
    if d.empty:
        return math.nan
    last = d.loc[d.groupby(["config_hash", "seed"])["step"].idxmax()]
    per_config = last.groupby(["estimator", "control_variate", "backend"], dropna=False)["value"].mean()  # over seeds
    return float(per_config.max()) - 1.0


def reach(curve: pd.DataFrame, wall: pd.DataFrame, target: float) -> tuple[float, float]:
    """``(steps, seconds)`` at which one seed's validation ELBO first reached ``target`` (NaN if never)."""
    hit = curve[curve["value"] >= target].sort_values("step")
    if hit.empty or not math.isfinite(target):
        return math.nan, math.nan
    step = int(hit["step"].iloc[0])
    w = wall[wall["step"] == step]["value"]
    return float(step), float(w.iloc[0]) if len(w) else math.nan


def convergence_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per problem x estimator x control variate x backend of the train benchmark.

    Columns: seeds; the last step; final train and validation ELBO, mean over seeds
    with its 95% Student-t interval across seeds (with two or more seeds); wall
    time and examples per second of training; time and steps to the target
    validation ELBO (the run's ``--target-elbo`` when it had one, else the best
    final validation ELBO of the problem over configurations minus 1 nat; mean over
    the seeds that reached it, how many did, or "not reached"); test ELBO and test
    log-likelihood (importance sampling): the t-interval across seeds with two or
    more seeds, else the one seed's ``+- 1.96`` standard error of its estimate.
    """
    d = df[df["benchmark"] == "train"]
    if d.empty:
        return pd.DataFrame()
    keys = ["problem", "estimator", "control_variate", "backend"]
    given_target = (d["metric"] == "time_to_target_s").any()
    targets = {p: default_target(d, p) for p in d["problem"].unique()}
    rows = []
    for k, grp in d.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, k, strict=True))
        n_seeds = grp["seed"].nunique()
        row["seeds"] = n_seeds
        for metric, col in (("train_elbo", "final train ELBO"), ("val_elbo", "final val ELBO"), ("wall_s", "wall [s]")):
            m = grp[grp["metric"] == metric]
            if m.empty:
                continue
            last = m.loc[m.groupby("seed")["step"].idxmax()]
            row["last step"] = int(last["step"].max())
            row[col] = _with_interval(*t_interval(last["value"])) if metric != "wall_s" else _fmt(last["value"].mean())
        m = grp[grp["metric"] == "examples_per_s"]["value"]
        if len(m):
            row["examples/s"] = _fmt(m.mean())
        if given_target:
            secs = grp[grp["metric"] == "time_to_target_s"]["value"]
            steps = grp[grp["metric"] == "steps_to_target"]["value"]
        else:
            target = targets.get(k[0], math.nan)
            got = [
                reach(s_grp[s_grp["metric"] == "val_elbo"], s_grp[s_grp["metric"] == "wall_s"], target)
                for _, s_grp in grp.groupby("seed")
            ]
            steps = pd.Series([a for a, _ in got], dtype=float)
            secs = pd.Series([b for _, b in got], dtype=float)
        reached = secs[np.isfinite(secs)]
        row["time to target [s]"] = (
            f"{_fmt(reached.mean())} ({len(reached)}/{n_seeds} seeds)" if len(reached) else "not reached"
        )
        st = steps[np.isfinite(steps)]
        row["steps to target"] = _fmt(st.mean()) if len(st) else "not reached"
        for metric, col in (("test_elbo", "test ELBO [nats]"), ("test_ll", "test log-lik [nats]")):
            m = grp[grp["metric"] == metric]
            if m.empty:
                continue
            if m["seed"].nunique() >= 2:
                row[col] = _with_interval(*t_interval(m.groupby("seed")["value"].mean()))
                continue
            se = m[["config_hash", "seed", "ci_low", "ci_high"]].copy()
            se["se"] = (se["ci_high"] - se["ci_low"]) / (2 * 1.96)
            if metric == "test_ll":
                given = grp[grp["metric"] == "test_ll_se"][["config_hash", "seed", "value"]]
                se = se.merge(given, on=["config_hash", "seed"], how="left")
                se["se"] = se["value"].where(se["value"].notna(), se["se"])
            s = _se_of_mean(se["se"])
            v = float(m["value"].mean())
            row[col] = _with_interval(v, v - 1.96 * s, v + 1.96 * s)
        rows.append(row)
    t = pd.DataFrame(rows)
    return t.rename(columns={"control_variate": "control variate"})


def convergence_target_note(df: pd.DataFrame) -> str:
    """What the convergence table's target validation ELBO is, per problem."""
    d = df[df["benchmark"] == "train"]
    if d.empty:
        return ""
    if (d["metric"] == "time_to_target_s").any():
        return "Time to target: the run's --target-elbo."
    parts = [f"{p}: {_fmt(default_target(d, p))}" for p in sorted(d["problem"].unique())]
    return "Target validation ELBO (the best final one over configurations, minus 1 nat): " + ", ".join(parts) + "."


# --------------------------------------------------------------------------- comparison
def _aggregate_for_compare(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    d["num_samples"] = d["num_samples"].fillna(-1)
    # end-of-training numbers (test_ll, time_to_target_s, ...) carry the step they were reached at;
    # runs are compared on the number itself
    d.loc[(d["benchmark"] == "train") & ~d["metric"].isin(CURVE_METRICS), "step"] = -1
    d["value"] = d["p50"].where(d["metric"].eq("ms") & d["p50"].notna(), d["value"])
    return (
        d.groupby(COMPARE_KEY, dropna=False, sort=True)
        .agg(value=("value", "mean"), unit=("unit", "first"))
        .reset_index()
    )


def compare_frames(this: pd.DataFrame, other: pd.DataFrame, *, threshold: float, key: Sequence[str]) -> pd.DataFrame:
    """Match two aggregated frames on ``key`` and flag regressions.

    Args:
        this, other: frames with the ``key`` columns, ``metric``, ``value``, ``unit``.
        threshold: relative change beyond which a worse value is a regression (0.05 = 5%).
        key: columns that identify one measured quantity (must include ``metric``).

    Returns:
        The shared rows with ``this``, ``other``, ``ratio`` (this/other),
        ``change`` ((this-other)/|other|, on |value| for magnitude metrics),
        ``better`` (+1/-1/0) and ``status`` (``regression``, ``improved``, ``same``,
        ``n/a``), regressions first.
    """
    m = this.merge(other, on=list(key), how="inner", suffixes=("_this", "_other"))
    m = m.rename(columns={"value_this": "this", "value_other": "other"})
    m["unit"] = m["unit_this"].where(m["unit_this"].astype(bool), m["unit_other"])
    m = m.drop(columns=["unit_this", "unit_other"])
    better, change, ratio, status = [], [], [], []
    for metric, a, b in zip(m["metric"], m["this"], m["other"], strict=True):
        spec = metric_spec(metric)
        if spec.magnitude:
            a, b = abs(a), abs(b)
        r = 1.0 if a == b else a / b if b != 0 and math.isfinite(a) and math.isfinite(b) else math.nan
        if a == b:  # also both +inf (e.g. a target never reached in either run)
            c = 0.0
        elif math.isnan(a) or math.isnan(b):
            c = math.nan
        elif math.isinf(a) or math.isinf(b):
            c = math.copysign(math.inf, a - b)
        elif b == 0:
            c = 0.0 if a == 0 else math.nan
        else:
            c = (a - b) / abs(b)
        if math.isnan(c) or spec.better == 0:
            s = "n/a" if math.isnan(c) else "same" if abs(c) <= threshold else "changed"
        elif c * spec.better < -threshold:
            s = "regression"
        elif c * spec.better > threshold:
            s = "improved"
        else:
            s = "same"
        better.append(spec.better)
        change.append(c)
        ratio.append(r)
        status.append(s)
    m["ratio"], m["change"], m["better"], m["status"] = ratio, change, better, status
    rank = m["status"].map({"regression": 0, "improved": 1, "changed": 2, "same": 3, "n/a": 4})
    return m.assign(_r=rank, _c=-m["change"].abs()).sort_values(["_r", "_c"]).drop(columns=["_r", "_c"])


def compare_runs(this: RunData, other: RunData, *, threshold: float = 0.05) -> pd.DataFrame:
    """Ratio table ``this / other`` for every metric both runs measured.

    Rows are matched on :data:`COMPARE_KEY` after averaging seeds; per-step curves
    (:data:`CURVE_METRICS`) are kept only at the last step both runs reached.

    Raises:
        ReportError: the runs share no measured quantity.
    """
    a = _aggregate_for_compare(this.results)
    b = _aggregate_for_compare(other.results)
    curve_keys = [k for k in COMPARE_KEY if k != "step"]
    a_c, b_c = a[a["metric"].isin(CURVE_METRICS)], b[b["metric"].isin(CURVE_METRICS)]
    if len(a_c) and len(b_c):
        shared = a_c.merge(b_c, on=COMPARE_KEY)[COMPARE_KEY]
        last = shared.groupby(curve_keys, dropna=False)["step"].max().reset_index()
        a_c = a_c.merge(last, on=COMPARE_KEY)
        b_c = b_c.merge(last, on=COMPARE_KEY)
    a = pd.concat([a[~a["metric"].isin(CURVE_METRICS)], a_c])
    b = pd.concat([b[~b["metric"].isin(CURVE_METRICS)], b_c])
    table = compare_frames(a, b, threshold=threshold, key=COMPARE_KEY)
    if table.empty:
        raise ReportError(
            f"runs {this.name!r} and {other.name!r} have nothing in common to compare: "
            f"{this.name!r} measured {_summary(this.results)}; {other.name!r} measured {_summary(other.results)} "
            "(rows are matched on benchmark, problem, estimator, control variate, backend, op, size, "
            "num_samples, metric and step)"
        )
    return table


def _summary(df: pd.DataFrame) -> str:
    parts = []
    for bench, g in df.groupby("benchmark"):
        probs = ",".join(sorted(set(g["problem"].astype(str)) - {""})) or "-"
        mets = ",".join(sorted(set(g["metric"].astype(str))))
        parts.append(f"{bench} on {probs} ({mets})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- pytest-benchmark JSON
def load_benchmark_json(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read pytest-benchmark JSON files into long format.

    Each benchmark gives rows ``median_s``, ``mean_s``, ``min_s``, ``ops`` from its
    ``stats`` (``q1``/``q3`` kept as ``p20``/``p80`` columns for the IQR) plus one row
    per numeric ``extra_info`` value (metric = the key).

    Columns: ``file``, ``name``, ``group``, ``metric``, ``unit``, ``value``, ``q1``, ``q3``.

    Raises:
        ReportError: a file is missing or is not pytest-benchmark JSON.
    """
    rows = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ReportError(f"--benchmark-json {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ReportError(f"--benchmark-json {str(path)!r} is not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise ReportError(
                f"--benchmark-json {str(path)!r} is not pytest-benchmark output "
                "(expected an object with a 'benchmarks' list, as written by `pytest --benchmark --benchmark-json PATH`)"
            )
        for b in data["benchmarks"]:
            stats = b.get("stats") or {}
            name = str(b.get("fullname") or b.get("name"))
            base = {"file": path.name, "name": name, "group": str(b.get("group") or "")}
            for metric, key in (("median_s", "median"), ("mean_s", "mean"), ("min_s", "min"), ("ops", "ops")):
                if isinstance(stats.get(key), int | float):
                    q1 = stats.get("q1", math.nan) if metric == "median_s" else math.nan
                    q3 = stats.get("q3", math.nan) if metric == "median_s" else math.nan
                    rows.append(
                        {
                            **base,
                            "metric": metric,
                            "unit": METRICS[metric].unit,
                            "value": float(stats[key]),
                            "q1": q1,
                            "q3": q3,
                        }
                    )
            for k, v in (b.get("extra_info") or {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    rows.append(
                        {
                            **base,
                            "metric": str(k),
                            "unit": metric_spec(str(k)).unit,
                            "value": float(v),
                            "q1": math.nan,
                            "q3": math.nan,
                        }
                    )
    return pd.DataFrame(rows, columns=["file", "name", "group", "metric", "unit", "value", "q1", "q3"])


def compare_benchmark_json(bj: pd.DataFrame, *, threshold: float = 0.05) -> pd.DataFrame:
    """Compare every file after the first against the first (ratio = later / first).

    Raises:
        ReportError: a later file shares no benchmark and metric with the first.
    """
    files = list(dict.fromkeys(bj["file"]))
    if len(files) < 2:
        return pd.DataFrame()
    key = ["name", "metric"]
    base = bj[bj["file"] == files[0]][[*key, "value", "unit"]]
    out = []
    for f in files[1:]:
        cur = bj[bj["file"] == f][[*key, "value", "unit"]]
        t = compare_frames(cur, base, threshold=threshold, key=key)
        if t.empty:
            raise ReportError(
                f"pytest-benchmark files {files[0]!r} and {f!r} have no benchmark in common "
                f"({files[0]!r}: {sorted(set(base['name']))[:5]}; {f!r}: {sorted(set(cur['name']))[:5]})"
            )
        out.append(t.assign(file=f, baseline=files[0]))
    return pd.concat(out, ignore_index=True)


def format_compare(table: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Compare table as text columns for HTML/Markdown (empty key columns dropped)."""
    t = table.copy()
    blank = {"-1": "", "-1.0": "", "nan": "", "none": ""}
    keep = [k for k in key if k in t.columns and t[k].astype(str).replace(blank).ne("").any()]
    out = t[keep].copy()
    if "num_samples" in out:
        out["num_samples"] = out["num_samples"].map(lambda x: "" if x is None or x < 0 or x != x else int(x))
    if "step" in out:
        out["step"] = out["step"].map(lambda x: "" if x < 0 else int(x))
    out["unit"] = t["unit"]
    out["this"] = t["this"].map(_fmt)
    out["other"] = t["other"].map(_fmt)
    out["ratio"] = t["ratio"].map(lambda x: _fmt(x, 3))
    out["change"] = t["change"].map(lambda x: f"{100 * x:+.1f}%" if math.isfinite(x) else "–")
    out["better"] = t["better"].map({1: "higher", -1: "lower", 0: "–"})
    out["status"] = t["status"]
    return out.rename(columns={"control_variate": "control variate", "num_samples": "samples"})
