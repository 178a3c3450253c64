"""The speed-target evaluator (:func:`bench.measure.kernel_speed.targets`) and ``scripts/kernel_targets.py`` on synthetic runs.

Nothing is timed here: the runs are built from chosen medians, so every ratio
and verdict below is known exactly.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.measure.kernel_speed import summary
from bench.measure.targets import KERNEL_TARGETS, Target, targets

ROOT = Path(__file__).resolve().parents[1]


def _run(cells: dict, copy_gbps: dict, *, interleaved: bool = True) -> pd.DataFrame:
    """A kernel_speed-like frame: ``cells[(op, pass, size)] = {backend: ms}`` (+ ``"numba_GBps"``, and
    ``"copy_GBps"``: a copy timed in the cell's rounds); copy GB/s per size."""
    rows = []
    for size, gb in copy_gbps.items():
        rows.append(dict(benchmark="speed", backend="copy", op="copy", size=size, metric="GB/s", value=gb))
    for (op, pass_, size), times in cells.items():
        for backend, v in times.items():
            if backend in ("numba_GBps", "copy_GBps"):
                who = backend.split("_")[0]
                rows.append(dict(benchmark="speed", backend=who, op=f"{op}:{pass_}", size=size, metric="GB/s", value=v))
            else:
                rows.append(
                    dict(benchmark="speed", backend=backend, op=f"{op}:{pass_}", size=size, metric="ms", value=v)
                )
    df = pd.DataFrame(rows)
    df["config"] = json.dumps({"interleaved": interleaved})
    return df


FWD = ("normal_rsample_kl", "forward", "4096x1024")
COMPILE = Target(
    "fwd >= 1.5x compile", ("normal_rsample_kl",), ("forward",), "speedup_vs_torch_compile", 1.5, ("4096x1024",)
)


def test_median_over_runs_of_same_run_ratios():
    runs = [_run({FWD: {"torch_compile": c, "numba": 1.0}}, {}) for c in (2.0, 1.0, 1.6)]
    row = targets(runs, [COMPILE]).iloc[0]
    assert row["median"] == pytest.approx(1.6)
    assert row["runs"] == [2.0, 1.0, 1.6]
    assert bool(row["met"]) is True and row["runs_met"] == "2/3"
    assert row["cell"] == "normal_rsample_kl:forward 4096x1024" and row["cells"] == 1


def test_ratio_is_taken_within_each_run_not_across():
    # compile and numba both slow in run 0, both fast in run 1: each run's ratio is 2
    runs = [
        _run({FWD: {"torch_compile": 8.0, "numba": 4.0}}, {}),
        _run({FWD: {"torch_compile": 2.0, "numba": 1.0}}, {}),
    ]
    row = targets(runs, [COMPILE]).iloc[0]
    assert row["runs"] == [2.0, 2.0] and row["median"] == pytest.approx(2.0)


def test_a_target_over_cells_is_its_lowest_cell():
    goal = Target("bwd >= 0.8x copy", ("normal_rsample_kl",), ("backward",), "numba_frac_of_copy", 0.8,
                  ("4096x1024", "16384x1024"))  # fmt: skip
    cells = {
        ("normal_rsample_kl", "backward", "4096x1024"): {"numba": 1.0, "numba_GBps": 12.0},
        ("normal_rsample_kl", "backward", "16384x1024"): {"numba": 1.0, "numba_GBps": 16.0},
    }
    row = targets([_run(cells, {"4096x1024": 20.0, "16384x1024": 16.0})], [goal]).iloc[0]
    assert row["cell"] == "normal_rsample_kl:backward 4096x1024"
    assert row["median"] == pytest.approx(0.6) and bool(row["met"]) is False and row["cells"] == 2


def test_largest_copy_ratio_uses_the_largest_sizes_copy_in_every_row():
    """``numba_frac_of_largest_copy``: numba GB/s over the copy of the run's largest size (a DRAM reference)."""
    cells = {
        ("normal_log_prob", "forward", "1024x256"): {"numba": 1.0, "numba_GBps": 5.0},
        ("normal_log_prob", "forward", "4096x1024"): {"numba": 1.0, "numba_GBps": 12.0},
        ("normal_log_prob", "forward", "16384x1024"): {"numba": 1.0, "numba_GBps": 14.0},
    }
    # the copy at 4096x1024 is cache-resident (fast); 16384x1024 is the largest (4096x1024 sorts after it as text)
    s = summary(_run(cells, {"1024x256": 40.0, "4096x1024": 30.0, "16384x1024": 16.0})).set_index("size")
    assert s.loc["4096x1024", "numba_frac_of_copy"] == pytest.approx(12.0 / 30.0)
    assert s.loc["4096x1024", "numba_frac_of_largest_copy"] == pytest.approx(12.0 / 16.0)
    assert s.loc["1024x256", "numba_frac_of_largest_copy"] == pytest.approx(5.0 / 16.0)
    assert s.loc["16384x1024", "numba_frac_of_largest_copy"] == pytest.approx(s.loc["16384x1024", "numba_frac_of_copy"])


def test_a_copy_timed_in_the_cells_rounds_is_that_cells_reference():
    """kernel_speed(interleave=True) adds a copy per cell: summary holds the cell to it, not to the size's copy."""
    cells = {
        ("normal_log_prob", "forward", "4096x1024"): {"numba": 1.0, "numba_GBps": 12.0, "copy_GBps": 15.0},
        ("normal_log_prob", "backward", "4096x1024"): {"numba": 1.0, "numba_GBps": 12.0},  # no copy of its own
        ("normal_log_prob", "forward", "16384x1024"): {"numba": 1.0, "numba_GBps": 14.0, "copy_GBps": 28.0},
    }
    s = summary(_run(cells, {"4096x1024": 30.0, "16384x1024": 16.0})).set_index(["pass", "size"])
    assert s.loc[("forward", "4096x1024"), "copy_GBps"] == pytest.approx(15.0)
    assert s.loc[("forward", "4096x1024"), "numba_frac_of_copy"] == pytest.approx(12.0 / 15.0)
    assert s.loc[("backward", "4096x1024"), "numba_frac_of_copy"] == pytest.approx(12.0 / 30.0)
    assert s.loc[("forward", "16384x1024"), "numba_frac_of_copy"] == pytest.approx(0.5)
    # the DRAM reference stays the largest size's own copy
    assert s.loc[("forward", "4096x1024"), "numba_frac_of_largest_copy"] == pytest.approx(12.0 / 16.0)
    assert set(s.reset_index()["pass"]) == {"forward", "backward"}  # the copy rows are no cells of their own


def test_min_elements_leaves_out_small_sizes():
    goal = Target(
        "not slower than eager", ("bernoulli_log_prob",), ("forward",), "speedup_vs_torch", 1.0, None, 1024 * 256
    )
    cells = {
        ("bernoulli_log_prob", "forward", "256x64"): {"torch": 0.01, "numba": 0.02},  # slower, but below the size
        ("bernoulli_log_prob", "forward", "1024x256"): {"torch": 0.3, "numba": 0.2},
    }
    row = targets([_run(cells, {})], [goal]).iloc[0]
    assert row["cell"] == "bernoulli_log_prob:forward 1024x256" and row["cells"] == 1
    assert row["median"] == pytest.approx(1.5) and bool(row["met"]) is True


def test_a_target_without_data_is_not_judged():
    row = targets([_run({("normal_log_prob", "forward", "8x8"): {"torch": 1.0, "numba": 1.0}}, {})], [COMPILE]).iloc[0]
    assert row["met"] is None and math.isnan(row["median"]) and row["cells"] == 0 and row["runs_met"] == "0/1"


def test_no_runs_is_an_error():
    with pytest.raises(ValueError, match="runs is empty"):
        targets([])


def test_kernel_targets_cover_every_goal():
    names = " | ".join(t.name for t in KERNEL_TARGETS)
    for needle in ("1.5x torch.compile", "10x torch eager", "0.8x copy", "1.2x torch.compile", "bwd kernel", "1.0x torch.compile", "slower than eager"):  # fmt: skip
        assert needle in names


# --------------------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("kernel_targets_script", ROOT / "scripts" / "kernel_targets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_runs(d: Path, n: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        _run({FWD: {"torch": 20.0, "torch_compile": 8.0, "numba": 4.0 + k}}, {"4096x1024": 20.0}).to_csv(
            d / f"run-{k}.csv", index=False
        )


def test_script_evaluates_the_runs_it_finds(script, tmp_path, capsys, monkeypatch):
    _write_runs(tmp_path, 3)
    monkeypatch.setattr(script, "kernel_speed", lambda **kw: pytest.fail("--evaluate must not time anything"))
    assert script.main(["--out", str(tmp_path), "--evaluate"]) == 0
    table = pd.read_csv(tmp_path / "targets.csv")
    row = table[table["target"] == "rsample_kl fwd >= 1.5x torch.compile"].iloc[0]
    assert row["median"] == pytest.approx(8.0 / 5.0) and row["runs_met"] == "2/3"
    assert "targets (median over 3 runs" in capsys.readouterr().out


def test_script_resume_runs_only_the_missing_runs(script, tmp_path, monkeypatch):
    _write_runs(tmp_path, 1)
    calls = []

    def fake(**kw):
        calls.append(kw)
        return _run({FWD: {"torch": 20.0, "torch_compile": 8.0, "numba": 2.0}}, {"4096x1024": 20.0})

    monkeypatch.setattr(script, "kernel_speed", fake)
    assert script.main(["--out", str(tmp_path), "--runs", "3", "--resume", "--repeats", "4"]) == 0
    assert len(calls) == 2 and calls[0]["repeats"] == 4
    assert sorted(p.name for p in tmp_path.glob("run-*.csv")) == ["run-0.csv", "run-1.csv", "run-2.csv"]


def test_script_resume_fills_a_gap_without_overwriting(script, tmp_path, monkeypatch):
    _write_runs(tmp_path, 3)
    (tmp_path / "run-0.csv").unlink()  # a run thrown away by hand
    kept = (tmp_path / "run-2.csv").read_text()
    fresh = _run({FWD: {"torch": 20.0, "torch_compile": 8.0, "numba": 2.0}}, {"4096x1024": 20.0})
    monkeypatch.setattr(script, "kernel_speed", lambda **kw: fresh)
    assert script.main(["--out", str(tmp_path), "--runs", "3", "--resume"]) == 0
    assert sorted(p.name for p in tmp_path.glob("run-*.csv")) == ["run-0.csv", "run-1.csv", "run-2.csv"]
    assert (tmp_path / "run-2.csv").read_text() == kept
    assert pd.read_csv(tmp_path / "run-0.csv")["value"].tolist() == fresh["value"].tolist()


def test_script_refuses_to_mix_with_old_runs(script, tmp_path, capsys):
    _write_runs(tmp_path, 1)
    assert script.main(["--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_script_evaluate_needs_runs(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path / "none"), "--evaluate"]) == 2
    assert "no run-*.csv" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-2", "three"])
def test_script_rejects_a_bad_run_count(script, bad, capsys):
    with pytest.raises(SystemExit):
        script.parse(["--runs", bad])
    err = capsys.readouterr().err
    assert "--runs" in err and "positive integer" in err


def test_script_help_shows_examples(script, capsys):
    with pytest.raises(SystemExit):
        script.parse(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--resume" in out


@pytest.mark.parametrize(("argv", "interleave"), [([], True), (["--sequential"], False)])
def test_script_interleaves_unless_told_sequential(script, tmp_path, monkeypatch, argv, interleave):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return _run({FWD: {"torch": 20.0, "torch_compile": 8.0, "numba": 2.0}}, {"4096x1024": 20.0})

    monkeypatch.setattr(script, "kernel_speed", fake)
    assert script.main(["--out", str(tmp_path), "--runs", "1", *argv]) == 0
    assert [kw["interleave"] for kw in calls] == [interleave]


@pytest.mark.parametrize("sequential", [False, True])
def test_script_resume_refuses_to_mix_interleaved_and_sequential_runs(
    script, tmp_path, capsys, monkeypatch, sequential
):
    _run({FWD: {"torch": 20.0, "numba": 4.0}}, {}, interleaved=sequential).to_csv(tmp_path / "run-0.csv", index=False)
    monkeypatch.setattr(script, "kernel_speed", lambda **kw: pytest.fail("nothing may be timed"))
    argv = ["--out", str(tmp_path), "--runs", "2", "--resume"] + (["--sequential"] if sequential else [])
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert "run-0.csv" in err and "--sequential" in err
