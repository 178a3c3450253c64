"""Contract tests of every kernel backend that can run on CPU here, against the torch oracle.

Parametrized over the registry (``kernels.registry.names()`` filtered by
``unavailable_reason(name, "cpu") is None``), so a newly registered backend gets
all of them for free. A backend module may set ``TEST_SHAPES_SMALL = True`` (the
Triton interpreter is ~1000x slower than compiled code); it then runs the small
shapes only. Tolerances come from the one table in :mod:`kernels.testing`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numba
import pytest
import torch
from torch.func import grad, vmap

import kernels
from kernels import registry
from kernels.philox import normal_noise_numba, normal_noise_torch
from kernels.testing import NOISE_ATOL, assert_close_to_reference, tolerance

BACKENDS = [n for n in registry.names() if registry.unavailable_reason(n, "cpu") is None]
DTYPES = [torch.float32, torch.float64]
SMALL_SHAPES = [(1, 1), (3, 7), (2, 3, 5)]
LARGE_SHAPES = [(129, 513)]

# op -> the names of its tensor arguments, in call order
OPS = {
    "normal_rsample": ("mu", "logvar", "eps"),
    "normal_kl_std": ("mu", "logvar"),
    "normal_rsample_kl": ("mu", "logvar", "eps"),
    "normal_log_prob": ("x", "mu", "logvar"),
    "bernoulli_log_prob": ("x", "logits"),
}


def small_only(backend: str) -> bool:
    return bool(getattr(registry.load(backend), "TEST_SHAPES_SMALL", False))


def make_arg(name: str, shape, dtype, gen: torch.Generator, lv_range: float = 2.0) -> torch.Tensor:
    if name == "logvar":
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(lv_range).to(dtype)
    if name == "x_bern":
        return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    if name == "logits":
        return (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def make_inputs(op: str, shapes, dtype, seed: int = 0, requires_grad: bool = True, **kw) -> list[torch.Tensor]:
    """Inputs of ``op``; ``shapes`` is one shape for all or a dict name -> shape."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in OPS[op]:
        shape = shapes[name] if isinstance(shapes, dict) else shapes
        kind = "x_bern" if (op == "bernoulli_log_prob" and name == "x") else name
        out.append(make_arg(kind, shape, dtype, gen, **kw).requires_grad_(requires_grad))
    return out


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def run_op(op: str, inputs, backend: str, upstream_seed: int = 1, **kwargs):
    """Outputs of ``op`` and the grads of every input under a random (non-unit) upstream gradient."""
    outs = as_tuple(getattr(kernels, op)(*inputs, backend=backend, **kwargs))
    gen = torch.Generator().manual_seed(upstream_seed)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, inputs, ups, allow_unused=True)
    return tuple(o.detach() for o in outs), grads


def row_terms(op: str, inputs) -> int:
    return inputs[0].shape[-1]


# --------------------------------------------------------------------------- forward and backward vs reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", SMALL_SHAPES + LARGE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(backend, op, shape, dtype):
    if shape in LARGE_SHAPES and small_only(backend):
        pytest.skip(f"{backend} runs small shapes only (TEST_SHAPES_SMALL)")
    inputs = make_inputs(op, shape, dtype)
    outs, grads = run_op(op, inputs, backend)
    ref_outs, ref_grads = run_op(op, inputs, "torch")
    for o, r in zip(outs, ref_outs, strict=True):
        assert o.shape == r.shape and o.dtype == r.dtype and o.device == r.device
    assert_close_to_reference(outs, ref_outs, terms=shape[-1], msg=f"{op}[{backend}] forward")
    assert_close_to_reference(grads, ref_grads, msg=f"{op}[{backend}] backward")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_parallel_path_matches_reference(backend, op):
    """A size above the numba serial threshold (float32), so the parallel kernels run too."""
    if small_only(backend):
        pytest.skip(f"{backend} runs small shapes only (TEST_SHAPES_SMALL)")
    shape = (257, 512)
    if backend == "numba":
        from kernels.numba_cpu._flags import PARALLEL_MIN_ELEMENTS

        assert shape[0] * shape[1] >= PARALLEL_MIN_ELEMENTS
    inputs = make_inputs(op, shape, torch.float32, seed=5)
    outs, grads = run_op(op, inputs, backend)
    ref_outs, ref_grads = run_op(op, inputs, "torch")
    assert_close_to_reference(outs, ref_outs, terms=shape[-1], msg=f"{op}[{backend}] forward")
    assert_close_to_reference(grads, ref_grads, msg=f"{op}[{backend}] backward")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_broadcasting_params_against_samples(backend, op):
    """mu/logvar/logits [B, D] against x/eps [S, B, D]: result [S, B], grads summed over S."""
    S, B, D = 3, 4, 6
    big = {"x", "eps"}
    shapes = {name: ((S, B, D) if name in big else (B, D)) for name in OPS[op]}
    if op == "normal_kl_std":
        shapes = {"mu": (S, B, D), "logvar": (B, D)}
    inputs = make_inputs(op, shapes, torch.float64)
    outs, grads = run_op(op, inputs, backend)
    ref_outs, ref_grads = run_op(op, inputs, "torch")
    assert outs[-1].shape[:2] == (S, B)
    assert_close_to_reference(outs, ref_outs, terms=D, msg=f"{op}[{backend}]")
    assert_close_to_reference(grads, ref_grads, msg=f"{op}[{backend}] grads")
    for g, t in zip(grads, inputs, strict=True):
        assert g.shape == t.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous_inputs(backend, op):
    inputs = [t.detach().transpose(0, 1).requires_grad_() for t in make_inputs(op, (9, 5), torch.float32)]
    assert not inputs[0].is_contiguous()
    outs, grads = run_op(op, inputs, backend)
    ref_outs, ref_grads = run_op(op, inputs, "torch")
    assert_close_to_reference(outs, ref_outs, terms=9)
    assert_close_to_reference(grads, ref_grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_inputs_skip_autograd(backend):
    mu, logvar, eps = make_inputs("normal_rsample_kl", (4, 8), torch.float32, requires_grad=False)
    z, kl = kernels.normal_rsample_kl(mu, logvar, eps, backend=backend)
    assert z.grad_fn is None and kl.grad_fn is None and not z.requires_grad
    mu.requires_grad_()
    z, kl = kernels.normal_rsample_kl(mu, logvar, eps, backend=backend)
    assert z.requires_grad and kl.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_in_kernel_noise_backward(backend, dtype):
    """eps=None: forward and backward use the Philox stream of the seed (equal to passing it)."""
    mu, logvar = make_inputs("normal_kl_std", (5, 33), dtype)
    eps = kernels.normal_noise(mu.shape, seed=11, dtype=dtype, backend="torch").requires_grad_()
    outs, grads = run_op("normal_rsample_kl", [mu, logvar], backend, seed=11)
    ref_outs, ref_grads = run_op("normal_rsample_kl", [mu, logvar, eps], "torch")
    # the noise of two implementations agrees to NOISE_ATOL (float32 log/cos), times |sigma| <= e
    tol = dict(rtol=tolerance(dtype)["rtol"], atol=NOISE_ATOL * math.e + tolerance(dtype, 33)["atol"])
    for a, b in zip(outs + grads, ref_outs + ref_grads[:2], strict=True):
        torch.testing.assert_close(a, b, **tol)


# --------------------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_gradcheck(backend, op):
    inputs = make_inputs(op, (2, 3), torch.float64, seed=3)
    fn = getattr(kernels, op)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, backend=backend), inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["normal_rsample", "normal_rsample_kl"])
def test_gradcheck_in_kernel_noise(backend, op):
    mu, logvar = make_inputs("normal_kl_std", (2, 3), torch.float64, seed=4)
    fn = getattr(kernels, op)
    assert torch.autograd.gradcheck(lambda m, v: fn(m, v, seed=5, backend=backend), (mu, logvar), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS) + ["normal_rsample_kl_seed"])
def test_vmap_grad_equals_loop(backend, op):
    """vmap(grad(f)) over a batch of parameter sets equals grad of f called once per set."""
    base = "normal_rsample_kl" if op.endswith("_seed") else op
    kwargs = {"seed": 7} if op.endswith("_seed") else {}
    names = ("mu", "logvar") if kwargs else OPS[base]
    n_batch, shape = 3, (2, 5)
    batched = make_inputs(base, (n_batch, *shape), torch.float64, requires_grad=False)[: len(names)]
    weights = [torch.linspace(0.5, 1.5, math.prod(shape)).reshape(shape).to(torch.float64)]
    weights.append(torch.tensor([0.7, -1.3], dtype=torch.float64))
    fn = getattr(kernels, base)

    def scalar(*args):
        outs = as_tuple(fn(*args, backend=backend, **kwargs))
        return sum((o * (weights[0] if o.dim() == 2 else weights[1])).sum() for o in outs)

    argnums = tuple(range(len(names)))
    got = vmap(grad(scalar, argnums=argnums))(*batched)
    for b in range(n_batch):
        single = [t[b].clone().requires_grad_() for t in batched]
        want = torch.autograd.grad(scalar(*single), single)
        # with in-kernel noise the torch backend draws the stream with torch ops under
        # torch.func (numba's filler cannot run there) and numba-filled outside:
        # they agree to NOISE_ATOL (times sigma <= e here), not bitwise
        tol = dict(rtol=0, atol=NOISE_ATOL * math.e) if kwargs else tolerance(torch.float64)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g[b], w, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vjp_matches_autograd(backend):
    mu, logvar, eps = make_inputs("normal_rsample_kl", (3, 4), torch.float64, requires_grad=False)
    (z, kl), pullback = torch.func.vjp(lambda m, v: kernels.normal_rsample_kl(m, v, eps, backend=backend), mu, logvar)
    dz, dkl = torch.ones_like(z) * 0.3, torch.arange(3.0, dtype=torch.float64)
    got = pullback((dz, dkl))
    assert got[0].shape == mu.shape
    want = (dz + dkl[:, None] * mu, 0.5 * dz * torch.exp(0.5 * logvar) * eps + 0.5 * dkl[:, None] * (logvar.exp() - 1))
    torch.testing.assert_close(got, want, **tolerance(torch.float64))


# --------------------------------------------------------------------------- noise


def test_noise_stream_numba_equals_torch():
    shape = (64, 257)
    a = normal_noise_numba(shape, 123)
    b = normal_noise_torch(shape, 123)
    torch.testing.assert_close(a, b, rtol=0, atol=NOISE_ATOL)


@pytest.mark.parametrize("seed", [0, 2**40 + 17])
def test_noise_reproducible_across_thread_counts(seed):
    """numba threads 1 vs 2 give bit-identical noise, standalone and inside the fused kernel."""
    shape = (256, 512)  # above the serial threshold: the parallel kernels run
    mu = torch.zeros(shape)
    logvar = torch.zeros(shape)
    saved = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            noise = kernels.normal_noise(shape, seed=seed, backend="numba")
            z, _ = kernels.normal_rsample_kl(mu, logvar, seed=seed, backend="numba")
            results.append((noise, z))
    finally:
        numba.set_num_threads(saved)
    (n1, z1), (n2, z2) = results
    assert torch.equal(n1, n2) and torch.equal(z1, z2)
    torch.testing.assert_close(z1, n1, rtol=0, atol=NOISE_ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_moments(backend):
    """Mean and variance of 2**20 draws within 5 standard errors (z-bound 5: false alarm ~6e-7)."""
    n = 1 << 20
    x = kernels.normal_noise((n,), seed=2024, backend=backend, dtype=torch.float64)
    se_mean = 1 / math.sqrt(n)
    se_var = math.sqrt(2 / n)  # var of the sample variance of N(0, 1) is 2/n
    assert abs(x.mean().item()) < 5 * se_mean
    assert abs(x.var().item() - 1) < 5 * se_var
    # and independence of neighbours: lag-1 correlation within 5 / sqrt(n)
    assert abs(torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1].item()) < 5 * se_mean


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_same_z_for_seed_across_backends(dtype):
    mu, logvar = make_inputs("normal_kl_std", (17, 40), dtype, requires_grad=False)
    zs = {b: kernels.normal_rsample(mu, logvar, seed=99, backend=b) for b in BACKENDS}
    for b, z in zs.items():
        torch.testing.assert_close(z, zs["torch"], rtol=0, atol=NOISE_ATOL * math.e, msg=f"backend {b}")


def test_seed_none_follows_torch_manual_seed():
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    torch.manual_seed(5)
    a = kernels.normal_rsample(mu, logvar)
    torch.manual_seed(5)
    b = kernels.normal_rsample(mu, logvar)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (2, 0, 3)], ids=str)
def test_empty_batches(backend, op, shape):
    inputs = make_inputs(op, shape, torch.float32)
    outs, grads = run_op(op, inputs, backend)
    ref_outs, ref_grads = run_op(op, inputs, "torch")
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_logvar_and_logits_finite(backend, op, dtype):
    """logvar = +-30 and logits = +-100 give finite values and gradients equal to the reference."""
    inputs = make_inputs(op, (4, 6), dtype, requires_grad=False)
    names = OPS[op]
    for i, name in enumerate(names):
        if name == "logvar":
            inputs[i] = torch.tensor([-30.0, 30.0, -30.0, 0.0, 30.0, -29.0], dtype=dtype).expand(4, 6).clone()
        if name == "logits":
            inputs[i] = torch.tensor([-100.0, 100.0, 0.0, 50.0, -50.0, 1e-3], dtype=dtype).expand(4, 6).clone()
    inputs = [t.requires_grad_() for t in inputs]
    outs, grads = run_op(op, inputs, backend)
    ref_outs, ref_grads = run_op(op, inputs, "torch")
    for t in outs + grads:
        assert torch.isfinite(t).all(), f"{op}[{backend}] not finite: {t}"
    assert_close_to_reference(outs, ref_outs, terms=6)
    assert_close_to_reference(grads, ref_grads)


# --------------------------------------------------------------------------- bad input


def _raises(exc, *words):
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.cm.__exit__(*a)
            text = str(self.info.value)
            for w in words:
                assert w in text, f"message {text!r} lacks {w!r}"
            return out

    return _Ctx()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes(backend):
    with _raises(ValueError, "x", "mu", "broadcast", "[3, 4]", "[5, 4]"):
        kernels.normal_log_prob(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(4), backend=backend)
    with _raises(ValueError, "eps", "broadcast"):
        kernels.normal_rsample_kl(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 5), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_dtypes(backend):
    with _raises(TypeError, "logits", "torch.int64", "floating"):
        kernels.bernoulli_log_prob(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), backend=backend)
    with _raises(TypeError, "logvar", "torch.float64", "mu", "torch.float32"):
        kernels.normal_kl_std(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), backend=backend)


def test_numba_rejects_unsupported_dtype_and_device():
    with _raises(kernels.BackendUnavailableError, "numba", "float16"):
        kernels.normal_kl_std(
            torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.float16), backend="numba"
        )
    meta = torch.zeros(2, 3, device="meta")  # stands in for a CUDA tensor on a machine without a GPU
    with _raises(kernels.BackendUnavailableError, "numba", "cpu", "meta"):
        kernels.normal_kl_std(meta, meta, backend="numba")
    with _raises(ValueError, "logvar", "meta", "mu", "cpu"):
        kernels.normal_kl_std(torch.zeros(2, 3), meta, backend="numba")


def test_numba_rejects_cuda_tensor(monkeypatch):
    """A CUDA tensor to numba: the device check names the backend and the device."""
    from kernels.numba_cpu import availability

    assert "cuda" in availability("cuda")
    with _raises(kernels.BackendUnavailableError, "numba", "cuda"):
        kernels.resolve_backend("numba", "cuda", torch.float32)


def test_unknown_backend_names(monkeypatch):
    x = torch.zeros(2, 3)
    with _raises(ValueError, "backend", "nope", "numba"):
        kernels.normal_kl_std(x, x, backend="nope")
    with _raises(ValueError, "nope"):
        with kernels.use_backend("nope"):
            pass
    with _raises(ValueError, "nope"):
        kernels.set_backend("nope")
    monkeypatch.setenv("ELBOBENCH_BACKEND", "nope")
    with _raises(ValueError, "ELBOBENCH_BACKEND", "nope"):
        kernels.normal_kl_std(x, x)


# --------------------------------------------------------------------------- selection precedence


@pytest.fixture
def clean_selection(monkeypatch):
    monkeypatch.delenv("ELBOBENCH_BACKEND", raising=False)
    kernels.set_backend(None)
    yield
    kernels.set_backend(None)


@pytest.mark.skipif("numba" not in BACKENDS, reason="needs two CPU backends")
def test_selection_precedence(clean_selection, monkeypatch):
    assert kernels.resolve_backend(None, "cpu") == "numba"  # auto picks numba on CPU
    monkeypatch.setenv("ELBOBENCH_BACKEND", "torch")
    assert kernels.resolve_backend(None, "cpu") == "torch"  # env > auto
    kernels.set_backend("numba")
    assert kernels.resolve_backend(None, "cpu") == "numba"  # set_backend > env
    with kernels.use_backend("torch"):
        assert kernels.resolve_backend(None, "cpu") == "torch"  # use_backend > set_backend
        assert kernels.resolve_backend("numba", "cpu") == "numba"  # backend= > use_backend
    assert kernels.get_backend() == "numba"


@pytest.mark.skipif("numba" not in BACKENDS, reason="needs two CPU backends")
def test_calls_are_routed_by_precedence(clean_selection, monkeypatch):
    """The call itself runs on the selected backend (each backend's op replaced by a tag)."""
    x = torch.zeros(2, 3)
    for name in ("torch", "numba"):
        monkeypatch.setattr(
            registry.load(name), "normal_kl_std", lambda mu, lv, *shape, _n=name: _n
        )  # numba also gets the shape
    assert kernels.normal_kl_std(x, x) == "numba"
    monkeypatch.setenv("ELBOBENCH_BACKEND", "torch")
    assert kernels.normal_kl_std(x, x) == "torch"
    kernels.set_backend("numba")
    assert kernels.normal_kl_std(x, x) == "numba"
    with kernels.use_backend("torch"):
        assert kernels.normal_kl_std(x, x) == "torch"
        assert kernels.normal_kl_std(x, x, backend="numba") == "numba"


def test_numba_describe_and_availability():
    mod = registry.load("numba")
    assert mod.availability("cpu") is None
    info = mod.describe("cpu")
    assert info["threads"] >= 1 and info["version"] and info["cache_dir"]
    assert kernels.describe_backends("cpu")["numba"] == info
    row = next(r for r in kernels.backend_report() if r["backend"] == "numba" and r["device"] == "cpu")
    assert f"threads {info['threads']}" in row["mode"] and info["stores"] in row["mode"]


# --------------------------------------------------------------------------- float32 accuracy at D = 1024


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("op", list(OPS))
def test_float32_error_at_most_twice_torch(backend, op):
    """Against a float64 reference, float32 results err at most ~2x torch's own float32 error."""
    if small_only(backend):
        pytest.skip(f"{backend} runs small shapes only (TEST_SHAPES_SMALL)")
    shape = (64, 1024)
    inputs64 = make_inputs(op, shape, torch.float64, seed=9)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs32]  # the same values exactly
    outs64, grads64 = run_op(op, inputs64, "torch")
    outs_t, grads_t = run_op(op, inputs32, "torch")
    outs_b, grads_b = run_op(op, inputs32, backend)
    for got, ours, want in zip(outs_b + grads_b, outs_t + grads_t, outs64 + grads64, strict=True):
        err_b = (got.double() - want).abs().max().item()
        err_t = (ours.double() - want).abs().max().item()
        scale = want.abs().max().item()
        # 2x torch's error, with a floor of a few float32 ulps of the largest value
        assert err_b <= 2 * err_t + 4 * torch.finfo(torch.float32).eps * scale, (op, backend, err_b, err_t)


# --------------------------------------------------------------------------- numba compile cache location


def _fresh_cache_config(monkeypatch):
    from kernels import _numba_cache

    monkeypatch.setattr(_numba_cache.numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(_numba_cache, "_configured", None)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    return _numba_cache


def test_numba_cache_dir_falls_back_to_user_dir(monkeypatch, tmp_path):
    cache = _fresh_cache_config(monkeypatch)
    monkeypatch.setattr(cache, "_writable", lambda path: False)  # a read-only install
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stale = tmp_path / "elbobench" / "numba" / "src-0000000000000000"
    stale.mkdir(parents=True)
    where = cache.configure()
    assert where == str(tmp_path / "elbobench" / "numba" / f"src-{cache.source_digest()}")
    assert Path(where).is_dir() and cache.numba.config.CACHE_DIR == where
    assert not stale.exists()  # kernels compiled from other sources are removed


def test_numba_cache_explicit_dir_wins(monkeypatch):
    cache = _fresh_cache_config(monkeypatch)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/explicit")
    assert cache.configure() == "/somewhere/explicit"


def test_numba_cache_digest_follows_every_kernel_source(tmp_path):
    """Editing any kernel source (philox.py, _math.py, _flags.py, ...) moves the cache: no stale inlined code."""
    from kernels import _numba_cache

    sources = _numba_cache.kernel_sources()
    names = {f.name for f in sources}
    assert {"philox.py", "_math.py", "_flags.py", "gaussian.py", "logprob.py", "_layout.py"} <= names
    copies = []
    for f in sources:
        c = tmp_path / f.name
        c.write_bytes(f.read_bytes())
        copies.append(c)
    before = _numba_cache.source_digest(copies)
    assert before == _numba_cache.source_digest(sources)
    for c in copies:
        original = c.read_bytes()
        c.write_bytes(original + b"\n# edited\n")
        assert _numba_cache.source_digest(copies) != before, c.name
        c.write_bytes(original)
