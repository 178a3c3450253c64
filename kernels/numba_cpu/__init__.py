"""The ``numba`` backend: fused CPU kernels (``njit(parallel=True)``, ``prange``).

One module per op family, each holding its kernels, launchers and
``torch.autograd.Function`` classes:

* :mod:`.gaussian` -- ``normal_rsample``, ``normal_kl_std``, ``normal_rsample_kl``
  (one forward kernel, one backward kernel for all three);
* :mod:`.logprob` -- ``normal_log_prob``, ``bernoulli_log_prob``;
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
from .gaussian import normal_kl_std, normal_rsample, normal_rsample_kl  # noqa: E402
from .logprob import bernoulli_log_prob, normal_log_prob  # noqa: E402

__all__ = [
    "SUPPORTED_DTYPES",
    "availability",
    "bernoulli_log_prob",
    "buffer_pool_info",
    "describe",
    "normal_kl_std",
    "normal_log_prob",
    "normal_noise",
    "normal_rsample",
    "normal_rsample_kl",
    "release_buffers",
]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

#: The ops take inputs broadcastable to a ``shape`` argument and read them in place
#: (:func:`kernels.numba_cpu._layout.strided`), so the public API does not expand
#: them (an autograd node per input, and a reduction in the backward).
READS_BROADCASTS = True


def availability(device: str) -> str | None:
    """None on CPU; the numba backend has no GPU path."""
    if device != "cpu":
        return f"the numba backend runs on CPU tensors only, not {device!r}"
    return None


def describe(device: str = "cpu") -> str:
    """One line for ``elbobench backends``: version, threads, cache location."""
    pool = buffer_pool_info()
    cap = f"output pool up to {pool['cap_bytes'] >> 20} MiB" if pool["enabled"] else "output pool off"
    return (
        f"numba {numba.__version__}, {numba.get_num_threads()} threads, layer {numba.config.THREADING_LAYER}, "
        f"{_numba_target.describe()}, {_stream.describe()}, {cap}, cache at {CACHE_DIR}"
    )


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
