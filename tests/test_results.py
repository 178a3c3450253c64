"""The results schema: append-only writing, resume bookkeeping, schema checks, manifest."""

import csv
import json
import math

import pandas as pd
import pytest

from bench import results
from bench.results import SCHEMA_VERSION, Manifest, ResultsWriter, config_hash, make_result, read_results


def _row(config, value=1.0, metric="total_variance"):
    return make_result(
        config,
        benchmark="variance",
        problem="ppca",
        estimator="reparam",
        backend="torch",
        metric=metric,
        value=value,
        seed=config.get("seed", 0),
    )


def test_config_hash_is_order_independent_and_distinguishes_values():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 12


def test_make_result_fills_provenance():
    r = _row({"seed": 3})
    assert r.schema_version == SCHEMA_VERSION
    assert r.config_hash == config_hash({"seed": 3})
    assert json.loads(r.config) == {"seed": 3}
    assert r.control_variate == "none" and r.step == -1
    assert "torch" in json.loads(r.versions)
    assert r.timestamp.endswith("Z")
    assert math.isnan(r.p50)


def test_writer_appends_and_resume_skips_done(tmp_path):
    w = ResultsWriter(tmp_path)
    c1, c2 = {"seed": 1}, {"seed": 2}
    assert not w.is_done(c1)
    w.append([_row(c1, 1.0), _row(c1, 2.0, "snr")])
    assert w.is_done(c1) and not w.is_done(c2)
    with pytest.raises(FileExistsError, match="--resume"):
        ResultsWriter(tmp_path)
    w2 = ResultsWriter(tmp_path, resume=True)
    assert w2.is_done(c1) and not w2.is_done(c2)
    w2.append([_row(c2, 3.0)])
    df = read_results(tmp_path)
    assert list(df["value"]) == [1.0, 2.0, 3.0]
    assert df["config_hash"].nunique() == 2
    with (tmp_path / results.RESULTS_FILE).open() as fh:
        assert next(csv.reader(fh)) == results.FIELDS  # one header only


def test_unknown_schema_version_is_a_clear_error(tmp_path):
    w = ResultsWriter(tmp_path)
    w.append([_row({"seed": 1})])
    path = tmp_path / results.RESULTS_FILE
    path.write_text(path.read_text().replace(f",{SCHEMA_VERSION}\n", ",99\n"))
    with pytest.raises(ValueError, match="schema_version"):
        read_results(tmp_path)


def test_missing_results_and_foreign_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv"):
        read_results(tmp_path)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an elbobench results file"):
        read_results(tmp_path)


def test_manifest_records_machine_and_keeps_history(tmp_path, monkeypatch):
    monkeypatch.setenv("ELBOBENCH_BACKEND", "torch")
    m = Manifest.collect(note="x")
    m.write(tmp_path)
    data = results.read_manifest(tmp_path)
    assert data["environment"]["ELBOBENCH_BACKEND"] == "torch"
    assert data["torch_threads"] >= 1 and data["cpu"]
    assert data["extra"] == {"note": "x"}
    Manifest.collect().write(tmp_path)
    assert len(results.read_manifest(tmp_path)["history"]) == 1


def test_a_version_1_file_reads_and_resumes_in_its_own_columns(tmp_path):
    """Results written before the ``host`` column: read with host "", appended in their own layout."""
    w = ResultsWriter(tmp_path)
    w.append([_row({"seed": 1})])
    path = tmp_path / results.RESULTS_FILE
    old = pd.read_csv(path).drop(columns=["host"]).assign(schema_version=1)
    old.to_csv(path, index=False)
    w = ResultsWriter(tmp_path, resume=True)
    assert w.is_done({"seed": 1})
    w.append([_row({"seed": 2})])
    header = path.read_text().splitlines()[0].split(",")
    assert "host" not in header and len(pd.read_csv(path)) == 2
    df = read_results(tmp_path)
    assert list(df["host"]) == ["", ""] and list(df.columns) == results.FIELDS


def test_rows_name_the_host():
    import socket

    assert _row({"seed": 3}).host == socket.gethostname()
