"""Sweeps as tasks: local processes and Dask give the in-process numbers; lost workers and resume; safe checkpoints.

Sweeps that load plugins run in subprocesses (``python -m bench.cli``), so the
plugins' registrations stay out of this session. Every sweep here is a few
steps of the torch backend (no numba compile in a fresh worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import cli
from bench.results import CheckpointError, load_checkpoint, read_results

ROOT = Path(__file__).resolve().parents[1]
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (the dask extra)")

# metrics that are numbers of the model, not of the clock
STATISTICAL = ("train_elbo", "val_elbo", "test_elbo", "test_ll", "test_ll_se", "total_variance", "snr", "bias_sq")
TRAIN = ["train", "--dataset", "digits", "--estimators", "reparam,stl", "--backends", "torch", "--steps", "4",
         "--batch-size", "16", "--is-k", "4", "--eval-every", "2", "--no-progress"]  # fmt: skip


def _values(run_dir: Path) -> pd.DataFrame:
    df = read_results(run_dir)
    df = df[df.metric.isin(STATISTICAL)]
    return df.sort_values(["config_hash", "metric", "step"])[["config_hash", "metric", "step", "value"]].reset_index(
        drop=True
    )


def _elbobench(*argv, cwd=ROOT, timeout=300, **kw):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The reference: the sweep in this process, one thread."""
    out = tmp_path_factory.mktemp("sweeps") / "in_process"
    assert cli.main([*TRAIN, "--threads", "1", "--out", str(out)]) == 0
    return out


def test_local_worker_processes_give_the_in_process_numbers(in_process, tmp_path):
    out = tmp_path / "workers"
    assert cli.main([*TRAIN, "--threads", "1", "--workers", "2", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(_values(out), _values(in_process))  # bit for bit: same threads
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["execution"] == {"executor": "local", "workers": 2}


VARIANCE = ["variance", "--dataset", "digits,gauss_quadratic", "--estimators", "reparam,score_function,iwae",
            "--control-variates", "none", "--backends", "torch", "--replicates", "8", "--train-points", "3",
            "--batch-size", "8", "--bootstrap", "10", "--toy-dim", "4", "--threads", "1", "--no-progress"]  # fmt: skip


def test_variance_on_worker_processes_shares_reference_gradients(tmp_path):
    """Each reference gradient is computed once (a stage before the variance tasks) and read by every worker."""
    a, b = tmp_path / "in_process", tmp_path / "workers"
    assert cli.main([*VARIANCE, "--out", str(a)]) == 0
    assert cli.main([*VARIANCE, "--workers", "2", "--out", str(b)]) == 0
    pd.testing.assert_frame_equal(_values(b), _values(a))
    # digits at step 3, for the single-sample bounds and for iwae: two references, each computed once
    assert len(list((b / "references").glob("*.pt"))) == 2
    bias = read_results(b)
    assert bias[bias.metric == "bias_sq"].value.notna().all()


def test_a_dask_local_cluster_gives_the_in_process_numbers(in_process, tmp_path):
    out = tmp_path / "dask"
    r = _elbobench(*TRAIN, "--threads", "1", "--executor", "dask", "--workers", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(_values(out), _values(in_process))
    hosts = set(read_results(out)["host"])
    assert hosts == {os.uname().nodename}


def test_resume_with_only_out_continues_the_run_it_was(in_process, tmp_path):
    """A run directory with its manifest and some rows: ``--resume`` alone finishes that sweep, not the defaults."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(in_process / "manifest.json", out / "manifest.json")
    df = pd.read_csv(in_process / "results.csv", dtype=str, keep_default_na=False)
    first = df.config_hash.iloc[0]
    df[df.config_hash == first].to_csv(out / "results.csv", index=False)  # one configuration finished
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    pd.testing.assert_frame_equal(_values(out), _values(in_process))
    got = pd.read_csv(out / "results.csv", dtype=str)
    assert not got.duplicated(["config_hash", "metric", "step"]).any()


def test_resume_refuses_options_that_contradict_the_manifest(in_process, tmp_path, capsys):
    out = tmp_path / "contradict"
    shutil.copytree(in_process, out)
    rc = cli.main(["train", "--out", str(out), "--resume", "--estimators", "iwae", "--steps", "4", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--estimators 'iwae' (the run has 'reparam,stl')" in err and "--steps" not in err  # --steps agrees
    assert "--workers" not in err  # where it runs may change
    rc = cli.main(["variance", "--out", str(out), "--resume"])
    assert rc == 2 and "holds a run of `elbobench train`" in capsys.readouterr().err


def test_a_checkpoint_holding_a_pickled_object_is_refused_unrun(in_process, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "estimator": Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt.* refused: it holds objects other than tensors"):
        load_checkpoint(bad)
    assert not marker.exists()
    # in a run: the configuration's checkpoint is replaced by the crafted one, then --resume
    out = tmp_path / "run"
    shutil.copytree(in_process, out)
    ckpt = next((out / "checkpoints").glob("*.pt"))
    df = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    df[df.config_hash != ckpt.stem].to_csv(out / "results.csv", index=False)
    shutil.copy(bad, ckpt)
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert ckpt.name in err and "refused" in err and not marker.exists()
    # a checkpoint the suite wrote still loads
    good = next(p for p in (in_process / "checkpoints").glob("*.pt"))
    assert set(load_checkpoint(good)) >= {"model", "optimizer", "estimator", "step"}


def test_an_unreachable_scheduler_fails_fast_and_clearly(tmp_path, capsys):
    t0 = time.perf_counter()
    assert cli.main([*TRAIN, "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no Dask scheduler answered at 'tcp://127.0.0.1:9' within 5 s" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 30


def test_workers_with_a_scheduler_is_refused(capsys):
    assert cli.main([*TRAIN, "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"]) == 2
    assert "--workers 2 with --scheduler" in capsys.readouterr().err


GATE = '''
import distributed

from bench.problems import datasets


def _load(seed, data_dir=None):
    """digits, once the test opens the gate: the task blocks here until then."""
    distributed.Event("elbobench-test-started").set()
    distributed.Event("elbobench-test-gate").wait()
    return datasets.spec("digits").loader(seed=seed, data_dir=data_dir)


datasets.register(datasets.DatasetSpec("gate_test", _load, "digits behind a gate the test opens"))
'''


def test_a_lost_worker_loses_only_its_task_and_resume_finishes(tmp_path):
    from distributed import Client, Event, LocalCluster
    from distributed.comm.core import CommClosedError

    plugin = tmp_path / "gate_plugin.py"
    plugin.write_text(textwrap.dedent(GATE))
    out = tmp_path / "run"
    argv = [*TRAIN, "--dataset", "digits,gate_test", "--estimators", "reparam", "--seeds", "0", "--threads", "1"]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        started, gate = Event("elbobench-test-started", client=client), Event("elbobench-test-gate", client=client)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cli", *argv, "--plugin", str(plugin), "--scheduler", cluster.scheduler_address,
             "--out", str(out)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert started.wait(timeout=120), "the gated task never started"
            # the digits configuration finishes while the gated one waits
            deadline = time.monotonic() + 120
            while not (out / "results.csv").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (out / "results.csv").exists(), "the ungated configuration did not finish"
            busy = [w for w, tasks in client.processing().items() if tasks]
            assert len(busy) == 1
            started.clear()
            with contextlib.suppress(CommClosedError):  # the worker holding the gated task dies mid-call
                client.run(os._exit, 1, workers=busy)
            assert started.wait(timeout=120), "the scheduler did not rerun the lost task"
            proc.send_signal(signal.SIGINT)  # interrupt the sweep while its rerun task waits
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0, err
        first = read_results(out)
        assert set(first.problem) == {"digits"}  # the finished configuration's rows, once
        assert not first.duplicated(["config_hash", "metric", "step"]).any()
        gate.set()
        r = _elbobench(
            "train", "--out", str(out), "--resume", "--scheduler", cluster.scheduler_address, "--no-progress"
        )
        assert r.returncode == 0, r.stderr[-3000:]
    done = read_results(out)
    assert set(done.problem) == {"digits", "gate_test"}
    assert not done.duplicated(["config_hash", "metric", "step"]).any()
    # the gated configuration trained the same model on the same data: the same numbers
    a = done[(done.problem == "digits") & done.metric.isin(STATISTICAL)].sort_values(["metric", "step"])
    b = done[(done.problem == "gate_test") & done.metric.isin(STATISTICAL)].sort_values(["metric", "step"])
    assert list(a.value) == list(b.value)


def test_tasks_of_a_cuda_only_backend_ask_for_a_gpu(monkeypatch):
    from bench.measure import train as T
    from bench.run.tasks import needs_gpu
    from kernels import registry

    assert not needs_gpu(["torch", "numba"])
    real = registry.unavailable_reason
    monkeypatch.setattr(registry, "unavailable_reason", lambda b, d: "compiled only" if b == "triton" else real(b, d))
    assert needs_gpu(["triton"])
    [task] = T.train_tasks([T.TrainConfig(backend="triton")])
    assert task.gpu
