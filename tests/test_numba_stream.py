"""Non-temporal stores of the numba kernels' large outputs (:mod:`kernels.numba_cpu._stream`).

The streaming path computes the same values as the plain one and stores them
differently, so its results must be bitwise equal to the plain path's. The
tests force it on small shapes (threshold 0) and check every alignment of the
output's start, both dtypes, eps given and drawn, serial and parallel kernels,
and that the compiled copy really uses non-temporal stores.
"""

from __future__ import annotations

import math
import platform
import warnings

import numba
import numpy as np
import pytest
import torch

import kernels
from kernels.numba_cpu import _stream
from kernels.numba_cpu._flags import BLOCK

X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_x86 = pytest.mark.skipif(not X86, reason="non-temporal stores are x86-64 only")


@pytest.fixture
def streaming(monkeypatch):
    """Every output streams (threshold 0), as on a host where ``auto`` turns them on."""
    monkeypatch.setattr(_stream, "ENABLED", True)
    monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)


# --------------------------------------------------------------------------- the copy itself


@needs_x86
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 15, 16, 17, 31, 100, 256, 1000])
def test_stream_copy_every_start_alignment(dtype, n):
    rng = np.random.default_rng(n)
    src = rng.standard_normal(n).astype(dtype)
    sb = np.empty(BLOCK, dtype)
    width = 64 // np.dtype(dtype).itemsize
    for offset in range(width + 1):  # every position of the first element within a cache line
        buf = np.full(n + offset + 1, -7.0, dtype)
        out = buf[offset : offset + n]
        _stream.stream_copy(out, src, sb)
        np.testing.assert_array_equal(out, src)
        assert np.all(buf[:offset] == -7.0) and buf[offset + n] == -7.0, "wrote outside the output"


@needs_x86
def test_stream_copy_to_a_misaligned_array_uses_plain_stores():
    # a float32 view one byte into a buffer: no line can be found, every store is plain (a
    # non-temporal store to an address that is not a multiple of 64 would fault)
    src = np.arange(300, dtype=np.float32)
    raw = np.zeros(4 * 300 + 65, np.uint8)
    start = (-raw.ctypes.data) % 64 + 1
    out = raw[start : start + 4 * 300].view(np.float32)
    assert out.ctypes.data % 4 == 1 and not out.flags.aligned
    _stream.stream_copy(out, src, np.empty(BLOCK, np.float32))
    np.testing.assert_array_equal(out, src)


@needs_x86
def test_stream_copy_uses_non_temporal_stores():
    # compiled afresh: a dispatcher loaded from the on-disk cache has no assembly to show
    fresh = numba.njit(_stream.stream_copy.py_func)
    a = np.ones(1000, np.float32)
    fresh(np.empty_like(a), a, np.empty(BLOCK, np.float32))
    assert "movnt" in fresh.inspect_asm(fresh.signatures[0]), "no non-temporal store in the compiled copy"


# --------------------------------------------------------------------------- the fused kernels


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def _forward(op, mu, lv, eps, seed, z_out=None):
    from kernels.numba_cpu import gaussian

    want_kl = op == "normal_rsample_kl"
    return gaussian.forward(mu, lv, eps, seed, True, want_kl, z_out=z_out)


# Shapes of the parallel kernels, which are the ones that stream (the serial ones
# run below PARALLEL_MIN_ELEMENTS, far under STREAM_MIN_BYTES). Each test loops over
# all of them inside one compiled signature; the parameters pick the signatures
# (dtype, eps or Philox, which outputs), each a compile of its own on a cold cache.
SHAPES = [
    (700, 513),  # rows longer than BLOCK, with a tail block
    (300, 1024),
    (2, 300, 256),  # 3-D, rows of exactly BLOCK
    (4000, 40),  # rows shorter than BLOCK
]


def _offsets(dtype):
    item = torch.empty((), dtype=dtype).element_size()
    return (0, 1, 64 // item - 1)  # the output aligned to a cache line, and not


def _count_streamed(monkeypatch, module) -> list:
    """Record every call of ``module``'s launchers that got staging buffers (took the streaming path).

    Without it a bitwise-equality test would also pass if the path were never taken.
    """
    streamed = []
    real = _stream.stream_buffers

    def spy(*args):
        bufs = real(*args)
        if bufs is not None:
            streamed.append(bufs.shape)
        return bufs

    monkeypatch.setattr(module, "stream_buffers", spy)
    return streamed


# The first case of each matrix runs in the fast suite; the rest under --slow (each
# compiles its own kernel variants, and streaming is the default on Intel only).
SLOW = pytest.mark.slow


def _buffers(shape, dtype, offset, n=3):
    numel = math.prod(shape)
    return tuple(torch.full((numel + offset,), float("nan"), dtype=dtype)[offset:].view(shape) for _ in range(n))


@needs_x86
@pytest.mark.parametrize(
    "dtype,op,noise",
    [
        (torch.float32, "normal_rsample_kl", "eps"),
        pytest.param(torch.float32, "normal_rsample_kl", "philox", marks=SLOW),
        pytest.param(torch.float32, "normal_rsample", "eps", marks=SLOW),
        pytest.param(torch.float64, "normal_rsample_kl", "eps", marks=SLOW),
    ],
)
def test_fused_forward_streaming_is_bitwise_plain(monkeypatch, dtype, op, noise):
    from kernels.numba_cpu import gaussian

    streamed = _count_streamed(monkeypatch, gaussian)
    for shape in SHAPES:
        mu, lv, eps = _inputs(shape, dtype)
        e, seed = (eps, None) if noise == "eps" else (None, 1234)
        monkeypatch.setattr(_stream, "ENABLED", False)
        z0, kl0 = _forward(op, mu, lv, e, seed)
        z0 = z0.clone()
        kl0 = None if kl0 is None else kl0.clone()
        monkeypatch.setattr(_stream, "ENABLED", True)
        monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)
        for offset in _offsets(dtype):
            (z_out,) = _buffers(shape, dtype, offset, 1)
            z1, kl1 = _forward(op, mu, lv, e, seed, z_out=z_out)
            assert z1.data_ptr() == z_out.data_ptr()
            assert torch.equal(z1, z0), f"{shape}, offset {offset}"
            if kl0 is not None:
                assert torch.equal(kl1, kl0)
        z2, _ = _forward(op, mu, lv, e, seed)  # a new output from the pool
        assert torch.equal(z2, z0)
    assert len(streamed) == len(SHAPES) * (len(_offsets(dtype)) + 1), "a streaming call took the plain path"


def _backward(mu, lv, eps, seed, wanted, out=None, dz_kind="full"):
    from kernels.numba_cpu import gaussian

    g = torch.Generator().manual_seed(11)
    dz = None if dz_kind == "none" else torch.randn(mu.shape, generator=g, dtype=mu.dtype)
    dkl = torch.randn(mu.shape[:-1], generator=g, dtype=mu.dtype)
    return gaussian.backward(dz, dkl, mu, lv, eps, seed, *wanted, out=out)


def _check_grads(got, want, label):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert (a is None) == (b is None), f"gradient {k}, {label}"
        if b is not None:
            assert torch.equal(a, b), f"gradient {k}, {label}"


@needs_x86
@pytest.mark.parametrize(
    "dtype,noise,wanted,dz_kind",
    [
        (torch.float32, "eps", (True, True, True), "full"),
        pytest.param(torch.float32, "philox", (True, True, True), "full", marks=SLOW),
        pytest.param(torch.float32, "eps", (True, True, False), "full", marks=SLOW),  # what a VAE step asks for
        pytest.param(torch.float32, "eps", (False, True, False), "full", marks=SLOW),
        pytest.param(torch.float32, "eps", (True, True, False), "none", marks=SLOW),  # KL only
        pytest.param(torch.float64, "eps", (True, True, True), "full", marks=SLOW),
    ],
)
def test_fused_backward_streaming_is_bitwise_plain(monkeypatch, dtype, noise, wanted, dz_kind):
    from kernels.numba_cpu import gaussian

    streamed = _count_streamed(monkeypatch, gaussian)
    for shape in SHAPES:
        mu, lv, eps = _inputs(shape, dtype, seed=1)
        e, seed = (eps, None) if noise == "eps" else (None, 77)
        monkeypatch.setattr(_stream, "ENABLED", False)
        want = [None if t is None else t.clone() for t in _backward(mu, lv, e, seed, wanted, dz_kind=dz_kind)]
        monkeypatch.setattr(_stream, "ENABLED", True)
        monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)
        for offset in _offsets(dtype):
            got = _backward(mu, lv, e, seed, wanted, out=_buffers(shape, dtype, offset), dz_kind=dz_kind)
            _check_grads(
                [g if w is not None else None for g, w in zip(got, want, strict=True)],
                want,
                f"{shape}, offset {offset}",
            )
        _check_grads(_backward(mu, lv, e, seed, wanted, dz_kind=dz_kind), want, f"{shape}, pool")
    assert len(streamed) == len(SHAPES) * (len(_offsets(dtype)) + 1), "a streaming call took the plain path"


@needs_x86
@pytest.mark.parametrize(
    "dtype,wanted",
    [
        (torch.float32, (True, True, True)),
        pytest.param(torch.float32, (False, True, True), marks=SLOW),
        pytest.param(torch.float32, (True, False, False), marks=SLOW),
        pytest.param(torch.float64, (True, True, True), marks=SLOW),
    ],
)
def test_log_prob_backward_streaming_is_bitwise_plain(monkeypatch, dtype, wanted):
    from kernels.numba_cpu import logprob

    streamed = _count_streamed(monkeypatch, logprob)
    for shape in SHAPES:
        x, mu, lv = _inputs(shape, dtype, seed=4)
        g = torch.randn(shape[:-1], generator=torch.Generator().manual_seed(8), dtype=dtype)
        monkeypatch.setattr(_stream, "ENABLED", False)
        want = [None if t is None else t.clone() for t in logprob.normal_backward(g, x, mu, lv, *wanted)]
        monkeypatch.setattr(_stream, "ENABLED", True)
        monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)
        for offset in _offsets(dtype):
            got = logprob.normal_backward(g, x, mu, lv, *wanted, out=_buffers(shape, dtype, offset))
            _check_grads(
                [a if w is not None else None for a, w in zip(got, want, strict=True)],
                want,
                f"{shape}, offset {offset}",
            )
        _check_grads(logprob.normal_backward(g, x, mu, lv, *wanted), want, f"{shape}, pool")
    assert len(streamed) == len(SHAPES) * (len(_offsets(dtype)) + 1), "a streaming call took the plain path"


@needs_x86
def test_broadcast_gradients_are_summed_not_streamed(streaming):
    # mu [B, D] under z [S, B, D]: its gradient is a 2-D accumulator (summed in the
    # kernel), which must not take the streaming path; the full-size ones may.
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(64, 300, generator=g, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(64, 300, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(20, 64, 300, generator=g, dtype=torch.float64)
    grads = {}
    for backend in ("numba", "torch"):
        mu.grad = lv.grad = None
        z, kl = kernels.normal_rsample_kl(mu, lv, eps, backend=backend)
        lq = kernels.normal_log_prob(z, mu, lv, backend=backend)
        (z.cos().sum() + kl.sum() + lq.sum()).backward()
        grads[backend] = (mu.grad.clone(), lv.grad.clone())
    for a, b in zip(grads["numba"], grads["torch"], strict=True):
        torch.testing.assert_close(a, b)


@needs_x86
@pytest.mark.parametrize("threads", [1, 2])
def test_streaming_result_independent_of_threads(streaming, threads):
    import numba

    mu, lv, eps = _inputs((600, 777), torch.float32, seed=3)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        z, kl = kernels.normal_rsample_kl(mu, lv, seed=99, backend="numba")
    finally:
        numba.set_num_threads(before)
    zr, klr = kernels.normal_rsample_kl(mu, lv, seed=99, backend="torch")
    torch.testing.assert_close(z, zr)
    torch.testing.assert_close(kl, klr)


@needs_x86
def test_streaming_through_autograd_matches_reference(streaming):
    mu, lv, eps = _inputs((400, 600), torch.float64, seed=5)
    got, want = [], []
    for backend, into in (("numba", got), ("torch", want)):
        m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z, kl = kernels.normal_rsample_kl(m, v, eps, backend=backend)
        (z.sin().sum() + (kl * 0.3).sum()).backward()
        into += [z.detach(), kl.detach(), m.grad, v.grad]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- policy


def test_stream_buffers_only_for_large_outputs(monkeypatch):
    monkeypatch.setattr(_stream, "ENABLED", True)
    small = np.empty(1000, np.float32)
    assert _stream.stream_buffers(small, 10, 100) is None
    assert _stream.stream_buffers(None, 10, 100) is None
    monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)
    bufs = _stream.stream_buffers(np.empty(4096 * 1024, np.float32), 4096, 1024)
    assert bufs.shape == (4096 * 1024 // _stream.STREAM_TASK_ELEMENTS, BLOCK) and bufs.dtype == np.float32
    assert _stream.stream_buffers(np.empty(3 * 10, np.float64), 3, 10).shape == (1, BLOCK)
    assert _stream.stream_buffers(np.empty(0, np.float32), 0, 10) is None
    outs = (np.empty(30, np.float64), None, np.empty(30, np.float64))
    assert _stream.stream_buffers(outs, 3, 10).shape == (1, 3, BLOCK)
    assert _stream.stream_buffers((np.empty(30), np.empty((8, 30))), 3, 10) is None  # an accumulator: plain
    assert _stream.stream_buffers((None, None), 3, 10) is None
    monkeypatch.setattr(_stream, "ENABLED", False)
    assert _stream.stream_buffers(np.empty(4096 * 1024, np.float32), 4096, 1024) is None


@pytest.mark.parametrize(
    "env,x86,vendor,on,says",
    [
        (None, True, "GenuineIntel", True, "non-temporal"),
        ("auto", True, "AuthenticAMD", False, "AuthenticAMD"),
        ("on", True, "AuthenticAMD", True, "=on"),
        ("off", True, "GenuineIntel", False, "=off"),
        ("on", False, "", False, "x86-64 only"),
        ("  ON ", True, "GenuineIntel", True, "=on"),
    ],
)
def test_policy(monkeypatch, env, x86, vendor, on, says):
    if env is None:
        monkeypatch.delenv(_stream.ENV, raising=False)
    else:
        monkeypatch.setenv(_stream.ENV, env)
    monkeypatch.setattr(_stream, "_is_x86_64", lambda: x86)
    monkeypatch.setattr(_stream, "_cpu_vendor", lambda: vendor)
    enabled, text = _stream._decide()
    assert enabled is on and says in text


def test_unknown_value_warns_and_means_auto(monkeypatch):
    monkeypatch.setenv(_stream.ENV, "sometimes")
    monkeypatch.setattr(_stream, "_is_x86_64", lambda: True)
    monkeypatch.setattr(_stream, "_cpu_vendor", lambda: "GenuineIntel")
    with pytest.warns(UserWarning, match=r"ELBOBENCH_NUMBA_STREAM_STORES must be one of .*'sometimes'"):
        enabled, _ = _stream._decide()
    assert enabled
    with pytest.raises(ValueError, match="got 'sometimes'"):
        _stream.requested()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setenv(_stream.ENV, "off")
        assert _stream._decide()[0] is False


def test_described_by_backends():
    from kernels.numba_cpu import describe

    assert describe()["stores"] == _stream.describe()


# --------------------------------------------------------------------------- scripts/stream_stores.py


@pytest.fixture(scope="module")
def script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "stream_stores.py"
    spec = importlib.util.spec_from_file_location("stream_stores_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_x86
def test_script_times_both_variants_and_writes_csv(script, tmp_path, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)  # stream even at this small size
    before = _stream.ENABLED
    assert script.main(["--out", str(tmp_path), "--sizes", "300x300", "--rounds", "2", "--sets", "1"]) == 0
    got = pd.read_csv(tmp_path / "stream_stores.csv")
    assert list(got.op) == list(script.OPS) and set(got["size"]) == {"300x300"}
    assert (got.stream_ms > 0).all() and (got.plain_ms > 0).all()
    # whether the host's own policy streams at this size: on where auto enables it (Intel), off elsewhere
    assert (got.streams_here == before).all()
    assert np.allclose(got.ratio, got.stream_ms / got.plain_ms)
    assert _stream.ENABLED is before  # the variant switch put the setting back
    assert "ratio" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--ops", "normal_rsample_kl:sideways"], "--ops: unknown"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--sets", "-1"], "--sets must be at least 1"),
        (["--sizes", "12"], "--sizes"),
    ],
)
def test_script_rejects_bad_arguments(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        script.parse(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
