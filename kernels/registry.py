"""The one registry of kernel backends.

A backend is a module that defines the functions of :class:`Backend` and is
registered with :func:`register` under a name. Modules are imported lazily, at
the first call that resolves to them, so a missing optional dependency (triton)
only matters when that backend is asked for. Adding a backend is one module plus
one ``register(...)`` call; the contract tests and benchmarks iterate over
:func:`names`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

import torch

OPS = (
    "normal_rsample",
    "normal_kl_std",
    "normal_rsample_kl",
    "normal_log_prob",
    "bernoulli_log_prob",
    "normal_noise",
)

#: Ops of the discrete families (:mod:`kernels.discrete`). A backend may lack any
#: of them: asking it for one by name raises :class:`BackendUnavailableError`
#: with the reason, and ``auto`` picks a backend that has it.
OPTIONAL_OPS = (
    "uniform_noise",
    "bernoulli_sample",
    "bernoulli_antithetic",
    "bernoulli_kl",
    "categorical_sample",
    "categorical_log_prob",
    "categorical_kl",
    "gumbel_softmax",
    "binary_concrete",
    "bernoulli_conditional_relaxed",
)


def missing_op_reason(name: str, op: str) -> str | None:
    """None if backend ``name``'s module implements ``op``, else the reason (the backends that do)."""
    if callable(getattr(load(name), op, None)):
        return None
    having = [n for n in names() if _has(n, op)]
    return f"backend {name!r} has no {op} kernel (backends with it: {having})"


def _has(name: str, op: str) -> bool:
    try:
        return callable(getattr(load(name), op, None))
    except BackendUnavailableError:
        return False


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


class Backend(Protocol):
    """What a backend module provides.

    The public API in :mod:`kernels` validates every input first: tensors reach a
    backend already broadcast to one shape, with one floating dtype and one
    device, and ``seed`` is an int whenever ``eps`` is None.

    Optional: a module that sets ``READS_BROADCASTS = True`` receives its tensor
    inputs unexpanded instead, plus the broadcast shape as one more positional
    argument after them (and after ``seed``), and returns outputs and input
    gradients as if the inputs had been expanded (the numba backend: it reads
    broadcast inputs in place, which saves an expand node per input).
    """

    def availability(self, device: str) -> str | None:
        """None if the backend can run on ``device`` ("cpu", "cuda"), else the reason."""

    def normal_rsample(self, mu, logvar, eps, seed): ...  # -> z [..., D]

    def normal_kl_std(self, mu, logvar): ...  # -> kl [...]

    def normal_rsample_kl(self, mu, logvar, eps, seed): ...  # -> (z [..., D], kl [...])

    def normal_log_prob(self, x, mu, logvar): ...  # -> [...]

    def bernoulli_log_prob(self, x, logits): ...  # -> [...]

    def normal_noise(self, shape, seed, device, dtype): ...  # -> [*shape]

    # Optional: ``describe(device) -> dict`` of the settings that shape the
    # backend's numbers (threads, vector width, ...); run manifests record it.
    # Optional: ``preallocated_calls(op, inputs, upstream, seed) -> (forward,
    # backward)``, closures running the op's kernels on preallocated outputs,
    # which the kernel benchmark times apart from allocation.


@dataclass(frozen=True)
class BackendInfo:
    """Static description of a registered backend.

    Attributes:
        name: registry key, e.g. ``"numba"``.
        module: import path of the module implementing :class:`Backend`.
        devices: device types the backend can serve (``"cpu"``, ``"cuda"``).
        description: one line for ``elbobench backends``.
        auto_priority: higher wins when ``"auto"`` picks among available backends.
    """

    name: str
    module: str
    devices: tuple[str, ...]
    description: str
    auto_priority: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"backend name must be an identifier, got {self.name!r}")
        if self.name == "auto":
            raise ValueError("'auto' is reserved for automatic backend selection")
        bad = [d for d in self.devices if d not in ("cpu", "cuda")]
        if not self.devices or bad:
            raise ValueError(
                f"backend {self.name!r}: devices must be a non-empty subset of ('cpu', 'cuda'), got {self.devices!r}"
            )


_REGISTRY: dict[str, BackendInfo] = {}
_MODULES: dict[str, ModuleType] = {}
# (name, device type) -> unavailable_reason. Availability cannot change within a
# process except through register(), which clears this; every op call asks, so
# the import check and ``availability()`` run once per (backend, device).
_REASONS: dict[tuple[str, str], str | None] = {}
# Answers derived from the registry by callers (kernels.resolve_backend), also
# cleared by register().
_DERIVED: dict = {}


def derived_cache() -> dict:
    """A dict for answers derived from the registry; :func:`register` empties it."""
    return _DERIVED


def clear_cache() -> None:
    """Forget cached availability answers (after something changes what a backend can do)."""
    _REASONS.clear()
    _DERIVED.clear()


def register(info: BackendInfo, *, replace: bool = False) -> BackendInfo:
    """Add a backend to the registry (validated now, imported at first use)."""
    if not isinstance(info, BackendInfo):
        raise TypeError(f"register() takes a BackendInfo, got {type(info).__name__}")
    if info.name in _REGISTRY and not replace:
        raise ValueError(f"backend {info.name!r} is already registered (pass replace=True to override)")
    _REGISTRY[info.name] = info
    _MODULES.pop(info.name, None)
    _REASONS.clear()
    _DERIVED.clear()
    return info


def names() -> list[str]:
    """All registered backend names, in registration order."""
    return list(_REGISTRY)


def info(name: str) -> BackendInfo:
    """The :class:`BackendInfo` for ``name``; unknown names raise with the list of known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"backend must be one of {['auto', *_REGISTRY]}, got {name!r}")
    return _REGISTRY[name]


def load(name: str) -> ModuleType:
    """Import (once) and return the module of backend ``name``."""
    mod = _MODULES.get(name)
    if mod is None:
        spec = info(name)
        try:
            mod = importlib.import_module(spec.module)
        except ImportError as exc:
            raise BackendUnavailableError(f"backend {name!r} cannot be imported: {exc}") from exc
        missing = [op for op in (*OPS, "availability") if not callable(getattr(mod, op, None))]
        if missing:
            raise TypeError(f"backend module {spec.module!r} lacks {missing}")
        _MODULES[name] = mod
    return mod


def unavailable_reason(name: str, device: str | torch.device) -> str | None:
    """None if backend ``name`` can run on ``device``, else a sentence saying why not.

    Cached per (backend, device type) until the next :func:`register`.
    """
    dev = device if isinstance(device, str) and device in ("cpu", "cuda") else torch.device(device).type
    cached = _REASONS.get((name, dev), _UNSET)
    if cached is not _UNSET:
        return cached
    spec = info(name)
    if dev not in spec.devices:
        return f"backend {name!r} runs on {list(spec.devices)} tensors, not {dev!r}"
    try:
        mod = load(name)
    except BackendUnavailableError as exc:
        reason = str(exc)
    else:
        reason = mod.availability(dev)
    _REASONS[(name, dev)] = reason
    return reason


_UNSET = object()
