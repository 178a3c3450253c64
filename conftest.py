"""Project-wide pytest set-up: the ``--benchmark`` flag and stage markers.

Plain ``pytest`` runs the fast CPU correctness suite and skips every test marked
``benchmark``; ``pytest --benchmark`` runs only the benchmark suite (through
pytest-benchmark, whose own ``--benchmark-*`` flags keep working).
"""

import os

# The triton backend runs in Triton's CPU interpreter when no GPU is present; the
# switch must be in the environment before its kernels are defined.
os.environ.setdefault("ELBOBENCH_TRITON_INTERPRET", "auto")


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite (tests marked 'benchmark') instead of the correctness tests",
    )


def pytest_collection_modifyitems(config, items):
    run_bench = config.getoption("--benchmark")
    keep, drop = [], []
    for item in items:
        is_bench = item.get_closest_marker("benchmark") is not None
        (keep if is_bench == run_bench else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
