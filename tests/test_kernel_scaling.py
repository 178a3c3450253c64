"""``bench.measure.kernel_scaling`` (time per element against size and threads) and ``scripts/kernel_scaling.py``.

The summary is checked on synthetic runs whose every ratio is known; one small
real run checks the measured table's bookkeeping (nothing about its speed).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numba
import pandas as pd
import pytest
import torch

from bench.measure import kernel_scaling as ks
from bench.measure.kernel_speed import op_bytes

ROOT = Path(__file__).resolve().parents[1]
TOP = int(numba.config.NUMBA_NUM_THREADS)


def test_a_real_run_has_one_consistent_row_per_cell():
    before = numba.get_num_threads()
    threads = (1, TOP) if TOP > 1 else (1,)
    sizes = ((8, 16), (32, 64))
    ops = ("normal_log_prob", "normal_rsample_kl")
    df = ks.kernel_scaling(sizes=sizes, ops=ops, threads=threads, repeats=2)
    assert numba.get_num_threads() == before
    assert len(df) == len(sizes) * len(ops) * 2 * len(threads)
    assert not df.duplicated(["op", "pass", "size", "threads"]).any()
    for r in df.itertuples():
        R, D = (int(v) for v in r.size.split("x"))
        assert r.bytes == op_bytes(r.op, R, D, 4, r._2)
        assert r.ns_per_element == pytest.approx(r.ms * 1e6 / (R * D))
        assert r.GBps == pytest.approx(r.bytes / (r.ms * 1e-3) / 1e9)
        assert r.p20_ms <= r.ms <= r.p80_ms and r.copy_GBps > 0
    # one copy per byte count: cells with the same bytes share it
    assert (df.groupby("bytes")["copy_GBps"].nunique() == 1).all()


@pytest.mark.skipif(TOP == 1, reason="with one numba thread a lost restore is invisible")
def test_threads_are_restored_when_a_cell_fails(monkeypatch):
    before = numba.get_num_threads()
    calls = []

    def boom(fn, repeats, warmup=2, **_):
        calls.append(numba.get_num_threads())
        if len(calls) > 1:
            raise RuntimeError("planted")
        return [1e-3]

    monkeypatch.setattr(ks, "time_call", boom)
    with pytest.raises(RuntimeError, match="planted"):
        ks.kernel_scaling(sizes=((4, 8),), ops=("normal_kl_std",), threads=(1,), repeats=1)
    assert numba.get_num_threads() == before and calls[-1] == 1


@pytest.mark.parametrize(
    "kwargs, exc, needle",
    [
        ({"threads": (0,)}, ValueError, "threads must be ints in 1.."),
        ({"threads": (TOP + 1,)}, ValueError, f"got [{TOP + 1}]"),
        ({"threads": (True,)}, ValueError, "threads must be ints"),
        ({"threads": ()}, ValueError, "threads must be ints"),
        ({"ops": ("normal_nope",)}, ValueError, "ops must be a non-empty subset"),
        ({"ops": ()}, ValueError, "ops must be a non-empty subset"),
        ({"passes": ("forward_backward",)}, ValueError, "passes must be a non-empty subset"),
        ({"sizes": ((4, 0),)}, ValueError, "sizes must be a non-empty list of (rows, cols) pairs of positive ints"),
        ({"sizes": ()}, ValueError, "sizes must be"),
        ({"sizes": (256, 1024)}, ValueError, "got [256, 1024]"),  # one pair, not a list of pairs
        ({"sizes": ((4.5, 8),)}, ValueError, "got [(4.5, 8)]"),
        ({"repeats": 0}, ValueError, "repeats must be >= 1, got 0"),
        ({"dtype": torch.int32}, TypeError, "dtype must be torch.float32 or torch.float64"),
    ],
)
def test_bad_arguments_are_named(kwargs, exc, needle):
    with pytest.raises(exc, match=None) as info:
        ks.kernel_scaling(**kwargs)
    assert needle in str(info.value)


def _cells(ns: dict) -> pd.DataFrame:
    """A kernel_scaling-like frame: ``ns[(op, pass, size, threads)] = ns per element``.

    GB/s is 12 bytes per element over the time (so it differs per cell) and the
    copy a different value per (pass, size), so a misaligned join shows.
    """
    copies = {("forward", "256x1024"): 50.0, ("forward", "16384x1024"): 25.0,
              ("backward", "256x1024"): 40.0, ("backward", "16384x1024"): 20.0}  # fmt: skip
    rows = [
        dict(op=o, **{"pass": p}, size=s, threads=t, ns_per_element=v, GBps=12.0 / v, copy_GBps=copies[(p, s)])
        for (o, p, s, t), v in ns.items()
    ]
    return pd.DataFrame(rows)


def _flat_and_bound(k: float = 1.0) -> pd.DataFrame:
    """normal_log_prob forward: compute-bound (flat, 2x with threads); backward: slows 3x at the big size."""
    return _cells(
        {
            ("normal_log_prob", "forward", "256x1024", 1): 1.0 * k,
            ("normal_log_prob", "forward", "256x1024", 2): 0.5 * k,
            ("normal_log_prob", "forward", "16384x1024", 1): 1.0 * k,
            ("normal_log_prob", "forward", "16384x1024", 2): 0.5 * k,
            ("normal_log_prob", "backward", "256x1024", 1): 1.0,
            ("normal_log_prob", "backward", "256x1024", 2): 0.5,
            ("normal_log_prob", "backward", "16384x1024", 1): 1.5,
            ("normal_log_prob", "backward", "16384x1024", 2): 1.5,
        }
    )


def test_summary_tells_compute_bound_from_bandwidth_bound():
    s = ks.scaling_summary([_flat_and_bound()]).set_index(["pass", "size"])
    fwd_big, bwd_big = s.loc[("forward", "16384x1024")], s.loc[("backward", "16384x1024")]
    assert fwd_big["ns_vs_smallest"] == pytest.approx(1.0) and fwd_big["thread_speedup"] == pytest.approx(2.0)
    assert bwd_big["ns_vs_smallest"] == pytest.approx(3.0) and bwd_big["thread_speedup"] == pytest.approx(1.0)
    assert s.loc[("forward", "256x1024"), "ns_vs_smallest"] == pytest.approx(1.0)
    assert fwd_big["GBps"] == pytest.approx(24.0) and fwd_big["frac_of_copy"] == pytest.approx(24.0 / 25.0)
    assert bwd_big["GBps"] == pytest.approx(8.0) and bwd_big["frac_of_copy"] == pytest.approx(8.0 / 20.0)
    small = s.loc[("backward", "256x1024")]
    assert small["GBps"] == pytest.approx(24.0) and small["copy_GBps"] == pytest.approx(40.0)
    assert list(s.reset_index()["pass"]) == ["forward", "forward", "backward", "backward"]  # forward first, by size


def test_summary_takes_each_ratio_inside_a_run_then_the_median():
    # forward at 16384x1024 (1t, 2t) = (1, 1), (4, 1), (2, 4) in three runs: the speedups are 1, 4 and 0.5,
    # median 1; the medians of the times, 2 and 1, would give 2
    runs = []
    for one, two in ((1.0, 1.0), (4.0, 1.0), (2.0, 4.0)):
        run = _flat_and_bound()
        cell = (run["pass"] == "forward") & (run["size"] == "16384x1024")
        run.loc[cell & (run["threads"] == 1), "ns_per_element"] = one
        run.loc[cell & (run["threads"] == 2), "ns_per_element"] = two
        runs.append(run)
    s = ks.scaling_summary(runs).set_index(["pass", "size"])
    assert s.loc[("forward", "16384x1024"), "thread_speedup"] == pytest.approx(1.0)
    assert s.loc[("forward", "16384x1024"), "ns[2t]"] == pytest.approx(1.0)
    # ns vs smallest: 1/0.5, 1/0.5, 4/0.5 -> median 2 (from the medians of the times also 2: a weaker check)
    assert s.loc[("forward", "16384x1024"), "ns_vs_smallest"] == pytest.approx(2.0)
    assert (s["runs"] == 3).all()


def test_summary_with_one_thread_count_has_no_speedup():
    one = _flat_and_bound()
    s = ks.scaling_summary([one[one["threads"] == 1]])
    assert s["thread_speedup"].isna().all() and "ns[1t]" in s and "ns[2t]" not in s


def test_summary_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="runs is empty"):
        ks.scaling_summary([])
    one = _flat_and_bound()
    with pytest.raises(ValueError, match=r"run 1 has threads \[1\], run 0 has \[1, 2\]"):
        ks.scaling_summary([one, one[one["threads"] == 1]])
    with pytest.raises(ValueError, match="more than once"):
        ks.scaling_summary([pd.concat([one, one.iloc[:1]])])
    with pytest.raises(ValueError, match=r"run 0 lacks columns \['copy_GBps'\]"):
        ks.scaling_summary([_flat_and_bound().drop(columns="copy_GBps")])


# --------------------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("kernel_scaling_script", ROOT / "scripts" / "kernel_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_runs_writes_and_resumes(script, tmp_path, monkeypatch, capsys):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return _flat_and_bound(len(calls))

    monkeypatch.setattr(script, "kernel_scaling", fake)
    assert script.main(["--out", str(tmp_path), "--runs", "2", "--sizes", "8x16", "--threads", "1,2"]) == 0
    assert (
        calls[0]["sizes"] == [(8, 16)]
        and calls[0]["threads"] == [1, 2]
        and calls[0]["passes"] == ["forward", "backward"]
    )
    assert sorted(p.name for p in tmp_path.glob("run-*.csv")) == ["run-0.csv", "run-1.csv"]
    assert script.main(["--out", str(tmp_path), "--runs", "3", "--resume"]) == 0
    assert len(calls) == 3 and len(list(tmp_path.glob("run-*.csv"))) == 3
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["runs"]) == {3} and math.isclose(summary["thread_speedup"].iloc[0], 2.0)
    assert "medians over 3 run(s)" in capsys.readouterr().out


def test_script_refuses_old_runs_and_evaluates_without_timing(script, tmp_path, monkeypatch, capsys):
    tmp_path.mkdir(exist_ok=True)
    _flat_and_bound().to_csv(tmp_path / "run-0.csv", index=False)
    monkeypatch.setattr(script, "kernel_scaling", lambda **kw: pytest.fail("must not time anything"))
    assert script.main(["--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert script.main(["--out", str(tmp_path), "--evaluate"]) == 0
    assert script.main(["--out", str(tmp_path / "none"), "--evaluate"]) == 2
    assert "no run-*.csv" in capsys.readouterr().err


def test_script_reports_a_bad_kernel_argument(script, tmp_path, capsys):
    # a thread count above numba's pool is known only to the kernel run: a clear error, no run written
    assert script.main(["--out", str(tmp_path), "--threads", str(TOP + 1), "--runs", "1"]) == 2
    assert "threads must be ints in 1.." in capsys.readouterr().err
    assert not list(tmp_path.glob("run-*.csv"))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--sizes", "256by64"], "--sizes: '256by64' is not ROWSxCOLS"),
        (["--sizes", "0x64"], "--sizes: got '0x64'; expected positive sizes"),
        (["--threads", "0"], "--threads: got 0; expected integers >= 1"),
        (["--ops", "normal_nope"], "--ops: got normal_nope; expected a comma list of normal_rsample"),
        (["--passes", "forward,sideways"], "--passes: got sideways; expected a comma list of forward, backward"),
        (["--runs", "0"], "--runs"),
    ],
)
def test_script_rejects_bad_options(script, argv, needle, capsys):
    with pytest.raises(SystemExit):
        script.parse(argv)
    assert needle in capsys.readouterr().err


def test_script_help_shows_examples(script, capsys):
    with pytest.raises(SystemExit):
        script.parse(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--resume" in out and "--threads 1,2" in out


def test_known_times_give_known_rates(monkeypatch):
    # every timed call takes 2 ms: GB/s and the same-footprint copy follow from the byte model alone
    monkeypatch.setattr(ks, "time_call", lambda fn, repeats, warmup=2, **_: [2e-3] * repeats)
    df = ks.kernel_scaling(sizes=((16, 64),), ops=("normal_log_prob",), threads=(1,), repeats=3)
    for r in df.itertuples():
        assert r.ms == pytest.approx(2.0) and r.ns_per_element == pytest.approx(2e6 / (16 * 64))
        assert r.GBps == pytest.approx(r.bytes / 2e-3 / 1e9)
        assert r.copy_GBps == pytest.approx(r.bytes / 2e-3 / 1e9)  # it moves the op's bytes in the same time


def test_figure_is_written_and_rejects_other_tables(tmp_path):
    s = ks.scaling_summary([_flat_and_bound()])
    out = ks.scaling_figure(s, tmp_path / "scaling.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="summary is empty"):
        ks.scaling_figure(s.iloc[:0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected scaling_summary columns"):
        ks.scaling_figure(s.drop(columns=["ns[1t]", "ns[2t]"]), tmp_path / "x.png")


def test_repeated_arguments_are_measured_once(monkeypatch):
    monkeypatch.setattr(ks, "time_call", lambda fn, repeats, warmup=2, **_: [1e-3] * repeats)
    df = ks.kernel_scaling(sizes=((4, 8), (4, 8)), ops=("normal_kl_std",) * 2, threads=(1, 1), passes=("forward",) * 2)
    assert len(df) == 1
    ks.scaling_summary([df])  # one row per cell, so it summarises
