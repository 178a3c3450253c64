"""GPU timing of the triton kernels against torch eager, torch.compile and a device copy.

Run it on a machine with a CUDA device and triton: ``elbobench gpu-kernels --out
reports/gpu/<gpu>.csv`` (``--help`` for the options), or :func:`run` from Python.

For every op and size ``[R, D]`` (float32 by default) it times the forward pass
and the forward plus backward pass with the suite's timer
(:func:`bench.measure.timing.time_call`, synchronized, L2 flushed before each
call; median and 20/80 % quantiles over ``--rep-ms`` of repeats) for:

* ``triton``: the triton backend (the noise of the rsample ops passed as ``eps``);
* ``triton_seed``: rsample ops only, noise drawn inside the kernels from a seed
  (and regenerated in the backward kernel instead of being read);
* ``torch``: the eager torch reference (:mod:`kernels.reference`), same ``eps``;
* ``torch_compile``: the same reference formulas under ``torch.compile``
  (warmed up outside the timed region);
* ``copy``: ``dst.copy_(src)`` of one ``[R, D]`` tensor, the bandwidth yardstick
  measured in the same run.

Inputs that need gradients: ``mu``, ``logvar`` and the Gaussian's ``x`` (a
sample, as in STL/DReG); never ``eps`` or the Bernoulli's data ``x``. The
backward uses ``torch.autograd.grad`` with fixed random upstream gradients.

Effective bandwidth = (bytes an ideal fused implementation must move) / median
time, with the byte counts of :data:`TRAFFIC` (in units of one ``[R, D]`` tensor;
row vectors ``[R]`` are neglected): e.g. fused rsample+KL forward with ``eps``
reads mu, logvar, eps and writes z (4 tensors). ``x_copy`` = that bandwidth over
the copy's (``2 * R * D * itemsize`` bytes per copy). Outputs are allocated by the
ops (torch's caching allocator makes that cheap on a GPU after warm-up).

Every measurement is one row of :class:`bench.results.Result`
(``benchmark="gpu_kernels"``, device = the GPU's name), appended to the CSV as
soon as its op and size finish; ``--resume`` skips the configurations already
there. Without a CUDA device ``elbobench gpu-kernels`` exits with code 2.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.measure.timing import quantile, quantiles, time_call
from bench.results import FIELDS, Manifest, Result, check_schema, config_hash, done_hashes, make_result

__all__ = ["DEFAULT_SIZES", "OPS", "TRAFFIC", "gpu_unavailable_reason", "measure_op", "run"]


OPS = ("normal_rsample", "normal_kl_std", "normal_rsample_kl", "normal_log_prob", "bernoulli_log_prob")
DEFAULT_SIZES = ((256, 64), (4096, 64), (65536, 64), (1024, 256), (16384, 256), (4096, 1024), (65536, 1024))
NO_GPU_EXIT = 2

# op -> variant -> (forward, forward + backward) traffic in [R, D] tensors moved by
# an ideal fused implementation (reads + writes; a gradient equal to an upstream
# gradient, like d z / d mu = gz, costs nothing).
TRAFFIC = {
    "normal_rsample": {"eps": (4, 8), "seed": (3, 6)},  # bwd: gz, logvar, eps -> glogvar
    "normal_kl_std": {"eps": (2, 6)},  # bwd: mu, logvar -> gmu, glogvar
    "normal_rsample_kl": {"eps": (4, 10), "seed": (3, 8)},  # bwd: gz, mu, logvar, eps -> gmu, glogvar
    "normal_log_prob": {"eps": (3, 9)},  # bwd: x, mu, logvar -> gx, gmu, glogvar
    "bernoulli_log_prob": {"eps": (2, 5)},  # bwd: x, logits -> glogits
}


# --------------------------------------------------------------------------- the measured functions
def _inputs(
    op: str, r: int, d: int, dtype: torch.dtype, seed: int, grad: bool, device: str = "cuda"
) -> dict[str, torch.Tensor]:
    """The op's tensors on ``device``; ``grad`` marks mu, logvar and the Gaussian's x as requiring grad."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def t(scale=1.0, shift=0.0, uniform=False, req=False):
        fn = torch.rand if uniform else torch.randn
        x = (fn((r, d), generator=gen, device=device, dtype=torch.float32) * scale + shift).to(dtype)
        return x.requires_grad_(grad and req)

    if op in ("normal_rsample", "normal_rsample_kl"):
        return {"mu": t(req=True), "logvar": t(4.0, -2.0, uniform=True, req=True), "eps": t()}
    if op == "normal_kl_std":
        return {"mu": t(req=True), "logvar": t(4.0, -2.0, uniform=True, req=True)}
    if op == "normal_log_prob":
        return {"x": t(req=True), "mu": t(req=True), "logvar": t(4.0, -2.0, uniform=True, req=True)}
    return {"x": t(uniform=True), "logits": t(3.0, req=True)}


def _op_fn(op: str, impl: str, compile_dynamic: bool) -> Callable:
    """``f(**inputs) -> output or tuple`` for one implementation."""
    from kernels import reference
    from kernels import triton_gpu as tg

    if impl in ("torch", "torch_compile"):
        mod = reference
    else:
        mod = tg
    fns = {
        "normal_rsample": lambda mu, logvar, eps: mod.normal_rsample(mu, logvar, eps, None),
        "normal_kl_std": lambda mu, logvar: mod.normal_kl_std(mu, logvar),
        "normal_rsample_kl": lambda mu, logvar, eps: mod.normal_rsample_kl(mu, logvar, eps, None),
        "normal_log_prob": lambda x, mu, logvar: mod.normal_log_prob(x, mu, logvar),
        "bernoulli_log_prob": lambda x, logits: mod.bernoulli_log_prob(x, logits),
    }
    fn = fns[op]
    if impl == "triton_seed":
        seeded = {"normal_rsample": tg.normal_rsample, "normal_rsample_kl": tg.normal_rsample_kl}[op]
        fn = lambda mu, logvar, eps: seeded(mu, logvar, None, 1234)  # noqa: E731
    if impl == "torch_compile":
        # Dynamo caches compiled code per code object: the same lambda compiled for many
        # sizes (and with and without grad) would pass the recompile limit and silently
        # run eagerly. A reset per (op, size) keeps every static measurement compiled;
        # dynamic=True needs no recompiles across sizes.
        if not compile_dynamic:
            torch._dynamo.reset()
        fn = torch.compile(fn, dynamic=compile_dynamic)
    return fn


_FLUSH: dict = {}


def _flush_l2() -> None:
    """Overwrite a 256 MiB buffer, larger than any GPU's L2, so each timed call starts cold."""
    buf = _FLUSH.get("buf")
    if buf is None:
        buf = _FLUSH["buf"] = torch.empty(64 << 20, dtype=torch.float32, device="cuda")
    buf.zero_()


def _bench(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> tuple[float, float, float]:
    """(p20, p50, p80) in ms of ``fn()`` on the GPU: the suite's one timer, L2 flushed before each call.

    :func:`bench.measure.timing.time_call` with ``torch.cuda.synchronize`` around the
    timed call (so a time includes the launch, as a training step pays it), as many
    warm-up calls as fill ``warmup_ms`` and timed calls as fill ``rep_ms`` (at least 5).
    """
    fn()
    fn()  # compile / autotune / allocate outside the timed region
    torch.cuda.synchronize()
    probe = time_call(fn, repeats=3, warmup=0, sync=torch.cuda.synchronize)
    per_call = max(quantile(probe, 0.5), 1e-7)
    warmup = max(1, int(warmup_ms / 1e3 / per_call))
    ts = time_call(fn, repeats=5, warmup=warmup, min_time=rep_ms / 1e3, sync=torch.cuda.synchronize, setup=_flush_l2)
    q = quantiles(ts, 1e3)
    return q["p20"], q["p50"], q["p80"]


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _check_against_reference(op: str, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """One forward+backward of triton against the torch reference before timing anything."""
    from kernels.testing import assert_close_to_reference

    outs_t = _as_tuple(_op_fn(op, "triton", False)(**inputs))
    outs_r = _as_tuple(_op_fn(op, "torch", False)(**inputs))
    d = inputs[next(iter(inputs))].shape[-1]
    assert_close_to_reference(outs_t, outs_r, dtype=dtype, terms=d, msg=f"{op} forward (triton vs torch)")
    params = [v for v in inputs.values() if v.requires_grad]
    ups = [torch.randn_like(o) for o in outs_r]
    g_t = torch.autograd.grad(outs_t, params, ups)
    g_r = torch.autograd.grad(outs_r, params, ups)
    assert_close_to_reference(g_t, g_r, dtype=dtype, msg=f"{op} backward (triton vs torch)")


Timer = Callable[[Callable[[], object], float, float], tuple[float, float, float]]


def measure_op(
    op: str,
    r: int,
    d: int,
    *,
    dtype: torch.dtype,
    impls: Sequence[str],
    compile_dynamic: bool = False,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    seed: int = 0,
    device: str = "cuda",
    timer: Timer = _bench,
) -> dict[tuple[str, str], tuple[float, float, float]]:
    """``{(impl, pass): (p20, p50, p80) ms}`` for pass in ("fwd", "fwd_bwd").

    Checks one forward and backward of triton against the torch reference first.
    """
    out = {}
    fwd_in = _inputs(op, r, d, dtype, seed, grad=False, device=device)
    bwd_in = _inputs(op, r, d, dtype, seed, grad=True, device=device)
    _check_against_reference(op, bwd_in, dtype)
    params = [v for v in bwd_in.values() if v.requires_grad]
    for impl in impls:
        fn = _op_fn(op, impl, compile_dynamic)

        def fwd(fn=fn):
            with torch.no_grad():
                return fn(**fwd_in)

        out[(impl, "fwd")] = timer(fwd, warmup_ms, rep_ms)
        ups = [torch.randn_like(o) for o in _as_tuple(fn(**bwd_in))]

        def fwd_bwd(fn=fn, ups=ups):
            return torch.autograd.grad(_as_tuple(fn(**bwd_in)), params, ups)

        out[(impl, "fwd_bwd")] = timer(fwd_bwd, warmup_ms, rep_ms)
    return out


def measure_copy(
    r: int, d: int, dtype: torch.dtype, warmup_ms: float, rep_ms: float, device: str = "cuda", timer: Timer = _bench
) -> tuple[float, float, float]:
    """(p20, p50, p80) ms of ``dst.copy_(src)`` for one ``[R, D]`` tensor."""
    src = torch.randn(r, d, device=device).to(dtype)
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src), warmup_ms, rep_ms)


# --------------------------------------------------------------------------- rows and the CSV
def _gbps(tensors: float, r: int, d: int, itemsize: int, ms: float) -> float:
    return tensors * r * d * itemsize / (ms * 1e-3) / 1e9


def _append(path: Path, rows: Sequence[Result]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for row in rows:
            w.writerow(dataclasses.asdict(row))
        fh.flush()
        os.fsync(fh.fileno())


def gpu_unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    try:
        from kernels import triton_gpu as tg
    except ImportError as exc:  # pragma: no cover
        return f"the triton backend does not import: {exc}"
    return tg.availability("cuda")


def run(
    *,
    out: str | Path,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    ops: Sequence[str] = OPS,
    dtype: str = "float32",
    rep_ms: float = 100.0,
    warmup_ms: float = 25.0,
    compile_dynamic: bool = False,
    no_compile: bool = False,
    resume: bool = False,
    seed: int = 0,
    device: str = "cuda",
    device_name: str | None = None,
    timer: Timer | None = None,
) -> Path:
    """Time every op at every size and append the rows to the CSV ``out`` (see the module doc).

    Args:
        out: the ``.csv`` file; an existing non-empty one needs ``resume``.
        sizes: ``[(R, D), ...]``.
        ops: names from :data:`OPS`.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        rep_ms, warmup_ms: repetition and warm-up time of each measurement.
        compile_dynamic: ``torch.compile(dynamic=True)`` (one compile per op).
        no_compile: leave out the ``torch.compile`` baseline.
        resume: skip the configurations already in ``out``.
        seed: input seed.
        device, device_name, timer: parameters so the bookkeeping can be tested
            on CPU (triton's interpreter, a wall-clock timer); the numbers only
            mean something on a GPU. ``timer(fn, warmup_ms, rep_ms) -> (p20, p50, p80)``
            in ms (default: the suite's timer, synchronized, L2 flushed before each call).

    Returns:
        The CSV path.

    Raises:
        ValueError: ``out`` is not a ``.csv`` path.
        FileExistsError: ``out`` holds rows and ``resume`` is False.
    """
    out = Path(out)
    timer = timer or _bench
    device_name = device_name or (torch.cuda.get_device_name() if device == "cuda" else device)
    if out.suffix != ".csv":
        raise ValueError(f"out must be a .csv file path, got {str(out)!r}")
    if out.exists() and out.stat().st_size > 0:
        if not resume:
            raise FileExistsError(f"{out} exists; pass resume (--resume) to continue it or choose another out")
        check_schema(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_hashes(out) if resume else set()

    torch_dtype = getattr(torch, dtype)
    itemsize = torch.empty(0, dtype=torch_dtype).element_size()
    manifest = Manifest.collect(script="bench.measure.gpu_kernels", sizes=sizes, ops=ops, dtype=dtype)
    out.with_suffix(".manifest.json").write_text(json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True))
    print(f"bench.measure.gpu_kernels on {device_name}: {len(ops)} ops x {len(sizes)} sizes, {dtype} -> {out}")

    summary = []
    for r, d in sizes:
        size = f"{r}x{d}"
        base = {"benchmark": "gpu_kernels", "dtype": dtype, "size": size, "seed": seed, "gpu": device_name}
        common = dict(benchmark="gpu_kernels", problem="kernels", size=size, seed=seed, device=device_name)
        p20c, p50c, p80c = measure_copy(r, d, torch_dtype, warmup_ms, rep_ms, device=device, timer=timer)
        copy_gbps = _gbps(2, r, d, itemsize, p50c)
        copy_key = {**base, "op": "copy", "rep_ms": rep_ms}
        if config_hash(copy_key) not in done:
            copy = dict(common, backend="copy", op="copy")
            _append(
                out,
                [
                    make_result(copy_key, **copy, metric="ms", unit="ms", value=p50c, p20=p20c, p50=p50c, p80=p80c),
                    make_result(copy_key, **copy, metric="gbps", unit="GB/s", value=copy_gbps),
                ],
            )
        for op in ops:
            key = {**base, "op": op, "rep_ms": rep_ms, "compile": not no_compile}
            key["compile_dynamic"] = compile_dynamic
            if config_hash(key) in done:
                print(f"  {op:20s} {size:>11s}  (done, skipped)")
                continue
            impls = ["triton", *(["triton_seed"] if "seed" in TRAFFIC[op] else []), "torch"]
            if not no_compile:
                impls.append("torch_compile")
            t0 = time.perf_counter()
            res = measure_op(
                op,
                r,
                d,
                dtype=torch_dtype,
                impls=impls,
                compile_dynamic=compile_dynamic,
                warmup_ms=warmup_ms,
                rep_ms=rep_ms,
                seed=seed,
                device=device,
                timer=timer,
            )
            rows = []
            for (impl, pass_), (p20, p50, p80) in res.items():
                moved = TRAFFIC[op]["seed" if impl == "triton_seed" else "eps"][0 if pass_ == "fwd" else 1]
                gbps = _gbps(moved, r, d, itemsize, p50)
                row = dict(common, backend=impl, op=f"{op}.{pass_}")
                rows += [
                    make_result(key, **row, metric="ms", unit="ms", value=p50, p20=p20, p50=p50, p80=p80),
                    make_result(key, **row, metric="gbps", unit="GB/s", value=gbps),
                    make_result(key, **row, metric="x_copy", unit="", value=gbps / copy_gbps),
                ]
                summary.append((op, pass_, size, impl, p50, gbps / copy_gbps))
            _append(out, rows)
            print(f"  {op:20s} {size:>11s}  {time.perf_counter() - t0:5.1f} s")
    print(_summary_table(summary))
    return out


def _summary_table(summary: Sequence[tuple]) -> str:
    """Markdown table: per op, pass and size the median ms of each impl, triton's x_copy and speed-up."""
    by_key: dict[tuple, dict] = {}
    for op, pass_, size, impl, ms, xcopy in summary:
        by_key.setdefault((op, pass_, size), {})[impl] = (ms, xcopy)
    lines = [
        "| op | pass | size | triton ms | triton_seed ms | torch ms | compile ms | triton x copy | compile / triton |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (op, pass_, size), v in by_key.items():

        def ms(impl, v=v):
            return f"{v[impl][0]:.4f}" if impl in v else "-"

        best = min((v[i][0] for i in ("triton", "triton_seed") if i in v), default=float("nan"))
        xcopy = max((v[i][1] for i in ("triton", "triton_seed") if i in v), default=float("nan"))
        speedup = f"{v['torch_compile'][0] / best:.2f}" if "torch_compile" in v else "-"
        lines.append(
            f"| {op} | {pass_} | {size} | {ms('triton')} | {ms('triton_seed')} | {ms('torch')} | "
            f"{ms('torch_compile')} | {xcopy:.2f} | {speedup} |"
        )
    return "\n".join(lines)
