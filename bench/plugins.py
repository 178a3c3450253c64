"""Plugins: estimators, models, datasets, control variates and kernel backends from the user's own code.

A plugin is a Python module that registers what it adds when it is imported::

    # my_estimators.py
    import estimators

    @estimators.register
    class Halfway(estimators.Estimator):
        name = "halfway"
        ...

and is loaded, without editing the suite, in one of three ways:

* ``elbobench SUBCOMMAND --plugin my_estimators`` (repeatable; a dotted module
  importable from ``sys.path`` with the working directory first, or the path of a
  ``.py`` file), imported before the subcommand's options are checked;
* the entry-point group ``elbobench.plugins`` of an installed package
  (``[project.entry-points."elbobench.plugins"] mine = "my_package.plugin"``),
  imported when :mod:`bench` is imported;
* ``ELBOBENCH_PLUGINS=my_estimators,path/to/other.py`` in the environment, also
  imported when :mod:`bench` is imported: the Python API and pytest (the
  contract tests then run over the plugin's estimators) see them.

Every plugin loaded in a process is listed by :func:`loaded` (the run manifest
records them, so that ``--resume`` and workers load the same ones).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "PluginError",
    "load",
    "load_all",
    "load_entry_points",
    "load_environment",
    "load_startup",
    "loaded",
]

ENTRY_POINT_GROUP = "elbobench.plugins"
ENV_VAR = "ELBOBENCH_PLUGINS"

# spec as given -> module; in load order
_LOADED: dict[str, ModuleType] = {}


class PluginError(ImportError):
    """A plugin could not be found or failed on import; the message names it and says why."""


def loaded() -> list[str]:
    """The plugin specs loaded in this process, in load order (as given: module names or file paths)."""
    return list(_LOADED)


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def load(spec: str, *, source: str = "--plugin") -> ModuleType:
    """Import the plugin ``spec`` once: a dotted module name or the path of a ``.py`` file.

    Args:
        spec: ``"my_package.plugin"`` (found on ``sys.path``, the working
            directory first) or ``"path/to/plugin.py"``.
        source: where the spec came from, for error messages (``--plugin``,
            ``ELBOBENCH_PLUGINS``, the entry point's name).

    Raises:
        PluginError: the module does not exist, or raised on import (chained).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"{source}: expected a module name or a .py path, got {spec!r}")
    spec = spec.strip()
    if spec in _LOADED:
        return _LOADED[spec]
    if _is_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"{source}: no plugin file at {spec!r} (resolved to {str(path)!r})")
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
        name = f"elbobench_plugin_{path.stem}_{digest}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise PluginError(f"{source}: cannot import {spec!r} as a Python module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise PluginError(f"{source}: plugin {spec!r} failed on import: {type(exc).__name__}: {exc}") from exc
    else:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name is not None and spec.startswith(exc.name):
                raise PluginError(
                    f"{source}: no module named {spec!r} on sys.path (working directory {cwd!r} first); "
                    "give a module name importable from there or the path of a .py file"
                ) from exc
            raise PluginError(f"{source}: plugin {spec!r} failed on import: {exc}") from exc
        except Exception as exc:
            raise PluginError(f"{source}: plugin {spec!r} failed on import: {type(exc).__name__}: {exc}") from exc
    _LOADED[spec] = module
    return module


def load_entry_points() -> list[str]:
    """Import every plugin of the entry-point group ``elbobench.plugins``; returns their module names."""
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        load(ep.value.split(":")[0], source=f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP!r}")
        out.append(ep.value.split(":")[0])
    return out


def load_environment() -> list[str]:
    """Import the comma-separated plugins of ``ELBOBENCH_PLUGINS``; returns them."""
    specs = [s.strip() for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]
    for s in specs:
        load(s, source=ENV_VAR)
    return specs


#: A start-up plugin's error, kept for the command line to report (it would
#: otherwise surface as a traceback from ``import bench``).
STARTUP_ERROR: PluginError | None = None


def _running_cli() -> bool:
    """Whether this process is the ``elbobench`` command (its script, or ``python -m bench.cli``).

    Under ``python -m``, ``sys.argv[0]`` is ``"-m"`` while the module's packages
    are imported.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) == "elbobench" or argv0 == "-m" or argv0.endswith(os.path.join("cli", "__main__.py"))


def load_startup() -> None:
    """Entry points and ``ELBOBENCH_PLUGINS``: what ``import bench`` loads.

    Raises:
        PluginError: one of them cannot be imported (under the ``elbobench``
            command the error is kept in :data:`STARTUP_ERROR` for it to report).
    """
    global STARTUP_ERROR
    try:
        load_entry_points()
        load_environment()
    except PluginError as exc:
        if not _running_cli():
            raise
        STARTUP_ERROR = exc


def load_all(specs=()) -> list[str]:
    """Entry points, then ``ELBOBENCH_PLUGINS``, then ``specs``; returns every loaded plugin."""
    load_entry_points()
    load_environment()
    for s in specs:
        load(s)
    return loaded()
