"""The numba Philox4x32-10 + Box-Muller stream (:mod:`kernels.philox`): index-only values, flags, SIMD form.

Agreement with the torch reference and with Triton's ``tl.randn`` is tested in
``test_kernels_contract.py`` and ``test_triton_backend.py``; here: the value at an
index is bitwise the same whichever kernel computes it (serial, parallel, any
length, inside a fused kernel), and the fill loop stays free of libm calls, which
is what lets LLVM vectorize it (pip's llvmlite has no SVML).
"""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
import torch

import kernels
from kernels import philox
from kernels.testing import NOISE_ATOL

numba_flags = pytest.importorskip("kernels.numba_cpu._flags")


def test_fill_options_are_the_kernel_options():
    """The fill kernels compile like the fused kernels that inline ``randn_at``."""
    assert philox._FILL_OPTIONS == numba_flags.JIT_OPTIONS


@pytest.mark.parametrize("seed", [0, 2**40 + 3])
def test_value_depends_only_on_seed_and_index(seed):
    k0, k1 = philox.split_seed(seed)
    n = (1 << 15) + 13  # parallel kernel: several chunks and a ragged end
    serial = np.empty(n, np.float32)
    philox._fill_normal_serial(serial, k0, k1)
    parallel = np.empty(n, np.float32)
    philox._fill_normal_parallel(parallel, k0, k1)
    np.testing.assert_array_equal(parallel, serial)
    for m in range(1, 40):  # elements from the vector body vs the scalar remainder loop
        short = np.empty(m, np.float32)
        philox._fill_normal_serial(short, k0, k1)
        np.testing.assert_array_equal(short, serial[:m])
    wide = np.empty(n, np.float64)
    philox._fill_normal_serial(wide, k0, k1)
    np.testing.assert_array_equal(wide, serial.astype(np.float64))


def test_fused_kernel_draws_the_same_bits():
    """mu = 0, sigma = 1: the fused rsample is the noise itself, bit for bit."""
    shape = (300, 257)
    zeros = torch.zeros(shape)
    z = kernels.normal_rsample(zeros, zeros, seed=11, backend="numba")
    assert torch.equal(z, kernels.normal_noise(shape, seed=11, backend="numba"))


def test_matches_reference_on_a_million_draws():
    n = 1 << 20
    a = philox.normal_noise_numba((n,), 2024)
    b = philox.normal_noise_torch((n,), 2024)
    assert float(b.abs().max()) > 4.5  # the tails, where log/cos errors are largest, are in
    torch.testing.assert_close(a, b, rtol=0, atol=NOISE_ATOL)


def test_fill_loop_calls_no_libm():
    """No scalar ``log``/``cos`` call is left in the fill loop (so it vectorizes).

    Compiled afresh, without the on-disk cache, whose code numba cannot inspect.
    """
    opts = {k: v for k, v in philox._FILL_OPTIONS.items() if k != "cache"}
    fill = numba.njit(**opts)(philox._fill_normal_serial.py_func)
    fill(np.empty(8, np.float32), np.uint64(1), np.uint64(2))
    ir = next(iter(fill.inspect_llvm().values()))
    called = set(re.findall(r"call [^@]*@([\w.]+)\(", ir))
    assert not {c for c in called if re.search(r"log|cos|sin|exp", c)}, sorted(called)
    assert "vector.body" in ir
