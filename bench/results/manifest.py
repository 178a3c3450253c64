"""The run manifest: what a run was (command, machine, threads, backends' settings, versions, plugins).

``manifest.json`` sits beside ``results.csv``. The kernel backends' settings
come from each backend's own ``describe()`` (:func:`kernels.describe_backends`),
so the harness needs no knowledge of any backend's internals.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_FILE = "manifest.json"

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


def host_name() -> str:
    """This machine's name (``socket.gethostname()``)."""
    import socket

    return socket.gethostname()


def device_name(device: str = "cpu") -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def _schema_version() -> int:
    from bench.results.schema import SCHEMA_VERSION

    return SCHEMA_VERSION


@dataclass
class Manifest:
    """What a run was: command, machine, threads, backends' settings, environment, versions, plugins.

    Attributes:
        backends: ``{name: settings}`` of every kernel backend that runs here,
            from the backend's own ``describe()`` (:func:`kernels.describe_backends`).
        plugins: the plugins loaded in the process (:func:`bench.plugins.loaded`).
        extra: what the subcommand adds (its benchmark, planned configurations, ...).
    """

    command: str = field(default_factory=lambda: " ".join(sys.argv))
    cpu: str = field(default_factory=cpu_model)
    host: str = field(default_factory=host_name)
    gpu: str = ""
    torch_threads: int = 0
    backends: dict = field(default_factory=dict)
    plugins: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    versions: dict = field(default_factory=package_versions)
    git_commit: str = field(default_factory=git_commit)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    schema_version: int = field(default_factory=_schema_version)
    extra: dict = field(default_factory=dict)

    @classmethod
    def collect(cls, **extra) -> Manifest:
        """This process's manifest; ``extra`` is stored under ``extra``."""
        import torch

        import kernels
        from bench import plugins

        env = {k: v for k, v in os.environ.items() if k.startswith(("NUMBA_", "TRITON_", "ELBOBENCH_", "OMP_"))}
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        backends = kernels.describe_backends("cpu")
        if torch.cuda.is_available():
            for name, settings in kernels.describe_backends("cuda").items():
                backends.setdefault(name, settings)
        return cls(
            gpu=gpu,
            torch_threads=torch.get_num_threads(),
            backends=backends,
            plugins=plugins.loaded(),
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
