"""Project-wide pytest set-up: the ``--benchmark`` and ``--slow`` flags and stage markers.

Plain ``pytest`` runs the fast CPU correctness suite: it leaves out the tests
marked ``benchmark`` and those marked ``slow`` (exhaustive sweeps whose cases
the fast suite covers by one representative each). ``pytest --slow`` adds the
slow ones (``make test-all``); ``pytest --benchmark`` runs only the benchmark
suite (through pytest-benchmark, whose own ``--benchmark-*`` flags keep working).
"""

import os

# The triton backend runs in Triton's CPU interpreter when no GPU is present; the
# switch must be in the environment before its kernels are defined.
os.environ.setdefault("ELBOBENCH_TRITON_INTERPRET", "auto")

# the user's plugins (ELBOBENCH_PLUGINS, the elbobench.plugins entry points) register their
# estimators, models, datasets and backends before the tests are collected over the registries
import bench  # noqa: E402, F401


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite (tests marked 'benchmark') instead of the correctness tests",
    )
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the exhaustive sweeps marked 'slow' (make test-all)",
    )


def pytest_collection_modifyitems(config, items):
    run_bench = config.getoption("--benchmark")
    run_slow = config.getoption("--slow")
    keep, drop = [], []
    for item in items:
        is_bench = item.get_closest_marker("benchmark") is not None
        is_slow = item.get_closest_marker("slow") is not None
        (keep if is_bench == run_bench and (run_slow or not is_slow) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
