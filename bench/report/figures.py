"""Seaborn/matplotlib figures of a run (and of a run against another), saved as PNG + SVG.

Every figure is drawn only from the long-format results (see
:mod:`bench.report.tables`); a figure whose metrics are absent is skipped. All
figures share one style (seaborn ``whitegrid``, ``colorblind`` palette), are
:data:`FIG_WIDTH_PX` pixels wide (height grows with the number of panels), label
their axes with units, and use a log scale where the values span more than
:data:`LOG_SPAN` (ratio of largest to smallest). When two runs are drawn, colour
keeps its meaning and the run is told apart by marker fill / line style.

Image grids (decoded samples, reconstructions) are read from the run's
``samples.npz`` (written by :func:`bench.report.save_image_grid_arrays`).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from bench.report.tables import (  # noqa: E402
    COMPILE_BACKEND,
    COPY_OP,
    EAGER_BACKEND,
    SPEED_BENCHMARKS,
    metric_spec,
    t_interval,
)

DPI = 100
FIG_WIDTH_IN = 12.0
FIG_WIDTH_PX = int(FIG_WIDTH_IN * DPI)
PANEL_HEIGHT_IN = 3.3
TITLE_HEIGHT_IN = 0.7
MAX_COLS = 3
LOG_SPAN = 20.0
MARKERS = ("o", "s", "^", "D")
LINESTYLES = ("-", "--", ":", "-.")
#: dash patterns of the line styles seaborn draws per backend (solid first)
DASHES = ("", (5, 2), (1.5, 1.5), (4, 1.5, 1.5, 1.5), (6, 1.5, 1, 1.5, 1, 1.5))


@dataclass(frozen=True)
class FigureFile:
    """One saved figure.

    Attributes:
        name: file stem under ``figures/``.
        section: ``variance``, ``speed``, ``train``, ``samples``, ``compare`` or ``pytest-benchmark``.
        title: one-line title.
        caption: what is drawn and which slice of the results.
        png, svg: paths of the files (``svg`` is None when not written).
        size_px: expected ``(width, height)`` of the PNG in pixels.
    """

    name: str
    section: str
    title: str
    caption: str
    png: Path
    svg: Path | None
    size_px: tuple[int, int]


def set_style() -> None:
    """The one style every report figure uses."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.9)
    plt.rcParams.update({"svg.hashsalt": "elbobench", "figure.dpi": DPI, "savefig.dpi": DPI})


def png_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` read from a PNG's IHDR chunk."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


class _Canvas:
    """A figure of ``n`` panels, :data:`MAX_COLS` per row (or ``ncols``), fixed width."""

    def __init__(self, n: int, title: str, *, ncols: int | None = None, panel_h: float = PANEL_HEIGHT_IN):
        self.ncols = max(1, min(ncols or MAX_COLS, n))
        self.nrows = math.ceil(n / self.ncols)
        self.height = round(self.nrows * panel_h + TITLE_HEIGHT_IN, 2)
        self.fig, axes = plt.subplots(
            self.nrows, self.ncols, figsize=(FIG_WIDTH_IN, self.height), squeeze=False, layout="constrained"
        )
        self.axes = list(axes.ravel())
        for ax in self.axes[n:]:
            ax.set_visible(False)
        self.fig.suptitle(title)

    def save(self, out_dir: Path, name: str, section: str, title: str, caption: str, svg: bool) -> FigureFile:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"{name}.png"
        self.fig.savefig(png, dpi=DPI, metadata={"Software": None})
        svg_path = None
        if svg:
            svg_path = out_dir / f"{name}.svg"
            self.fig.set_layout_engine("none")  # keep the layout computed for the PNG
            self.fig.savefig(svg_path, metadata={"Date": None})
        plt.close(self.fig)
        return FigureFile(name, section, title, caption, png, svg_path, (FIG_WIDTH_PX, int(round(self.height * DPI))))


def _use_log(values) -> bool:
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    return bool(len(v)) and bool((v > 0).all()) and v.max() / v.min() > LOG_SPAN


def _ylabel(metric: str, unit: str) -> str:
    spec = metric_spec(metric)
    unit = unit or spec.unit
    return f"{spec.label} [{unit}]" if unit else spec.label


def _unit_of(d: pd.DataFrame) -> str:
    units = [u for u in d["unit"].astype(str) if u]
    return units[0] if units else ""


def _palette(keys: Sequence) -> dict:
    """Distinct colours: seaborn's colorblind palette up to 10 keys, tab20 up to 20, then husl."""
    keys = list(keys)
    n = max(len(keys), 1)
    name = "colorblind" if n <= 10 else "tab20" if n <= 20 else "husl"
    return dict(zip(keys, sns.color_palette(name, n), strict=False))


def _mode(series: pd.Series):
    s = series.dropna()
    if s.empty:
        return None
    counts = s.value_counts()
    return min(counts.index[counts == counts.max()])


def _legend(canvas: _Canvas, colors: dict, hue_title: str, runs: Sequence[str], *, lines: bool) -> None:
    handles = [
        Line2D([], [], color=c, marker="o", ls="-" if lines else "none", label=str(k)) for k, c in colors.items()
    ]
    labels = [str(k) for k in colors]
    if len(runs) > 1:
        handles.append(Line2D([], [], ls="none", label=""))
        labels.append("")
        for i, run in enumerate(runs):
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.3",
                    marker=MARKERS[i % len(MARKERS)],
                    mfc="0.3" if i == 0 else "white",
                    ls=LINESTYLES[i % len(LINESTYLES)] if lines else "none",
                )
            )
            labels.append(f"run {run}")
    canvas.fig.legend(handles, labels, loc="outside right upper", title=hue_title, fontsize="small")


def _dotplot(ax, d: pd.DataFrame, *, x: str, hue: str, runs: Sequence[str], colors: dict, order=None) -> None:
    """Points with error bars (``lo``/``hi`` columns) per category, dodged by hue and run."""
    xs = list(order) if order is not None else sorted(d[x].astype(str).unique())
    slots = [(h, r) for h in colors for r in runs]
    width = 0.8
    for s_i, (h, run) in enumerate(slots):
        sub = d[(d[hue].astype(str) == str(h)) & (d["run"] == run)]
        if sub.empty:
            continue
        r_i = list(runs).index(run)
        off = -width / 2 + width * (s_i + 0.5) / len(slots)
        pos = [xs.index(str(v)) + off for v in sub[x].astype(str)]
        val = sub["value"].to_numpy(float)
        lo = np.nan_to_num(val - sub["lo"].to_numpy(float), nan=0.0).clip(min=0)
        hi = np.nan_to_num(sub["hi"].to_numpy(float) - val, nan=0.0).clip(min=0)
        ax.errorbar(
            pos,
            val,
            yerr=[lo, hi],
            fmt=MARKERS[r_i % len(MARKERS)],
            color=colors[h],
            mfc=colors[h] if r_i == 0 else "white",
            capsize=3,
            ms=6,
        )
    ax.set_xticks(range(len(xs)), xs, rotation=20 if max(map(len, xs), default=0) > 8 else 0, ha="right")
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.grid(axis="x", visible=False)


def _lines(ax, d: pd.DataFrame, *, x: str, hue: str, runs: Sequence[str], colors: dict, band: bool = True) -> None:
    """One line per hue and run (mean over seeds), with the ``lo``/``hi`` band when given."""
    for h in colors:
        for r_i, run in enumerate(runs):
            sub = d[(d[hue].astype(str) == str(h)) & (d["run"] == run)]
            if sub.empty:
                continue
            g = sub.groupby(x).agg(value=("value", "mean"), lo=("lo", "mean"), hi=("hi", "mean")).sort_index()
            ax.plot(
                g.index,
                g["value"],
                marker=MARKERS[r_i % len(MARKERS)],
                mfc=colors[h] if r_i == 0 else "white",
                ls=LINESTYLES[r_i % len(LINESTYLES)],
                color=colors[h],
            )
            ok = g["lo"].notna() & g["hi"].notna()
            if band and ok.any():
                ax.fill_between(g.index[ok], g["lo"][ok], g["hi"][ok], color=colors[h], alpha=0.15, lw=0)


def _finish_y(ax, values, ylabel: str) -> None:
    if _use_log(values):
        ax.set_yscale("log")
        v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
        v = v[np.isfinite(v) & (v > 0)]
        if v.max() / v.min() < 1000:  # few decades: label 1-2-5 steps, not only the powers of ten
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(ylabel)


# --------------------------------------------------------------------------- variance
def _variance_points(
    df: pd.DataFrame, metrics: Sequence[str], *, hue: str, fix_backend: bool, fix_step: bool
) -> tuple[pd.DataFrame, str]:
    d = df[(df["benchmark"] == "variance") & df["metric"].isin(metrics)].copy()
    if d.empty:
        return d, ""
    notes = []
    d, ns_note = _one_num_samples(d)
    if ns_note:
        notes.append(ns_note)
    if fix_backend:
        backends = sorted(d["backend"].unique())
        ref = EAGER_BACKEND if EAGER_BACKEND in backends else backends[0]
        d = d[d["backend"] == ref]
        if len(backends) > 1:
            notes.append(f"backend {ref} (others draw the same noise)")
    if fix_step:
        step = d["step"].min()
        d = d[d["step"] == step]
        notes.append(f"at step {step}")
    d["step_label"] = "step " + d["step"].astype(str)
    g = (
        d.groupby(["run", "problem", "metric", "label", hue], dropna=False)
        .agg(value=("value", "mean"), lo=("ci_low", "mean"), hi=("ci_high", "mean"), unit=("unit", "first"))
        .reset_index()
    )
    return g, "; ".join(notes)


def _one_num_samples(d: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Keep one sample count S per estimator: the run's most common S where the estimator
    has it, else its smallest (e.g. leave-one-out needs S >= 2), marked in the label."""
    ns = _mode(d["num_samples"])
    if ns is None:
        return d, ""
    keep = []
    for label, g in d.groupby("label", sort=False):
        s_here = ns if (g["num_samples"] == ns).any() else g["num_samples"].min()
        g = g[g["num_samples"] == s_here]
        if s_here != ns:
            g = g.assign(label=f"{label} (S={int(s_here)})")
        keep.append(g)
    return pd.concat(keep), f"S = {int(ns)} samples per estimate unless the label says otherwise"


def _variance_grid(
    df, runs, out_dir, svg, *, name, title, metrics, hue, hue_title, fix_backend, fix_step, caption
) -> FigureFile | None:
    g, notes = _variance_points(df, metrics, hue=hue, fix_backend=fix_backend, fix_step=fix_step)
    if g.empty:
        return None
    problems = sorted(g["problem"].unique())
    panels = [(m, p) for m in metrics for p in problems if ((g["metric"] == m) & (g["problem"] == p)).any()]
    colors = _palette(sorted(g[hue].astype(str).unique(), key=_natural))
    canvas = _Canvas(len(panels), title, ncols=min(len(problems), MAX_COLS))
    order = sorted(g["label"].unique())
    n = len(panels)
    for i, (metric, problem) in enumerate(panels, start=1):
        ax = canvas.axes[i - 1]
        d = g[(g["metric"] == metric) & (g["problem"] == problem)]
        _dotplot(ax, d, x="label", hue=hue, runs=runs, colors=colors, order=order)
        _finish_y(ax, pd.concat([d["value"], d["lo"], d["hi"]]), _ylabel(metric, _unit_of(d)))
        ax.set_title(problem)
        if i + canvas.ncols <= n:  # a panel below shows the same categories
            ax.tick_params(labelbottom=False)
            ax.set_xlabel("")
        else:
            ax.set_xlabel("estimator (+ control variate)")
    _legend(canvas, colors, hue_title, runs, lines=False)
    return canvas.save(out_dir, name, "variance", title, f"{caption} {notes}.".replace(" .", "."), svg)


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def variance_figures(df: pd.DataFrame, runs: Sequence[str], out_dir: Path, svg: bool = True) -> list[FigureFile]:
    """Variance per estimator, cost-normalised variance, SNR, bias, and the two sweeps."""
    figs = [
        _variance_grid(
            df,
            runs,
            out_dir,
            svg,
            name="variance_by_estimator",
            title="Gradient variance per estimator and control variate",
            metrics=["total_variance", "encoder_variance", "decoder_variance", "mu_variance", "logvar_variance"],
            hue="step_label",
            hue_title="training step",
            fix_backend=True,
            fix_step=False,
            caption="Trace of the gradient covariance (total, and per parameter group: encoder/decoder "
            "of a VAE, mu/logvar of a Gaussian toy); "
            "bars are the harness's bootstrap confidence intervals; lower is better.",
        ),
        _variance_grid(
            df,
            runs,
            out_dir,
            svg,
            name="variance_cost_normalised",
            title="Cost-normalised gradient variance",
            metrics=["variance_x_seconds", "variance_x_evals"],
            hue="backend",
            hue_title="backend",
            fix_backend=False,
            fix_step=True,
            caption="Variance times seconds per estimate and times function evaluations per estimate, "
            "so estimators that spend more samples are compared fairly; lower is better.",
        ),
        _variance_grid(
            df,
            runs,
            out_dir,
            svg,
            name="snr",
            title="Gradient signal-to-noise ratio",
            metrics=["snr", "encoder_snr", "decoder_snr", "mu_snr", "logvar_snr"],
            hue="step_label",
            hue_title="training step",
            fix_backend=True,
            fix_step=False,
            caption="|E[g]| / std[g] of the gradient estimate; higher is better.",
        ),
        _variance_grid(
            df,
            runs,
            out_dir,
            svg,
            name="bias",
            title="Bias against the ground-truth gradient",
            metrics=["bias", "cosine"],
            hue="step_label",
            hue_title="training step",
            fix_backend=True,
            fix_step=False,
            caption="Bias of the mean estimate against the ground truth (exact for ppca and the Gaussian toys, "
            "a high-sample reparameterized reference otherwise) and cosine similarity to it.",
        ),
        _variance_sweep(df, runs, out_dir, svg, x="num_samples"),
        _variance_sweep(df, runs, out_dir, svg, x="step"),
    ]
    return [f for f in figs if f is not None]


def _variance_sweep(df, runs, out_dir, svg, *, x: str) -> FigureFile | None:
    d = df[(df["benchmark"] == "variance") & (df["metric"] == "total_variance")]
    if d.empty or d.groupby("label")[x].nunique().max() < 2:
        return None
    notes = []
    if x == "num_samples":
        step = d["step"].min()
        d = d[d["step"] == step]
        notes.append(f"at step {step}")
        name, title, xlabel = (
            "variance_vs_samples",
            "Gradient variance against number of samples",
            "samples per estimate",
        )
    else:
        d, ns_note = _one_num_samples(d)
        if ns_note:
            notes.append(ns_note)
        name, title, xlabel = "variance_over_training", "Gradient variance over training", "training step"
    backends = sorted(d["backend"].unique())
    ref = EAGER_BACKEND if EAGER_BACKEND in backends else backends[0]
    d = d[d["backend"] == ref].rename(columns={"ci_low": "lo", "ci_high": "hi"})
    # only estimators measured at two or more points make a line
    multi = d.groupby("label")[x].transform("nunique") >= 2
    dropped = sorted(set(d.loc[~multi, "label"]))
    d = d[multi]
    if d.empty:
        return None
    notes.append(f"backend {ref}")
    if dropped:
        notes.append("measured at one point only (not drawn): " + ", ".join(dropped))
    problems = sorted(d["problem"].unique())
    colors = _palette(sorted(d["label"].unique()))
    canvas = _Canvas(len(problems), title)
    for ax, problem in zip(canvas.axes, problems, strict=False):
        sub = d[d["problem"] == problem]
        _lines(ax, sub, x=x, hue="label", runs=runs, colors=colors)
        if x == "num_samples":
            ax.set_xscale("log")
            ticks = sorted(sub["num_samples"].dropna().unique())
            if len(ticks) <= 10:
                ax.set_xticks(ticks, [str(int(t)) for t in ticks])
                ax.minorticks_off()
        _finish_y(ax, pd.concat([sub["value"], sub["lo"], sub["hi"]]), _ylabel("total_variance", _unit_of(sub)))
        ax.set_xlabel(xlabel)
        ax.set_title(problem)
    _legend(canvas, colors, "estimator", runs, lines=True)
    caption = "Total gradient variance with bootstrap confidence bands; " + "; ".join(notes) + "."
    return canvas.save(out_dir, name, "variance", title, caption, svg)


# --------------------------------------------------------------------------- speed
def _size_axis(ax, sub: pd.DataFrame) -> None:
    ticks = sub.drop_duplicates("size_numel").dropna(subset=["size_numel"]).sort_values("size_numel")
    ax.set_xscale("log")
    if len(ticks) <= 8:
        ax.set_xticks(ticks["size_numel"], ticks["size"], rotation=30, ha="right")
        ax.minorticks_off()
    ax.set_xlabel("size (elements, log scale)")


def _panel_key(d: pd.DataFrame) -> pd.Series:
    return d["op"].where(d["estimator"].eq(""), d["op"] + " · " + d["estimator"])


def speed_figures(df: pd.DataFrame, runs: Sequence[str], out_dir: Path, svg: bool = True) -> list[FigureFile]:
    """Kernel throughput against size (copy bandwidth as the ceiling), time per call,
    speedup over torch eager / torch.compile, and estimator/training throughput."""
    d = df[df["benchmark"].isin(SPEED_BENCHMARKS)].copy()
    if d.empty:
        return []
    d["center"] = d["p50"].where(d["p50"].notna(), d["value"])
    d["panel"] = _panel_key(d)
    figs: list[FigureFile | None] = []
    # kernel ops (no estimator) against size; estimator steps are drawn per estimator below
    sized = d[d["size_numel"].notna() & d["estimator"].eq("")]

    # throughput against size with the copy ceiling
    # (a copy timed inside one op's cell, kernel_speed(interleave=True), is that cell's reference, not a backend)
    gbs = sized[(sized["metric"] == "GB/s") & (sized["op"] != COPY_OP) & (sized["backend"] != COPY_OP)]
    copy = sized[(sized["metric"] == "GB/s") & (sized["op"] == COPY_OP)]
    if len(gbs):
        panels = sorted(gbs["panel"].unique())
        colors = _palette(sorted(gbs["backend"].unique()))
        title = "Kernel throughput against size"
        canvas = _Canvas(len(panels), title)
        for ax, p in zip(canvas.axes, panels, strict=False):
            sub = gbs[gbs["panel"] == p].assign(value=lambda t: t["center"], lo=np.nan, hi=np.nan)
            _lines(ax, sub, x="size_numel", hue="backend", runs=runs, colors=colors, band=False)
            for r_i, run in enumerate(runs):
                c = copy[copy["run"] == run].groupby("size_numel")["center"].mean().sort_index()
                if len(c):
                    ax.plot(c.index, c.values, color="black", ls=LINESTYLES[r_i % len(LINESTYLES)], lw=1.2)
            _size_axis(ax, pd.concat([sub, copy]))
            _finish_y(ax, pd.concat([sub["value"], copy["center"]]), _ylabel("GB/s", "GB/s"))
            ax.set_title(p)
        _legend(canvas, {**colors, "copy bandwidth (ceiling)": "black"}, "backend", runs, lines=True)
        caption = "Effective memory throughput per backend and op; the black line is the same run's copy bandwidth."
        figs.append(canvas.save(out_dir, "kernel_throughput", "speed", title, caption, svg))

    # time per call
    ms = sized[(sized["metric"] == "ms") & (sized["op"] != COPY_OP)]
    if len(ms):
        panels = sorted(ms["panel"].unique())
        colors = _palette(sorted(ms["backend"].unique()))
        title = "Time per call against size"
        canvas = _Canvas(len(panels), title)
        for ax, p in zip(canvas.axes, panels, strict=False):
            sub = ms[ms["panel"] == p].assign(value=lambda t: t["center"], lo=lambda t: t["p20"], hi=lambda t: t["p80"])
            _lines(ax, sub, x="size_numel", hue="backend", runs=runs, colors=colors)
            _size_axis(ax, sub)
            _finish_y(ax, pd.concat([sub["value"], sub["lo"], sub["hi"]]), _ylabel("ms", "ms"))
            ax.set_title(p)
        _legend(canvas, colors, "backend", runs, lines=True)
        caption = "Median time per call with the 20th-80th percentile band; lower is better."
        figs.append(canvas.save(out_dir, "kernel_time", "speed", title, caption, svg))

    # speedup over eager / compile
    figs.append(_speedup_figure(d[d["estimator"].eq("")], runs, out_dir, svg))

    # estimator / training throughput
    est = d[d["metric"].isin(["examples_per_s", "steps_per_s", "kernel_share"])].copy()
    if len(est):
        est["x"] = est["label"].where(est["label"].ne(""), est["op"])
        keys = [(m, s) for m in ("examples_per_s", "steps_per_s", "kernel_share") for s in _sorted_sizes(est, m)]
        colors = _palette(sorted(est["backend"].unique()))
        title = "Estimator and training throughput"
        n_sizes = max(len(_sorted_sizes(est, m)) for m, _ in keys)
        canvas = _Canvas(len(keys), title, ncols=min(MAX_COLS, n_sizes if n_sizes > 1 else len(keys)))
        for ax, (metric, size) in zip(canvas.axes, keys, strict=False):
            sub = est[(est["metric"] == metric) & (est["size"] == size)]
            g = (
                sub.groupby(["run", "x", "backend"])
                .agg(value=("center", "mean"), lo=("p20", "mean"), hi=("p80", "mean"), unit=("unit", "first"))
                .reset_index()
            )
            _dotplot(ax, g, x="x", hue="backend", runs=runs, colors=colors)
            _finish_y(ax, g["value"], _ylabel(metric, _unit_of(g)))
            ax.set_title(f"{metric_spec(metric).label}" + (f", {size}" if size else ""))
            ax.set_xlabel("estimator")
        _legend(canvas, colors, "backend", runs, lines=False)
        caption = (
            "Examples and estimator steps per second (higher is better), and the share of a step spent in kernels."
        )
        figs.append(canvas.save(out_dir, "estimator_throughput", "speed", title, caption, svg))
    return [f for f in figs if f is not None]


def _sorted_sizes(d: pd.DataFrame, metric: str) -> list[str]:
    sub = d[d["metric"] == metric].drop_duplicates("size")
    return list(sub.sort_values("size_numel", na_position="first")["size"])


def _speedup_figure(d: pd.DataFrame, runs, out_dir, svg) -> FigureFile | None:
    ms = d[(d["metric"] == "ms") & (d["op"] != COPY_OP)]
    keys = ["run", "panel", "size"]
    med = ms.groupby([*keys, "backend"])["center"].mean()
    rows = []
    for base, base_name in ((EAGER_BACKEND, "torch eager"), (COMPILE_BACKEND, "torch.compile")):
        ref = med[med.index.get_level_values("backend") == base].droplevel("backend")
        for (run, panel, size, backend), v in med.items():
            if backend == base or (run, panel, size) not in ref.index:
                continue
            rows.append(
                {
                    "run": run,
                    "panel": panel,
                    "size": size,
                    "backend": backend,
                    "baseline": base_name,
                    "value": ref[(run, panel, size)] / v,
                    "lo": np.nan,
                    "hi": np.nan,
                }
            )
    if not rows:
        return None
    s = pd.DataFrame(rows)
    numel = d.drop_duplicates("size").set_index("size")["size_numel"]
    panels = [
        (b, p)
        for b in ("torch eager", "torch.compile")
        for p in sorted(s["panel"].unique())
        if ((s["baseline"] == b) & (s["panel"] == p)).any()
    ]
    colors = _palette(sorted(s["backend"].unique()))
    title = "Speedup over torch eager and torch.compile (same run)"
    canvas = _Canvas(len(panels), title, ncols=min(MAX_COLS, s["panel"].nunique()))
    for ax, (base, p) in zip(canvas.axes, panels, strict=False):
        sub = s[(s["baseline"] == base) & (s["panel"] == p)]
        order = sorted(sub["size"].unique(), key=lambda z: numel.get(z, math.inf))
        _dotplot(ax, sub, x="size", hue="backend", runs=runs, colors=colors, order=order)
        ax.axhline(1.0, color="0.4", lw=1, ls="--")
        _finish_y(ax, pd.concat([sub["value"], pd.Series([1.0])]), f"speedup over {base} [x]")
        ax.set_xlabel("size")
        ax.set_title(p)
    _legend(canvas, colors, "backend", runs, lines=False)
    caption = "Median time of the baseline divided by the backend's, measured in the same run; above 1 is faster."
    return canvas.save(out_dir, "speedup", "speed", title, caption, svg)


# --------------------------------------------------------------------------- train
def _t_band(values) -> tuple[float, float]:
    """seaborn ``errorbar`` callable: the 95% Student-t interval of the mean (``bench.report.tables.t_interval``)."""
    _, lo, hi = t_interval(values)
    m = float(np.mean(values))
    return (lo, hi) if math.isfinite(lo) else (m, m)


def _wall_bands(sub: pd.DataFrame) -> pd.DataFrame:
    """Per label and style: the seeds' curves interpolated on a common wall-time grid, mean and t-interval."""
    out = []
    for (label, style), grp in sub.groupby(["label", "style"]):
        curves = [g.sort_values("wall") for _, g in grp.groupby("unit_seed")]
        if not curves:
            continue
        top = min(float(c["wall"].max()) for c in curves)
        bottom = max(float(c["wall"].min()) for c in curves)
        grid = np.unique(np.concatenate([c["wall"].to_numpy(float) for c in curves]))
        grid = grid[(grid >= bottom) & (grid <= top)]
        if len(grid) == 0:
            continue
        ys = np.vstack([np.interp(grid, c["wall"].to_numpy(float), c["value"].to_numpy(float)) for c in curves])
        for x, col in zip(grid, ys.T, strict=True):
            m, lo, hi = t_interval(col)
            out.append({"label": label, "style": style, "wall": x, "value": m, "lo": lo, "hi": hi})
    return pd.DataFrame(out)


def train_figures(df: pd.DataFrame, runs: Sequence[str], out_dir: Path, svg: bool = True) -> list[FigureFile]:
    """ELBO against step and against wall time (seed bands), time to target, test log-likelihood."""
    d = df[df["benchmark"] == "train"].copy()
    if d.empty:
        return []
    d["style"] = d["backend"] if len(runs) == 1 else d["backend"] + " · " + d["run"]
    figs: list[FigureFile | None] = []
    curves = d[d["metric"].isin(["train_elbo", "val_elbo"]) & (d["step"] >= 0)]
    labels = sorted(d["label"].unique())
    colors = _palette(labels)
    styles = sorted(d["style"].unique())
    if len(curves):
        panels = [(m, p) for m in ("train_elbo", "val_elbo") for p in sorted(curves["problem"].unique())]
        panels = [k for k in panels if ((curves["metric"] == k[0]) & (curves["problem"] == k[1])).any()]
        title = "ELBO against training step"
        canvas = _Canvas(len(panels), title)
        multi_seed = curves.groupby(["run", "config_hash"])["seed"].nunique().max() > 1 or curves["seed"].nunique() > 1
        for ax, (metric, problem) in zip(canvas.axes, panels, strict=False):
            sub = curves[(curves["metric"] == metric) & (curves["problem"] == problem)]
            sns.lineplot(
                data=sub,
                x="step",
                y="value",
                hue="label",
                hue_order=labels,
                palette=colors,
                style="style",
                dashes=_dashes(styles),
                style_order=styles,
                errorbar=_t_band if multi_seed else None,
                ax=ax,
                legend=False,
            )
            _finish_y(ax, [], _ylabel(metric, _unit_of(sub)))
            ax.set_xlabel("training step")
            ax.set_title(problem)
        _style_legend(canvas, colors, styles)
        caption = (
            "Mean over seeds"
            + (" with the 95% Student-t interval of the mean across seeds" if multi_seed else " (one seed)")
            + "; higher is better. Backends draw the same noise, so their curves coincide when the kernels agree."
        )
        figs.append(canvas.save(out_dir, "elbo_vs_step", "train", title, caption, svg))

        wall = d[d["metric"] == "wall_s"][["run", "config_hash", "seed", "step", "value"]].rename(
            columns={"value": "wall"}
        )
        joined = curves.merge(wall, on=["run", "config_hash", "seed", "step"])
        if len(joined):
            metric = "val_elbo" if (joined["metric"] == "val_elbo").any() else "train_elbo"
            joined = joined[joined["metric"] == metric]
            joined["unit_seed"] = joined["run"] + joined["config_hash"].astype(str) + joined["seed"].astype(str)
            problems = sorted(joined["problem"].unique())
            title = "ELBO against wall time"
            canvas = _Canvas(len(problems), title)
            multi_seed = joined.groupby(["run", "config_hash"])["seed"].nunique().max() > 1
            for ax, problem in zip(canvas.axes, problems, strict=False):
                sub = joined[joined["problem"] == problem]
                if multi_seed:
                    bands = _wall_bands(sub)
                    for (label, style), b in bands.groupby(["label", "style"]):
                        dash = _dashes(styles)[style]
                        (line,) = ax.plot(b["wall"], b["value"], color=colors[label], lw=1.2)
                        if dash:
                            line.set_dashes(dash)
                        ok = b["lo"].notna()
                        ax.fill_between(b["wall"][ok], b["lo"][ok], b["hi"][ok], color=colors[label], alpha=0.15, lw=0)
                else:
                    sns.lineplot(
                        data=sub,
                        x="wall",
                        y="value",
                        hue="label",
                        hue_order=labels,
                        palette=colors,
                        style="style",
                        dashes=_dashes(styles),
                        style_order=styles,
                        units="unit_seed",
                        estimator=None,
                        ax=ax,
                        legend=False,
                        lw=1.2,
                    )
                if _use_log(sub["wall"]):
                    ax.set_xscale("log")
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                    ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xlabel("wall time [s]")
                ax.set_ylabel(_ylabel(metric, _unit_of(sub)))
                ax.set_title(problem)
            _style_legend(canvas, colors, styles)
            caption = f"{metric_spec(metric).label} against elapsed training time, " + (
                "mean over seeds (each interpolated on a common time grid) with its 95% Student-t interval."
                if multi_seed
                else "one seed."
            )
            figs.append(canvas.save(out_dir, "elbo_vs_wall", "train", title, caption, svg))

    for metric, name, title, caption in (
        (
            "time_to_target_s",
            "time_to_target",
            "Time to the target validation ELBO",
            "Mean over seeds that reached the target, with the 95% Student-t interval across them (two or more); "
            "seeds that never reached it are left out.",
        ),
        (
            "test_ll",
            "test_loglik",
            "Test log-likelihood (importance sampling)",
            "Importance-sampled estimate of log p(x) on the test split: mean over seeds with the 95% Student-t "
            "interval across seeds, or, for one seed, +-1.96 standard errors of its estimate; higher is better.",
        ),
    ):
        sub = d[(d["metric"] == metric) & np.isfinite(d["value"])].copy()
        if sub.empty:
            continue
        if metric == "test_ll":
            se = d[d["metric"] == "test_ll_se"][["run", "config_hash", "seed", "value"]].rename(columns={"value": "se"})
            sub = sub.merge(se, on=["run", "config_hash", "seed"], how="left")
            ci_se = (sub["ci_high"] - sub["ci_low"]) / (2 * 1.96)
            sub["se"] = sub["se"].where(sub["se"].notna(), ci_se)
        rows = []
        for k, grp in sub.groupby(["run", "problem", "label", "backend"]):
            m, lo, hi = t_interval(grp["value"])
            if not math.isfinite(lo) and metric == "test_ll":
                se1 = float(grp["se"].iloc[0])
                lo, hi = m - 1.96 * se1, m + 1.96 * se1
            rows.append(dict(zip(["run", "problem", "label", "backend"], k, strict=True), value=m, lo=lo, hi=hi,
                             unit=grp["unit"].iloc[0]))  # fmt: skip
        g = pd.DataFrame(rows)
        problems = sorted(g["problem"].unique())
        bcolors = _palette(sorted(g["backend"].unique()))
        canvas = _Canvas(len(problems), title)
        for ax, problem in zip(canvas.axes, problems, strict=False):
            p = g[g["problem"] == problem]
            _dotplot(ax, p, x="label", hue="backend", runs=runs, colors=bcolors, order=sorted(g["label"].unique()))
            vals = pd.concat([p["value"], p["lo"], p["hi"]])
            _finish_y(ax, vals if metric != "test_ll" else [], _ylabel(metric, _unit_of(p)))
            ax.set_xlabel("estimator (+ control variate)")
            ax.set_title(problem)
        _legend(canvas, bcolors, "backend", runs, lines=False)
        figs.append(canvas.save(out_dir, name, "train", title, caption, svg))
    return [f for f in figs if f is not None]


def _dashes(styles: Sequence[str]) -> dict:
    return {s: DASHES[i % len(DASHES)] for i, s in enumerate(styles)}


def _style_legend(canvas: _Canvas, colors: dict, styles: Sequence[str]) -> None:
    handles = [Line2D([], [], color=c, lw=2) for c in colors.values()]
    labels = [str(k) for k in colors]
    if len(styles) > 1:
        handles.append(Line2D([], [], ls="none"))
        labels.append("")
        # seaborn assigns dash patterns in the order of the sorted style levels
        for s, dash in _dashes(styles).items():
            h = Line2D([], [], color="0.3")
            if dash:
                h.set_dashes(dash)
            handles.append(h)
            labels.append(str(s))
    canvas.fig.legend(handles, labels, loc="outside right upper", title="estimator / backend", fontsize="small")


# --------------------------------------------------------------------------- images
def _tile(images: np.ndarray, ncols: int = 8, max_images: int = 64) -> np.ndarray:
    images = images[:max_images]
    n, h, w = images.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + 1) + 1, ncols * (w + 1) + 1), dtype=float)  # white gaps under gray_r
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    return grid


def image_figures(arrays: dict[str, np.ndarray], out_dir: Path, svg: bool = True) -> list[FigureFile]:
    """Grids of decoded samples z ~ N(0, I) and of reconstructions beside their originals."""
    if not arrays:
        return []
    names = sorted(arrays, key=lambda k: (0 if k.startswith("samples") else 1 if k.startswith("originals") else 2, k))
    title = "Samples decoded from z ~ N(0, I) and reconstructions"
    tiles = {k: _tile(arrays[k]) for k in names}
    ncols = min(len(names), MAX_COLS)
    aspect = max(t.shape[0] / t.shape[1] for t in tiles.values())
    panel_h = float(np.clip(FIG_WIDTH_IN / ncols * aspect + 0.5, 1.5, 6.0))
    canvas = _Canvas(len(names), title, ncols=ncols, panel_h=panel_h)
    for ax, name in zip(canvas.axes, names, strict=False):
        ax.imshow(tiles[name], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        shown = min(64, len(arrays[name]))
        kind, _, label = name.partition("__")
        pretty = f"{kind} ({label})" if label else kind
        ax.set_title(pretty if shown == len(arrays[name]) else f"{pretty}, first {shown} of {len(arrays[name])}")
        ax.set_axis_off()
    caption = (
        "Decoder means (pixel probabilities in [0, 1]); originals and reconstructions are drawn in the same order, "
        "so image i of one matches image i of the other."
    )
    return [canvas.save(out_dir, "image_grids", "samples", title, caption, svg)]


# --------------------------------------------------------------------------- comparisons
def ratio_figure(table: pd.DataFrame, reference: str, out_dir: Path, svg: bool = True) -> FigureFile | None:
    """Forest plot of the variance ratios against ``reference``: each with its paired 95% interval, log axis."""
    t = table[np.isfinite(table["_ratio"]) & (table["_ratio"] > 0)].copy()
    if t.empty:
        return None
    t["where"] = t["problem"].astype(str) + " · step " + t["step"].astype(str) + " · " + t["backend"].astype(str)
    panels = sorted(t["where"].unique(), key=_natural)
    colors = {"lower": "#2ca02c", "higher": "#d62728", "no difference": "0.45"}
    per = max(t.groupby("where").size())
    canvas = _Canvas(len(panels), f"Gradient variance against {reference}", panel_h=max(2.0, 0.22 * per + 1.0))
    for ax, where in zip(canvas.axes, panels, strict=False):
        sub = t[t["where"] == where].sort_values("_ratio")
        y = np.arange(len(sub))
        err = np.vstack([sub["_ratio"] - sub["_lo"], sub["_hi"] - sub["_ratio"]]).clip(min=0)
        for yi, (_, row), lo_e, hi_e in zip(y, sub.iterrows(), err[0], err[1], strict=True):
            ax.errorbar(row["_ratio"], yi, xerr=[[lo_e], [hi_e]], fmt="o", color=colors[row["verdict"]], capsize=3)
        ax.set_yticks(y, sub["estimator"], fontsize="x-small")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_xlabel(f"total variance / {reference}'s")
        ax.set_title(where, fontsize="small")
    handles = [Line2D([], [], color=c, marker="o", ls="") for c in colors.values()]
    canvas.fig.legend(handles, list(colors), loc="outside right upper", title="95% interval", fontsize="small")
    caption = (
        f"Each estimator's total gradient variance over {reference}'s at the same problem, step and backend, with "
        "the 95% paired-bootstrap interval (replicates paired by their shared noise); log scale, 1 = the same. "
        "Green: lower, red: higher, grey: the interval includes 1 (no difference)."
    )
    return canvas.save(out_dir, "variance_ratios", "variance", f"Gradient variance against {reference}", caption, svg)


def compare_figure(
    table: pd.DataFrame,
    label_cols: Sequence[str],
    out_dir: Path,
    *,
    name: str,
    title: str,
    threshold: float,
    svg: bool = True,
) -> FigureFile | None:
    """Horizontal bars of the relative change of every shared metric (largest 40), coloured by status."""
    t = table[np.isfinite(table["change"]) & (table["change"] != 0)].copy()
    moved = t[t["status"].isin(["regression", "improved", "changed"])]
    t = moved if len(moved) else t
    if t.empty:
        return None
    t = t.reindex(t["change"].abs().sort_values(ascending=False).index).head(40)
    cols = [c for c in label_cols if c in t.columns]
    t["what"] = [
        " · ".join(str(v) for v in row if str(v) not in ("", "none", "nan", "-1", "-1.0"))
        for row in t[cols].itertuples(index=False)
    ]
    t["what"] = t["what"].str.slice(0, 70)
    colors = {"regression": "#d62728", "improved": "#2ca02c", "same": "0.6", "changed": "#1f77b4", "n/a": "0.8"}
    canvas = _Canvas(1, title, ncols=1, panel_h=max(2.0, 0.24 * len(t) + 1.0))
    ax = canvas.axes[0]
    y = np.arange(len(t))[::-1]
    ax.barh(y, 100 * t["change"].to_numpy(float), color=[colors[s] for s in t["status"]])
    ax.set_yticks(y, t["what"], fontsize="x-small")
    for v in (-100 * threshold, 100 * threshold):
        ax.axvline(v, color="0.3", ls="--", lw=1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("relative change, this / other - 1 [%]")
    if (t["change"].abs() > 10).any():
        ax.set_xscale("symlog", linthresh=10)
    handles = [Line2D([], [], color=c, lw=6) for c in colors.values()]
    canvas.fig.legend(handles, list(colors), loc="outside right upper", title="status", fontsize="small")
    caption = (
        f"Relative change of the shared metrics that changed ({len(t)} shown, largest first; "
        f"{len(table)} shared in all); dashed lines at +-{100 * threshold:g}%. "
        "Red: worse beyond the threshold (direction per metric), green: better."
    )
    return canvas.save(out_dir, name, "compare", title, caption, svg)


def benchmark_json_figure(bj: pd.DataFrame, out_dir: Path, svg: bool = True) -> FigureFile | None:
    """Median time per pytest-benchmark test (log scale) with the interquartile range, one colour per file."""
    d = bj[bj["metric"] == "median_s"].copy()
    if d.empty:
        return None
    names = sorted(d["name"].unique())
    files = list(dict.fromkeys(d["file"]))
    colors = _palette(files)
    canvas = _Canvas(
        1, "pytest-benchmark: median time per test", ncols=1, panel_h=max(2.0, 0.3 * len(names) * len(files) + 1.0)
    )
    ax = canvas.axes[0]
    for f_i, f in enumerate(files):
        sub = d[d["file"] == f].set_index("name").reindex(names)
        y = np.arange(len(names))[::-1] + (f_i - (len(files) - 1) / 2) * 0.8 / max(len(files), 1)
        lo = (sub["value"] - sub["q1"]).clip(lower=0).fillna(0)
        hi = (sub["q3"] - sub["value"]).clip(lower=0).fillna(0)
        ax.errorbar(sub["value"] * 1e3, y, xerr=[lo * 1e3, hi * 1e3], fmt="o", color=colors[f], capsize=3)
    ax.set_yticks(np.arange(len(names))[::-1], [n.split("::")[-1][-60:] for n in names], fontsize="x-small")
    if _use_log(d["value"]):
        ax.set_xscale("log")
    ax.set_xlabel("median time per round [ms] (bars: interquartile range)")
    _legend(canvas, colors, "file", [files[0]], lines=False)
    caption = "From the pytest-benchmark JSON files given with --benchmark-json; the first file is the baseline."
    return canvas.save(out_dir, "pytest_benchmark", "pytest-benchmark", "pytest-benchmark timings", caption, svg)
