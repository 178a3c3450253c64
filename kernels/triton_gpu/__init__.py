"""The triton backend: fused GPU kernels, run on CPU by Triton's interpreter for tests.

Each op is one ``@triton.jit`` forward kernel and one fused backward kernel
(row sums over the last dim done inside the kernel), registered as a torch custom
op with :func:`torch.library.triton_op` so :func:`torch.compile` can trace it on a
GPU, and wrapped in a :class:`torch.autograd.Function` with ``setup_context`` and a
``vmap`` rule so :mod:`torch.func` works. The formulas are those of
:mod:`kernels.reference`; noise is ``tl.randn(seed, i)`` at the row-major index
``i`` of the output (the stream of :mod:`kernels.philox`), computed by a port of
those steps that the interpreter can run whatever imported triton first.

Compiled or interpreted
-----------------------
Triton decides at ``@triton.jit`` time whether a kernel is compiled or interpreted
(``TRITON_INTERPRET=1`` must be in the environment *before* the kernels are
defined). This package therefore imports its kernel modules lazily, at the first
op call, after settling the mode from ``ELBOBENCH_TRITON_INTERPRET``:

* ``"1"``: always the interpreter (CPU tensors only);
* ``"0"``: never the interpreter (CUDA tensors only);
* ``"auto"`` (the test suite's default, set by the root ``conftest.py``): the
  interpreter iff torch sees no CUDA device;
* unset: compiled, unless the user already exported ``TRITON_INTERPRET=1``.

Once the kernels are imported the mode is fixed for the process.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from ..registry import BackendUnavailableError

__all__ = [
    "ENV_SWITCH",
    "SUPPORTED_DTYPES",
    "TEST_SHAPES_SMALL",
    "availability",
    "bernoulli_log_prob",
    "describe",
    "mode",
    "normal_kl_std",
    "normal_log_prob",
    "normal_noise",
    "normal_rsample",
    "normal_rsample_kl",
]

ENV_SWITCH = "ELBOBENCH_TRITON_INTERPRET"
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Mode:
    """How this process runs Triton.

    Attributes:
        interpret: True for the interpreter (CPU tensors), False for compiled (CUDA).
        error: None, or why triton cannot run at all (not installed, bad switch).
        why: one phrase saying where the choice came from.
    """

    interpret: bool
    error: str | None
    why: str


@dataclass(frozen=True)
class _Ops:
    gaussian: ModuleType
    log_prob: ModuleType


_FROZEN: Mode | None = None
_OPS: _Ops | None = None
_LOAD_ERROR: str | None = None


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _env_mode() -> Mode:
    """The mode the environment asks for now (not yet frozen)."""
    if not _triton_installed():
        return Mode(False, "triton is not installed (pip install 'elbobench[triton]' on Linux)", "")
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    user = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")
    if switch not in ("", "0", "1", "auto"):
        return Mode(False, f"{ENV_SWITCH} must be '0', '1' or 'auto', got {os.environ[ENV_SWITCH]!r}", "")
    if switch == "1":
        return Mode(True, None, f"{ENV_SWITCH}=1")
    if switch == "0":
        if user:
            return Mode(
                False,
                f"{ENV_SWITCH}=0 forbids the interpreter but TRITON_INTERPRET=1 is set; unset one of them",
                "",
            )
        return Mode(False, None, f"{ENV_SWITCH}=0")
    if user:
        return Mode(True, None, "TRITON_INTERPRET=1")
    if switch == "auto":
        cuda = torch.cuda.is_available()
        return Mode(not cuda, None, f"{ENV_SWITCH}=auto and {'a' if cuda else 'no'} CUDA device")
    return Mode(False, None, f"{ENV_SWITCH} unset")


def mode() -> Mode:
    """The mode in force: frozen once the kernels are imported, else read from the environment."""
    return _FROZEN if _FROZEN is not None else _env_mode()


# The contract tests use small shapes when the kernels run in the interpreter
# (orders of magnitude slower than compiled code).
TEST_SHAPES_SMALL: bool = _env_mode().interpret


def availability(device: str) -> str | None:
    """None if triton can run on ``device`` ("cpu" or "cuda") in this process, else why not."""
    m = mode()
    if m.error is not None:
        return m.error
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if device == "cpu":
        if not m.interpret:
            return (
                f"triton runs compiled here ({m.why}), which needs CUDA tensors; CPU tensors run only in "
                f"Triton's interpreter: set {ENV_SWITCH}=1 before the first triton call"
            )
        return None
    if device == "cuda":
        if m.interpret:
            return f"triton runs in its CPU interpreter here ({m.why}); CUDA tensors need compiled triton"
        if not torch.cuda.is_available():
            return "no CUDA device here (torch.cuda.is_available() is False)"
        return None
    return f"triton runs on 'cuda' (compiled) or 'cpu' (interpreter) tensors, not {device!r}"


def describe(device: str) -> dict:
    """How triton runs on ``device``: ``{"version", "mode"}``, mode compiled on a named GPU or the interpreter."""
    try:
        import triton

        version = triton.__version__
    except ImportError:  # pragma: no cover
        version = "not installed"
    if mode().interpret:
        return {"version": version, "mode": "interpreter (TRITON_INTERPRET=1)"}
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no device"
    return {"version": version, "mode": f"compiled (CUDA, {name})"}


def _freeze() -> Mode:
    """Settle the mode for the process and put ``TRITON_INTERPRET`` in the environment if needed.

    Called before any kernel module imports triton (``_common`` calls it first thing),
    so importing a kernel module directly is as safe as calling an op.
    """
    global _FROZEN
    if _FROZEN is None:
        m = _env_mode()
        if m.error is not None:
            raise BackendUnavailableError(f"backend 'triton' cannot run: {m.error}")
        if m.interpret:
            os.environ["TRITON_INTERPRET"] = "1"  # read by @triton.jit when the kernels are defined
        _FROZEN = m
    return _FROZEN


def _ops() -> _Ops:
    """Freeze the mode and import the kernel modules (once)."""
    global _OPS
    if _OPS is None:
        m = _freeze()
        from . import _common, gaussian, log_prob

        if _common.INTERPRETED != m.interpret:
            raise BackendUnavailableError(
                f"triton's kernels were defined {'interpreted' if _common.INTERPRETED else 'compiled'} but the "
                f"mode asks for {'interpreted' if m.interpret else 'compiled'} ({m.why}); set {ENV_SWITCH} before "
                "anything defines triton kernels"
            )
        _OPS = _Ops(gaussian, log_prob)
    return _OPS


def _check_device(op: str, **tensors: torch.Tensor | torch.device | None) -> None:
    interpret = mode().interpret
    for arg, t in tensors.items():
        if t is None:
            continue
        dev = t if isinstance(t, torch.device) else t.device
        if interpret and dev.type != "cpu":
            raise BackendUnavailableError(
                f"triton.{op}: {arg} is on {dev}, but triton runs in its CPU interpreter in this process "
                f"({mode().why}); pass CPU tensors, or run with {ENV_SWITCH}=0 for compiled CUDA kernels"
            )
        if not interpret and dev.type != "cuda":
            raise BackendUnavailableError(
                f"triton.{op}: {arg} is on {dev}, but compiled triton needs CUDA tensors; move it to "
                f"'cuda', or run with {ENV_SWITCH}=1 to use Triton's CPU interpreter"
            )


def normal_rsample(mu, logvar, eps, seed):
    """``z = mu + exp(logvar / 2) * eps`` (noise from ``seed`` when ``eps`` is None); ``[..., D]``."""
    _check_device("normal_rsample", mu=mu, logvar=logvar, eps=eps)
    return _ops().gaussian.normal_rsample(mu, logvar, eps, seed)


def normal_kl_std(mu, logvar):
    """``0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)`` over the last dim; ``[..., D] -> [...]``."""
    _check_device("normal_kl_std", mu=mu, logvar=logvar)
    return _ops().gaussian.normal_kl_std(mu, logvar)


def normal_rsample_kl(mu, logvar, eps, seed):
    """Fused rsample and KL in one pass; returns ``(z [..., D], kl [...])``."""
    _check_device("normal_rsample_kl", mu=mu, logvar=logvar, eps=eps)
    return _ops().gaussian.normal_rsample_kl(mu, logvar, eps, seed)


def normal_log_prob(x, mu, logvar):
    """``-0.5 * sum(log 2pi + logvar + (x - mu)^2 exp(-logvar))``; ``[..., D] -> [...]``."""
    _check_device("normal_log_prob", x=x, mu=mu, logvar=logvar)
    return _ops().log_prob.normal_log_prob(x, mu, logvar)


def bernoulli_log_prob(x, logits):
    """``sum(x * logits - softplus(logits))``; ``[..., D] -> [...]``."""
    _check_device("bernoulli_log_prob", x=x, logits=logits)
    return _ops().log_prob.bernoulli_log_prob(x, logits)


def normal_noise(shape, seed, device, dtype):
    """``tl.randn(seed, i)`` at every row-major index ``i`` of a new ``[*shape]`` tensor."""
    _check_device("normal_noise", device=torch.device(device))
    return _ops().gaussian.normal_noise(shape, seed, device, dtype)


# With compiled triton and a GPU, import the kernels now rather than at the first op
# call: that call may be inside a torch.compile trace, which cannot run imports and
# environment changes without a graph break. (In the interpreter, lazily: tests and
# CPU-only tools should not pay for importing torch's Triton integration.)
if _env_mode().error is None and not _env_mode().interpret and torch.cuda.is_available():
    try:
        _ops()
    except Exception as exc:  # reported by availability(), not raised at import
        _LOAD_ERROR = f"the triton kernels failed to load: {type(exc).__name__}: {exc}"
