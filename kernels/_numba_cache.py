"""Where numba keeps the compiled kernels (``cache=True``), chosen before any kernel is decorated.

Numba invalidates a cached function only when *its own* source file changes,
but our kernels inline functions from other files (``randn_at`` from
:mod:`kernels.philox`, the polynomial ``exp``/``log`` of
:mod:`kernels.numba_cpu._math`) and take their compile flags from
``_flags.py``: after an edit or an upgrade that touches only those, numba would
keep loading the old machine code. So the cache lives in a directory named by a
digest of every kernel source file and the numba version
(``.../src-<digest>``); any change compiles afresh, and caches of other digests
next to it are removed.

Base directory, in order: an explicit ``NUMBA_CACHE_DIR`` (used as given, the
user's choice); else ``kernels/numba_cpu/__pycache__`` when writable; else a user
cache dir, ``$XDG_CACHE_HOME/elbobench/numba`` (``~/.cache/elbobench/numba``), so
that an install into a read-only site-packages still compiles only once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numba

from . import _numba_target

_HERE = Path(__file__).resolve().parent
_configured: str | None = None


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "elbobench" / "numba"


def kernel_sources() -> list[Path]:
    """Every file whose change must recompile the kernels."""
    return sorted((_HERE / "numba_cpu").glob("*.py")) + [_HERE / "philox.py"]


def source_digest(files: list[Path] | None = None) -> str:
    """sha256 (16 hex digits) of the kernel sources' names and bytes and the numba version."""
    h = hashlib.sha256(numba.__version__.encode())
    for f in kernel_sources() if files is None else files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def configure() -> str:
    """Point numba's cache at the right directory (once per process); return it.

    It also settles the vector width numba compiles for (:mod:`kernels._numba_target`),
    which, like the cache directory, must be set before the first ``@njit``.
    """
    global _configured
    _numba_target.configure()
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        numba.config.CACHE_DIR = explicit
        _configured = explicit
        return explicit
    if _configured is not None and numba.config.CACHE_DIR == _configured:
        return _configured
    local = _HERE / "numba_cpu" / "__pycache__"
    base = local if _writable(local) else user_cache_dir()
    target = base / f"src-{source_digest()}"
    target.mkdir(parents=True, exist_ok=True)
    for old in base.glob("src-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)  # best effort: another digest's kernels
    numba.config.CACHE_DIR = str(target)  # read when each @njit(cache=True) is decorated
    _configured = str(target)
    return _configured
