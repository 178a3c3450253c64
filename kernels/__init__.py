"""Public kernel API of elbobench: sampling, KL and log-likelihoods of the latent families.

Gaussian ops live here; the Bernoulli and categorical ones in
:mod:`kernels.discrete` (re-exported).

Every op validates its inputs once here, resolves a backend *at call time* and
calls that backend's implementation. Shapes are ``[..., D]`` with reductions over
the last dim; ``mu``/``logvar`` broadcast against ``x``/``eps`` by torch's rules
(e.g. log q of z ``[S, B, D]`` under mu ``[B, D]``).

Backend choice, highest precedence first: the ``backend=`` argument of a call,
the innermost :func:`use_backend` context, :func:`set_backend`, the environment
variable ``ELBOBENCH_BACKEND``, then ``"auto"`` (the highest-priority backend that
can run on the inputs' device and dtype: numba on CPU, triton on CUDA, torch as
the fallback).

Example::

    import torch, kernels
    mu, logvar = torch.zeros(4, 8), torch.zeros(4, 8)
    z, kl = kernels.normal_rsample_kl(mu, logvar, seed=0)   # auto backend
    with kernels.use_backend("torch"):
        z_ref, kl_ref = kernels.normal_rsample_kl(mu, logvar, seed=0)
    torch.testing.assert_close(z, z_ref)                    # same noise stream
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence

import torch

from . import philox, registry
from .philox import check_seed, draw_seed
from .registry import BackendInfo, BackendUnavailableError, register

__all__ = [
    "BackendInfo",
    "BackendUnavailableError",
    "available_backends",
    "backend_report",
    "describe_backend",
    "describe_backends",
    "preallocated_calls",
    "bernoulli_antithetic",
    "bernoulli_conditional_relaxed",
    "bernoulli_kl",
    "bernoulli_log_prob",
    "bernoulli_sample",
    "binary_concrete",
    "categorical_kl",
    "categorical_log_prob",
    "categorical_sample",
    "get_backend",
    "gumbel_softmax",
    "normal_kl_std",
    "normal_log_prob",
    "normal_noise",
    "normal_noise_blocks",
    "normal_rsample",
    "normal_rsample_kl",
    "register",
    "resolve_backend",
    "set_backend",
    "uniform_noise",
    "use_backend",
]

ENV_VAR = "ELBOBENCH_BACKEND"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

register(
    BackendInfo(
        name="torch",
        module="kernels.reference",
        devices=("cpu", "cuda"),
        description="eager PyTorch reference (the oracle of every test)",
        auto_priority=0,
    )
)
register(
    BackendInfo(
        name="numba",
        module="kernels.numba_cpu",
        devices=("cpu",),
        description="fused CPU kernels (numba njit(parallel=True))",
        auto_priority=10,
    )
)
register(
    BackendInfo(
        name="triton",
        module="kernels.triton_gpu",
        devices=("cuda", "cpu"),
        description="fused GPU kernels (Triton; on CPU only in the interpreter)",
        auto_priority=10,
    )
)

# --------------------------------------------------------------------------- selection
_configured: str | None = None
_local = threading.local()


def _stack() -> list[str]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _check_name(name: object, what: str = "backend") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a backend name (str), got {type(name).__name__} {name!r}")
    if name != "auto":
        registry.info(name)  # raises with the list of known names
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide backend (``"auto"``, a registered name, or None to clear)."""
    global _configured
    if name is None:
        _configured = None
        return
    _check_name(name)
    if name != "auto":
        spec = registry.info(name)
        reasons = [registry.unavailable_reason(name, d) for d in spec.devices]
        if all(r is not None for r in reasons):
            raise BackendUnavailableError(f"backend {name!r} cannot run here: " + "; ".join(reasons))
    _configured = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager that selects ``name`` for calls inside it (this thread only)."""
    _check_name(name)
    _stack().append(name)
    try:
        yield name
    finally:
        _stack().pop()


def _configured_name() -> str:
    if _stack():
        return _stack()[-1]
    if _configured is not None:
        return _configured
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return _check_name(env.strip(), what=f"environment variable {ENV_VAR}")
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend: {exc}") from None
    return "auto"


def _supports(name: str, device: str, dtype: torch.dtype | None) -> str | None:
    cache = registry.derived_cache()
    key = ("supports", name, device, dtype)
    if key not in cache:
        cache[key] = _supports_uncached(name, device, dtype)
    return cache[key]


def _supports_uncached(name: str, device: str, dtype: torch.dtype | None) -> str | None:
    reason = registry.unavailable_reason(name, device)
    if reason is None and dtype is not None:
        mod = registry.load(name)
        dtypes = getattr(mod, "SUPPORTED_DTYPES", FLOAT_DTYPES)
        if dtype not in dtypes:
            reason = f"backend {name!r} supports dtypes {[str(d) for d in dtypes]}, not {dtype}"
    return reason


def _supports_op(name: str, device: str, dtype: torch.dtype | None, op: str | None) -> str | None:
    reason = _supports(name, device, dtype)
    if reason is None and op is not None and op in registry.OPTIONAL_OPS:
        cache = registry.derived_cache()
        key = ("op", name, op)
        if key not in cache:
            cache[key] = registry.missing_op_reason(name, op)
        reason = cache[key]
    return reason


def resolve_backend(
    backend: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    op: str | None = None,
) -> str:
    """Name of the backend a call with these inputs would run on.

    Args:
        backend: a backend name, ``"auto"``, or None for the configured one.
        device, dtype: of the call's tensors.
        op: the op called; a backend that lacks one of the optional
            (discrete-family) ops is then refused by name and skipped by auto.

    Raises:
        BackendUnavailableError: an explicitly requested backend cannot run on
            ``device``/``dtype`` or lacks ``op`` (the message gives the reason).
    """
    name = _check_name(backend) if backend is not None else _configured_name()
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    if name != "auto":
        reason = _supports_op(name, dev, dtype, op)
        if reason is not None:
            raise BackendUnavailableError(reason)
        return name
    cache = registry.derived_cache()
    key = ("auto", dev, dtype, op if op in registry.OPTIONAL_OPS else None)
    if key in cache:
        return cache[key]
    candidates = sorted(registry.names(), key=lambda n: -registry.info(n).auto_priority)
    for cand in candidates:
        if dev == "cpu" and cand == "triton":
            continue  # the interpreter is for tests, never an automatic choice
        if _supports_op(cand, dev, dtype, op) is None:
            cache[key] = cand
            return cand
    what = f" with a {op} kernel" if op in registry.OPTIONAL_OPS else ""
    raise BackendUnavailableError(f"no backend{what} can run on {dev!r} tensors of dtype {dtype}")


def get_backend(device: str | torch.device | None = None) -> str:
    """The configured backend name, or with ``device`` the backend auto resolves to there."""
    if device is None:
        return _configured_name()
    return resolve_backend(None, device)


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Registered backends that can run here (on ``device`` if given, else on any device)."""
    out = []
    for name in registry.names():
        devs = [torch.device(device).type] if device is not None else registry.info(name).devices
        if any(registry.unavailable_reason(name, d) is None for d in devs):
            out.append(name)
    return out


def preallocated_calls(op: str, inputs: dict, upstream: list, *, backend: str, seed: int | None = None):
    """``(forward, backward)`` closures running ``backend``'s kernels of ``op`` on preallocated outputs.

    For benchmarks that time a kernel apart from allocation, validation and
    autograd; the backend's optional ``preallocated_calls`` provides them.

    Args:
        op: a kernel op (``normal_rsample``, ..., ``bernoulli_log_prob``).
        inputs: the op's tensors by argument name, validated by the caller.
        upstream: gradients of the op's outputs, in output order.
        backend: a registered backend.
        seed: noise drawn inside the kernels (no ``eps`` in ``inputs``).

    Raises:
        BackendUnavailableError: the backend cannot run on the inputs' device.
        NotImplementedError: the backend has no preallocated calls.
    """
    dev = next(iter(inputs.values())).device.type
    reason = registry.unavailable_reason(backend, dev)
    if reason is not None:
        raise BackendUnavailableError(reason)
    fn = getattr(registry.load(backend), "preallocated_calls", None)
    if not callable(fn):
        raise NotImplementedError(f"backend {backend!r} has no preallocated kernel calls")
    return fn(op, inputs, upstream, seed)


def describe_backend(name: str, device: str = "cpu") -> dict:
    """The settings backend ``name`` reports for ``device`` (its optional ``describe(device) -> dict``).

    What shapes the backend's numbers (threads, vector width, store policy, how
    it runs): run manifests and kernel-benchmark rows record it. An empty dict
    when the backend cannot run on ``device`` or has no ``describe``.
    """
    if registry.unavailable_reason(name, device) is not None:
        return {}
    describe = getattr(registry.load(name), "describe", None)
    if not callable(describe):
        return {}
    out = describe(device)
    if not isinstance(out, dict):
        raise TypeError(f"backend {name!r}: describe({device!r}) must return a dict, got {type(out).__name__}")
    return out


def describe_backends(device: str = "cpu") -> dict[str, dict]:
    """:func:`describe_backend` of every registered backend that runs on ``device``."""
    return {n: describe_backend(n, device) for n in registry.names() if registry.unavailable_reason(n, device) is None}


def backend_report() -> list[dict]:
    """One row per (backend, device): whether it runs, how, and why not."""
    rows = []
    for name in registry.names():
        spec = registry.info(name)
        for dev in spec.devices:
            reason = registry.unavailable_reason(name, dev)
            mode = ""
            if reason is None:
                mode = ", ".join(f"{k} {v}" for k, v in describe_backend(name, dev).items()) or "available"
            rows.append(
                {
                    "backend": name,
                    "device": dev,
                    "available": reason is None,
                    "mode": mode,
                    "reason": reason or "",
                    "description": spec.description,
                }
            )
    return rows


# --------------------------------------------------------------------------- validation
def _check_inputs(op: str, **tensors: torch.Tensor) -> tuple[torch.Size, torch.dtype, torch.device]:
    dtype = device = None
    first = None
    for arg, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op}: {arg} must be a floating tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
            )
        if t.dim() == 0:
            raise ValueError(f"{op}: {arg} must have at least one dim [..., D], got a 0-dim tensor")
        if first is None:
            first, dtype, device = arg, t.dtype, t.device
            continue
        if t.dtype != dtype:
            raise TypeError(f"{op}: {arg} has dtype {t.dtype} but {first} has {dtype}; pass tensors of one dtype")
        if t.device != device:
            raise ValueError(f"{op}: {arg} is on {t.device} but {first} is on {device}; pass tensors on one device")
    shapes = [t.shape for t in tensors.values()]
    if all(s == shapes[0] for s in shapes):
        return shapes[0], dtype, device  # the common case
    try:
        shape = _broadcast_shapes(shapes)
    except ValueError:
        got = ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items())
        raise ValueError(
            f"{op}: shapes do not broadcast ({got}); expected shapes broadcastable by torch's rules"
        ) from None
    return shape, dtype, device


def _broadcast_shapes(shapes: list[torch.Size]) -> torch.Size:
    """``torch.broadcast_shapes`` by torch's rules in plain Python (cheaper per call than torch's).

    Raises ``ValueError`` when the shapes do not broadcast.
    """
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for s in shapes:
        off = ndim - len(s)
        for i, n in enumerate(s):
            cur = out[off + i]
            if n != cur:
                if cur == 1:
                    out[off + i] = n
                elif n != 1:
                    raise ValueError(f"dim {i - len(s)}: {n} against {cur}")
    return torch.Size(out)


def _expand(t: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    if t is None or t.shape == shape:
        return t
    return t.expand(shape)


def _seed(seed, eps) -> int | None:
    if eps is not None:
        return None if seed is None else check_seed(seed)
    return draw_seed() if seed is None else check_seed(seed)


# --------------------------------------------------------------------------- ops
def normal_rsample(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Reparameterized sample ``z = mu + exp(logvar / 2) * eps`` (Kingma & Welling 2014).

    Args:
        mu: ``[..., D]`` mean.
        logvar: ``[..., D]`` log variance, broadcastable with ``mu``.
        eps: optional ``[..., D]`` standard-normal noise; when None the shared
            Philox stream is drawn for ``seed`` (indexed by the row-major index of z).
        seed: noise seed when ``eps`` is None; None draws one from torch's generator.
        backend: override the backend for this call.

    Returns:
        z of the broadcast shape, differentiable in ``mu``, ``logvar`` and ``eps``.
    """
    extra = {} if eps is None else {"eps": eps}
    shape, dtype, device = _check_inputs("normal_rsample", mu=mu, logvar=logvar, **extra)
    mod = registry.load(resolve_backend(backend, device, dtype))
    if getattr(mod, "READS_BROADCASTS", False):
        return mod.normal_rsample(mu, logvar, eps, _seed(seed, eps), shape)
    return mod.normal_rsample(_expand(mu, shape), _expand(logvar, shape), _expand(eps, shape), _seed(seed, eps))


def normal_kl_std(mu: torch.Tensor, logvar: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` summed over the last dim.

    Args:
        mu: ``[..., D]`` mean.
        logvar: ``[..., D]`` log variance.
        backend: override the backend for this call.

    Returns:
        ``[...]`` KL per row: ``0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)``.
    """
    shape, dtype, device = _check_inputs("normal_kl_std", mu=mu, logvar=logvar)
    mod = registry.load(resolve_backend(backend, device, dtype))
    if getattr(mod, "READS_BROADCASTS", False):
        return mod.normal_kl_std(mu, logvar, shape)
    return mod.normal_kl_std(_expand(mu, shape), _expand(logvar, shape))


def normal_rsample_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused :func:`normal_rsample` and :func:`normal_kl_std` in one pass.

    When ``eps`` broadcasts ``mu`` to more rows (e.g. ``[S, B, D]``), the KL is of
    the broadcast shape too (one value per sample row).

    Returns:
        ``(z [..., D], kl [...])``.
    """
    extra = {} if eps is None else {"eps": eps}
    shape, dtype, device = _check_inputs("normal_rsample_kl", mu=mu, logvar=logvar, **extra)
    mod = registry.load(resolve_backend(backend, device, dtype))
    if getattr(mod, "READS_BROADCASTS", False):
        return mod.normal_rsample_kl(mu, logvar, eps, _seed(seed, eps), shape)
    return mod.normal_rsample_kl(_expand(mu, shape), _expand(logvar, shape), _expand(eps, shape), _seed(seed, eps))


def normal_log_prob(
    x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Diagonal Gaussian log density summed over the last dim.

    ``-0.5 * sum(log(2 pi) + logvar + (x - mu)^2 * exp(-logvar))``, equal to
    ``torch.distributions.Normal(mu, exp(logvar / 2)).log_prob(x).sum(-1)``.

    Args:
        x: ``[..., D]`` points (differentiable too: STL and DReG need it).
        mu: ``[..., D]`` mean, broadcastable with ``x``.
        logvar: ``[..., D]`` log variance, broadcastable with ``x``.

    Returns:
        ``[...]`` log density of the broadcast shape without its last dim.
    """
    shape, dtype, device = _check_inputs("normal_log_prob", x=x, mu=mu, logvar=logvar)
    mod = registry.load(resolve_backend(backend, device, dtype))
    if getattr(mod, "READS_BROADCASTS", False):
        return mod.normal_log_prob(x, mu, logvar, shape)
    return mod.normal_log_prob(_expand(x, shape), _expand(mu, shape), _expand(logvar, shape))


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Bernoulli log-likelihood with logits, summed over the last dim.

    ``sum(x * logits - softplus(logits))``: stable for any logits, x real in [0, 1]
    allowed; equals ``torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)``.

    Args:
        x: ``[..., D]`` observations.
        logits: ``[..., D]`` logits, broadcastable with ``x``.

    Returns:
        ``[...]`` log-likelihood per row.
    """
    shape, dtype, device = _check_inputs("bernoulli_log_prob", x=x, logits=logits)
    mod = registry.load(resolve_backend(backend, device, dtype))
    if getattr(mod, "READS_BROADCASTS", False):
        return mod.bernoulli_log_prob(x, logits, shape)
    return mod.bernoulli_log_prob(_expand(x, shape), _expand(logits, shape))


def _noise_args(
    op: str, shape, dtype: torch.dtype, seed: int | None, need_dim: bool = False
) -> tuple[tuple[int, ...], int]:
    """``(shape as a tuple of ints, seed)`` of a noise op, or a clear error naming the argument."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: shape must be a sequence of ints, got {shape!r}") from None
    if (need_dim and not shape) or any(s < 0 for s in shape):
        dims = "at least one dim and " if need_dim else ""
        raise ValueError(f"{op}: shape must have {dims}non-negative sizes, got {shape}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {dtype}")
    return shape, draw_seed() if seed is None else check_seed(seed)


def normal_noise(
    shape: Sequence[int] | int,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Standard normals from the shared Philox4x32-10 + Box-Muller stream.

    Element ``i`` (row-major) is ``tl.randn(seed, i)``: the same on every backend
    and thread count. ``seed=None`` draws a seed from torch's default generator.

    Returns:
        a new tensor of ``shape`` on ``device`` with ``dtype``.
    """
    if isinstance(shape, int):
        shape = (shape,)
    shape, seed = _noise_args("normal_noise", shape, dtype, seed)
    device = torch.device(device)
    mod = registry.load(resolve_backend(backend, device, dtype))
    return mod.normal_noise(shape, seed, device, dtype)


def normal_noise_blocks(
    blocks: int,
    shape: Sequence[int],
    *,
    seed: int | None = None,
    first: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Blocks ``first .. first + blocks - 1`` of the stream, each of ``shape``, stacked along dim 1.

    Block ``b`` is elements ``b * N .. (b + 1) * N - 1`` of the stream (``N`` the
    size of ``shape``), so the result ``[shape[0], blocks, *shape[1:]]`` equals
    ``normal_noise((first + blocks, *shape), seed=seed)[first:].movedim(0, 1)``.
    This is the noise of ``blocks`` replicates laid out as one batched call reads
    it (``eps [S, replicates, ...]``, see :func:`estimators.per_sample_grads`):
    filled in that order on CPU, so it is contiguous and no blocks before
    ``first`` are drawn. Other devices take the composition above.

    Returns:
        a new contiguous tensor on ``device`` with ``dtype``.
    """
    for name, v in (("blocks", blocks), ("first", first)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"normal_noise_blocks: {name} must be an int >= 0, got {v!r}")
    shape, seed = _noise_args("normal_noise_blocks", shape, dtype, seed, need_dim=True)
    device = torch.device(device)
    if device.type == "cpu" and philox._HAVE_NUMBA:
        return philox.normal_noise_blocks_numba(blocks, shape, seed, first, dtype)
    full = normal_noise((first + blocks, *shape), seed=seed, device=device, dtype=dtype)
    return full[first:].movedim(0, 1).contiguous()


from .discrete import (  # noqa: E402
    bernoulli_antithetic,
    bernoulli_conditional_relaxed,
    bernoulli_kl,
    bernoulli_sample,
    binary_concrete,
    categorical_kl,
    categorical_log_prob,
    categorical_sample,
    gumbel_softmax,
    uniform_noise,
)
