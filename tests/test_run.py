"""``elbobench run`` end to end on a tiny budget: all three benchmarks, then the report."""

import json

from bench import cli
from bench.results import read_manifest, read_results


def test_run_writes_all_benchmarks_and_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--quick", "--out", str(out), "--no-progress", "--backends", "torch"]
    argv += ["--estimators", "reparam,iwae", "--control-variates", "none", "--steps", "6", "--replicates", "4"]
    assert cli.main(argv) == 0
    df = read_results(out)
    assert set(df["benchmark"]) >= {"variance", "speed", "train"}
    train = df[df["benchmark"] == "train"].drop_duplicates("config_hash")
    k = {row["estimator"]: json.loads(row["config"])["num_samples"] for _, row in train.iterrows()}
    assert k == {"reparam": 1, "iwae": 5}  # the K-sample bound trains with K = 5
    assert (out / "report.html").stat().st_size > 0 and (out / "report.md").exists()
    manifest = read_manifest(out)
    planned = {p["config_hash"] for p in manifest["extra"]["planned_configs"]}
    assert planned <= set(df["config_hash"])  # nothing planned is missing from a finished run
    captured = capsys.readouterr()
    assert "== convergence ==" in captured.out and "statistical tasks" in captured.err  # the summary, the progress
