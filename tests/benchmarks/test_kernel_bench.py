"""Kernel benchmarks for ``pytest --benchmark`` (pytest-benchmark; never run by plain ``pytest``).

Each op x backend (torch eager, ``torch.compile`` of the reference, numba) x
size from [256, 64] to [16384, 1024], for the passes ``forward``, ``backward``
(the backward alone: numba's fused kernel vs the analytic formulas in torch) and
``forward_backward`` (through autograd, as a training step runs it). numba's
forward and backward run on preallocated outputs; ``forward_backward`` allocates
on every backend. ``benchmark.extra_info`` holds the byte model's GB/s, the copy
bandwidth measured in the same run (``Tensor.copy_`` of a [R, D] tensor), the
fraction of it reached, and the ratios ``torch_compile_ms / ms`` and
``torch_ms / ms`` against the baselines measured in the same session (measured
on the spot, with fewer rounds, when a ``-k`` selection skipped them). In-kernel
noise (``normal_noise`` and fused ``normal_rsample_kl`` with ``eps=None``)
reports ``ns_per_element``. Byte model and timing rules: :mod:`bench.measure.kernel_speed`.

Example::

    pytest --benchmark tests/benchmarks/test_kernel_bench.py --benchmark-json=reports/kernels.json
"""

from __future__ import annotations

import numba
import pytest
import torch

import kernels
from bench.measure import kernel_speed as ks
from bench.measure.timing import quantile, time_call

pytestmark = pytest.mark.benchmark

SIZES = [(256, 64), (1024, 256), (4096, 1024), (16384, 1024)]
BACKENDS = ["torch", "torch_compile", "numba"]
PASSES = ["forward", "backward", "forward_backward"]
DTYPE = torch.float32
_ITEMSIZE = 4

_MEDIANS: dict[tuple, float] = {}  # (op, pass, size, backend) -> median seconds, this session
_COPY: dict[tuple, float] = {}  # size -> copy GB/s, this session
_COMPILED: dict = {}
_INPUTS: dict = {}


def _rounds(size) -> int:
    n = size[0] * size[1]
    return 50 if n <= 1 << 18 else (15 if n <= 1 << 22 else 5)


def _median_time(fn, rounds: int) -> float:
    return quantile(time_call(fn, repeats=rounds, warmup=1), 0.5)


def _copy_gbps(size) -> float:
    if size not in _COPY:
        src = torch.randn(size).to(DTYPE)
        dst = torch.empty_like(src)
        t = _median_time(lambda: dst.copy_(src), max(_rounds(size), 10))
        _COPY[size] = 2 * src.numel() * _ITEMSIZE / t / 1e9
    return _COPY[size]


def _inputs(op, size):
    key = (op, size)
    if key not in _INPUTS:
        _INPUTS.clear()  # keep one op/size resident: the large sizes are 64 MB per tensor
        _INPUTS[key] = (ks._make_inputs(op, *size, DTYPE, 0), ks._upstream(op, *size, DTYPE, 0))
    return _INPUTS[key]


def _callable(op, backend, pass_, size):
    """The zero-argument function timed for (op, backend, pass, size): the harness's own (``kernel_speed``'s cells)."""
    inputs, ups = _inputs(op, size)
    made = ks._cell_call(op, backend, pass_, inputs, ups, DTYPE, size, _COMPILED, compile_warmup=False)
    assert made is not None, (op, backend, pass_)
    return made[0]


def _baseline(op, pass_, size, backend) -> float:
    key = (op, pass_, size, backend)
    if key not in _MEDIANS:
        _MEDIANS[key] = _median_time(_callable(op, backend, pass_, size), max(3, _rounds(size) // 3))
    return _MEDIANS[key]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("op", ks.DEFAULT_OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel(benchmark, op, pass_, size, backend):
    fn = _callable(op, backend, pass_, size)
    fn()  # warm-up outside the timed region (torch.compile compiles here, numba loads its cache)
    benchmark.group = f"{op}:{pass_}:{size[0]}x{size[1]}"
    benchmark.pedantic(fn, rounds=_rounds(size), iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    _MEDIANS[(op, pass_, size, backend)] = median
    nbytes = ks.op_bytes(op, *size, _ITEMSIZE, pass_)
    copy = _copy_gbps(size)
    info = benchmark.extra_info
    info.update(
        op=op,
        backend=backend,
        size=f"{size[0]}x{size[1]}",
        pass_=pass_,
        bytes=nbytes,
        gbps=nbytes / median / 1e9,
        copy_gbps=copy,
        frac_of_copy=nbytes / median / 1e9 / copy,
        preallocated=backend == "numba" and pass_ != "forward_backward",
        numba_threads=numba.get_num_threads(),
        torch_threads=torch.get_num_threads(),
    )
    if backend == "numba":
        for base in ("torch_compile", "torch"):
            info[f"ratio_vs_{base}"] = _baseline(op, pass_, size, base) / median


@pytest.mark.parametrize("size", [(1024, 256), (4096, 1024)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", ["normal_noise", "normal_rsample_kl_eps_none"])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_in_kernel_noise(benchmark, case, size, backend):
    """Philox + Box-Muller cost per element: the noise alone and the fused op drawing it inline."""
    if case == "normal_noise":
        fn = lambda: kernels.normal_noise(size, seed=1, dtype=DTYPE, backend=backend)  # noqa: E731
    else:
        mu, logvar = torch.randn(size), torch.randn(size)
        fn = lambda: kernels.normal_rsample_kl(mu, logvar, seed=1, backend=backend)  # noqa: E731
    fn()
    benchmark.group = f"noise:{case}:{size[0]}x{size[1]}"
    benchmark.pedantic(fn, rounds=_rounds(size), iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        case=case, backend=backend, size=f"{size[0]}x{size[1]}", ns_per_element=median / (size[0] * size[1]) * 1e9
    )
