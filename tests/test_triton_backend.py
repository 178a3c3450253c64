"""Tests specific to the triton backend (the generic ones are in ``test_kernels_contract.py``).

On a machine without a GPU these run the kernels in Triton's interpreter (the root
``conftest.py`` sets ``ELBOBENCH_TRITON_INTERPRET=auto``), on small shapes: the
interpreter is ~1000x slower than compiled code. With a CUDA device they run the
compiled kernels, and the ``gpu`` tests (torch.compile, opcheck) run too.

Covered here: the mode switch and its error messages; block-boundary shapes with
the tiles shrunk so that every kernel loops over several ``BLOCK_D`` chunks and
row blocks; the noise against numba's and torch's Philox streams and against
``tl.randn`` itself; half precision accumulating in float32; vmap's noise
semantics; the custom-op registration.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.func import grad, vmap

import kernels
from kernels import reference as ref
from kernels.philox import normal_noise_numba, normal_noise_torch
from kernels.registry import BackendUnavailableError
from kernels.testing import NOISE_ATOL, assert_close_to_reference

# Importing triton here, at collection, before the backend settles TRITON_INTERPRET,
# is deliberate: it is what torch.compile does in a real session, and the kernels
# must not depend on triton's own @triton.jit helpers (see test_..._imported_first).
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import kernels.triton_gpu as tg  # noqa: E402


def _device() -> str | None:
    if tg.availability("cuda") is None:
        return "cuda"
    if tg.availability("cpu") is None:
        return "cpu"
    return None


DEVICE = _device()
needs_triton = pytest.mark.skipif(DEVICE is None, reason=f"triton cannot run here: {tg.availability('cpu')}")
needs_interpreter = pytest.mark.skipif(DEVICE != "cpu", reason="checks the interpreter (CPU) mode")
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="needs compiled triton on a CUDA device")

OPS = {  # op -> the names of its tensor arguments, in call order
    "normal_rsample": ("mu", "logvar", "eps"),
    "normal_kl_std": ("mu", "logvar"),
    "normal_rsample_kl": ("mu", "logvar", "eps"),
    "normal_log_prob": ("x", "mu", "logvar"),
    "bernoulli_log_prob": ("x", "logits"),
}
# sizes off the block grid: a single element, odd sizes, D not a power of two
AWKWARD_SHAPES = [(1, 1), (3, 7), (5, 130), (2, 3, 37)]


def make_inputs(op, shape, dtype, *, seed=0, requires_grad=True, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in OPS[op]:
        if name == "logvar":
            t = torch.rand(shape, generator=gen, dtype=torch.float64) * 4 - 2
        elif name == "x" and op == "bernoulli_log_prob":
            t = torch.rand(shape, generator=gen, dtype=torch.float64)
        elif name == "logits":
            t = 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
        out.append(t.to(device=device, dtype=dtype).requires_grad_(requires_grad))
    return out


def outputs_and_grads(fn, inputs, *, seed=1):
    """Outputs of ``fn(*inputs)`` and the grads of every input under a random upstream gradient."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    want = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(outs, want, ups)
    return tuple(o.detach() for o in outs), grads


def call(op, backend):
    return lambda *a: getattr(kernels, op)(*a, backend=backend)


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Shrink the tiles so small shapes cross several row blocks and BLOCK_D chunks."""
    from kernels.triton_gpu import _common

    monkeypatch.setattr(_common, "TILE", 64)
    monkeypatch.setattr(_common, "MAX_BLOCK_D", 32)
    monkeypatch.setattr(_common, "FLAT_BLOCK", 64)
    return _common


# --------------------------------------------------------------------------- mode switch
def test_mode_switch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(tg.ENV_SWITCH, "1")
    assert tg._env_mode().interpret and tg._env_mode().error is None
    monkeypatch.setenv(tg.ENV_SWITCH, "0")
    assert not tg._env_mode().interpret and tg._env_mode().error is None
    monkeypatch.setenv(tg.ENV_SWITCH, "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tg._env_mode().interpret
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not tg._env_mode().interpret
    monkeypatch.delenv(tg.ENV_SWITCH)
    assert not tg._env_mode().interpret  # unset: compiled ...
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tg._env_mode().interpret  # ... unless the user exported TRITON_INTERPRET=1
    monkeypatch.setenv(tg.ENV_SWITCH, "0")
    assert "forbids the interpreter but TRITON_INTERPRET=1" in tg._env_mode().error
    monkeypatch.setenv(tg.ENV_SWITCH, "yes")
    assert "must be '0', '1' or 'auto', got 'yes'" in tg._env_mode().error


def test_availability_and_describe_per_mode(monkeypatch):
    monkeypatch.setattr(tg, "_FROZEN", tg.Mode(True, None, "test"))
    assert tg.availability("cpu") is None
    assert "CUDA tensors need compiled triton" in tg.availability("cuda")
    assert tg.describe("cpu")["mode"] == "interpreter (TRITON_INTERPRET=1)"
    monkeypatch.setattr(tg, "_FROZEN", tg.Mode(False, None, "test"))
    assert "set ELBOBENCH_TRITON_INTERPRET=1" in tg.availability("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in tg.availability("cuda")
    monkeypatch.setattr(tg, "_FROZEN", None)
    monkeypatch.setattr(tg, "_triton_installed", lambda: False)
    assert "triton is not installed" in tg.availability("cpu")
    assert "triton is not installed" in tg.availability("cuda")


def test_backend_report_says_how_triton_runs():
    rows = {(r["backend"], r["device"]): r for r in kernels.backend_report()}
    row = rows[("triton", "cpu")]
    if DEVICE == "cpu":
        assert row["available"] and row["mode"].endswith("mode interpreter (TRITON_INTERPRET=1)")
        assert "interpreter" in rows[("triton", "cuda")]["reason"]
    elif DEVICE == "cuda":
        assert "mode compiled (CUDA, " in rows[("triton", "cuda")]["mode"]
        assert not row["available"] and "interpreter" in row["reason"]


@needs_interpreter
def test_interpreter_rejects_non_cpu_tensors():
    mu = torch.zeros(2, 3, device="meta")
    with pytest.raises(BackendUnavailableError, match=r"normal_kl_std: mu is on meta, but triton runs in its CPU"):
        tg.normal_kl_std(mu, mu)
    with pytest.raises(BackendUnavailableError, match=r"normal_noise: device is on meta"):
        tg.normal_noise((2, 3), 0, torch.device("meta"), torch.float32)


def test_compiled_mode_rejects_cpu_tensors(monkeypatch):
    monkeypatch.setattr(tg, "_FROZEN", tg.Mode(False, None, "test"))
    kernels.registry.clear_cache()  # availability answers are cached per process
    mu = torch.zeros(2, 3)
    with pytest.raises(BackendUnavailableError, match=r"normal_rsample_kl: mu is on cpu, but compiled triton needs"):
        tg.normal_rsample_kl(mu, mu, None, 0)
    with pytest.raises(BackendUnavailableError, match=r"x is on cpu"):
        tg.bernoulli_log_prob(mu, mu)
    # through the public API: the registry's availability check names the reason
    with pytest.raises(BackendUnavailableError, match=r"CPU tensors run only in Triton's interpreter"):
        kernels.normal_kl_std(mu, mu, backend="triton")
    monkeypatch.undo()
    kernels.registry.clear_cache()


# --------------------------------------------------------------------------- forward / backward
@needs_interpreter
def test_kernels_work_when_triton_was_imported_before_the_switch():
    """triton.language was imported (above) before TRITON_INTERPRET=1 was set, so its own
    @triton.jit helpers are compiled-mode functions the interpreter cannot call; the
    kernels avoid them and still run."""
    from triton.runtime.interpreter import InterpretedFunction

    tg._ops()
    assert not isinstance(tl.randn, InterpretedFunction) and not isinstance(tl.sum, InterpretedFunction)
    for op in OPS:
        inputs = make_inputs(op, (3, 5), torch.float64)
        outs, grads = outputs_and_grads(call(op, "triton"), inputs)
        ref_outs, ref_grads = outputs_and_grads(call(op, "torch"), inputs)
        assert_close_to_reference(outs, ref_outs, terms=5, msg=op)
        assert_close_to_reference(grads, ref_grads, msg=op)


@needs_triton
@pytest.mark.parametrize("tiles", ["default", "tiny"])
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_awkward_shapes_match_reference(op, shape, tiles, request):
    if tiles == "tiny":
        request.getfixturevalue("tiny_tiles")
    inputs = make_inputs(op, shape, torch.float32)
    outs, grads = outputs_and_grads(call(op, "triton"), inputs)
    ref_outs, ref_grads = outputs_and_grads(call(op, "torch"), inputs)
    assert_close_to_reference(outs, ref_outs, terms=shape[-1], msg=f"{op} forward")
    assert_close_to_reference(grads, ref_grads, msg=f"{op} backward")


@needs_triton
@pytest.mark.parametrize("op", ["normal_rsample", "normal_rsample_kl"])
def test_in_kernel_noise_forward_and_backward(op, tiny_tiles):
    """eps=None regenerates the noise of the seed in the backward kernel: same as passing it."""
    mu, logvar, _ = make_inputs(op, (5, 37), torch.float64)
    eps = normal_noise_torch(mu.shape, 7, device=DEVICE, dtype=torch.float64)
    fn = getattr(kernels, op)
    outs, grads = outputs_and_grads(lambda m, v: fn(m, v, seed=7, backend="triton"), [mu, logvar])
    ref_outs, ref_grads = outputs_and_grads(lambda m, v: fn(m, v, eps, backend="torch"), [mu, logvar])
    # both use the float32 stream; its implementations differ by <= NOISE_ATOL, times sigma <= e
    tol = dict(rtol=1e-9, atol=NOISE_ATOL * math.e * 37)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


@needs_triton
@pytest.mark.parametrize(
    "op, grad_of",
    [
        ("normal_rsample", ("logvar",)),
        ("normal_rsample", ("eps",)),
        ("normal_rsample", ("mu", "logvar", "eps")),
        ("normal_rsample_kl", ("mu", "eps")),
        ("normal_rsample_kl", ("mu", "logvar", "eps")),
        ("normal_kl_std", ("logvar",)),
        ("normal_log_prob", ("x",)),
        ("normal_log_prob", ("mu", "logvar")),
        ("bernoulli_log_prob", ("logits",)),
        ("bernoulli_log_prob", ("x",)),
    ],
)
def test_gradcheck_float64_subsets(op, grad_of):
    """float64 gradcheck with only some inputs differentiable (each backward flag combination)."""
    inputs = make_inputs(op, (2, 3), torch.float64, seed=5, requires_grad=False)
    for name, t in zip(OPS[op], inputs, strict=True):
        t.requires_grad_(name in grad_of)
    assert torch.autograd.gradcheck(call(op, "triton"), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("op", list(OPS))
def test_double_backward_raises(op):
    """The backward kernels have no derivatives (``@once_differentiable``): differentiating
    a first derivative raises instead of returning a wrong value."""
    inputs = make_inputs(op, (2, 3), torch.float64)
    params = [t for name, t in zip(OPS[op], inputs, strict=True) if name != "eps"]
    outs = getattr(kernels, op)(*inputs, backend="triton")
    outs = outs if isinstance(outs, tuple) else (outs,)
    ups = [torch.ones_like(o, requires_grad=True) for o in outs]
    first = torch.autograd.grad(outs, params, ups, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        sum(g.sum() for g in first).backward()


@needs_triton
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (2, 0, 4)], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_empty_shapes(op, shape):
    inputs = make_inputs(op, shape, torch.float32)
    outs, grads = outputs_and_grads(call(op, "triton"), inputs)
    ref_outs, ref_grads = outputs_and_grads(call(op, "torch"), inputs)
    assert_close_to_reference(outs, ref_outs)
    assert_close_to_reference(grads, ref_grads)


# --------------------------------------------------------------------------- noise
@needs_triton
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 + 7, 2**63 - 1])
def test_noise_equals_numba_and_torch_streams(seed, tiny_tiles):
    shape = (3, 67)  # several FLAT_BLOCKs of 64, the last one partial
    got = kernels.normal_noise(shape, seed=seed, device=DEVICE, backend="triton")
    torch.testing.assert_close(got.cpu(), normal_noise_numba(shape, seed), rtol=0, atol=NOISE_ATOL)
    torch.testing.assert_close(got, normal_noise_torch(shape, seed, device=DEVICE), rtol=0, atol=NOISE_ATOL)
    z = kernels.normal_rsample(torch.zeros(shape, device=DEVICE), torch.zeros(shape, device=DEVICE), seed=seed)
    torch.testing.assert_close(z, normal_noise_torch(shape, seed, device=DEVICE), rtol=0, atol=NOISE_ATOL)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_noise_dtypes_are_the_float32_stream_rounded(dtype):
    got = tg.normal_noise((4, 9), 3, torch.device(DEVICE), dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, normal_noise_torch((4, 9), 3, device=DEVICE).to(dtype), rtol=0, atol=NOISE_ATOL)


_RANDN_SCRIPT = textwrap.dedent(
    """
    import torch, triton, triton.language as tl
    from kernels.triton_gpu._common import philox_randn

    @triton.jit
    def both(a_ptr, b_ptr, seed, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(a_ptr + offs, tl.randn(seed, offs), mask=offs < N)
        tl.store(b_ptr + offs, philox_randn(seed, offs), mask=offs < N)

    device = "{device}"
    for seed in (0, 1, 99, 2**31 + 3, 2**40 + 5):
        a, b = torch.empty(1000, device=device), torch.empty(1000, device=device)
        both[(4,)](a, b, seed, 1000, BLOCK=256)
        assert torch.equal(a, b), (seed, (a - b).abs().max().item())
    print("ok")
    """
)


@needs_triton
def test_philox_port_equals_tl_randn():
    """Our Philox port is bit-for-bit ``tl.randn``. In the interpreter ``tl.randn`` works only
    if TRITON_INTERPRET was set before triton was first imported: use a fresh process."""
    if DEVICE == "cuda":
        ns: dict = {}
        exec(_RANDN_SCRIPT.format(device="cuda"), ns)  # compiled: no import-order constraint
        return
    env = {**os.environ, "TRITON_INTERPRET": "1", tg.ENV_SWITCH: "1"}
    res = subprocess.run(
        [sys.executable, "-c", _RANDN_SCRIPT.format(device="cpu")], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


# --------------------------------------------------------------------------- half precision
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_half_precision_accumulates_in_float32(op, dtype):
    """Against a float64 reference, the error is at most 2x that of torch in the same dtype.

    A small absolute floor (a quarter ulp of 1 in the dtype) covers outputs torch gets exact.
    """
    inputs = make_inputs(op, (4, 300), dtype)
    exact = [t.detach().double().requires_grad_() for t in inputs]
    outs, grads = outputs_and_grads(call(op, "triton"), inputs)
    torch_outs, torch_grads = outputs_and_grads(call(op, "torch"), inputs)
    ref_outs, ref_grads = outputs_and_grads(call(op, "torch"), exact)
    floor = torch.finfo(dtype).eps / 4
    for i, (ours, theirs, truth) in enumerate(
        zip(outs + grads, torch_outs + torch_grads, ref_outs + ref_grads, strict=True)
    ):
        assert ours.dtype == dtype
        err = (ours.double() - truth).abs().max().item()
        torch_err = (theirs.double() - truth).abs().max().item()
        assert err <= 2 * torch_err + floor, f"{op} output/grad {i}: error {err:.3g} vs torch's {torch_err:.3g}"


# --------------------------------------------------------------------------- torch.func
@needs_triton
def test_vmap_noise_is_per_sample_like_a_loop(tiny_tiles):
    """Under vmap every sample draws the noise of its own (per-sample) shape, as a loop would."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, 5, generator=gen).to(DEVICE)
    logvar = torch.randn(4, 5, generator=gen).to(DEVICE)

    def f(m):
        return kernels.normal_rsample_kl(m, logvar, seed=9, backend="triton")

    z, kl = vmap(f)(mu)
    loop = [f(m) for m in mu]
    torch.testing.assert_close(z, torch.stack([o[0] for o in loop]))
    torch.testing.assert_close(kl, torch.stack([o[1] for o in loop]))
    # nested, with the vmapped dim not in front: still one [5]-sample's noise per row
    zz = vmap(vmap(lambda m: kernels.normal_rsample(m, logvar[0], seed=9, backend="triton")), in_dims=1)(mu)
    eps = normal_noise_torch((5,), 9, device=DEVICE)
    torch.testing.assert_close(zz, (mu + torch.exp(0.5 * logvar[0]) * eps).transpose(0, 1), atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("order", ["vmap_grad", "grad_vmap"])
def test_per_sample_grads_of_fused_rsample_kl(order, tiny_tiles):
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    logvar = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).to(DEVICE)

    def loss(backend):
        def f(m, v):
            z, kl = kernels.normal_rsample_kl(m, v, seed=4, backend=backend)
            return (z * z).sum() + kl.sum()

        return f

    def run(backend):
        if order == "vmap_grad":
            return vmap(grad(loss(backend), argnums=(0, 1)))(mu, logvar)
        return grad(lambda m, v: vmap(loss(backend))(m, v).sum(), argnums=(0, 1))(mu, logvar)

    for a, b in zip(run("triton"), run("torch"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=NOISE_ATOL * 20)


# --------------------------------------------------------------------------- custom ops
@needs_triton
def test_ops_are_registered_torch_custom_ops():
    tg._ops()
    mu, logvar = make_inputs("normal_kl_std", (3, 7), torch.float32, requires_grad=False)
    ns = torch.ops.elbobench_triton
    for name in ("noise", "rsample_fwd", "rsample_bwd", "kl_std_fwd", "kl_std_bwd", "rsample_kl_fwd"):
        assert hasattr(ns, name)
    for name in ("rsample_kl_bwd", "normal_log_prob_fwd", "normal_log_prob_bwd"):
        assert hasattr(ns, name)
    for name in ("bernoulli_log_prob_fwd", "bernoulli_log_prob_bwd"):
        assert hasattr(ns, name)
    assert_close_to_reference(ns.kl_std_fwd(mu, logvar), ref.normal_kl_std(mu, logvar), terms=7)
    z, kl = ns.rsample_kl_fwd(mu, logvar, None, 3, 0)
    assert_close_to_reference((z, kl), ref.normal_rsample_kl(mu, logvar, None, 3), terms=7)


@needs_triton
def test_launchers_and_functions_trace_symbolically(monkeypatch):
    """What torch.compile needs from the Python side, checked without a GPU: with the kernel
    launches stubbed out (the interpreter cannot run on fake tensors), a forward+backward
    traces with symbolic shapes into a graph of our custom ops with the right output shapes."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from kernels.triton_gpu import gaussian, log_prob

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    tg._ops()
    for mod in (gaussian, log_prob):
        monkeypatch.setattr(mod, "wrap_triton", lambda kernel: NoLaunch())

    def step(mu, logvar, xb):
        z, kl = tg.normal_rsample_kl(mu, logvar, None, 3)
        loss = (tg.bernoulli_log_prob(xb, z) - kl - tg.normal_log_prob(z, mu, logvar)).sum()
        return (z, kl, *torch.autograd.grad(loss, (mu, logvar)))

    args = (torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True), torch.rand(4, 6))
    gm = make_fx(step, tracing_mode="symbolic")(*args)
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    for name in ("rsample_kl_fwd", "rsample_kl_bwd", "normal_log_prob_fwd", "normal_log_prob_bwd"):
        assert f"elbobench_triton.{name}.default" in ops
    for name in ("bernoulli_log_prob_fwd", "bernoulli_log_prob_bwd"):
        assert f"elbobench_triton.{name}.default" in ops
    shapes = [tuple(n.meta["val"].shape) for n in gm.graph.output_node().args[0]]
    assert [len(s) for s in shapes] == [2, 1, 2, 2]


@pytest.mark.gpu
@needs_cuda
def test_opcheck_on_gpu():
    tg._ops()
    mu, logvar, eps = make_inputs("normal_rsample_kl", (5, 37), torch.float32, requires_grad=False)
    g = torch.randn(5, device="cuda")
    ns = torch.ops.elbobench_triton
    for op, args in [
        (ns.rsample_kl_fwd.default, (mu, logvar, None, 3, 0)),
        (ns.rsample_kl_bwd.default, (mu, g, mu, logvar, eps, 3, 0, True, True, True)),
        (ns.normal_log_prob_fwd.default, (eps, mu, logvar)),
        (ns.bernoulli_log_prob_fwd.default, (eps.sigmoid(), mu)),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("entry", ["public_api", "backend_module"])
def test_torch_compile_traces_the_ops_without_graph_breaks(entry):
    """A VAE-like step (fused rsample+KL, Gaussian and Bernoulli log-likelihoods) compiles
    with fullgraph=True, forward and backward, and matches eager."""
    mu, logvar, _ = make_inputs("normal_log_prob", (8, 64), torch.float32)
    xb = torch.rand(8, 64, device="cuda")
    if entry == "public_api":
        rsample_kl = lambda m, v: kernels.normal_rsample_kl(m, v, seed=3, backend="triton")  # noqa: E731
        log_prob = lambda x, m, v: kernels.normal_log_prob(x, m, v, backend="triton")  # noqa: E731
        bern = lambda x, logits: kernels.bernoulli_log_prob(x, logits, backend="triton")  # noqa: E731
    else:
        rsample_kl = lambda m, v: tg.normal_rsample_kl(m, v, None, 3)  # noqa: E731
        log_prob, bern = tg.normal_log_prob, tg.bernoulli_log_prob

    def step(mu, logvar):
        z, kl = rsample_kl(mu, logvar)
        return (bern(xb, z) - kl - log_prob(z, mu, logvar)).sum()

    # eager first: it also loads the backend module (registry.load imports it, which a
    # torch.compile trace cannot do without a graph break)
    want = torch.autograd.grad(step(mu, logvar), (mu, logvar))
    compiled = torch.compile(step, fullgraph=True)
    got = torch.autograd.grad(compiled(mu, logvar), (mu, logvar))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- elbobench gpu-kernels
def _gpu_bench_args(tmp_path, **kw):
    from bench.cli import gpu_kernels

    parser = argparse.ArgumentParser()
    gpu_kernels.add_arguments(parser)
    argv = ["--out", str(tmp_path / "gpu.csv"), "--sizes", "2x33", "--no-compile"]
    for k, v in kw.items():
        argv += [f"--{k}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_gpu_benchmark_exits_2_without_a_gpu(tmp_path, capsys):
    from bench.cli import gpu_kernels as cli_gpu
    from bench.measure import gpu_kernels

    assert cli_gpu.main(_gpu_bench_args(tmp_path)) == gpu_kernels.NO_GPU_EXIT == 2
    assert "needs compiled triton on a CUDA device: no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "gpu.csv").exists()


@needs_triton
def test_gpu_benchmark_rows_and_resume(tmp_path):
    """The benchmark's bookkeeping, run on tiny sizes with a stand-in timer (the interpreter on CPU)."""
    from bench.cli.gpu_kernels import KEYS
    from bench.measure import gpu_kernels
    from bench.results import read_results

    calls = []

    def timer(fn, warmup_ms, rep_ms):
        fn()
        calls.append(fn)
        return 1.0, 2.0, 3.0

    args = _gpu_bench_args(tmp_path)
    kw = {k: getattr(args, k) for k in KEYS}
    assert gpu_kernels.run(**kw, device=DEVICE, device_name="test-device", timer=timer) == args.out
    df = read_results(args.out)
    # one size: copy (ms, gbps) + per op and impl: 2 passes x (ms, gbps, x_copy)
    impls = {op: 3 if "seed" in gpu_kernels.TRAFFIC[op] else 2 for op in gpu_kernels.OPS}
    assert len(df) == 2 + 6 * sum(impls.values())
    assert set(df["backend"]) == {"copy", "triton", "triton_seed", "torch"}
    assert set(df["device"]) == {"test-device"} and set(df["benchmark"]) == {"gpu_kernels"}
    ms = df[(df.metric == "ms") & (df.backend != "copy")]
    assert (ms.p20 == 1.0).all() and (ms.p50 == 2.0).all() and (ms.p80 == 3.0).all()
    x = df[(df.metric == "x_copy") & (df.op == "normal_rsample_kl.fwd_bwd")]
    assert sorted(x.value) == pytest.approx(sorted([10 / 2, 10 / 2, 8 / 2]))  # same ms as the copy: moved / 2
    n_calls = len(calls)
    with pytest.raises(FileExistsError, match="exists; pass resume"):  # no overwrite
        gpu_kernels.run(**kw, device=DEVICE, device_name="test-device", timer=timer)
    kw["resume"] = True
    assert gpu_kernels.run(**kw, device=DEVICE, device_name="test-device", timer=timer) == args.out
    assert len(read_results(args.out)) == len(df) and len(calls) == n_calls + 1  # only the copy re-timed


def test_gpu_benchmark_argument_errors():
    from bench.cli import gpu_kernels as cli_gpu
    from bench.measure import gpu_kernels

    with pytest.raises(argparse.ArgumentTypeError, match="is not ROWSxCOLS"):
        cli_gpu._parse_sizes("256by64")
    with pytest.raises(argparse.ArgumentTypeError, match="--ops: expected"):
        cli_gpu._parse_ops("normal_rsample,nope")
    assert set(gpu_kernels.TRAFFIC) == set(gpu_kernels.OPS)
