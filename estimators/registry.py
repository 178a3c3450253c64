"""The one registry of gradient estimators.

An estimator is a subclass of :class:`estimators.base.Estimator` registered under
its ``name`` with :func:`register` (a class decorator). Adding an estimator is one
module with one decorated class, imported in ``estimators/__init__.py`` or loaded
as a plugin (see the README); the contract tests and the benchmarks iterate over
:func:`available`.
"""

from __future__ import annotations

import inspect
from typing import TypeVar

_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register(cls: T) -> T:
    """Class decorator adding an :class:`~estimators.base.Estimator` subclass under ``cls.name``.

    Raises:
        TypeError: ``cls`` is not an Estimator subclass.
        ValueError: the name is not an identifier or is already taken.
    """
    from .base import Estimator

    if not isinstance(cls, type) or not issubclass(cls, Estimator):
        raise TypeError(f"register() takes an Estimator subclass, got {cls!r}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"estimator name must be an identifier, got {name!r} on {cls.__name__}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"estimator {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def available() -> list[str]:
    """Registered estimator names, in registration order."""
    return list(_REGISTRY)


def estimator_class(name: str) -> type:
    """The registered class of ``name``: its class attributes (``families``,
    ``vae_only``, ``multi_sample``, ``min_samples``) are the facts the harness reads.

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"estimator must be one of {available()}, got {name!r}")
    return _REGISTRY[name]


def option_names(name: str) -> list[str]:
    """The keyword options :func:`get` accepts for ``name`` (e.g. ``["control_variate", "decay", ...]``)."""
    cls = estimator_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def takes_control_variate(name: str) -> bool:
    """Whether estimator ``name`` takes the option ``control_variate``."""
    return "control_variate" in option_names(name)


def get(name: str, **options):
    """A new estimator ``name`` configured by ``options``.

    Args:
        name: one of :func:`available`.
        **options: estimator options, e.g. ``control_variate="leave_one_out"`` for
            ``score_function`` or ``coupling=False`` for ``measure_valued``.

    Raises:
        ValueError: unknown name (the message lists the available ones) or a bad
            option value.
        TypeError: an option the estimator does not take (the message lists those it takes).
    """
    cls = estimator_class(name)
    accepted = option_names(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"estimator {name!r} takes the options {accepted}, got unknown {unknown}")
    return cls(**options)
