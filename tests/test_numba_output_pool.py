"""The numba backend's output reuse pool (``kernels/numba_cpu/_pool.py``).

The property that matters: a buffer that any tensor, view or array still uses is
never handed out again, so no later call can change a live result; a buffer
nothing uses is reused; the pool stays under its cap.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import kernels
from kernels.numba_cpu import _pool, buffer_pool_info

MB = 1 << 20


def _grads(seed: int, shape=(256, 1024), backend: str = "numba"):
    """normal_log_prob forward+backward through ``backend``: (log-prob, dx, dmu, dlogvar), float64."""
    g = torch.Generator().manual_seed(seed)
    x, mu, lv = (torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    up = torch.randn(shape[:-1], generator=g, dtype=torch.float64)
    out = kernels.normal_log_prob(x, mu, lv, backend=backend)
    return (out, *torch.autograd.grad(out, (x, mu, lv), up))


def _reference(seed: int, shape=(256, 1024)):
    return _grads(seed, shape, backend="torch")


def test_pool_is_on_by_default_and_serves_the_gradients():
    info = buffer_pool_info()
    assert info["enabled"] and info["cap_bytes"] == _pool.DEFAULT_CAP_MB * MB
    before = _pool.info()
    for _ in range(3):
        _grads(0)
    after = _pool.info()
    assert after["hits"] > before["hits"]  # the second and third call reused the first call's buffers


def test_live_results_are_never_overwritten_by_later_calls():
    first = _grads(1)
    kept = [t.clone() for t in first]
    ptrs = {t.data_ptr() for t in first[1:]}
    for seed in range(2, 6):
        later = _grads(seed)
        assert not ptrs & {t.data_ptr() for t in later[1:]}
        del later
    for t, k in zip(first, kept, strict=True):
        assert torch.equal(t, k)
    for got, want in zip(first, _reference(1), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_freed_result_is_reused():
    dx = _grads(1)[1]
    ptr = dx.data_ptr()
    del dx
    assert ptr in {t.data_ptr() for t in _grads(2)[1:]}


def _as_flat(storage: torch.UntypedStorage, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=like.dtype).set_(storage).reshape(-1)


@pytest.mark.parametrize(
    ("keep", "seen"),
    [
        (lambda t: t[1:], lambda h, w: (h, w[1:])),  # a torch view
        (lambda t: t.view(-1), lambda h, w: (h, w.view(-1))),
        (lambda t: t.numpy(), lambda h, w: (torch.from_numpy(h), w)),  # a numpy array of the tensor
        (lambda t: t.numpy()[3:], lambda h, w: (torch.from_numpy(h), w[3:])),  # a numpy view of that
        (lambda t: t.untyped_storage(), lambda h, w: (_as_flat(h, w), w.reshape(-1))),
        (lambda t: t.detach(), lambda h, w: (h, w)),
    ],
    ids=["slice", "view", "numpy", "numpy-slice", "storage", "detach"],
)
def test_anything_that_shares_the_memory_keeps_it_out_of_reuse(keep, seen):
    dx = _grads(1)[1]
    want = dx.clone()
    ptr = dx.data_ptr()
    holder = keep(dx)
    del dx
    for seed in range(2, 5):
        assert ptr not in {t.data_ptr() for t in _grads(seed)[1:]}
    got, expected = seen(holder, want)
    assert torch.equal(got, expected)  # still the first call's gradient


def test_accumulated_grad_keeps_its_buffer():
    """``backward()`` may store the kernel's gradient as ``.grad`` itself: later steps must not overwrite it."""
    mu = torch.randn(256, 1024, dtype=torch.float64, requires_grad=True)
    x, lv = torch.randn(256, 1024, dtype=torch.float64), torch.zeros(256, 1024, dtype=torch.float64)
    kernels.normal_log_prob(x, mu, lv, backend="numba").sum().backward()
    first = mu.grad.clone()
    other = torch.randn(256, 1024, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        kernels.normal_log_prob(x * 2, other, lv, backend="numba").sum().backward()
        other.grad = None
    assert torch.equal(mu.grad, first)
    torch.testing.assert_close(first, x - mu.detach(), rtol=1e-12, atol=1e-12)


def test_small_outputs_bypass_the_pool():
    pool = _pool.BufferPool(cap_bytes=64 * MB, min_bytes=1 * MB)
    a = pool.take(1000, np.float32)
    assert a.shape == (1000,) and a.dtype == np.float32
    assert pool.info()["buffers"] == 0 and pool.info()["tracked_bytes"] == 0


def test_reuse_by_dtype_and_size():
    pool = _pool.BufferPool(cap_bytes=64 * MB, min_bytes=1024)
    a = pool.take(4096, np.float32)
    pa = a.ctypes.data
    del a
    b = pool.take(4096, np.float32)
    assert b.ctypes.data == pa  # the same size and dtype: reused
    c = pool.take(2048, np.float64)  # the same bytes, another dtype: its own buffer
    assert c.ctypes.data != pa and c.dtype == np.float64
    d = pool.take(4096, np.float32)  # b is alive: a new one
    assert d.ctypes.data != b.ctypes.data
    assert pool.info()["hits"] == 1 and pool.info()["buffers"] == 3


def test_an_extra_reference_makes_a_buffer_busy():
    pool = _pool.BufferPool(cap_bytes=64 * MB, min_bytes=1024)
    a = pool.take(4096, np.float32)
    view = a[10:]
    ptr = a.ctypes.data
    del a
    assert pool.take(4096, np.float32).ctypes.data != ptr  # the view holds it
    del view
    assert pool.take(4096, np.float32).ctypes.data == ptr


def test_the_cap_holds_and_least_recently_used_free_buffers_go_first():
    n = 1 << 18  # 1 MiB of float32
    pool = _pool.BufferPool(cap_bytes=3 * MB, min_bytes=1024)
    live = [pool.take(n, np.float32) for _ in range(3)]
    assert pool.info()["tracked_bytes"] == 3 * MB
    extra = pool.take(n, np.float32)  # nothing free to drop: served untracked
    assert pool.info()["tracked_bytes"] == 3 * MB and pool.info()["buffers"] == 3
    assert extra.shape == (n,)
    first = live[0].ctypes.data
    del live[:2]  # two free buffers
    again = pool.take(n, np.float32)  # reuses the first (no new bytes), now the most recently used
    assert again.ctypes.data == first and pool.info()["tracked_bytes"] == 3 * MB
    del again
    big = pool.take(n // 2, np.float64)  # another key: must drop one free buffer, the least recently used
    info = pool.info()
    assert info["tracked_bytes"] == 3 * MB and info["buffers"] == 3 and big.nbytes == MB
    kept = pool._buffers[(np.dtype(np.float32).str, n)]
    assert len(kept) == 2 and first in {e.array.ctypes.data for e in kept}  # the second was dropped
    assert pool.take(n, np.float32).ctypes.data == first


def test_release_drops_free_buffers_and_keeps_busy_ones():
    pool = _pool.BufferPool(cap_bytes=64 * MB, min_bytes=1024)
    busy = pool.take(4096, np.float32)
    pool.take(8192, np.float32)  # freed at once
    assert pool.info()["free_bytes"] == 8192 * 4
    assert pool.release() == 8192 * 4
    info = pool.info()
    assert info["buffers"] == 1 and info["tracked_bytes"] == busy.nbytes and info["free_bytes"] == 0
    assert pool.take(4096, np.float32).ctypes.data != busy.ctypes.data


def test_a_zero_cap_turns_the_pool_off():
    pool = _pool.BufferPool(cap_bytes=0, min_bytes=1024)
    assert not pool.info()["enabled"]
    pool.take(1 << 20, np.float32)
    assert pool.info()["buffers"] == 0


@pytest.mark.parametrize(
    ("value", "cap"),
    [(None, _pool.DEFAULT_CAP_MB * MB), ("", _pool.DEFAULT_CAP_MB * MB), ("0", 0), ("64", 64 * MB), ("0.5", MB // 2)],
)
def test_cap_from_the_environment(monkeypatch, value, cap):
    if value is None:
        monkeypatch.delenv(_pool.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(_pool.ENV_VAR, value)
    assert _pool._cap_from_env() == cap


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf", "1e400"])
def test_a_bad_cap_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(_pool.ENV_VAR, value)
    with pytest.raises(ValueError, match=rf"ELBOBENCH_NUMBA_POOL_MB must be a finite number of MiB >= 0.*{value!r}"):
        _pool._cap_from_env()


def test_threads_calling_at_once_each_get_their_own_results():
    errors: list = []

    def work(base: int):
        try:
            for seed in range(base, base + 8):
                got = _grads(seed)
                want = _reference(seed)
                for a, b in zip(got, want, strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(100 * k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_rsample_kl_outputs_and_noise_stay_correct_across_reuse():
    """The fused forward's z and the in-kernel noise, called repeatedly on pooled buffers, equal the reference."""
    mu = torch.randn(512, 1024, dtype=torch.float64)
    lv = torch.randn(512, 1024, dtype=torch.float64) * 0.1
    outs = []
    for seed in range(4):
        z, kl = kernels.normal_rsample_kl(mu, lv, seed=seed, backend="numba")
        zr, klr = kernels.normal_rsample_kl(mu, lv, seed=seed, backend="torch")
        torch.testing.assert_close(z, zr)
        torch.testing.assert_close(kl, klr)
        outs.append((seed, z))
    for seed, z in outs:  # every z kept alive stays its own seed's sample
        torch.testing.assert_close(z, kernels.normal_rsample_kl(mu, lv, seed=seed, backend="torch")[0])
    eps = [kernels.normal_noise((512, 1024), seed=s, dtype=torch.float64, backend="numba") for s in range(3)]
    assert len({e.data_ptr() for e in eps}) == 3
    for s, e in enumerate(eps):
        torch.testing.assert_close(e, kernels.normal_noise((512, 1024), seed=s, dtype=torch.float64, backend="torch"))


def test_no_free_buffer_is_dropped_when_that_would_not_make_room():
    n = 1 << 18  # 1 MiB of float32
    pool = _pool.BufferPool(cap_bytes=2 * MB, min_bytes=1024)
    busy = pool.take(n, np.float32)
    pool.take(n, np.float32)  # freed at once
    big = pool.take(2 * n, np.float32)  # 2 MiB: no room even without the free buffer, so served untracked
    assert big.nbytes == 2 * MB
    info = pool.info()
    assert info["buffers"] == 2 and info["free_bytes"] == MB and info["tracked_bytes"] == 2 * MB
    assert busy.nbytes == MB
