"""Accuracy of the vectorizable exp/log/log1p/log1p_unit/cos2pi/softplus/sigmoid used inside the numba kernels.

References are numpy in float64 (correctly rounded to well under a float32 ulp;
``cos(2 pi u)`` is reduced exactly and evaluated in long double, see
:func:`cos2pi_ref`); bounds are in units of the dtype's machine epsilon
(``finfo.eps``) of relative error, over grids covering the ranges the kernels use
and beyond.
"""

from __future__ import annotations

import numpy as np
import pytest

numba_math = pytest.importorskip("kernels.numba_cpu._math")

DTYPES = [np.float32, np.float64]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Max relative error, ignoring absolute errors below 2 * the smallest normal number.

    exp saturates at its smallest normal result instead of going subnormal (see
    ``_math``), so e.g. float32 softplus(-100) = exp(-100) = 3.7e-44 comes out as
    1.6e-38: off by 1.6e-38 in absolute terms, which no kernel can notice.
    """
    tiny = np.finfo(got.dtype).tiny
    diff = np.maximum(np.abs(got.astype(want.dtype) - want) - 2 * tiny, 0.0)
    return float(np.max(diff / np.maximum(np.abs(want), tiny)))


def cos2pi_ref(u: np.ndarray) -> np.ndarray:
    """``cos(2 pi u)`` to well under a float64 ulp where long double is 80-bit (x86).

    ``np.cos(2 * np.pi * u)`` would not do as a reference: its argument rounds, so
    next to the zeros at ``u = 1/4, 3/4`` it has no correct digits (``cos(pi/2)``
    comes out as 6e-17 instead of 0). The quarter-turn reduction ``r = u - k/4`` is
    exact in float64 and the rest is done in long double.
    """
    u = u.astype(np.float64)
    k = np.floor(4.0 * u + 0.5)
    r = (u - k / 4.0).astype(np.longdouble)
    x = r * (8 * np.arctan(np.longdouble(1)))  # 2 pi in long double
    q = k.astype(np.int64) % 4
    return np.select([q == 0, q == 1, q == 2], [np.cos(x), -np.sin(x), -np.cos(x)], np.sin(x))


def ref(name: str, x: np.ndarray) -> np.ndarray:
    if name == "cos2pi":
        return cos2pi_ref(x)
    x = x.astype(np.float64)
    if name == "log1p_unit":
        return np.log1p(x)
    if name == "softplus":
        return np.logaddexp(0.0, x)
    if name == "sigmoid":
        e = np.exp(-np.abs(x))  # exp of an exact argument: correctly rounded to ~0.5 ulp
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return getattr(np, name)(x)


# (function, grid builder, bound in eps for float32, for float64)
CASES = {
    "exp": (lambda: np.linspace(-87.0, 88.0, 200_001), 1.5, 3),
    "log": (lambda: np.exp(np.linspace(-80.0, 80.0, 200_001)), 2, 3),
    "log1p": (lambda: np.concatenate([-np.logspace(-30, -1e-3, 50_000), np.logspace(-30, 30, 150_000)]), 2.5, 4),
    # u in [0, 1] as Box-Muller draws it (dense: 2**21 + 1 points), and periods around it;
    # measured about 1.2 eps (float32), 1.15 eps (float64)
    "cos2pi": (lambda: np.concatenate([np.linspace(0.0, 1.0, 2**21 + 1), np.linspace(-3.0, 3.0, 300_001)]), 1.5, 2),
    # t in [0, 1], the softplus argument exp(-|x|), down to the smallest normal float32;
    # measured 1.86 eps (float32), 2.0 eps (float64 against numpy's float64 log1p)
    "log1p_unit": (lambda: np.concatenate([np.logspace(-37, 0, 200_001), np.linspace(0.0, 1.0, 200_001)]), 2.5, 3),
    # measured 2.05 eps (float32) and 2.87 eps (float64) through log1p_unit, 2.77 / 3.08 through log1p
    "softplus": (lambda: np.linspace(-100.0, 100.0, 200_001), 3, 4),
    "sigmoid": (lambda: np.linspace(-80.0, 80.0, 200_001), 3, 4),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", list(CASES))
def test_accuracy(name, dtype):
    grid, bound32, bound64 = CASES[name]
    x = grid().astype(dtype)
    got = numba_math.apply(name, x)
    assert got.dtype == dtype and got.shape == x.shape
    eps = np.finfo(dtype).eps
    bound = bound32 if dtype == np.float32 else bound64
    err = rel_err(got, ref(name, x))
    assert err <= bound * eps, f"{name}[{dtype.__name__}]: max rel err {err:.3g} = {err / eps:.2f} eps > {bound} eps"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_cos2pi_absolute_error_and_exact_points(dtype):
    """Below 1 eps absolute on every representable u near the quarter turns and on the
    whole grid (measured 0.77 eps float32, 0.74 float64); exact at multiples of 1/4."""
    eps = np.finfo(dtype).eps
    quarters = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=dtype)
    up = down = np.arange(9, dtype=dtype) / 8  # the eighths: quadrant edges and centres
    near = [up]
    for _ in range(200):  # and their 200 float neighbours on each side
        up, down = np.nextafter(up, dtype(2)), np.nextafter(down, dtype(-2))
        near += [up, down]
    u = np.concatenate(near + [np.linspace(0.0, 1.0, 1_000_001).astype(dtype)])
    err = np.abs(numba_math.apply("cos2pi", u).astype(np.longdouble) - cos2pi_ref(u))
    assert float(err.max()) < eps, f"max abs err {float(err.max()) / eps:.2f} eps"
    got = numba_math.apply("cos2pi", quarters)
    np.testing.assert_array_equal(np.abs(got), np.array([1.0, 0.0, 1.0, 0.0, 1.0], dtype=dtype))
    np.testing.assert_array_equal(got[[0, 2, 4]], np.array([1.0, -1.0, 1.0], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_exp_saturates_instead_of_overflowing(dtype):
    hi, lo = (88.0, -87.0) if dtype == np.float32 else (709.0, -708.0)
    x = np.array([np.inf, 1e4, hi, -np.inf, -1e4, lo, np.nan], dtype=dtype)
    y = numba_math.apply("exp", x)
    with np.errstate(over="ignore"):
        top, bottom = np.exp(np.array([hi, lo], dtype=dtype))
    np.testing.assert_allclose(y[:3], top, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(y[3:6], bottom, rtol=4 * np.finfo(dtype).eps)
    assert np.isnan(y[6])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_log_special_values(dtype):
    y = numba_math.apply("log", np.array([0.0, -1.0, np.inf, np.nan, 1.0], dtype=dtype))
    assert y[0] == -np.inf and np.isnan(y[1]) and y[2] == np.inf and np.isnan(y[3]) and y[4] == 0.0
    z = numba_math.apply("log1p", np.array([-1.0, 0.0, np.inf, 1e-30, -2.0], dtype=dtype))
    assert z[0] == -np.inf and z[1] == 0.0 and z[2] == np.inf and z[3] == dtype(1e-30) and np.isnan(z[4])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_softplus_sigmoid_extremes(dtype):
    x = np.array([-1e4, -100.0, 100.0, 1e4], dtype=dtype)
    sp = numba_math.apply("softplus", x)
    sg = numba_math.apply("sigmoid", x)
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(sg))
    assert sp[2] == dtype(100.0) and sp[3] == dtype(1e4) and 0.0 <= sp[0] < 1e-30
    assert sg[3] == 1.0 and sg[2] == 1.0 and 0.0 <= sg[0] < 1e-30


def test_apply_rejects_bad_input():
    with pytest.raises(ValueError, match="name must be one of"):
        numba_math.apply("tanh", np.zeros(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        numba_math.apply("exp", np.zeros(3, dtype=np.int64))


def test_exp32_coefficients_are_the_documented_fit():
    """The float32 exp's polynomial is reproducible: the least-squares fit of ``_fit_exp32``."""
    np.testing.assert_allclose(numba_math._E32_Q, numba_math._fit_exp32(), rtol=1e-9)  # float32 keeps 6e-8
    # and the fit is far more accurate than float32 needs: relative error of 1 + r + r^2 Q(r)
    h = np.log(2.0) / 2
    r = np.linspace(-h, h, 100_001)
    p = 1 + r + r**2 * np.polyval(numba_math._E32_Q, r)
    assert np.max(np.abs(p / np.exp(r) - 1)) < 4e-9  # measured 3.6e-9, a 33rd of float32 eps


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_exp_keeps_nan_and_clamps_inside_vectorized_loops(dtype):
    """NaN, inf and out-of-range inputs at every lane position of a long array (the vector loop, not the tail)."""
    x = np.linspace(-5.0, 5.0, 4096).astype(dtype)
    x[3::17] = np.nan
    x[5::19] = np.inf
    x[7::23] = -np.inf
    x[11::29] = 1e4
    y = numba_math.apply("exp", x)
    nan = np.isnan(x)
    assert np.isnan(y[nan]).all() and not np.isnan(y[~nan]).any()
    hi, lo = (88.0, -87.0) if dtype == np.float32 else (709.0, -708.0)
    with np.errstate(over="ignore"):
        top, bottom = np.exp(np.array([hi, lo], dtype=dtype))
    big = ~nan & (x > hi)
    np.testing.assert_allclose(y[big], top, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(y[~nan & (x < lo)], bottom, rtol=4 * np.finfo(dtype).eps)
    finite = ~nan & np.isfinite(x) & (np.abs(x) <= 5)
    assert rel_err(y[finite], np.exp(x[finite].astype(np.float64))) <= 1.5 * np.finfo(dtype).eps
