"""Write report.html and report.md (tables + seaborn figures) from a run directory.

The report reads only files: ``RUN_DIR/results.csv`` (its ``schema_version`` is
checked), ``RUN_DIR/manifest.json``, ``RUN_DIR/samples.npz`` (image grids, see
:func:`save_image_grid_arrays`) and any pytest-benchmark JSON files given. It writes
into ``RUN_DIR``: ``report.html`` (one self-contained file: PNGs embedded as
base64, no scripts, no CDN), ``report.md``, ``figures/*.png|svg`` and
``tables/*.csv``.

With ``--compare OTHER_RUN_DIR`` it adds a ratio table (this / other) for every
metric both runs measured, flagging regressions beyond ``--threshold`` (5% by
default; per metric, higher or lower is better, see
:data:`bench.report.tables.METRICS`), and draws both runs in every figure.
Several ``--benchmark-json`` files are compared the same way, each against the
first.

Contract with the harness:

* metric names: :data:`bench.report.tables.METRICS`;
* planned configurations of a run: the manifest key ``planned_configs``
  (``[{"config_hash": ..., "label": ...}]``, top level or under ``extra``);
  those without rows are listed as missing (a partial run still renders);
* image grids: :func:`save_image_grid_arrays` into ``samples.npz``.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAMPLES_FILE = "samples.npz"
FIGURES_DIR = "figures"
TABLES_DIR = "tables"
FORMATS = ("html", "md")
OPEN_TABLE_ROWS = 30  # longer tables start collapsed in the HTML
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------- image arrays
def save_image_grid_arrays(run_dir: str | Path, name: str, array) -> Path:
    """Store images for the report's sample/reconstruction grids in ``RUN_DIR/samples.npz``.

    The file is a NumPy ``.npz`` archive; each entry is one named set of images,
    float32 ``[N, H, W]`` with pixel values in ``[0, 1]`` (decoder probabilities or
    data). Conventional names: ``samples`` (decoded from z ~ N(0, I)),
    ``originals`` and ``reconstructions`` (same order, image i of one matches image
    i of the other), optionally suffixed with ``__<label>`` (e.g.
    ``samples__iwae``). Calling it again with the same name replaces that entry;
    the archive is rewritten atomically.

    Args:
        run_dir: the run directory (created if missing).
        name: entry name, letters/digits/``_.-`` only.
        array: images ``[N, H, W]``, or ``[N, D]`` with ``D`` a perfect square
            (``[N, 784]`` -> ``[N, 28, 28]``); a numpy array or a torch tensor.

    Returns:
        The path of ``samples.npz``.

    Raises:
        ValueError: bad name, shape or values outside [0, 1] / not finite.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name must be letters, digits, '_', '.' or '-'; got {name!r}")
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise ValueError(f"array of shape {tuple(a.shape)}: expected [N, H, W] or [N, D] with D a perfect square")
        a = a.reshape(a.shape[0], side, side)
    if a.ndim != 3 or a.shape[0] == 0 or 0 in a.shape:
        raise ValueError(f"array must be non-empty images [N, H, W]; got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"array {name!r} has non-finite values; expected pixel values in [0, 1]")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"array {name!r} has values in [{lo:.4g}, {hi:.4g}]; expected pixel values in [0, 1]")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / SAMPLES_FILE
    arrays = load_image_arrays(run_dir)
    arrays[name] = np.clip(a, 0.0, 1.0)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".samples-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_image_arrays(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The image sets in ``RUN_DIR/samples.npz`` (empty dict when there is none)."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k], dtype=np.float32) for k in data.files if data[k].ndim == 3}


def parse_formats(text, option: str = "formats") -> tuple[str, ...]:
    """``"html,md"`` (or a sequence) -> ``("html", "md")``; a bad item raises :class:`ReportError` naming ``option``."""
    from bench.report.tables import ReportError

    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in FORMATS]
    if not items or bad:
        raise ReportError(f"{option}: got {text!r}; expected a comma-separated list out of {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


# --------------------------------------------------------------------------- the report
def build_report(
    run_dir: str | Path,
    *,
    compare: str | Path | None = None,
    benchmark_json: Sequence[str | Path] = (),
    formats: Sequence[str] = FORMATS,
    threshold: float = 0.05,
    svg: bool = True,
    ratio_reference: str = "reparam",
) -> Path:
    """Build the report of a run directory (the function ``elbobench run`` calls at the end).

    Args:
        run_dir: run directory with ``results.csv`` and ``manifest.json``.
        compare: another run directory; adds the ratio table and overlays both runs.
        benchmark_json: pytest-benchmark JSON files (first = baseline).
        formats: any of ``"html"``, ``"md"``.
        threshold: relative change that counts as a regression (0.05 = 5%).
        svg: also write each figure as SVG.
        ratio_reference: the estimator the variance-ratio table compares with.

    Returns:
        Path of ``report.html`` (or ``report.md`` when HTML is not requested).

    Raises:
        bench.report.tables.ReportError: missing/empty run directory, unknown schema
            version, runs with nothing in common, bad pytest-benchmark JSON or options.
    """
    import pandas as pd

    from bench.measure.train import EXAMPLES_PER_S_NOTE
    from bench.report import figures as rf
    from bench.report import tables as rt

    formats = parse_formats(formats)
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold >= 0):
        raise rt.ReportError(f"--threshold: got {threshold!r}; expected a non-negative number such as 0.05")
    this = rt.load_run(run_dir)
    other = rt.load_run(compare) if compare is not None else None
    runs = [this.name]
    if other is not None:
        if other.name == this.name:
            this.name, other.name = f"{this.name} (this)", f"{other.name} (other)"
        this.results["run"], other.results["run"] = this.name, other.name
        runs = [this.name, other.name]
    bj = rt.load_benchmark_json(benchmark_json) if benchmark_json else pd.DataFrame()
    # every check that can fail on bad input runs before anything is written
    compare_table = rt.compare_runs(this, other, threshold=threshold) if other is not None else pd.DataFrame()
    bj_table = rt.compare_benchmark_json(bj, threshold=threshold) if len(bj) else pd.DataFrame()
    out = this.path
    fig_dir = out / FIGURES_DIR
    # figures of an earlier report of this run (e.g. before --resume added configurations) would be stale
    if fig_dir.is_dir():
        for stale in [*fig_dir.glob("*.png"), *fig_dir.glob("*.svg")]:
            stale.unlink()
    if (out / TABLES_DIR).is_dir():
        for stale in (out / TABLES_DIR).glob("*.csv"):
            stale.unlink()
    tab_dir = out / TABLES_DIR
    tab_dir.mkdir(parents=True, exist_ok=True)

    rf.set_style()
    df = pd.concat([this.results, other.results]) if other is not None else this.results
    sections: list[tuple[str, str, list, list]] = []  # (key, heading, figures, [(title, table, caption, csv)])
    prov = rt.provenance_line(this) + (f". Compared with: {rt.provenance_line(other)}" if other is not None else "")

    vt, st, ct = rt.variance_table(this.results), rt.speed_table(this.results), rt.convergence_table(this.results)
    # tables: (title, formatted table, caption, csv file name under tables/ or None)
    var_tables = [
        (
            "Variance table",
            vt,
            "Each estimate with its 95% interval; bias is reported as detected when its one-sided test of no bias "
            f"has p < {rt.BIAS_ALPHA:g}, and its MDE is the smallest relative bias the run could detect at 80% power "
            f"with its R (chosen per configuration by a pilot unless given; 'capped' where the budget bound it). "
            f"{_train_estimator_note(this.results)}{prov}",
            "variance_table.csv",
        )
    ]
    ratios = rt.variance_ratio_table(this, ratio_reference)
    if len(ratios):
        rf_fig = rf.ratio_figure(ratios, ratio_reference, fig_dir, svg)
        var_tables.append(
            (
                f"Variance ratios against {ratio_reference}",
                ratios.drop(columns=["_ratio", "_lo", "_hi"]),
                f"Total variance over {ratio_reference}'s at the same problem, step, backend and samples; replicates "
                "paired by their shared noise, 95% paired-bootstrap intervals; a difference is called lower or higher "
                f"only when the interval excludes 1. {prov}",
                "variance_ratio_table.csv",
            )
        )
    sections.append(
        (
            "variance",
            "Gradient variance",
            rf.variance_figures(df, runs, fig_dir, svg) + ([rf_fig] if len(ratios) and rf_fig else []),
            var_tables,
        )
    )
    sections.append(
        ("speed", "Speed", rf.speed_figures(df, runs, fig_dir, svg), [("Speed table", st, prov, "speed_table.csv")])
    )
    sections.append(
        (
            "train",
            "ELBO convergence",
            rf.train_figures(df, runs, fig_dir, svg),
            [
                (
                    "Convergence table",
                    ct,
                    f"Final ELBOs and test log-likelihoods: mean [95% interval] across seeds (one seed: its "
                    f"importance-sampling standard error). {rt.convergence_target_note(this.results)} "
                    + (f"{EXAMPLES_PER_S_NOTE} {prov}" if "examples/s" in ct else prov),
                    "convergence_table.csv",
                )
            ],
        )
    )
    images = load_image_arrays(this.path)
    sections.append(("samples", "Samples and reconstructions", rf.image_figures(images, fig_dir, svg), []))
    if other is not None:
        compare_table.to_csv(tab_dir / "ratio_table.csv", index=False)
        fig = rf.compare_figure(
            compare_table,
            rt.COMPARE_KEY,
            fig_dir,
            name="compare_runs",
            title=f"{this.name} against {other.name}",
            threshold=threshold,
            svg=svg,
        )
        shown, caption = _changed(compare_table, threshold, f"ratio = {this.name} / {other.name}", "ratio_table.csv")
        sections.append(
            (
                "compare",
                f"Comparison with {other.name}",
                [fig] if fig else [],
                [("Changed metrics", rt.format_compare(shown, rt.COMPARE_KEY), f"{caption} {prov}", None)],
            )
        )
    if len(bj):
        fig = rf.benchmark_json_figure(bj, fig_dir, svg)
        files = ", ".join(dict.fromkeys(bj["file"]))
        tables = [("pytest-benchmark results", _bj_summary(bj), f"from {files}", "pytest_benchmark.csv")]
        figs = [fig] if fig else []
        if len(bj_table):
            bj_table.to_csv(tab_dir / "pytest_benchmark_ratio_table.csv", index=False)
            f2 = rf.compare_figure(
                bj_table,
                ["file", "name", "metric"],
                fig_dir,
                name="compare_pytest_benchmark",
                title="pytest-benchmark files against the first",
                threshold=threshold,
                svg=svg,
            )
            figs += [f2] if f2 else []
            shown, caption = _changed(
                bj_table,
                threshold,
                f"ratio = file / {bj_table['baseline'].iloc[0]}",
                "pytest_benchmark_ratio_table.csv",
            )
            tables.append(
                ("pytest-benchmark changes", rt.format_compare(shown, ["file", "name", "metric"]), caption, None)
            )
        sections.append(("pytest-benchmark", "pytest-benchmark", figs, tables))

    for _key, _h, _figs, tables in sections:
        for _title, table, _cap, csv_name in tables:
            if csv_name and len(table):
                table.to_csv(tab_dir / csv_name, index=False)

    notes = list(this.notes) + ([f"other run: {n}" for n in other.notes] if other is not None else [])
    meta = {
        "this": this,
        "other": other,
        "prov": rt.provenance(this),
        "notes": notes,
        "missing": this.missing,
        "compare_table": compare_table,
        "threshold": threshold,
    }
    written = []
    if "html" in formats:
        p = out / "report.html"
        p.write_text(_render_html(meta, sections, out), encoding="utf-8")
        written.append(p)
    if "md" in formats:
        p = out / "report.md"
        p.write_text(_render_md(meta, sections, out), encoding="utf-8")
        written.append(p)
    return written[0]


def _train_estimator_note(df) -> str:
    """Which estimator trained the model to the variance benchmark's train points."""
    import json

    d = df[(df["benchmark"] == "variance") & (df["step"] > 0)]
    names = set()
    for cfg in d["config"].dropna().unique():
        try:
            names.add(json.loads(cfg).get("train_estimator", "reparam"))
        except ValueError:
            continue
    if not names:
        return ""
    return f"Train points: the model trained by {', '.join(sorted(names))} (every row at a step measures the same parameters). "


def _changed(table, threshold: float, what: str, csv_name: str):
    """Rows of a comparison that moved beyond the threshold (or are not comparable), and a caption."""
    counts = table["status"].value_counts()
    shown = table[table["status"] != "same"]
    caption = (
        f"{what}; {len(table)} shared metrics: {counts.get('regression', 0)} regression(s) and "
        f"{counts.get('improved', 0)} improvement(s) beyond {100 * threshold:g}%, {counts.get('changed', 0)} "
        f"neutral metric(s) changed, {counts.get('n/a', 0)} not comparable, {counts.get('same', 0)} unchanged "
        f"(not listed; every row is in {TABLES_DIR}/{csv_name})."
    )
    return shown, caption


def _bj_summary(bj):
    t = bj.pivot_table(index=["file", "name"], columns="metric", values="value", aggfunc="first").reset_index()
    t.columns.name = None
    for c in t.columns[2:]:
        t[c] = t[c].map(lambda x: "–" if x != x else f"{x:.4g}")
    return t


# --------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1280px;
 padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
.meta td:first-child{font-weight:600;white-space:nowrap}
.note{background:#fff6d6;border-left:4px solid #e0a800;padding:.5em .8em;margin:.5em 0}
.regression{background:#fde2e2!important;color:#9b1c1c;font-weight:600}
.improved{background:#e3f6e3!important;color:#1b6e1b}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}summary{cursor:pointer;margin:.6em 0}
td{white-space:nowrap}.caption{font-size:.85em;color:#555}
.scroll{overflow-x:auto}code{background:#f3f3f3;padding:0 .2em}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _html_table(df, caption: str | None = None) -> str:
    if df is None or len(df) == 0:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    rows = []
    status_col = "status" in df.columns
    for rec in df.itertuples(index=False):
        cls = ""
        if status_col:
            st = getattr(rec, "status", "")
            cls = f' class="{_esc(st)}"' if st in ("regression", "improved") else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_esc(v)}</td>" for v in rec) + "</tr>")
    cap = f'<p class="caption">{_esc(caption)}</p>' if caption else ""
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{cap}'


def _render_html(meta: dict, sections, out: Path) -> str:
    this, other, prov = meta["this"], meta["other"], meta["prov"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>elbobench report: {_esc(this.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>elbobench report: {_esc(this.name)}</h1>",
        '<table class="meta"><tbody>',
    ]
    rows = [
        ("run directory", str(this.path)),
        ("machine", prov["machine"]),
        ("versions", prov["versions"]),
        ("command", prov["command"]),
        ("git commit", prov["commit"]),
        ("started", prov["started"]),
        ("rows", f"{len(this.results)} results, benchmarks: {', '.join(sorted(set(this.results['benchmark'])))}"),
        ("report written", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
    ]
    if other is not None:
        rows.append(("compared with", str(other.path)))
    parts += [f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows if v]
    parts.append("</tbody></table>")
    for n in meta["notes"]:
        parts.append(f'<p class="note">{_esc(n)}</p>')
    if len(meta["missing"]):
        parts.append("<h2>Missing configurations</h2>")
        parts.append(
            "<p>The manifest planned these configurations but the results hold no rows for them "
            "(the run was interrupted or they failed); continue it with <code>--resume</code>.</p>"
        )
        parts.append(_html_table(meta["missing"]))
    ct = meta["compare_table"]
    if len(ct):
        reg = ct[ct["status"] == "regression"]
        msg = (
            f"{len(reg)} regression(s) beyond {100 * meta['threshold']:g}% against {other.name}"
            if len(reg)
            else f"no regression beyond {100 * meta['threshold']:g}% against {other.name}"
        )
        parts.append(f'<p class="note">{_esc(msg)} ({len(ct)} shared metrics; see the comparison section).</p>')
    toc = [(k, h) for k, h, figs, tables in sections if figs or any(len(t[1]) for t in tables)]
    parts.append("<p>Sections: " + " · ".join(f'<a href="#{_esc(k)}">{_esc(h)}</a>' for k, h in toc) + "</p>")
    for key, heading, figs, tables in sections:
        if not figs and not any(len(t[1]) for t in tables):
            continue
        parts.append(f'<h2 id="{_esc(key)}">{_esc(heading)}</h2>')
        table_html = []
        for title, table, caption, _csv in tables:
            if not len(table):
                table_html.append(f'<h3>{_esc(title)}</h3><p class="caption">{_esc(caption)}</p>')
                continue
            is_open = " open" if len(table) <= OPEN_TABLE_ROWS else ""
            table_html.append(
                f"<details{is_open}><summary><b>{_esc(title)}</b> ({len(table)} rows)</summary>"
                f"{_html_table(table, caption)}</details>"
            )
        fig_html = []
        for f in figs:
            data = base64.b64encode(f.png.read_bytes()).decode("ascii")
            w, h = f.size_px
            svg = f' · <a href="{_esc(_rel(f.svg, out))}">SVG</a>' if f.svg else ""
            fig_html.append(
                f'<figure id="fig-{_esc(f.name)}"><img src="data:image/png;base64,{data}" width="{w}" height="{h}" '
                f'alt="{_esc(f.title)}"><figcaption><b>{_esc(f.title)}.</b> {_esc(f.caption)} '
                f'<a href="{_esc(_rel(f.png, out))}">PNG</a>{svg}</figcaption></figure>'
            )
        # comparisons lead with their table of changes; the other sections with their figures
        parts += table_html + fig_html if key in ("compare", "pytest-benchmark") else fig_html + table_html
    parts.append("</body></html>")
    return "\n".join(parts)


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(df) -> str:
    if df is None or len(df) == 0:
        return ""
    lines = ["| " + " | ".join(_md_cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    return "\n".join(lines)


def _render_md(meta: dict, sections, out: Path) -> str:
    this, other, prov = meta["this"], meta["other"], meta["prov"]
    lines = [f"# elbobench report: {this.name}", ""]
    lines += [
        f"- machine: {prov['machine']}",
        f"- versions: {prov['versions']}",
        f"- command: `{prov['command']}`",
    ]
    if prov["commit"]:
        lines.append(f"- git commit: {prov['commit']}")
    if other is not None:
        lines.append(f"- compared with: `{other.path}`")
    lines.append("")
    for n in meta["notes"]:
        lines += [f"> **Note:** {n}", ""]
    if len(meta["missing"]):
        lines += ["## Missing configurations", "", _md_table(meta["missing"]), ""]
    for key, heading, figs, tables in sections:
        if not figs and not any(len(t[1]) for t in tables):
            continue
        lines += [f"## {heading}", ""]
        table_md = []
        for title, table, caption, _csv in tables:
            table_md += [f"### {title}", ""] + ([_md_table(table), ""] if len(table) else []) + [f"_{caption}_", ""]
        fig_md = []
        for f in figs:
            fig_md += [f"![{f.title}]({_rel(f.png, out)})", "", f"*{f.title}.* {f.caption}", ""]
        lines += table_md + fig_md if key in ("compare", "pytest-benchmark") else fig_md + table_md
    return "\n".join(lines)
