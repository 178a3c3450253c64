"""The one long-format results schema, its append-only writer and the run manifest.

Every benchmark (variance, speed, train, the GPU kernel CSV) produces rows of
:class:`Result`; a run directory holds ``results.csv`` (appended as each
configuration finishes, so an interrupted run keeps what it finished) and
``manifest.json`` (command, machine, threads, environment, versions). Reports read
only these files. ``--resume`` skips configurations whose ``config_hash`` is
already in ``results.csv``: rows of one configuration are written together, so
a hash present means that configuration finished.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SCHEMA_VERSION = 1
RESULTS_FILE = "results.csv"
MANIFEST_FILE = "manifest.json"


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
        versions=json.dumps(package_versions(), sort_keys=True),
        git_commit=git_commit(),
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **values,
    )


def to_frame(rows: Iterable[Result]) -> pd.DataFrame:
    """Rows as a DataFrame with the schema's columns (what every benchmark function returns)."""
    return pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=FIELDS)


class ResultsWriter:
    """Append-only writer of ``<out>/results.csv``.

    Args:
        out: run directory (created if missing).
        resume: keep an existing ``results.csv`` (its configurations count as done);
            without it an existing non-empty results file is an error, so nothing is
            overwritten by accident.
    """

    def __init__(self, out: str | Path, *, resume: bool = False) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / RESULTS_FILE
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not resume:
            raise FileExistsError(
                f"--out {str(self.out)!r} already holds {RESULTS_FILE}; pass --resume to continue it "
                "or choose another --out"
            )
        if exists:
            check_schema(self.path)
        self._done = done_hashes(self.path) if exists else set()

    def is_done(self, config: Mapping) -> bool:
        """True when this configuration's rows are already in the file."""
        return config_hash(config) in self._done

    def append(self, rows: Iterable[Result]) -> int:
        """Append rows (one configuration's, written together) and flush to disk."""
        rows = list(rows)
        if not rows:
            return 0
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow(dataclasses.asdict(r))
            fh.flush()
            os.fsync(fh.fileno())
        self._done.update(r.config_hash for r in rows)
        return len(rows)


def check_schema(path: str | Path) -> None:
    """Raise a clear error if ``path`` is not a results file of this schema version."""
    path = Path(path)
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header or "schema_version" not in header:
        raise ValueError(f"{path} is not an elbobench results file (no schema_version column)")
    df = pd.read_csv(path, usecols=["schema_version"])
    versions = sorted(set(df["schema_version"].dropna().astype(int)))
    if versions and versions != [SCHEMA_VERSION]:
        raise ValueError(f"{path} has schema_version {versions}; this elbobench reads version {SCHEMA_VERSION}")


def done_hashes(path: str | Path) -> set[str]:
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    return set(pd.read_csv(path, usecols=["config_hash"], dtype=str)["config_hash"].dropna())


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """Load ``results.csv`` of a run directory (or a CSV path), checking its schema."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {RESULTS_FILE} at {path}; is this an elbobench run directory?")
    check_schema(path)
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"], dtype={"config_hash": str})


# --------------------------------------------------------------------------- provenance
_VERSIONS: dict | None = None
_COMMIT: str | None = None


def package_versions() -> dict:
    global _VERSIONS
    if _VERSIONS is None:
        from importlib import metadata

        out = {"python": platform.python_version()}
        for pkg in ("torch", "numba", "numpy", "triton", "pandas", "elbobench"):
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                out[pkg] = None
        _VERSIONS = out
    return dict(_VERSIONS)


def git_commit() -> str:
    global _COMMIT
    if _COMMIT is None:
        try:
            _COMMIT = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            _COMMIT = ""
    return _COMMIT


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str = "cpu") -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


@dataclass
class Manifest:
    """What a run was: command, machine, threads, environment and versions."""

    command: str = field(default_factory=lambda: " ".join(sys.argv))
    cpu: str = field(default_factory=cpu_model)
    gpu: str = ""
    torch_threads: int = 0
    numba_threads: int = 0
    numba_vectors: str = ""
    numba_stores: str = ""
    environment: dict = field(default_factory=dict)
    versions: dict = field(default_factory=package_versions)
    git_commit: str = field(default_factory=git_commit)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def collect(cls, **extra) -> Manifest:
        import torch

        try:
            import numba

            from kernels import _numba_target
            from kernels.numba_cpu import _stream

            nthreads = numba.get_num_threads()
            vectors = _numba_target.describe()  # the vector width the numba kernels are compiled for
            stores = _stream.describe()  # whether their large outputs use non-temporal stores
        except ImportError:  # pragma: no cover
            nthreads, vectors, stores = 0, "", ""
        env = {k: v for k, v in os.environ.items() if k.startswith(("NUMBA_", "TRITON_", "ELBOBENCH_", "OMP_"))}
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        return cls(
            gpu=gpu,
            torch_threads=torch.get_num_threads(),
            numba_threads=nthreads,
            numba_vectors=vectors,
            numba_stores=stores,
            environment=env,
            extra=extra,
        )

    def write(self, out: str | Path) -> Path:
        """Write ``manifest.json`` (on resume, earlier commands are kept in ``history``)."""
        path = Path(out) / MANIFEST_FILE
        data = dataclasses.asdict(self)
        if path.exists():
            try:
                old = json.loads(path.read_text())
                data["history"] = [*old.get("history", []), {k: old.get(k) for k in ("command", "started")}]
            except (OSError, ValueError):
                pass
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
        return path


def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def free_run_path(out: str | Path, stem: str = "run") -> Path:
    """``out/<stem>-<k>.csv`` for the smallest ``k`` not taken (a run deleted by hand leaves a gap)."""
    out = Path(out)
    k = 0
    while (out / f"{stem}-{k}.csv").exists():
        k += 1
    return out / f"{stem}-{k}.csv"


def write_whole(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` to ``path`` as CSV through a temporary file, so the file is there whole or not at all."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def run_series(
    prog: str, out: str | Path, runs: int, measure: Callable[[], pd.DataFrame], *, resume: bool = False,
    evaluate: bool = False,
) -> list[pd.DataFrame] | None:  # fmt: skip
    """Repeat ``measure()`` until ``out`` holds ``runs`` runs as ``run-<k>.csv``; return every run there.

    Each run is written whole as soon as it finishes (:func:`write_whole`), so an
    interrupted series keeps what it completed. Runs already in ``out`` are kept
    only with ``resume`` (the series then runs the rest) or ``evaluate`` (nothing
    is run). Without either, existing runs are an error: mixing old and new runs
    by accident would corrupt the medians. An error, or ``evaluate`` with no runs,
    prints ``prog: ...`` to stderr and returns None (the caller exits with 2).
    """
    out = Path(out)
    done = sorted(out.glob("run-*.csv"))
    if done and not (resume or evaluate):
        print(f"{prog}: --out {out} already holds {len(done)} run(s); pass --resume to keep them "
              "and run the rest, --evaluate to only read them, or another --out", file=sys.stderr)  # fmt: skip
        return None
    if evaluate and not done:
        print(f"{prog}: --evaluate found no run-*.csv in {out}", file=sys.stderr)
        return None
    out.mkdir(parents=True, exist_ok=True)
    k = len(done)
    while not evaluate and k < runs:
        t0 = time.perf_counter()
        df = measure()
        path = free_run_path(out)
        write_whole(df, path)
        k += 1
        print(f"run {k}/{runs} written to {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [pd.read_csv(p) for p in sorted(out.glob("run-*.csv"))]
