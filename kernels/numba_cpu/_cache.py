"""Where numba keeps its compiled kernels (``cache=True``), chosen before any kernel compiles.

Order: an explicit ``NUMBA_CACHE_DIR`` wins; else numba's default, the
``__pycache__`` next to this package, when that directory is writable; else a
user cache dir, ``$XDG_CACHE_HOME/elbobench/numba`` (``~/.cache/elbobench/numba``),
so that an install into a read-only site-packages still compiles only once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "elbobench" / "numba"


def configure() -> str:
    """Make sure numba's cache dir is writable; return where the kernels are cached."""
    if numba.config.CACHE_DIR:
        return str(numba.config.CACHE_DIR)
    here = Path(__file__).resolve().parent
    if _writable(here / "__pycache__"):
        return str(here / "__pycache__")
    target = user_cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(target)  # for child processes
    numba.config.CACHE_DIR = str(target)  # read when each @njit(cache=True) is decorated
    return str(target)
