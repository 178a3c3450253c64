"""The discrete-family ops (:mod:`kernels.discrete`) of every backend that has them, against the torch oracle.

Parametrized over the backends that run on CPU here and implement the op (a
backend may lack any discrete op, ``kernels.registry.OPTIONAL_OPS``), the torch
reference included. What is checked:

* outputs and input gradients (random, non-unit upstream gradients) against the
  reference, in float32 and float64, on small shapes, broadcast inputs and one
  shape large enough for the numba parallel kernels; samples (Bernoulli, the
  antithetic pair, one-hot) must be equal bit for bit, and so must uniforms
  drawn inside a kernel and the reference's for the same seed. Tolerances come
  from :mod:`kernels.testing`; in float32 a value may also be off the float64
  reference by up to twice the float32 reference's own error there (the
  reference loses digits where the kernels do not, e.g. ``log1p(-p (1 - v))`` at
  ``p = 1``): the rule of ``DESIGN.md`` for low precision;
* float64 ``gradcheck`` of every differentiable op, saturated logits (+-40),
  ARM/DisARM's weight against its definition, the relaxations' consistency with
  their samples, ``torch.func`` transforms;
* statistics with fixed seeds: sample means and category frequencies within
  ``Z = 5`` standard errors of ``sigmoid(logits)`` and ``softmax(logits)``;
* the registry: a backend without an op is refused by name, ``auto`` picks numba
  on CPU and skips a backend that lacks the op.
"""

from __future__ import annotations

import math
import sys
import types

import numba
import pytest
import torch
from torch.func import grad, vmap

import kernels
from kernels import registry
from kernels.registry import BackendInfo, BackendUnavailableError
from kernels.testing import assert_close_to_reference, tolerance

DTYPES = [torch.float32, torch.float64]
CPU_BACKENDS = [n for n in registry.names() if registry.unavailable_reason(n, "cpu") is None]

NOISE_OPS = (
    "bernoulli_sample",
    "bernoulli_antithetic",
    "binary_concrete",
    "bernoulli_conditional_relaxed",
    "categorical_sample",
    "gumbel_softmax",
)
TAU_OPS = ("binary_concrete", "bernoulli_conditional_relaxed", "gumbel_softmax")
PAIR_OPS = ("bernoulli_kl", "categorical_kl", "categorical_log_prob")
CATEGORICAL = ("categorical_sample", "categorical_log_prob", "categorical_kl", "gumbel_softmax")
OPS = NOISE_OPS + PAIR_OPS
# the differentiable inputs of each op (the samples have none)
GRAD_INPUTS = {
    "bernoulli_kl": ("logits", "prior_logits"),
    "categorical_kl": ("logits", "prior_logits"),
    "categorical_log_prob": ("x", "logits"),
    "binary_concrete": ("logits", "temperature"),
    "bernoulli_conditional_relaxed": ("logits", "temperature"),
    "gumbel_softmax": ("logits", "temperature"),
}
# outputs compared bit for bit (by output index)
EXACT = {"bernoulli_sample": (0,), "bernoulli_antithetic": (0, 1), "categorical_sample": (0,)}

# (logits shape, shape of the other tensor inputs); the last takes the numba parallel path,
# tested in float32 only (as in test_kernels_contract.py): on a fresh numba cache the
# parallel kernel costs about 10 s of compile per dtype
BERNOULLI_SHAPES = [((1, 1), None), ((3, 7), None), ((2, 3, 5), None), ((3, 1, 5), (3, 4, 5)), ((64, 300), None)]
CATEGORICAL_SHAPES = [((2, 1, 3), None), ((3, 4, 5), None), ((3, 1, 5), (3, 4, 5)), ((32, 60, 10), None)]
LARGE = {(64, 300), (32, 60, 10)}
Z = 5.0  # z-bound of the statistical tests


def backends_with(op: str) -> list[str]:
    return [n for n in CPU_BACKENDS if callable(getattr(registry.load(n), op, None))]


def small_only(backend: str) -> bool:
    return bool(getattr(registry.load(backend), "TEST_SHAPES_SMALL", False))


def cases(ops):
    """``(backend, op)`` pairs of every backend here that has the op."""
    return [pytest.param(b, op, id=f"{op}-{b}") for op in ops for b in backends_with(op)]


# --------------------------------------------------------------------------- inputs and runs


def make_case(op, shape, dtype, *, other=None, noise="u", seed=0, scale=3.0, tau=0.7) -> dict:
    """Inputs of ``op`` by name: logits of ``shape`` (drawn in float64, cast), the others of ``other``."""
    gen = torch.Generator().manual_seed(seed)
    other = shape if other is None else other

    def randn(s):
        return torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)

    def rand(s):
        return (torch.rand(s, generator=gen, dtype=torch.float64) * 0.998 + 0.001).to(dtype)

    c = {"logits": (scale * randn(shape))}
    if op in ("bernoulli_kl", "categorical_kl"):
        c["prior_logits"] = randn(other)
    if op == "categorical_log_prob":
        c["x"] = rand(other)
    if op == "bernoulli_conditional_relaxed":
        c["b"] = (rand(other) < 0.5).to(dtype)
    if op in NOISE_OPS:
        if noise == "u":
            c["u"] = rand(other)
        else:
            c["seed"] = 1000 + seed
    if op in TAU_OPS:
        c["temperature"] = torch.tensor(tau, dtype=dtype)
    for name in GRAD_INPUTS.get(op, ()):
        c[name].requires_grad_()
    return c


def as_float64(c: dict) -> dict:
    """The same case in float64 (the same values: float32 -> float64 is exact)."""
    out = {}
    for k, v in c.items():
        out[k] = v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
    return out


def call(op: str, backend: str, c: dict):
    fn = getattr(kernels, op)
    if op in ("bernoulli_kl", "categorical_kl"):
        return fn(c["logits"], c["prior_logits"], backend=backend)
    if op == "categorical_log_prob":
        return fn(c["x"], c["logits"], backend=backend)
    kw = {"seed": c.get("seed"), "backend": backend}
    if op in TAU_OPS:
        kw["temperature"] = c["temperature"]
    if op == "bernoulli_conditional_relaxed":
        return fn(c["logits"], c["b"], c.get("u"), **kw)
    return fn(c["logits"], c.get("u"), **kw)


def run(op: str, backend: str, c: dict, upstream_seed: int = 1):
    """``(outputs, grads of GRAD_INPUTS[op])`` under random upstream gradients (drawn in float64, cast)."""
    out = call(op, backend, c)
    outs = out if isinstance(out, tuple) else (out,)
    names = GRAD_INPUTS.get(op, ())
    if not names:
        return tuple(o.detach() for o in outs), ()
    gen = torch.Generator().manual_seed(upstream_seed)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, [c[n] for n in names], ups)
    return tuple(o.detach() for o in outs), grads


def terms(op: str, c: dict) -> tuple[int, int]:
    """Summed terms behind each output value and behind each gradient value (the temperature's: all)."""
    shape = torch.broadcast_shapes(*(v.shape for v in c.values() if isinstance(v, torch.Tensor) and v.dim()))
    if op == "bernoulli_kl":
        return shape[-1], 1
    if op in ("categorical_kl", "categorical_log_prob"):
        return shape[-1] * shape[-2], shape[-1]
    return 1, math.prod(shape)


def assert_as_accurate(actual, ref, ref64, *, terms: int = 1, msg: str = ""):
    """``actual`` matches the reference within :func:`kernels.testing.tolerance`.

    In float32 it may instead be off the float64 reference by up to twice the
    float32 reference's own error there (DESIGN.md: low precision).
    """
    assert actual.shape == ref.shape and actual.dtype == ref.dtype, msg
    if ref.dtype == torch.float64:
        assert_close_to_reference(actual, ref, terms=terms, msg=msg)
        return
    tol = tolerance(ref.dtype, terms)
    err = (actual.double() - ref64).abs()
    allowed = tol["atol"] + tol["rtol"] * ref64.abs() + 2 * (ref.double() - ref64).abs()
    bad = ~(err <= allowed)
    assert not bad.any(), (
        f"{msg}: {int(bad.sum())} of {bad.numel()} values off the float64 reference by more than the "
        f"tolerance and twice the float32 reference's error; worst excess {float((err - allowed).max()):.3g}"
    )


def check_against_reference(op, backend, c, msg):
    outs, grads = run(op, backend, c)
    ref_outs, ref_grads = run(op, "torch", c)
    if c["logits"].dtype == torch.float64:
        ref64_outs, ref64_grads = ref_outs, ref_grads
    else:
        ref64_outs, ref64_grads = run(op, "torch", as_float64(c))
    t_out, t_grad = terms(op, c)
    for i, (o, r, r64) in enumerate(zip(outs, ref_outs, ref64_outs, strict=True)):
        if i in EXACT.get(op, ()):
            assert o.dtype == r.dtype and torch.equal(o, r), f"{msg} sample {i}: not equal to the reference's"
        else:
            assert_as_accurate(o, r, r64, terms=t_out, msg=f"{msg} output {i}")
    for name, g, r, r64 in zip(GRAD_INPUTS.get(op, ()), grads, ref_grads, ref64_grads, strict=True):
        assert g.shape == c[name].shape, f"{msg} d{name}: shape {list(g.shape)}"
        assert_as_accurate(g, r, r64, terms=t_grad if name == "temperature" else 1, msg=f"{msg} d{name}")


# --------------------------------------------------------------------------- against the reference


def shapes_of(op):
    return CATEGORICAL_SHAPES if op in CATEGORICAL else BERNOULLI_SHAPES


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", ["u", "seed"])
@pytest.mark.parametrize("backend, op", cases(NOISE_OPS))
def test_noise_ops_match_reference(backend, op, noise, dtype):
    for shape, other in shapes_of(op):
        if shape in LARGE and (small_only(backend) or dtype != torch.float32):
            continue
        c = make_case(op, shape, dtype, other=other, noise=noise, seed=len(shape))
        check_against_reference(op, backend, c, f"{op}[{backend}, {dtype}, {list(shape)}, {noise}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend, op", cases(PAIR_OPS))
def test_kl_and_log_prob_match_reference(backend, op, dtype):
    for shape, other in shapes_of(op):
        if shape in LARGE and (small_only(backend) or dtype != torch.float32):
            continue
        c = make_case(op, shape, dtype, other=other, seed=len(shape))
        check_against_reference(op, backend, c, f"{op}[{backend}, {dtype}, {list(shape)}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend, op", cases(OPS))
def test_saturated_logits(backend, op, dtype):
    """Logits of +-40 (sigmoid is 1 or 0 in float32): finite values and gradients, as the reference."""
    shape = (4, 6, 5) if op in CATEGORICAL else (4, 30)
    c = make_case(op, shape, dtype, seed=3)
    sign = torch.where(torch.arange(math.prod(shape)) % 3 == 0, -1.0, 1.0).view(shape)
    c["logits"] = (40.0 * sign).to(dtype).requires_grad_(c["logits"].requires_grad)
    if "prior_logits" in c:
        c["prior_logits"] = (-40.0 * sign.roll(1)).to(dtype).requires_grad_()
    outs, grads = run(op, backend, c)
    for t in (*outs, *grads):
        assert torch.isfinite(t).all(), f"{op}[{backend}]: non-finite values at logits +-40"
    check_against_reference(op, backend, c, f"{op}[{backend}, {dtype}, logits +-40]")
    if op == "bernoulli_sample":
        assert torch.equal(outs[0], (sign > 0).to(dtype))


def test_uniform_noise_bitwise_equal():
    for shape in [(1,), (3, 4, 5), (300, 257)]:  # the last: the parallel fill kernel
        for seed in (0, 7, 2**40 + 3):
            for dtype in DTYPES:
                ref = kernels.uniform_noise(shape, seed=seed, dtype=dtype, backend="torch")
                for backend in backends_with("uniform_noise"):
                    u = kernels.uniform_noise(shape, seed=seed, dtype=dtype, backend=backend)
                    assert u.dtype == dtype and u.shape == shape and torch.equal(u, ref), (backend, shape, seed)
                assert float(ref.min()) >= 2**-24 and float(ref.max()) <= 1 - 2**-24


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend, op", cases(NOISE_OPS))
def test_drawn_noise_is_the_stream(backend, op, dtype):
    """A kernel drawing its uniforms for a seed gives what it gives for ``uniform_noise(seed)`` passed in."""
    for shape in [(3, 4, 5)] + ([(32, 60, 10)] if dtype == torch.float32 else []):
        drawn = make_case(op, shape, dtype, noise="seed", seed=2)
        given = dict(drawn)
        given["u"] = kernels.uniform_noise(shape, seed=given.pop("seed"), dtype=dtype, backend="torch")
        a_outs, a_grads = run(op, backend, drawn)
        b_outs, b_grads = run(op, backend, given)
        for a, b in zip(a_outs + a_grads, b_outs + b_grads, strict=True):
            assert torch.equal(a, b), f"{op}[{backend}]: drawn noise differs from the stream passed in"


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("backend", backends_with("bernoulli_antithetic"))
def test_antithetic_pair_and_weight_follow_their_definition(backend):
    c = make_case("bernoulli_antithetic", (50, 40), torch.float64, seed=5)
    b1, b2, w = kernels.bernoulli_antithetic(c["logits"], c["u"], backend=backend)
    p = torch.sigmoid(c["logits"])
    assert torch.equal(b1, (c["u"] > torch.sigmoid(-c["logits"])).double())
    assert torch.equal(b2, (c["u"] < p).double())
    expected = torch.where(b1 != b2, (1 - 2 * b2) * torch.sigmoid(c["logits"].abs()), torch.zeros_like(p))
    assert_close_to_reference(w, expected, msg=f"DisARM weight [{backend}]")
    assert bool((b1 != b2).any()) and bool((b1 == b2).any())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_thresholds_are_strict_and_ties_go_first(dtype):
    """u equal to the probability is no success (``u < p``, ``u > 1 - p``); equal Gumbel scores pick the first."""
    logits, u = torch.zeros(3, 4, dtype=dtype), torch.full((3, 4), 0.5, dtype=dtype)
    for backend in backends_with("bernoulli_antithetic"):
        assert not kernels.bernoulli_sample(logits, u, backend=backend).any()
        b1, b2, w = kernels.bernoulli_antithetic(logits, u, backend=backend)
        assert not (b1.any() or b2.any() or w.any())
    for backend in backends_with("categorical_sample"):
        x = kernels.categorical_sample(logits, u, backend=backend)
        assert torch.equal(x[..., 0], torch.ones(3, dtype=dtype)) and x.sum() == 3


@pytest.mark.parametrize("backend", backends_with("bernoulli_conditional_relaxed"))
def test_conditional_relaxed_sample_agrees_with_b(backend):
    """REBAR's relaxed sample given b lies on b's side of 1/2 (z~ > 0 exactly when b = 1)."""
    c = make_case("bernoulli_conditional_relaxed", (40, 50), torch.float32, noise="seed", seed=6)
    y = kernels.bernoulli_conditional_relaxed(c["logits"], c["b"], temperature=0.5, seed=c["seed"], backend=backend)
    on = c["b"] > 0.5
    assert bool((y[on] > 0.5 - 1e-6).all()) and bool((y[~on] < 0.5 + 1e-6).all())


@pytest.mark.parametrize("backend, op", cases(["binary_concrete", "gumbel_softmax"]))
def test_relaxation_argmax_is_the_sample(backend, op):
    """Gumbel-softmax's argmax is categorical_sample's category; binary Concrete > 1/2 is the ARM b1."""
    shape = (30, 20, 6) if op == "gumbel_softmax" else (30, 40)
    c = make_case(op, shape, torch.float64, seed=8)
    y = getattr(kernels, op)(c["logits"], c["u"], temperature=0.3, backend=backend)
    if op == "gumbel_softmax":
        x = kernels.categorical_sample(c["logits"], c["u"], backend=backend)
        assert torch.equal(y.argmax(-1), x.argmax(-1))
    else:
        b1, _, _ = kernels.bernoulli_antithetic(c["logits"], c["u"], backend=backend)
        assert torch.equal((y > 0.5).double(), b1)


# --------------------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize(
    "op, noise", [(op, noise) for op in GRAD_INPUTS for noise in (("u", "seed") if op in NOISE_OPS else ("u",))]
)
def test_gradcheck_numba(op, noise):
    if "numba" not in backends_with(op):
        pytest.skip(f"numba has no {op} kernel here")
    shape = (2, 3, 4) if op in CATEGORICAL else (3, 4)
    c = make_case(op, shape, torch.float64, noise=noise, seed=4, scale=1.5)
    names = GRAD_INPUTS[op]

    def fn(*xs):
        return call(op, "numba", {**c, **dict(zip(names, xs, strict=True))})

    assert torch.autograd.gradcheck(fn, [c[n] for n in names], eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend, op", cases(GRAD_INPUTS))
def test_gradient_of_one_input_only(backend, op, dtype):
    """Each differentiable input alone (the other a constant): the backward skips the gradient not asked for."""
    shape = (3, 4, 5) if op in CATEGORICAL else (4, 9)
    for name in GRAD_INPUTS[op]:
        c = make_case(op, shape, dtype, noise="seed", seed=11)
        for other in GRAD_INPUTS[op]:
            if other != name:
                c[other] = c[other].detach()
        outs = call(op, backend, c)
        ref = call(op, "torch", c)
        (g,) = torch.autograd.grad(outs, [c[name]], torch.ones_like(outs))
        (r,) = torch.autograd.grad(ref, [c[name]], torch.ones_like(ref))
        n = math.prod(shape) if name == "temperature" else 1
        assert_close_to_reference(g, r, terms=n, msg=f"{op}[{backend}] d{name} alone")


# --------------------------------------------------------------------------- statistics (fixed seeds)


@pytest.mark.parametrize("backend", backends_with("bernoulli_sample"))
def test_bernoulli_mean_is_sigmoid(backend):
    n = 20000
    logits = torch.tensor([-4.0, -1.5, -0.3, 0.0, 0.4, 1.0, 2.5, 5.0])
    p = torch.sigmoid(logits.double())
    se = (p * (1 - p) / n).sqrt()
    b = kernels.bernoulli_sample(logits.expand(n, -1), seed=123, backend=backend)
    b1, b2, _ = kernels.bernoulli_antithetic(logits.expand(n, -1), seed=321, backend=backend)
    for what, s in (("bernoulli_sample", b), ("antithetic b1", b1), ("antithetic b2", b2)):
        z = (s.double().mean(0) - p).abs() / se
        assert bool((z < Z).all()), f"{what}[{backend}]: z-scores {z.tolist()} of the mean against sigmoid"


@pytest.mark.parametrize("backend", backends_with("categorical_sample"))
def test_categorical_frequencies_are_softmax(backend):
    n = 20000
    logits = torch.tensor([[-1.0, 0.0, 0.5, 2.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
    pi = torch.softmax(logits.double(), -1)
    se = (pi * (1 - pi) / n).sqrt()
    x = kernels.categorical_sample(logits.expand(n, -1, -1), seed=99, backend=backend)
    assert torch.equal(x.sum(-1), torch.ones(n, 2))
    z = (x.double().mean(0) - pi).abs() / se
    assert bool((z < Z).all()), f"categorical_sample[{backend}]: z-scores {z.tolist()} of frequencies against softmax"


# --------------------------------------------------------------------------- numba specifics


def _numba_discrete():
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba does not run here")
    from kernels.numba_cpu import discrete

    return discrete


@pytest.mark.parametrize("op", OPS)
def test_numba_parallel_path_equals_serial(op, monkeypatch):
    """The parallel kernels give the serial kernels' values bit for bit (nothing depends on the task split)."""
    discrete = _numba_discrete()
    from kernels.numba_cpu._flags import PARALLEL_MIN_ELEMENTS_BERNOULLI

    if numba.get_num_threads() < 2:
        pytest.skip("one numba thread: no parallel path")
    shape = (32, 60, 10) if op in CATEGORICAL else (64, 300)
    assert math.prod(shape) >= PARALLEL_MIN_ELEMENTS_BERNOULLI
    for noise in ("u", "seed") if op in NOISE_OPS else ("u",):
        c = make_case(op, shape, torch.float32, noise=noise, seed=9)
        par = run(op, "numba", c)
        monkeypatch.setattr(discrete, "use_parallel", lambda *a: False)
        ser = run(op, "numba", c)
        monkeypatch.undo()
        for a, b in zip(par[0] + par[1], ser[0] + ser[1], strict=True):
            assert torch.equal(a, b), f"{op} ({noise}): parallel and serial kernels differ"


def test_numba_samples_carry_no_graph():
    logits = torch.randn(4, 5, requires_grad=True)
    for op in ("bernoulli_sample", "categorical_sample"):
        assert not getattr(kernels, op)(logits, seed=1, backend="numba").requires_grad
    assert not any(t.requires_grad for t in kernels.bernoulli_antithetic(logits, seed=1, backend="numba"))
    y = kernels.binary_concrete(logits, seed=1, temperature=0.5, backend="numba")  # float temperature: no tau grad
    assert y.requires_grad
    (g,) = torch.autograd.grad(y.sum(), [logits])
    assert torch.isfinite(g).all()


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # the reference's scatter_ under vmap
def test_numba_under_torch_func():
    """grad and vmap(grad) through the numba Functions equal the reference's (per-sample temperature grads)."""
    _numba_discrete()
    dt = torch.float64
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, generator=gen, dtype=dt)
    prior = torch.randn(4, 3, 5, generator=gen, dtype=dt)
    u = torch.rand(4, 3, 5, generator=gen, dtype=dt)
    tau = torch.tensor(0.6, dtype=dt)

    def loss(backend):
        def f(lg, t, u):
            b = (u > 0.5).to(dt)
            return (
                (kernels.binary_concrete(lg, u, temperature=t, backend=backend) * u).sum()
                + (kernels.binary_concrete(lg, temperature=t, seed=3, backend=backend) ** 2).sum()
                + (kernels.gumbel_softmax(lg, temperature=t, seed=5, backend=backend) * u).sum()
                + (kernels.bernoulli_conditional_relaxed(lg, b, temperature=t, seed=7, backend=backend) * u).sum()
                + kernels.bernoulli_kl(lg, prior, backend=backend).sum()
                + kernels.categorical_kl(lg, prior, backend=backend).sum()
                + kernels.categorical_log_prob(u, lg, backend=backend).sum()
            )

        return f

    got = grad(loss("numba"), argnums=(0, 1))(logits, tau, u)
    want = grad(loss("torch"), argnums=(0, 1))(logits, tau, u)
    assert_close_to_reference(got, want, terms=60, msg="grad")
    got = vmap(grad(loss("numba"), argnums=(0, 1)), in_dims=(0, None, 0))(logits, tau, u)
    want = vmap(grad(loss("torch"), argnums=(0, 1)), in_dims=(0, None, 0))(logits, tau, u)
    assert got[1].shape == (4,)
    assert_close_to_reference(got, want, terms=15, msg="vmap(grad)")
    for op in ("bernoulli_sample", "categorical_sample"):
        a = vmap(lambda x, op=op: getattr(kernels, op)(x, seed=3, backend="numba"))(logits)
        b = vmap(lambda x, op=op: getattr(kernels, op)(x, seed=3, backend="torch"))(logits)
        assert torch.equal(a, b), op


# --------------------------------------------------------------------------- registry


@pytest.fixture
def stub_backend():
    """A registered backend with the Gaussian ops only (the reference's) and top auto priority."""
    from kernels import reference

    mod = types.ModuleType("elbobench_test_stub_backend")
    for name in (*registry.OPS, "availability"):
        setattr(mod, name, getattr(reference, name, lambda device: None))
    sys.modules[mod.__name__] = mod
    registry.register(
        BackendInfo(name="stub", module=mod.__name__, devices=("cpu",), description="test", auto_priority=99)
    )
    try:
        yield "stub"
    finally:
        registry._REGISTRY.pop("stub", None)
        registry._MODULES.pop("stub", None)
        registry.clear_cache()
        sys.modules.pop(mod.__name__, None)


@pytest.mark.parametrize("op", OPS)
def test_backend_without_the_op_is_refused_by_name(op, stub_backend):
    c = make_case(op, (2, 3, 4), torch.float32)
    refused = [stub_backend]
    if "triton" in registry.names() and registry.unavailable_reason("triton", "cpu") is None:
        if not callable(getattr(registry.load("triton"), op, None)):
            refused.append("triton")
    for backend in refused:
        with pytest.raises(BackendUnavailableError, match=op) as err:
            call(op, backend, c)
        assert "numba" in str(err.value) and backend in str(err.value)
    with pytest.raises(BackendUnavailableError, match="uniform_noise"):
        kernels.uniform_noise((3,), seed=0, backend=stub_backend)


@pytest.mark.parametrize("op", OPS)
def test_auto_resolves_to_numba_on_cpu(op, stub_backend):
    """auto picks numba for the discrete ops, skipping a higher-priority backend that lacks them."""
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba does not run here")
    for dtype in DTYPES:
        assert kernels.resolve_backend("auto", "cpu", dtype, op=op) == "numba"
    assert kernels.resolve_backend("auto", "cpu", torch.float32) == stub_backend  # it has the Gaussian ops
    c = make_case(op, (2, 3, 4), torch.float32)
    outs, _ = run(op, "auto", c)
    ref, _ = run(op, "numba", c)
    assert all(torch.equal(a, b) for a, b in zip(outs, ref, strict=True))
