"""Fast checks of :func:`bench.measure.kernel_speed.kernel_speed` (schema, byte model, arguments); no speed asserted."""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter

import pandas as pd
import pytest
import torch

from bench.measure.kernel_speed import BYTE_MODEL, kernel_speed, op_bytes, summary
from bench.measure.timing import balanced_orders, time_round_robin
from bench.results import FIELDS


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return kernel_speed(
        sizes=[(8, 16)],
        ops=["normal_rsample_kl", "bernoulli_log_prob", "normal_noise"],
        backends=("torch", "numba"),
        passes=("forward", "backward", "forward_backward"),
        repeats=2,
    )


def test_rows_follow_the_results_schema(table):
    assert list(table.columns) == FIELDS
    assert set(table["benchmark"]) == {"speed"} and set(table["problem"]) == {"kernel"}
    assert {"copy", "torch", "numba"} == set(table["backend"])
    assert {"ms", "GB/s", "ms_api", "ns_per_element"} <= set(table["metric"])
    ms = table[table["metric"] == "ms"]
    assert (ms["p20"] <= ms["p50"]).all() and (ms["p50"] <= ms["p80"]).all() and (ms["value"] > 0).all()


def test_gbps_is_bytes_over_median_time(table):
    for (backend, op), grp in table.groupby(["backend", "op"]):
        ms = grp[grp["metric"] == "ms"]["value"]
        gb = grp[grp["metric"] == "GB/s"]["value"]
        if ms.empty or gb.empty:
            continue
        name, _, pass_ = op.partition(":")
        nbytes = 2 * 8 * 16 * 4 if op == "copy" else op_bytes(name, 8, 16, 4, pass_)
        assert math.isclose(gb.iloc[0], nbytes / (ms.iloc[0] / 1e3) / 1e9, rel_tol=1e-9), (backend, op)


def test_byte_model_counts_reads_and_writes():
    # rsample_kl forward reads mu, logvar, eps and writes z ([R, D] each) and kl ([R])
    assert op_bytes("normal_rsample_kl", 10, 100, 4, "forward") == (4 * 1000 + 10) * 4
    assert op_bytes("normal_rsample_kl", 10, 100, 4, "forward_backward") == (4 * 1000 + 10 + 6 * 1000 + 10) * 4
    assert set(BYTE_MODEL) >= {"normal_rsample", "normal_kl_std", "normal_log_prob", "bernoulli_log_prob"}


def test_summary_has_ratios(table):
    s = summary(table)
    row = s[(s["op"] == "normal_rsample_kl") & (s["pass"] == "forward")].iloc[0]
    assert row["speedup_vs_torch"] == pytest.approx(row["ms[torch]"] / row["ms[numba]"])
    assert row["numba_frac_of_copy"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="passes"):
        kernel_speed(sizes=[(4, 4)], passes=("sideways",), repeats=1)
    with pytest.raises(ValueError, match="ops"):
        kernel_speed(sizes=[(4, 4)], ops=("softmax",), repeats=1)
    with pytest.raises(TypeError, match="dtype"):
        kernel_speed(sizes=[(4, 4)], dtype=torch.int32, repeats=1)
    with pytest.raises(ValueError, match="sizes"):
        kernel_speed(sizes=[(4,)], repeats=1)
    with pytest.warns(UserWarning, match="skipping backend 'nope'"):
        kernel_speed(sizes=[(4, 4)], ops=("normal_kl_std",), backends=("nope",), passes=("forward",), repeats=1)


def test_round_robin_gives_every_callable_its_repeats_in_balanced_orders():
    calls, entered = [], []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abcd"}

    @contextlib.contextmanager
    def around(name):
        entered.append(name)
        yield

    out = time_round_robin(fns, repeats=5, warmup=1, around=around)
    assert {k: len(v) for k, v in out.items()} == {"a": 5, "b": 5, "c": 5, "d": 5}
    assert all(t >= 0 for v in out.values() for t in v)
    # one warm-up call each, then a Williams design: abdc, bcad, cdba, dacb, and again
    assert "".join(calls) == "abcd" + "abdc" + "bcad" + "cdba" + "dacb" + "abdc"
    assert entered == calls  # the context is entered around every call, warm-up included


@pytest.mark.parametrize("n", range(1, 8))
def test_balanced_orders_put_every_item_after_every_other_equally_often(n):
    orders = balanced_orders(n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    follows = Counter((o[i], o[i + 1]) for o in orders for i in range(n - 1))
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    assert set(follows) == set(pairs)
    assert len(set(follows.values())) <= 1  # each ordered pair equally often
    firsts = Counter(o[0] for o in orders)
    assert len(set(firsts.values())) == 1  # and each item leads equally often


def test_balanced_orders_need_an_item():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        balanced_orders(0)


def test_interleaved_cells_carry_their_own_copy():
    df = kernel_speed(
        sizes=[(8, 16)],
        ops=["normal_log_prob"],
        backends=("torch", "numba"),
        passes=("forward", "backward"),
        repeats=3,
        interleave=True,
    )
    cell_copy = df[(df["backend"] == "copy") & (df["op"] != "copy")]
    assert sorted(cell_copy["op"]) == ["normal_log_prob:backward", "normal_log_prob:forward"]
    assert set(cell_copy["metric"]) == {"GB/s"}
    assert all(json.loads(c)["interleaved"] for c in df["config"])
    s = summary(df).set_index("pass")
    for pass_ in ("forward", "backward"):
        own = cell_copy[cell_copy["op"] == f"normal_log_prob:{pass_}"]["value"].iloc[0]
        assert s.loc[pass_, "copy_GBps"] == pytest.approx(own)
    # every backend timed as many times as asked, numba forward with its API row
    ms = df[df["metric"] == "ms"]
    assert set(ms[ms["op"] != "copy"]["backend"]) == {"torch", "numba"}
    assert len(df[df["metric"] == "ms_api"]) == 1


def test_sequential_is_the_default_and_says_so(table):
    assert not any(json.loads(c)["interleaved"] for c in table["config"])
    assert (table[table["backend"] == "copy"]["op"] == "copy").all()


@pytest.mark.parametrize("interleave", [False, True])
def test_interleaved_backends_read_their_own_inputs(monkeypatch, interleave):
    import bench.measure.kernel_speed as ks

    seen = {}
    real = ks._cell_call

    def spy(op, backend, pass_, inputs, ups, *rest):
        seen[backend] = {n: t.data_ptr() for n, t in inputs.items()}
        seen[backend]["ups"] = ups[0].data_ptr()
        return real(op, backend, pass_, inputs, ups, *rest)

    monkeypatch.setattr(ks, "_cell_call", spy)
    kernel_speed(sizes=[(8, 16)], ops=["normal_log_prob"], backends=("torch", "numba"), passes=("forward",),
                 repeats=1, interleave=interleave)  # fmt: skip
    shared = set(seen["torch"].items()) & set(seen["numba"].items())
    assert (not shared) if interleave else (shared == set(seen["torch"].items()))
