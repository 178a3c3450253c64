"""elbobench's harness: problems, measurements, results, reports, the suite runner and the CLI.

Data flows one way::

    bench.problems   (datasets, models, exact-truth problems)
        -> estimators (surrogates whose gradients are the estimates; see the estimators package)
            -> kernels (rsample, KL, log-probs on the torch, numba or triton backend)
    bench.measure    (variance, throughput, kernel speed, convergence) -> rows of bench.results
    bench.results    (one long-format table per run directory, plus its manifest)
        -> bench.report (tables and figures read from those files only)
    bench.run        (the whole suite's plan) and bench.cli (one thin module per subcommand)

Importing :mod:`bench` loads the user's plugins (:mod:`bench.plugins`): the
entry-point group ``elbobench.plugins`` and ``ELBOBENCH_PLUGINS``.
"""

from bench import plugins as _plugins

_plugins.load_startup()
