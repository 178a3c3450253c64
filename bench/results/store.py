"""Writing and reading results: an append-only ``results.csv`` per run directory.

A run directory holds ``results.csv``, appended as each configuration finishes
(so an interrupted run keeps what it finished), and ``manifest.json``
(:mod:`bench.results.manifest`). Reports read only these files. ``--resume``
skips configurations whose ``config_hash`` is already in ``results.csv``: rows
of one configuration are written together, so a hash present means that
configuration finished.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pandas as pd

from bench.results.schema import FIELDS, READABLE_VERSIONS, RESULTS_FILE, Result, config_hash


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
        self._fields: list[str] | None = None
        if exists:
            check_schema(self.path)
            with self.path.open(newline="") as fh:
                self._fields = next(csv.reader(fh))
        self._done = done_hashes(self.path) if exists else set()

    def is_done(self, config: Mapping) -> bool:
        """True when this configuration's rows are already in the file."""
        return config_hash(config) in self._done

    def has_hash(self, chash: str) -> bool:
        """True when rows with this configuration hash are already in the file."""
        return chash in self._done

    def append(self, rows: Iterable[Result]) -> int:
        """Append rows (one configuration's, written together) and flush to disk."""
        rows = list(rows)
        if not rows:
            return 0
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as fh:
            # a file begun by an older schema keeps its own columns (rows of one file stay aligned)
            w = csv.DictWriter(fh, fieldnames=self._fields or FIELDS, extrasaction="ignore")
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
    if any(v not in READABLE_VERSIONS for v in versions):
        raise ValueError(
            f"{path} has schema_version {versions}; this elbobench reads versions {list(READABLE_VERSIONS)}"
        )


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
    df = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"], dtype={"config_hash": str})
    if "host" not in df.columns:  # schema version 1
        df.insert(FIELDS.index("host"), "host", "")
    return df


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


# --------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A checkpoint that is not one elbobench wrote: the message names the file and says why."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` (tensors, state dicts and plain types only) to ``path`` atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``torch.load(..., weights_only=True)``: tensors and plain types only.

    A run directory travels between machines and people, so a checkpoint is
    never unpickled as arbitrary objects: one that holds anything else (a
    pickled class, a function) is refused without running any of it.

    Raises:
        CheckpointError: the file is not such a checkpoint (unreadable, or it
            holds other objects); the message names it.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        why = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in why if "GLOBAL" in ln or "Unsupported" in ln), why[0] if why else "")
        raise CheckpointError(
            f"checkpoint {str(path)!r} refused: it holds objects other than tensors and plain types, "
            f"which elbobench never writes ({detail}); delete it to start that configuration afresh"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    return state
