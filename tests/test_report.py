"""Tests of ``elbobench report``: figures, HTML/Markdown, comparison, bad input, browser.

The report is built once per module from synthetic runs (tests/report_fixtures.py):
``new`` is a partial run (two planned configurations missing) with a planted 50%
slowdown of the numba kernels; ``old`` is the same run without it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_fixtures import build_run, write_benchmark_json  # noqa: E402

from bench import cli  # noqa: E402
from bench.report import build_report, load_image_arrays, save_image_grid_arrays  # noqa: E402
from bench.report.figures import FIG_WIDTH_PX, png_size  # noqa: E402
from bench.report.tables import (  # noqa: E402
    METRICS,
    MetricSpec,
    ReportError,
    compare_frames,
    compare_runs,
    load_run,
    metric_spec,
)

# every figure the full fixture (all benchmarks, images, --compare, two JSON files) must produce
EXPECTED_FIGURES = {
    "variance_by_estimator",
    "variance_cost_normalised",
    "snr",
    "bias",
    "variance_vs_samples",
    "variance_over_training",
    "kernel_throughput",
    "kernel_time",
    "speedup",
    "estimator_throughput",
    "elbo_vs_step",
    "elbo_vs_wall",
    "time_to_target",
    "test_loglik",
    "image_grids",
    "compare_runs",
    "pytest_benchmark",
    "compare_pytest_benchmark",
}
PLANTED = {("ms", "numba"): 1.5}
PLANTED_TEST = "tests/benchmarks/test_speed.py::test_vae_step"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    new = build_run(root / "new", scale=PLANTED, missing=2)
    old = build_run(root / "old")
    j_old = write_benchmark_json(root / "old.json")
    j_new = write_benchmark_json(root / "new.json", scale={("median_s", PLANTED_TEST.split("::")[-1]): 1.3})
    path = build_report(new, compare=old, benchmark_json=[j_old, j_new])
    return {"html": path, "new": new, "old": old, "json": (j_old, j_new)}


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, dict]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append((tag, a[key], a))


def _parse(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


# --------------------------------------------------------------------------- figures and files
def test_every_figure_is_a_png_of_the_expected_size(report):
    fig_dir = report["new"] / "figures"
    pngs = {p.stem: p for p in fig_dir.glob("*.png")}
    assert set(pngs) == EXPECTED_FIGURES
    # the HTML states each figure's size; the embedded copy and the file on disk must match it
    sizes = {}
    for tag, ref, attrs in _parse(report["html"]).refs:
        if tag == "img":
            data = base64.b64decode(ref.split(",", 1)[1])
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            sizes[attrs["alt"]] = ((int(attrs["width"]), int(attrs["height"])), data)
    assert len(sizes) == len(EXPECTED_FIGURES)
    on_disk = {p.read_bytes(): p for p in pngs.values()}
    for (w, h), data in sizes.values():
        path = on_disk[data]  # the embedded image is the file on disk, byte for byte
        assert path.stat().st_size > 1000
        assert png_size(path) == (w, h)
        assert w == FIG_WIDTH_PX and 100 <= h <= 4000
    for stem in EXPECTED_FIGURES:
        svg = fig_dir / f"{stem}.svg"
        head = svg.read_text()[:200]
        assert svg.stat().st_size > 1000 and "<svg" in svg.read_text()[:2000], (svg, head)


def test_html_parses_and_references_only_existing_local_files(report):
    parsed = _parse(report["html"])
    assert "script" not in parsed.tags  # nothing to execute, nothing fetched
    local = []
    for _tag, ref, _ in parsed.refs:
        assert not re.match(r"^(https?:)?//", ref), f"remote reference {ref!r}"
        if ref.startswith("data:"):
            assert ref.startswith("data:image/png;base64,")
        elif ref.startswith("#"):
            assert f'id="{ref[1:]}"' in report["html"].read_text()
        else:
            local.append(ref)
            assert (report["new"] / ref).is_file(), ref
    assert any(r.endswith(".svg") for r in local)


def test_markdown_references_only_existing_files_and_states_provenance(report):
    md = (report["new"] / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(i).stem for i in images} == EXPECTED_FIGURES
    for ref in images:
        assert (report["new"] / ref).is_file()
    # each of the three tables states machine, versions and command from the manifest
    for title in ("Variance table", "Speed table", "Convergence table"):
        block = md.split(f"### {title}", 1)[1].split("###", 1)[0]
        assert "Fixture CPU" in block and "torch 2" in block and "elbobench run --quick" in block, title


def test_convergence_table_says_where_to_compare_speed(report):
    # its examples/s come from runs taken one after another: the caption points to the interleaved Speed section
    md = (report["new"] / "report.md").read_text()
    block = md.split("### Convergence table", 1)[1].split("###", 1)[0]
    assert "examples/s" in block and "one after another" in block and "Speed section" in block
    html = report["html"].read_text(encoding="utf-8")
    assert "timed interleaved, not here" in html


def test_tables_are_written_as_csv(report):
    tables = report["new"] / "tables"
    conv = pd.read_csv(tables / "convergence_table.csv")
    assert set(conv["estimator"]) == {"reparam", "iwae"}
    assert (conv["seeds"] == 2).all()
    speed = pd.read_csv(tables / "speed_table.csv")
    row = speed[(speed["op"] == "normal_rsample_kl") & (speed["size"] == "4096x1024") & (speed["backend"] == "torch")]
    assert row["speedup vs eager"].iloc[0] == "1x"
    assert len(pd.read_csv(tables / "variance_table.csv")) == 2 * 3 * 2 * 3 * 2  # problem x est x backend x S x step


# --------------------------------------------------------------------------- comparison
def test_comparison_flags_the_planted_regression_and_nothing_else(report):
    table = pd.read_csv(report["new"] / "tables" / "ratio_table.csv", keep_default_na=False, na_values=[""])
    reg = table[table["status"] == "regression"]
    # the numba kernels got 1.5x slower: ms up 50% and GB/s down 33%, at both sizes and for both ops
    assert set(zip(reg["metric"], reg["backend"], strict=True)) == {("ms", "numba"), ("GB/s", "numba")}
    assert len(reg) == 8
    assert np.allclose(reg[reg["metric"] == "ms"]["ratio"], 1.5)
    unchanged = table[(table["backend"] == "torch") & (table["metric"] == "ms")]
    assert len(unchanged) and (unchanged["status"] == "same").all()
    assert (table[table["metric"] == "total_variance"]["status"] == "same").all()
    assert (table[table["metric"] == "val_elbo"]["status"] == "same").all()
    assert not (table["status"] == "improved").any()
    html = report["html"].read_text()
    assert html.count('<tr class="regression">') == 8 + 4  # runs + pytest-benchmark (median, mean, min, ops)


def test_comparison_of_pytest_benchmark_json_flags_the_planted_test(report):
    table = pd.read_csv(report["new"] / "tables" / "pytest_benchmark_ratio_table.csv")
    reg = table[table["status"] == "regression"]
    assert set(reg["name"]) == {PLANTED_TEST}
    assert set(reg["metric"]) == {"median_s", "mean_s", "min_s", "ops"}
    others = table[table["name"] != PLANTED_TEST]
    assert (others["status"] == "same").all()


def test_compare_direction_per_metric():
    key = ["metric"]
    this = pd.DataFrame(
        {
            "metric": ["GB/s", "ms", "val_elbo", "kernel_share", "snr", "time_to_target_s", "bias", "total_variance"],
            "value": [90.0, 90.0, -110.0, 0.5, 10.3, math.inf, -0.5, 1.0],
            "unit": "",
        }
    )
    other = this.assign(value=[100.0, 100.0, -100.0, 0.3, 10.0, math.inf, 1.0, 0.0])
    t = compare_frames(this, other, threshold=0.05, key=key).set_index("metric")
    assert t.loc["GB/s", "status"] == "regression"  # higher is better, 10% lower
    assert t.loc["ms", "status"] == "improved"  # lower is better, 10% lower
    assert t.loc["val_elbo", "status"] == "regression"  # ELBO 10 nats lower
    assert t.loc["kernel_share", "status"] == "changed"  # neutral: never a regression
    assert t.loc["snr", "status"] == "same"  # +3% within 5%
    assert t.loc["time_to_target_s", "status"] == "same"  # never reached in either run
    assert t.loc["bias", "status"] == "improved"  # |bias| halved
    assert t.loc["total_variance", "status"] == "n/a"  # other is 0: no relative change
    assert t.loc["GB/s", "ratio"] == pytest.approx(0.9)
    assert t.index[0] in ("GB/s", "val_elbo")  # regressions first


def test_two_runs_with_nothing_in_common(tmp_path):
    a = build_run(tmp_path / "speed_only", benchmarks=("speed",), images=False)
    b = build_run(tmp_path / "train_only", benchmarks=("train",), images=False)
    with pytest.raises(ReportError, match="nothing in common") as exc:
        compare_runs(load_run(a), load_run(b))
    assert "speed_only" in str(exc.value) and "train_only" in str(exc.value)
    assert "examples_per_s" in str(exc.value) and "val_elbo" in str(exc.value)


# --------------------------------------------------------------------------- partial runs and degradation
def test_partial_run_renders_and_lists_missing_configurations(report):
    html = report["html"].read_text()
    assert "Missing configurations" in html
    assert "train digits vimco numba seed 0" in html and "train digits vimco numba seed 1" in html
    md = (report["new"] / "report.md").read_text()
    assert "partial run: 2 planned configuration(s) have no results" in md
    assert load_run(report["old"]).missing.empty


def test_absent_metrics_are_not_drawn(tmp_path):
    run = build_run(tmp_path / "train_only", benchmarks=("train",), images=False)
    (run / "figures").mkdir()
    (run / "figures" / "speedup.png").write_bytes(b"stale figure of an earlier report")
    path = build_report(run, formats=("md",), svg=False)
    assert path.name == "report.md" and not (run / "report.html").exists()
    figs = {p.stem for p in (run / "figures").iterdir()}
    assert figs == {"elbo_vs_step", "elbo_vs_wall", "time_to_target", "test_loglik"}
    md = path.read_text()
    assert "## ELBO convergence" in md and "Gradient variance" not in md and "## Speed" not in md


# --------------------------------------------------------------------------- bad input
def _report_cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main(["report", *map(str, argv)])
    return rc, capsys.readouterr().err


def test_missing_run_directory(tmp_path, capsys):
    rc, err = _report_cli(capsys, tmp_path / "nope")
    assert rc == 2 and "does not exist" in err and "nope" in err


def test_empty_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = _report_cli(capsys, tmp_path / "empty")
    assert rc == 2 and "has no results.csv" in err and "it is empty" in err


def test_results_without_rows(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("")
    with pytest.raises(ReportError, match="is empty"):
        load_run(run)
    (run / "results.csv").write_text("benchmark,metric,value,schema_version\n")
    with pytest.raises(ReportError, match="no rows"):
        load_run(run)


def test_unknown_schema_version(tmp_path, capsys):
    run = build_run(tmp_path / "run", benchmarks=("train",), images=False)
    df = pd.read_csv(run / "results.csv")
    df.assign(schema_version=99).to_csv(run / "results.csv", index=False)
    rc, err = _report_cli(capsys, run)
    assert rc == 2 and "schema_version [99]" in err and "versions [1, 2]" in err


def test_bad_options(tmp_path, capsys):
    run = build_run(tmp_path / "run", benchmarks=("train",), images=False)
    rc, err = _report_cli(capsys, run, "--format", "pdf")
    assert rc == 2 and "--format" in err and "'pdf'" in err and "html, md" in err
    rc, err = _report_cli(capsys, run, "--threshold", "-1")
    assert rc == 2 and "--threshold" in err and "-1" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "pytest-benchmark"}))
    rc, err = _report_cli(capsys, run, "--benchmark-json", bad)
    assert rc == 2 and "bad.json" in err and "'benchmarks' list" in err
    rc, err = _report_cli(capsys, run, "--benchmark-json", tmp_path / "missing.json")
    assert rc == 2 and "missing.json" in err and "does not exist" in err


def test_cli_writes_report(tmp_path, capsys):
    run = build_run(tmp_path / "run", benchmarks=("train",), images=False)
    assert cli.main(["report", str(run), "--no-svg"]) == 0
    assert f"report written: {run / 'report.html'}" in capsys.readouterr().out
    assert (run / "report.md").exists() and not list((run / "figures").glob("*.svg"))


def test_cli_compare_reports_regressions_and_can_fail(tmp_path, capsys):
    # ELBO 20% lower (more negative) in the new run: higher is better, so a regression
    new = build_run(tmp_path / "new", benchmarks=("train",), images=False, scale={"val_elbo": 1.2})
    old = build_run(tmp_path / "old", benchmarks=("train",), images=False)
    flags = ["--no-svg", "--format", "md", "--fail-on-regression"]
    assert cli.main(["report", str(new), "--compare", str(old), *flags]) == 1
    out = capsys.readouterr().out
    # train and validation ELBO (the fixture's train ELBO follows the validation one) x 2 estimators x 2 backends
    assert re.search(r"^8 regression\(s\) beyond 5% against .*old \(32 shared metrics\)", out, re.M), out
    table = pd.read_csv(new / "tables" / "ratio_table.csv")
    assert set(table.loc[table["status"] == "regression", "metric"]) == {"train_elbo", "val_elbo"}
    assert cli.main(["report", str(old), "--compare", str(old), *flags]) == 0
    assert "0 regression(s)" in capsys.readouterr().out
    assert not (old / "tables" / "pytest_benchmark_ratio_table.csv").exists()


# --------------------------------------------------------------------------- image arrays
def test_image_grid_arrays_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(1)
    save_image_grid_arrays(tmp_path, "samples", rng.random((5, 64)))  # [N, D] -> [N, 8, 8]
    save_image_grid_arrays(tmp_path, "originals", rng.random((4, 28, 28)))
    replaced = rng.random((3, 8, 8))
    save_image_grid_arrays(tmp_path, "samples", replaced)
    arrays = load_image_arrays(tmp_path)
    assert set(arrays) == {"samples", "originals"}
    assert arrays["samples"].dtype == np.float32
    np.testing.assert_allclose(arrays["samples"], replaced.astype(np.float32))
    assert arrays["originals"].shape == (4, 28, 28)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".samples-")]  # no temp file left
    with pytest.raises(ValueError, match="name"):
        save_image_grid_arrays(tmp_path, "bad/name", replaced)
    with pytest.raises(ValueError, match=r"values in \[-0\.5, 1\.5\]; expected pixel values in \[0, 1\]"):
        save_image_grid_arrays(tmp_path, "x", np.array([[[-0.5, 1.5]]]))
    with pytest.raises(ValueError, match="perfect square"):
        save_image_grid_arrays(tmp_path, "x", rng.random((3, 10)))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        save_image_grid_arrays(tmp_path, "x", rng.random(2))
    with pytest.raises(ValueError, match="non-finite"):
        save_image_grid_arrays(tmp_path, "x", np.full((1, 2, 2), np.nan))


def test_fixture_writes_only_metric_names_the_report_knows(report):
    df = pd.read_csv(report["new"] / "results.csv")
    for metric in set(df["metric"]):
        assert metric_spec(metric).benchmark in ("variance", "speed", "train"), metric
    assert all(spec.better in (-1, 0, 1) for spec in METRICS.values())
    assert metric_spec("encoder_snr").better == 1 and metric_spec("encoder_snr").label == "encoder gradient SNR"
    assert metric_spec("mu_variance").better == -1
    assert metric_spec("something_new") == MetricSpec("", 0, "something_new")  # unknown: neutral


def test_png_size_reads_the_header(tmp_path):
    from PIL import Image

    Image.new("RGB", (37, 21)).save(tmp_path / "x.png", format="PNG")
    assert png_size(tmp_path / "x.png") == (37, 21)
    (tmp_path / "x.txt").write_text("not a png, not at all")
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(tmp_path / "x.txt")


# --------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var m = document.createElement("pre");
  m.id = "elbobench-check";
  m.textContent = "IMAGES " + imgs.length + " BROKEN " + bad.length +
    " WIDTHS " + imgs.map(function (i) { return i.naturalWidth; }).join(",");
  document.body.appendChild(m);
});
</script>
"""


@pytest.mark.browser
def test_report_opens_in_headless_chromium(request, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "Chromium is not installed (Debian: apt-get install chromium); the README's test command installs it"
        )
    report = request.getfixturevalue("report")  # built only when there is a browser to open it
    html = report["html"].read_text(encoding="utf-8")
    # a copy beside the original (same relative links) with a script that marks the DOM once loaded
    page = report["new"] / "report.browser-check.html"
    page.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        page.unlink()
    m = re.search(r"IMAGES (\d+) BROKEN (\d+) WIDTHS ([\d,]*)", proc.stdout)
    assert m, f"no marker in Chromium's DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    assert int(m.group(1)) == len(EXPECTED_FIGURES)
    assert int(m.group(2)) == 0
    assert set(m.group(3).split(",")) == {str(FIG_WIDTH_PX)}
