"""Test helpers shared by every backend's tests: one per-dtype tolerance table and the oracle check.

The torch backend (:mod:`kernels.reference`) is the oracle. A backend's result
``a`` passes against the reference ``b`` when ``|a - b| <= atol + rtol * |b|``
elementwise, with ``rtol``/``atol`` from :data:`TOLERANCES` for the dtype. Row
sums of ``D`` terms carry more rounding than single elements; pass ``terms=D``
to widen ``atol`` by ``sqrt(D)`` (the growth of a random-walk rounding error).

:data:`NOISE_ATOL` is the tolerance between two implementations of the shared
Philox stream: they agree in every integer step, but float32 ``log``/``cos``
differ by an ulp or so between libm, numba and torch (about 1e-6 absolute at
the stream's extreme values).
"""

from __future__ import annotations

import math

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=1e-11, atol=1e-12),
}

NOISE_ATOL = 4e-6


def tolerance(dtype: torch.dtype, terms: int = 1) -> dict[str, float]:
    """``dict(rtol=..., atol=...)`` for ``dtype``; ``atol`` scaled by ``sqrt(terms)`` for sums."""
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {dtype}; known: {[str(d) for d in TOLERANCES]}")
    tol = dict(TOLERANCES[dtype])
    tol["atol"] *= math.sqrt(max(terms, 1))
    return tol


def assert_close_to_reference(actual, expected, *, dtype: torch.dtype | None = None, terms: int = 1, msg: str = ""):
    """Assert a backend's output (tensor or tuple of tensors) equals the torch reference's.

    Args:
        actual: tensor or tuple/list of tensors from the backend under test.
        expected: same structure from the reference.
        dtype: dtype whose tolerance applies (default: ``expected``'s).
        terms: number of summed terms behind each value (``D`` for row sums).
        msg: prefix for the failure message (e.g. the op and backend).
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), (
            f"{msg}: expected {len(expected)} outputs, got {actual!r}"
        )
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close_to_reference(a, e, dtype=dtype, terms=terms, msg=f"{msg}[{i}]")
        return
    if expected is None:
        assert actual is None, f"{msg}: expected None, got {type(actual).__name__}"
        return
    assert actual is not None, f"{msg}: expected a tensor, got None"
    tol = tolerance(dtype or expected.dtype, terms)
    torch.testing.assert_close(
        actual, expected, **tol, msg=lambda m: f"{msg}: {m}" if msg else m, check_device=True, check_dtype=True
    )
