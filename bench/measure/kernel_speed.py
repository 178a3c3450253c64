"""Kernel throughput: each op x backend x size against torch eager, torch.compile and copy bandwidth.

:func:`kernel_speed` returns rows of the results schema (``benchmark="speed"``,
``problem="kernel"``) that ``elbobench speed`` writes and the reports read;
:func:`summary` pivots them into one line per (op, size, pass) with the ratios
the backend issues set targets on.

What is timed (medians over ``repeats`` calls after warm-up, p20/p50/p80 kept):

* ``forward``: the op's forward alone. numba runs its launcher with
  preallocated outputs (``metric="ms"``) and, as a separate row, through the
  public API with allocation, validation and dispatch (``metric="ms_api"``); the
  difference is the allocation cost, reported apart because fresh pages for
  large outputs dominate at big sizes. torch eager and ``torch.compile`` (of the
  reference formulas in :mod:`kernels.reference`) are timed as called; they
  allocate their outputs.
* ``backward``: the backward alone from saved inputs and upstream gradients: the
  numba fused backward kernel (preallocated outputs) against the analytic
  backward formulas in torch, eager and compiled.
* ``forward_backward``: forward + ``torch.autograd.grad`` through autograd,
  what a training step does (every backend allocates here).
* the ``copy`` backend: ``Tensor.copy_`` of a ``[R, D]`` tensor, measured in the
  same run, whose GB/s is the bandwidth reference (``bytes = 2 R D itemsize``).
* ``normal_noise`` and ``normal_rsample_kl_noise`` (``eps=None``, Philox drawn
  in the kernel) add a ``ns_per_element`` row: Box-Muller needs log, sqrt and
  cos per pair, so noise is reported per element rather than held to bandwidth.

Byte model (``E = R D`` elements, ``R`` rows, gradients of the inputs a VAE step
differentiates: mu/logvar for the Gaussian ops, x/mu/logvar for
``normal_log_prob``, logits for ``bernoulli_log_prob``): bytes read + written by
an ideal single pass, e.g. ``normal_rsample_kl`` forward reads mu, logvar, eps
and writes z and kl: ``(4 E + R) * itemsize``. ``GB/s = bytes / median time``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import pandas as pd
import torch

import kernels
from bench.measure.timing import quantile, quantiles, time_call, time_round_robin
from bench.results import make_result, size_numel
from kernels import reference as ref

__all__ = [
    "BYTE_MODEL",
    "DEFAULT_OPS",
    "DEFAULT_SIZES",
    "NOISE_OPS",
    "kernel_speed",
    "op_bytes",
    "summary",
]

DEFAULT_SIZES = ((256, 64), (1024, 256), (4096, 1024), (16384, 1024))
DEFAULT_OPS = ("normal_rsample", "normal_kl_std", "normal_rsample_kl", "normal_log_prob", "bernoulli_log_prob")
NOISE_OPS = ("normal_noise", "normal_rsample_kl_noise")
BACKENDS = ("torch", "torch_compile", "numba")
PASSES = ("forward", "backward", "forward_backward")

# op -> (tensor args, args that get gradients, (forward E, forward R), (backward E, backward R))
BYTE_MODEL: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[int, int], tuple[int, int]]] = {
    "normal_rsample": (("mu", "logvar", "eps"), ("mu", "logvar"), (4, 0), (4, 0)),  # bwd: dz, lv, eps -> dlv
    "normal_kl_std": (("mu", "logvar"), ("mu", "logvar"), (2, 1), (4, 1)),
    "normal_rsample_kl": (("mu", "logvar", "eps"), ("mu", "logvar"), (4, 1), (6, 1)),
    "normal_log_prob": (("x", "mu", "logvar"), ("x", "mu", "logvar"), (3, 1), (6, 1)),
    "bernoulli_log_prob": (("x", "logits"), ("logits",), (2, 1), (3, 1)),
    "normal_noise": ((), (), (1, 0), (0, 0)),
    "normal_rsample_kl_noise": (("mu", "logvar"), ("mu", "logvar"), (3, 1), (4, 1)),
}


def op_bytes(op: str, rows: int, cols: int, itemsize: int, pass_: str) -> int:
    """Bytes read + written by one ideal pass of ``op`` on ``[rows, cols]`` inputs."""
    _, _, fwd, bwd = BYTE_MODEL[op]
    e, r = rows * cols, rows
    total = 0
    if pass_ in ("forward", "forward_backward"):
        total += fwd[0] * e + fwd[1] * r
    if pass_ in ("backward", "forward_backward"):
        total += bwd[0] * e + bwd[1] * r
    return total * itemsize


# --------------------------------------------------------------------------- torch formulas


def _torch_forward(op: str) -> Callable:
    """The reference forward of ``op`` as a function of its tensor args (eps explicit)."""
    return {
        "normal_rsample": lambda mu, logvar, eps: ref.normal_rsample(mu, logvar, eps, None),
        "normal_kl_std": ref.normal_kl_std,
        "normal_rsample_kl": lambda mu, logvar, eps: ref.normal_rsample_kl(mu, logvar, eps, None),
        "normal_log_prob": ref.normal_log_prob,
        "bernoulli_log_prob": ref.bernoulli_log_prob,
    }[op]


def _torch_backward(op: str) -> Callable:
    """Analytic backward formulas in torch: (upstream grads, inputs) -> grads of BYTE_MODEL's grad args."""

    def rsample(dz, mu, logvar, eps):
        return dz, 0.5 * dz * torch.exp(0.5 * logvar) * eps

    def kl(dkl, mu, logvar):
        g = dkl.unsqueeze(-1)
        return g * mu, 0.5 * g * (torch.exp(logvar) - 1.0)

    def rsample_kl(dz, dkl, mu, logvar, eps):
        g = dkl.unsqueeze(-1)
        s = torch.exp(0.5 * logvar)
        return dz + g * mu, 0.5 * dz * s * eps + 0.5 * g * (s * s - 1.0)

    def normal_lp(g, x, mu, logvar):
        g = g.unsqueeze(-1)
        d = x - mu
        q = d * torch.exp(-logvar)
        return -g * q, g * q, -0.5 * g * (1.0 - d * q)

    def bern_lp(g, x, logits):
        return (g.unsqueeze(-1) * (x - torch.sigmoid(logits)),)

    return {
        "normal_rsample": rsample,
        "normal_kl_std": kl,
        "normal_rsample_kl": rsample_kl,
        "normal_log_prob": normal_lp,
        "bernoulli_log_prob": bern_lp,
    }[op]


def _preallocated(op: str, backend: str, inputs: dict, ups: list):
    """The backend's ``(forward, backward)`` on preallocated outputs (:func:`kernels.preallocated_calls`)."""
    if op.endswith("_noise"):
        return kernels.preallocated_calls(op.removesuffix("_noise"), inputs, ups, backend=backend, seed=1)
    return kernels.preallocated_calls(op, inputs, ups, backend=backend)


# --------------------------------------------------------------------------- timing


def _make_inputs(op: str, rows: int, cols: int, dtype, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    args, grad_args, _, _ = BYTE_MODEL[op]
    out = {}
    for name in args:
        if name == "logvar":
            t = torch.rand(rows, cols, generator=gen) * 4 - 2
        elif name == "x" and op == "bernoulli_log_prob":
            t = torch.rand(rows, cols, generator=gen)
        elif name == "logits":
            t = 3 * torch.randn(rows, cols, generator=gen)
        else:
            t = torch.randn(rows, cols, generator=gen)
        out[name] = t.to(dtype)
    return out


def _upstream(op: str, rows: int, cols: int, dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    if op in ("normal_rsample",):
        shapes = [(rows, cols)]
    elif op in ("normal_rsample_kl", "normal_rsample_kl_noise"):
        shapes = [(rows, cols), (rows,)]
    else:
        shapes = [(rows,)]
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def _public_call(op: str, backend: str | None, compiled: dict):
    """Function of the op's tensor args through the public API (or the compiled reference)."""
    if backend == "torch_compile":
        key = op
        if key not in compiled:
            compiled[key] = torch.compile(_torch_forward(op), dynamic=False)
        return compiled[key]
    if op == "normal_rsample_kl_noise":
        return lambda mu, logvar: kernels.normal_rsample_kl(mu, logvar, seed=1, backend=backend)
    return lambda *a: getattr(kernels, op)(*a, backend=backend)


def _own(inputs: dict) -> dict:
    """A copy of every input tensor (same values, new memory)."""
    return {name: t.clone() for name, t in inputs.items()}


def _cell_call(op, backend, pass_, inputs, ups, dtype, size, compiled, compile_warmup):
    """``(callable, preallocated)`` timing ``op``'s ``pass_`` on ``backend``, or None where that cell does not exist.

    numba's forward and backward run its launchers on preallocated outputs; the
    torch baselines run the reference forward or the analytic backward formulas
    (compiled for ``"torch_compile"``, compiled here before timing when
    ``compile_warmup``); ``forward_backward`` goes through the public API and
    autograd for every backend. ``normal_noise`` has a forward only and no
    compiled baseline; ``normal_rsample_kl_noise`` has no compiled baseline.
    """
    if op == "normal_noise":
        if backend == "torch_compile" or pass_ != "forward":
            return None
        be = "torch" if backend == "torch" else backend
        return (lambda: kernels.normal_noise(size, seed=1, dtype=dtype, backend=be)), False
    if op == "normal_rsample_kl_noise" and backend == "torch_compile":
        return None  # the compiled reference has no in-kernel noise
    call = _public_call(op, backend, compiled)
    args = tuple(inputs.values())
    if pass_ == "forward":
        if backend == "numba":
            return _preallocated(op, backend, inputs, ups)[0], True
        if backend == "torch_compile" and compile_warmup:
            call(*args)
        return (lambda: call(*args)), False
    if pass_ == "backward":
        if backend not in BACKENDS or (op.endswith("_noise") and backend != "numba"):
            return None  # a standalone backward exists for numba and the torch formulas
        if backend == "numba":
            return _preallocated(op, backend, inputs, ups)[1], True
        formula = _torch_backward(op)
        if backend == "torch_compile":
            key = ("bwd", op)
            if key not in compiled:
                compiled[key] = torch.compile(formula, dynamic=False)
            formula = compiled[key]
        bwd = lambda: formula(*ups, *args)  # noqa: E731
        if backend == "torch_compile" and compile_warmup:
            bwd()
        return bwd, False
    # forward_backward through autograd
    grad_names = BYTE_MODEL[op][1]
    leaves = {n: t.detach().clone().requires_grad_(n in grad_names) for n, t in inputs.items()}
    wrt = [leaves[n] for n in inputs if n in grad_names]

    def step():
        outs = call(*leaves.values())
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.grad(outs, wrt, ups[: len(outs)])

    if backend == "torch_compile" and compile_warmup:
        step()
    return step, False


def kernel_speed(
    sizes: Sequence[Sequence[int]] = DEFAULT_SIZES,
    ops: Sequence[str] = DEFAULT_OPS,
    backends: Sequence[str] = BACKENDS,
    dtype: torch.dtype = torch.float32,
    passes: Sequence[str] = ("forward", "forward_backward"),
    repeats: int = 20,
    compile_warmup: bool = True,
    *,
    seed: int = 0,
    interleave: bool = False,
) -> pd.DataFrame:
    """Time kernel ops per backend and size; rows in the results schema.

    Args:
        sizes: ``[(R, D), ...]`` input shapes (R rows of D elements).
        ops: ops from :data:`DEFAULT_OPS` and/or :data:`NOISE_OPS`.
        backends: any of ``"torch"`` (eager reference), ``"torch_compile"``
            (``torch.compile`` of the reference formulas), ``"numba"``, or another
            registered backend that runs on CPU (timed through the public API);
            unavailable ones are skipped with a warning. A ``"copy"`` row per
            size is always added as the bandwidth reference.
        dtype: float dtype of every tensor.
        passes: any of ``"forward"``, ``"backward"``, ``"forward_backward"``.
        repeats: timed calls per configuration (after 2 warm-up calls).
        compile_warmup: compile ``torch.compile`` functions (forward and, for
            backward passes, the backward graph) before timing; without it the
            first call's ~10 s compile lands in the warm-up calls anyway, as
            warm-up is never timed.
        seed: seed of the random inputs.
        interleave: time each (op, size, pass) cell's backends and a copy of
            the same size in rounds, one call of each per round
            (:func:`bench.measure.timing.time_round_robin`), instead of one backend after the other,
            and add that copy as a ``"copy"`` ``GB/s`` row of the cell (``op``
            ``"<op>:<pass>"``), which :func:`summary` then takes as the cell's
            bandwidth reference. Ratios between backends and against copy then
            come from the same seconds of a shared machine. Each backend then
            reads its own copy of the inputs, and what it finds in cache is
            what the other calls of the round left (at sizes near the
            last-level cache, little): the copy reference is then a copy of
            cold data too, not the cache-resident copy of back-to-back calls.

    Returns:
        DataFrame with the columns of :class:`bench.results.Result`; ``op`` is
        ``"<op>:<pass>"`` (``"copy"`` for the copy rows); ``metric`` ``"ms"`` (value = median, p20/p50/p80), ``"GB/s"`` (byte
        model / median time), for numba forward also ``"ms_api"``, and for the
        noise ops ``"ns_per_element"``. ``config`` holds op, backend, size,
        dtype, pass, repeats, threads, bytes and whether outputs were preallocated.
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    bad = [p for p in passes if p not in PASSES]
    if bad:
        raise ValueError(f"passes must be a subset of {PASSES}, got {list(passes)}")
    bad = [o for o in ops if o not in BYTE_MODEL]
    if bad:
        raise ValueError(f"ops must be a subset of {list(BYTE_MODEL)}, got {list(ops)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sizes = [tuple(int(v) for v in s) for s in sizes]
    if any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be (rows, cols) pairs of positive ints, got {sizes}")
    usable = []
    for b in backends:
        if b in ("torch", "torch_compile", "copy"):
            usable.append(b)
        elif b in kernels.registry.names() and kernels.registry.unavailable_reason(b, "cpu") is None:
            usable.append(b)
        else:
            why = kernels.registry.unavailable_reason(b, "cpu") if b in kernels.registry.names() else "not a backend"
            warnings.warn(f"kernel_speed: skipping backend {b!r}: {why}", stacklevel=2)
    itemsize = torch.empty((), dtype=dtype).element_size()
    threads = {"torch_threads": torch.get_num_threads()}
    for b in usable:
        settings = kernels.describe_backend(b, "cpu") if b in kernels.registry.names() else {}
        threads.update({f"{b}_{k}": v for k, v in settings.items() if k != "cache_dir"})
    rows_out = []
    compiled: dict = {}

    def emit(op, backend, size, pass_, metric, ts=None, value=None, unit="", nbytes=0, prealloc=False):
        cfg = {
            "benchmark": "speed",
            "problem": "kernel",
            "op": op,
            "backend": backend,
            "size": f"{size[0]}x{size[1]}",
            "dtype": str(dtype).replace("torch.", ""),
            "pass": pass_,
            "repeats": repeats,
            "bytes": nbytes,
            "preallocated": prealloc,
            "interleaved": interleave,
            "seed": seed,
            **threads,
        }
        q = {}
        if ts is not None and metric == "ms":
            q = quantiles(ts, 1e3)
            value = q["p50"]
        elif ts is not None and metric == "GB/s":
            q = {k: nbytes / quantile(ts, p) / 1e9 for k, p in (("p20", 0.8), ("p50", 0.5), ("p80", 0.2))}
            value = q["p50"]
        rows_out.append(
            make_result(
                cfg,
                benchmark="speed",
                problem="kernel",
                backend=backend,
                op=f"{op}:{pass_}" if op != "copy" else "copy",
                size=cfg["size"],
                metric=metric,
                unit=unit,
                value=float(value),
                seed=seed,
                **q,
            )
        )

    for size in sizes:
        R, D = size
        # the same-run bandwidth reference
        src = torch.randn(R, D).to(dtype)
        dst = torch.empty_like(src)
        copy_fn = lambda d=dst, s=src: d.copy_(s)  # noqa: E731
        ts = time_call(copy_fn, repeats=repeats)
        copy_nb = 2 * R * D * itemsize
        emit("copy", "copy", size, "copy", "ms", ts, unit="ms", nbytes=copy_nb, prealloc=True)
        emit("copy", "copy", size, "copy", "GB/s", ts, unit="GB/s", nbytes=copy_nb, prealloc=True)
        for op in ops:
            inputs = _make_inputs(op, R, D, dtype, seed)
            ups = _upstream(op, R, D, dtype, seed)
            for pass_ in passes:
                cell = {}
                for backend in usable:
                    if backend != "copy":
                        # interleaved, each backend reads its own copy of the inputs: one backend's
                        # reads must not leave the next one's inputs in cache
                        ins, up = (_own(inputs), [u.clone() for u in ups]) if interleave else (inputs, ups)
                        made = _cell_call(op, backend, pass_, ins, up, dtype, size, compiled, compile_warmup)
                        if made is not None:
                            cell[backend] = made
                if not cell:
                    continue
                nb = op_bytes(op, R, D, itemsize, pass_)
                if interleave:
                    times = time_round_robin(
                        {**{b: fn for b, (fn, _) in cell.items()}, "copy": copy_fn}, repeats=repeats
                    )
                    # the copy timed in this cell's rounds: the cell's own bandwidth reference
                    emit(op, "copy", size, pass_, "GB/s", times.pop("copy"), unit="GB/s", nbytes=copy_nb, prealloc=True)
                else:
                    times = {b: time_call(fn, repeats=repeats) for b, (fn, _) in cell.items()}
                for backend, ts in times.items():
                    prealloc = cell[backend][1]
                    emit(op, backend, size, pass_, "ms", ts, unit="ms", nbytes=nb, prealloc=prealloc)
                    emit(op, backend, size, pass_, "GB/s", ts, unit="GB/s", nbytes=nb, prealloc=prealloc)
                    if op.endswith("_noise") and pass_ == "forward":
                        emit(op, backend, size, pass_, "ns_per_element", value=quantile(ts, 0.5) / (R * D) * 1e9)
                if pass_ == "forward" and "numba" in cell and op != "normal_noise":
                    call, args = _public_call(op, "numba", compiled), tuple(inputs.values())
                    ts_api = time_call(lambda c=call, a=args: c(*a), repeats=repeats)
                    emit(op, "numba", size, pass_, "ms_api", value=quantile(ts_api, 0.5) * 1e3, unit="ms")
    return pd.DataFrame([dataclasses.asdict(r) for r in rows_out])


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (op, size, pass): median ms per backend, copy GB/s and the target ratios.

    Columns: ``ms[<backend>]`` for each backend, ``copy_GBps``, ``numba_GBps``,
    ``numba_frac_of_copy`` (numba GB/s over the same size's copy GB/s),
    ``numba_frac_of_largest_copy`` (over the copy GB/s of the run's largest
    size), ``speedup_vs_torch_compile`` and ``speedup_vs_torch`` (their median
    time over numba's).

    The two copy references differ where the same-size copy fits in the last-level
    cache and the op does not: at [4096, 1024] float32 copy moves 2 x 16 MB, which
    sit in a 32 MB L3 (the AMD EPYC host of reports/cpu/amd-epyc), while the fused ops move 48-96 MB from DRAM. The
    largest size of the default table, [16384, 1024] (2 x 64 MB), streams from
    DRAM, so ``numba_frac_of_largest_copy`` is the op's share of DRAM bandwidth. It
    is informational: the issue's targets use the same-size copy.
    """
    df = df[df["benchmark"] == "speed"]
    ms = df[df["metric"] == "ms"]
    gbps = df[df["metric"] == "GB/s"]
    copy = gbps[(gbps["backend"] == "copy") & (gbps["op"] == "copy")].set_index("size")["value"]
    largest = max(copy.index, key=size_numel) if len(copy) else None
    out = []
    for (op, size), grp in ms[ms["backend"] != "copy"].groupby(["op", "size"], sort=False):
        row = {"op": op.split(":")[0], "pass": op.split(":")[1], "size": size}
        for _, r in grp.iterrows():
            row[f"ms[{r['backend']}]"] = r["value"]
        bw = gbps[(gbps["op"] == op) & (gbps["size"] == size)].set_index("backend")["value"]
        # the copy timed in this cell's rounds (interleave=True), else the size's own
        row["copy_GBps"] = bw["copy"] if "copy" in bw else copy.get(size, math.nan)
        if "numba" in bw:
            row["numba_GBps"] = bw["numba"]
            row["numba_frac_of_copy"] = bw["numba"] / row["copy_GBps"]
            row["numba_frac_of_largest_copy"] = bw["numba"] / copy[largest] if largest is not None else math.nan
        if "ms[numba]" in row:
            for base in ("torch_compile", "torch"):
                if f"ms[{base}]" in row:
                    row[f"speedup_vs_{base}"] = row[f"ms[{base}]"] / row["ms[numba]"]
        out.append(row)
    return pd.DataFrame(out)
