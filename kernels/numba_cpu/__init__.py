"""The ``numba`` backend: fused CPU kernels (``njit(parallel=True)``, ``prange``).

One module per op family, each holding its kernels, launchers and
``torch.autograd.Function`` classes:

* :mod:`.gaussian` -- ``normal_rsample``, ``normal_kl_std``, ``normal_rsample_kl``
  (one forward kernel, one backward kernel for all three);
* :mod:`.logprob` -- ``normal_log_prob``, ``bernoulli_log_prob``;
* :mod:`.discrete` -- the discrete families' ops (:mod:`kernels.discrete`):
  uniform noise, Bernoulli and categorical samples, relaxations, KLs and
  log-probabilities, each a fused forward and one-pass backward;
* :mod:`._math` -- vectorizable exp/log/log1p/softplus/sigmoid (pip's llvmlite
  has no SVML, so ``np.exp`` in a loop would not vectorize);
* noise comes from :mod:`kernels.philox` (the same stream as every backend);
* :mod:`._stream` -- outputs of at least 8 MiB (z, the full-size Gaussian
  gradients) are written with non-temporal stores on Intel x86-64
  (``ELBOBENCH_NUMBA_STREAM_STORES=auto|on|off``);
* :mod:`._pool` -- new outputs of at least 128 KiB come from a reuse pool
  (``release_buffers()``, ``buffer_pool_info()``; ``ELBOBENCH_NUMBA_POOL_MB``
  caps it, 0 turns it off), which saves the page faults of fresh memory.

Inputs arrive validated and broadcast by :mod:`kernels`. Zero-copy between
torch and numpy; broadcast and strided inputs are read in place (:mod:`._layout`;
only layouts it cannot describe are copied); small inputs run a
serial kernel; when no input requires grad (and no ``torch.func`` transform is
active) the op calls its kernel directly, without autograd bookkeeping.
Compiled kernels are cached on disk (see :mod:`kernels._numba_cache`).
"""

from __future__ import annotations

import torch

from .. import _numba_cache, _numba_target

CACHE_DIR = _numba_cache.configure()  # before any @njit(cache=True) below is decorated

import numba  # noqa: E402

from . import _stream  # noqa: E402
from ._common import noise  # noqa: E402
from ._pool import info as buffer_pool_info  # noqa: E402
from ._pool import release as release_buffers  # noqa: E402
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
from .gaussian import normal_kl_std, normal_rsample, normal_rsample_kl  # noqa: E402
from .logprob import bernoulli_log_prob, normal_log_prob  # noqa: E402

__all__ = [
    "SUPPORTED_DTYPES",
    "availability",
    "bernoulli_antithetic",
    "bernoulli_conditional_relaxed",
    "bernoulli_kl",
    "bernoulli_log_prob",
    "bernoulli_sample",
    "binary_concrete",
    "buffer_pool_info",
    "categorical_kl",
    "categorical_log_prob",
    "categorical_sample",
    "describe",
    "gumbel_softmax",
    "normal_kl_std",
    "normal_log_prob",
    "normal_noise",
    "normal_rsample",
    "normal_rsample_kl",
    "preallocated_calls",
    "release_buffers",
    "uniform_noise",
]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

#: The Gaussian ops and log-likelihoods take inputs broadcastable to a ``shape``
#: argument and read them in place (:func:`kernels.numba_cpu._layout.strided`), so
#: the public API does not expand them (an autograd node per input, and a reduction
#: in the backward). The discrete ops (:mod:`.discrete`) get expanded inputs.
READS_BROADCASTS = True


def availability(device: str) -> str | None:
    """None on CPU; the numba backend has no GPU path."""
    if device != "cpu":
        return f"the numba backend runs on CPU tensors only, not {device!r}"
    return None


def describe(device: str = "cpu") -> dict:
    """The settings that shape this backend's numbers, for ``elbobench backends`` and run manifests.

    Returns:
        ``{"version", "threads", "threading_layer", "vectors" (the vector width the
        kernels are compiled for), "stores" (whether large outputs use
        non-temporal stores), "output_pool", "cache_dir"}``.
    """
    pool = buffer_pool_info()
    return {
        "version": numba.__version__,
        "threads": numba.get_num_threads(),
        "threading_layer": numba.config.THREADING_LAYER,
        "vectors": _numba_target.describe(),
        "stores": _stream.describe(),
        "output_pool": f"up to {pool['cap_bytes'] >> 20} MiB" if pool["enabled"] else "off",
        "cache_dir": str(CACHE_DIR),
    }


def preallocated_calls(op: str, inputs: dict, upstream: list, seed: int | None = None):
    """``(forward, backward)``: closures running the kernels of ``op`` on outputs allocated once, here.

    For the kernel benchmark, which reports allocation apart (fresh pages for
    large outputs would dominate at big sizes). The backward computes the
    gradients a VAE step takes: mu and logvar for the Gaussian ops, x, mu and
    logvar for ``normal_log_prob``, logits for ``bernoulli_log_prob``.

    Args:
        op: one of the Gaussian ops or log-probs.
        inputs: the op's tensors by argument name (``mu``, ``logvar``, ``eps``,
            ``x``, ``logits``), all of one shape ``[R, D]``.
        upstream: gradients of the op's outputs, in output order.
        seed: draw the noise inside the kernels (``eps`` absent).
    """
    from . import gaussian as G
    from . import logprob as L

    mu, lv = inputs.get("mu"), inputs.get("logvar")
    like = next(iter(inputs.values()))
    shape, dtype = like.shape, like.dtype
    full = lambda: torch.empty(shape, dtype=dtype)  # noqa: E731
    rows_ = lambda: torch.empty(shape[:-1], dtype=dtype)  # noqa: E731
    if op in ("normal_rsample", "normal_kl_std", "normal_rsample_kl"):
        eps = inputs.get("eps")
        want_z = op != "normal_kl_std"
        want_kl = op != "normal_rsample"
        z, kl = (full() if want_z else None), (rows_() if want_kl else None)
        dz = upstream[0] if want_z else None
        dkl = upstream[-1] if want_kl else None
        gout = (None if op == "normal_rsample" else full(), full(), None)
        fwd = lambda: G.forward(mu, lv, eps, seed, want_z, want_kl, z_out=z, kl_out=kl)  # noqa: E731
        bwd = lambda: G.backward(dz, dkl, mu, lv, eps, seed, op != "normal_rsample", True, False, out=gout)  # noqa: E731
        return fwd, bwd
    if op == "normal_log_prob":
        x = inputs["x"]
        out, gout = rows_(), (full(), full(), full())
        fwd = lambda: L.normal_forward(x, mu, lv, out=out)  # noqa: E731
        bwd = lambda: L.normal_backward(upstream[0], x, mu, lv, True, True, True, out=gout)  # noqa: E731
        return fwd, bwd
    if op == "bernoulli_log_prob":
        x, logits = inputs["x"], inputs["logits"]
        out, gout = rows_(), (None, full())
        fwd = lambda: L.bernoulli_forward(x, logits, out=out)  # noqa: E731
        bwd = lambda: L.bernoulli_backward(upstream[0], x, logits, False, True, out=gout)  # noqa: E731
        return fwd, bwd
    raise ValueError(f"preallocated_calls: op must be a Gaussian op or a log-prob, got {op!r}")


def normal_noise(shape, seed, device, dtype):
    """The shared Philox4x32-10 + Box-Muller stream, filled by a numba kernel.

    The buffer is a numpy array filled first and wrapped after
    (``torch.from_numpy``): under a ``torch.func`` transform ``torch.empty``
    returns a wrapped tensor without storage, which numba could not write
    (``kernels.philox.normal_noise_numba`` fails there).
    """
    if torch.device(device).type != "cpu":
        raise ValueError(f"normal_noise: the numba backend fills CPU tensors only, got device {device}")
    return noise(shape, seed, dtype)
