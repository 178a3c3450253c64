"""Reports: tables and seaborn figures (HTML and Markdown) from a run directory's files.

:func:`build_report` reads only ``results.csv``, ``manifest.json``,
``samples.npz`` and pytest-benchmark JSON files, never live objects;
:mod:`bench.report.tables` pivots the results into tables with their intervals,
:mod:`bench.report.figures` draws them, :mod:`bench.report.build` renders both.
"""

from bench.report.build import build_report, load_image_arrays, save_image_grid_arrays
from bench.report.tables import ReportError

__all__ = ["ReportError", "build_report", "load_image_arrays", "save_image_grid_arrays"]
