"""The vector width numba compiles the kernels for, chosen before any kernel is decorated.

On CPUs with AVX-512, LLVM's tuning for most Intel server cores
(``skylake-avx512`` through ``emeraldrapids``) carries the ``prefer-256-bit``
feature: its loop vectorizer then uses 256-bit registers even though 512-bit
ones exist, to avoid the clock reduction that wide instructions caused on the
early AVX-512 parts. The kernels here are long element-wise loops with a
polynomial ``exp``/``log`` per element (:mod:`kernels.numba_cpu._math`), where
twice the lanes is what counts: on an AVX-512 host the median kernel ran faster
with 512-bit vectors at every size measured (``docs/numba-backend.md``, and the
record in ``docs/measurements/vector-width-intel-xeon.md``).

So unless told otherwise, :func:`configure` hands numba the host's features plus
``-prefer-256-bit`` (LLVM's name for that tuning flag) where the host has
``avx512f``. numba fixes its target when the first ``@njit`` function is
decorated, so this applies only when none was created in the process before
``kernels`` was imported; it is a code-generation preference, not an ISA change
(the same instructions are allowed either way), and it reaches every numba
function of the process compiled afterwards. The cache keys compiled code by
the feature string, so both widths can be cached side by side.

``ELBOBENCH_NUMBA_VECTOR_BITS``: ``auto`` (default; 512-bit where the host has
AVX-512) or ``256`` (``+prefer-256-bit``: 256-bit vectors even where LLVM's
tuning for the host would pick 512, as it does for AMD Zen 4). A CPU name or
feature string the user gave numba (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``
or numba's config file) is left alone. A value it does not know is reported
with a warning and treated as ``auto``: ``import kernels`` must not fail for
the torch and triton backends over a numba setting.
"""

from __future__ import annotations

import os
import warnings

import numba

ENV = "ELBOBENCH_NUMBA_VECTOR_BITS"
CHOICES = ("auto", "256")
_PREFER_256 = "prefer-256-bit"
_state: str | None = None


def _target_created() -> bool:
    """Whether numba already built its CPU target (its features are then fixed for the process)."""
    from numba.core import registry

    return "_toplevel_target_context" in vars(registry.cpu_target)


def requested() -> str:
    """The value of ``ELBOBENCH_NUMBA_VECTOR_BITS`` (``auto`` when unset); a bad value is an error."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV} must be one of {list(CHOICES)}, got {os.environ.get(ENV)!r}")
    return value


def configure() -> str:
    """Set numba's target features for the kernels once per process; return a one-line description of the outcome."""
    global _state
    if _state is not None:
        return _state
    try:
        choice = requested()
    except ValueError as exc:
        warnings.warn(f"{exc}; using 'auto'", stacklevel=2)
        choice = "auto"
    if numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        _state = "numba's target as the user set it (NUMBA_CPU_NAME/NUMBA_CPU_FEATURES)"
        return _state
    import llvmlite.binding as ll

    try:
        features = ll.get_host_cpu_features()
    except RuntimeError:  # pragma: no cover - LLVM cannot read this host's features
        _state = "numba's default vectors (host features unknown)"
        return _state
    if not features.get("avx512f", False) or not numba.config.ENABLE_AVX:
        _state = "numba's default vectors (no AVX-512 here)"
    elif _target_created():
        _state = "numba's default vectors (a numba function was decorated before kernels was imported)"
    else:
        sign = "+" if choice == "256" else "-"
        numba.config.CPU_FEATURES = features.flatten() + f",{sign}{_PREFER_256}"
        _state = f"256-bit vectors ({ENV}=256)" if choice == "256" else "512-bit vectors (AVX-512)"
    return _state


def _codegen_features() -> str:
    """The feature string numba's CPU codegen holds (the target is built if it was not yet)."""
    from numba.core import registry

    return registry.cpu_target.target_context.codegen()._tm_features


def wide_vectors() -> bool:
    """Whether numba's codegen in this process was told to prefer 512-bit vectors."""
    return f"-{_PREFER_256}" in _codegen_features()


def describe() -> str:
    """:func:`configure`'s outcome, checked against the feature string numba's codegen actually holds."""
    state = configure()
    features = _codegen_features()
    for claim, flag in (("512-bit", f"-{_PREFER_256}"), ("256-bit", f"+{_PREFER_256}")):
        if state.startswith(claim) and flag not in features:
            return f"numba's default vectors (the {claim} setting did not reach numba's codegen)"
    return state
