"""Plugins: a user's estimator, control variate, model and dataset, used without editing the suite.

The plugin modules are written to a temporary directory outside the repository,
and everything that imports them runs in a fresh process, so their registrations
never leak into the other tests of this session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import plugins

ROOT = Path(__file__).resolve().parents[1]

# An antithetic reparameterization estimator (Geweke 1988's antithetic variates):
# what a researcher would add in a file of their own.
ESTIMATOR = '''
import kernels
import estimators


@estimators.register
class AntitheticReparam(estimators.Estimator):
    """mean over s of (f(mu + sigma eps_s) + f(mu - sigma eps_s)) / 2, differentiated pathwise."""

    name = "antithetic_test"

    def evaluations(self, num_samples, dim):
        return 2 * int(num_samples)

    def _expectation(self, f, mu, logvar, eps, context):
        z = kernels.normal_rsample(mu, logvar, eps)
        z_minus = kernels.normal_rsample(mu, logvar, -eps)
        return 0.5 * (f(z) + f(z_minus)).mean(0)
'''

# A control variate, a model and a dataset in one more plugin.
EXTRAS = """
import numpy as np
import torch
from torch import nn

from bench.problems import datasets, models
from estimators import control_variates as cv


class HalfMovingAverage(cv.MovingAverage):
    name = "half_average"


cv.register("half_average", lambda decay=0.5: HalfMovingAverage(decay))


def _load(seed, data_dir=None):
    rng = np.random.default_rng(seed)
    x = (rng.random((120, 12)) < 0.3).astype(np.float32)
    return x, {"image_shape": (3, 4)}


datasets.register(datasets.DatasetSpec("tiny_test", _load, "120 random 12-pixel binary images", split=(80, 20, 20)))


def _tiny(dataset, *, z_dim=None):
    return models.MLPVAE(dataset.dim, z_dim or 3, hidden=(8,), activation="tanh")


models.register_model("tiny_mlp_test", _tiny, "a one-hidden-layer MLP VAE")
"""


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "antithetic_plugin.py").write_text(textwrap.dedent(ESTIMATOR))
    (d / "extras_plugin.py").write_text(textwrap.dedent(EXTRAS))
    return d


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_VAR}
    env.update(extra)
    return env


def _elbobench(*argv, cwd, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *argv],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _results(run_dir: Path):
    from bench.results import read_results

    return read_results(run_dir)


def test_variance_and_train_run_a_plugin_estimator(plugin_dir, tmp_path):
    """``--plugin`` as a .py path (variance) and as a module name found from the working directory (train)."""
    out = tmp_path / "var"
    r = _elbobench(
        "variance", "--plugin", str(plugin_dir / "antithetic_plugin.py"), "--dataset", "gauss_quadratic",
        "--estimators", "antithetic_test,reparam", "--backends", "torch", "--replicates", "16",
        "--bootstrap", "10", "--toy-dim", "4", "--out", str(out), "--no-progress", cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    df = _results(out)
    assert set(df.estimator) == {"antithetic_test", "reparam"}
    var = df[df.metric == "total_variance"].set_index("estimator")["value"]
    assert var["antithetic_test"] > 0 and var["reparam"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plugins"] == [str(plugin_dir / "antithetic_plugin.py")]

    out = tmp_path / "train"
    r = _elbobench(
        "train", "--plugin", "antithetic_plugin", "--dataset", "digits", "--estimators", "antithetic_test",
        "--backends", "torch", "--steps", "4", "--batch-size", "16", "--is-k", "2", "--out", str(out),
        "--no-progress", cwd=plugin_dir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    df = _results(out)
    assert set(df.estimator) == {"antithetic_test"} and "val_elbo" in set(df.metric)


def test_a_plugins_control_variate_model_and_dataset(plugin_dir, tmp_path):
    out = tmp_path / "run"
    r = _elbobench(
        "train", "--plugin", str(plugin_dir / "extras_plugin.py"), "--dataset", "tiny_test", "--model", "tiny_mlp_test",
        "--estimators", "score_function", "--control-variates", "half_average,none", "--backends", "torch",
        "--steps", "3", "--batch-size", "8", "--is-k", "2", "--out", str(out), "--no-progress", cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    df = _results(out)
    assert set(df.problem) == {"tiny_test"} and set(df.control_variate) == {"half_average", "none"}
    config = json.loads(df.config.iloc[0])
    assert config["model"] == "tiny_mlp_test"


def test_contract_tests_run_over_a_plugin_estimator(plugin_dir):
    """``ELBOBENCH_PLUGINS`` reaches pytest: the estimator contract tests pick the plugin's estimator up."""
    env = _env(**{plugins.ENV_VAR: str(plugin_dir / "antithetic_plugin.py")})
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_estimators_contract.py",
         "-k", "antithetic_test"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and "deselected" in last, last
    assert int(last.split(" passed")[0].split()[-1]) >= 4, last


def test_entry_point_group_is_loaded_on_import(plugin_dir, tmp_path):
    """An installed package's ``elbobench.plugins`` entry point is imported by ``import bench``."""
    site = tmp_path / "site"
    dist = site / "antithetic_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: antithetic-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[elbobench.plugins]\nantithetic = antithetic_plugin\n")
    (site / "antithetic_plugin.py").write_text(textwrap.dedent(ESTIMATOR))
    code = "import bench, estimators; print('antithetic_test' in estimators.available(), bench.plugins.loaded())"
    env = _env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True ['antithetic_plugin']"


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--plugin", "no_such_plugin_module"], {}, "--plugin: no module named 'no_such_plugin_module' on sys.path"),
        (["--plugin", "missing/plugin.py"], {}, "--plugin: no plugin file at 'missing/plugin.py'"),
        ([], {plugins.ENV_VAR: "no_such_plugin_module"}, "ELBOBENCH_PLUGINS: no module named 'no_such_plugin_module'"),
        (["--plugin", "{broken}"], {}, "failed on import: ZeroDivisionError: division by zero"),
    ],
)
def test_a_bad_plugin_is_one_clear_error(plugin_dir, argv, env, needle):
    (plugin_dir / "broken.py").write_text("1 / 0\n")
    argv = [a.replace("{broken}", str(plugin_dir / "broken.py")) for a in argv]
    r = _elbobench("backends", *argv, cwd=plugin_dir, env=_env(**env), timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_load_is_idempotent_and_recorded(plugin_dir, monkeypatch):
    """In-process: a plugin is imported once per spec and listed by loaded()."""
    path = plugin_dir / "counting.py"
    path.write_text("import builtins\nbuiltins._elbobench_count = getattr(builtins, '_elbobench_count', 0) + 1\n")
    monkeypatch.setattr(plugins, "_LOADED", {})
    import builtins

    try:
        a = plugins.load(str(path))
        b = plugins.load(str(path))
        assert a is b and builtins._elbobench_count == 1
        assert plugins.loaded() == [str(path)]
    finally:
        builtins.__dict__.pop("_elbobench_count", None)
        sys.modules.pop(a.__name__, None)
