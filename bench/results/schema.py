"""The one long-format results schema: a :class:`Result` per measured number.

Every benchmark (variance, speed, train, the GPU kernel CSV) produces rows of
:class:`Result`, identified by the hash of their configuration
(:func:`config_hash`); :mod:`bench.results.store` writes and reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.results.manifest import device_name, git_commit, host_name, package_versions

SCHEMA_VERSION = 2
#: Versions :func:`bench.results.read_results` reads: version 1 had no ``host`` column (read as "").
READABLE_VERSIONS = (1, 2)
RESULTS_FILE = "results.csv"


def config_hash(config: Mapping) -> str:
    """Stable 12-hex-digit hash of a configuration (canonical JSON, sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Result:
    """One measured number, in long format.

    Attributes:
        benchmark: ``"variance"``, ``"speed"``, ``"train"`` or ``"gpu_kernels"``.
        problem: dataset/problem name (``"digits"``, ``"ppca"``, ``"gauss_quadratic"``, ...).
        estimator: estimator name or ``""``.
        control_variate: control variate name, ``"none"`` when there is none.
        backend: kernel backend (``"torch"``, ``"numba"``, ``"triton"``, ``"torch_compile"``, ...).
        op: kernel op or measured step, ``""`` when not applicable.
        size: problem size as text, e.g. ``"4096x1024"`` or ``"B=128"``.
        metric: what ``value`` is (``"total_variance"``, ``"ms"``, ``"val_elbo"``, ...).
        unit: unit of ``value`` (``"nats"``, ``"ms"``, ``"GB/s"``, ``""``).
        step: training step the value belongs to (-1 when not applicable).
        value: the number itself.
        p20, p50, p80: quantiles for timings (NaN when not a timing).
        ci_low, ci_high: confidence interval of ``value`` (NaN when none).
        seed: the seed of the configuration.
        config: the configuration as canonical JSON.
        config_hash: :func:`config_hash` of the configuration.
        device: ``"cpu"`` or the GPU name.
        host: the machine that measured it (a sweep's workers may be several).
        versions: JSON of the main package versions.
        git_commit: short commit of the code that produced it.
        timestamp: ISO-8601 UTC time of the row.
        schema_version: :data:`SCHEMA_VERSION`.
    """

    benchmark: str
    problem: str
    estimator: str
    control_variate: str
    backend: str
    op: str
    size: str
    metric: str
    unit: str
    step: int
    value: float
    p20: float = math.nan
    p50: float = math.nan
    p80: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    seed: int = 0
    config: str = "{}"
    config_hash: str = ""
    device: str = "cpu"
    host: str = ""
    versions: str = "{}"
    git_commit: str = ""
    timestamp: str = ""
    schema_version: int = SCHEMA_VERSION


FIELDS = [f.name for f in dataclasses.fields(Result)]


def make_result(config: Mapping, **values) -> Result:
    """Build a :class:`Result` filling config/hash/device/versions/commit/timestamp."""
    cfg = json.dumps(dict(config), sort_keys=True, default=str)
    values.setdefault("step", -1)
    values.setdefault("estimator", "")
    values.setdefault("control_variate", "none")
    values.setdefault("op", "")
    values.setdefault("size", "")
    values.setdefault("unit", "")
    return Result(
        config=cfg,
        config_hash=config_hash(config),
        device=values.pop("device", device_name()),
        host=values.pop("host", host_name()),
        versions=json.dumps(package_versions(), sort_keys=True),
        git_commit=git_commit(),
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **values,
    )


def to_frame(rows: Iterable[Result]) -> pd.DataFrame:
    """Rows as a DataFrame with the schema's columns (what every benchmark function returns)."""
    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=FIELDS)


def size_numel(size: str) -> float:
    """Product of the integers in a size string: ``"4096x1024"`` -> 4194304, ``"B=128"`` -> 128."""
    nums = [int(n) for n in re.findall(r"\d+", str(size))]
    return float(np.prod(nums, dtype=np.float64)) if nums else math.nan
