"""Non-temporal stores or plain ones: the numba kernels' large outputs timed both ways in one process.

Each cell (op, size) times the kernel with streaming on and off
(``kernels.numba_cpu._stream.ENABLED``; threshold as configured) in balanced
rounds (:func:`bench.measure.timing.time_round_robin`), each variant on its own
input sets, used in turn, so that a call reads its inputs from DRAM as the
interleaved kernel targets do. Outputs are preallocated. The medians and their
ratio (stream / plain: below 1 is faster) are printed and written to
``OUT/stream_stores.csv`` after every cell, so an interrupted session keeps
what it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
from pathlib import Path

import pandas as pd
import torch

from bench.cli.options import parse_list, parse_sizes
from bench.measure.timing import quantile, time_round_robin

OPS = ("normal_rsample_kl:forward", "normal_rsample_kl:backward", "normal_log_prob:backward")
EXAMPLES = """examples:
  python scripts/stream_stores.py                                    # every op at 2048x1024,4096x1024,16384x1024
  python scripts/stream_stores.py --sizes 4096x1024 --rounds 60 --out /tmp/ss
  python scripts/stream_stores.py --ops normal_rsample_kl:forward --dtype float64
"""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="stream_stores.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated op:pass cells (default {','.join(OPS)})")
    p.add_argument("--sizes", default="2048x1024,4096x1024,16384x1024", help="ROWSxCOLS list")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per cell (default 30)")
    p.add_argument("--sets", type=int, default=3, help="input sets per variant, used in turn (default 3)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument(
        "--out", default="reports/stream_stores", help="directory of the CSV (default reports/stream_stores)"
    )
    args = p.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.sizes, "--sizes")
        args.ops = parse_list(args.ops, "--ops")
    except ValueError as exc:
        p.error(str(exc))
    bad = [o for o in args.ops if o not in OPS]
    if bad:
        p.error(f"--ops: unknown {bad}; expected some of {list(OPS)}")
    for name in ("rounds", "sets"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def _cell(op: str, R: int, D: int, dtype: torch.dtype, seed: int):
    """A callable running ``op`` once on fresh inputs of its own (preallocated outputs)."""
    from kernels.numba_cpu import gaussian, logprob

    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    mu, lv, eps = t(R, D), t(R, D), t(R, D)
    if op == "normal_rsample_kl:forward":
        z, kl = torch.empty(R, D, dtype=dtype), torch.empty(R, dtype=dtype)
        return lambda: gaussian.forward(mu, lv, eps, None, True, True, z_out=z, kl_out=kl)
    out = (torch.empty(R, D, dtype=dtype), torch.empty(R, D, dtype=dtype), torch.empty(R, D, dtype=dtype))
    if op == "normal_rsample_kl:backward":  # what a VAE step needs: d mu, d logvar from dz and dkl
        dz, dkl = t(R, D), t(R)
        return lambda: gaussian.backward(dz, dkl, mu, lv, eps, None, True, True, False, out=out)
    if op == "normal_log_prob:backward":  # d x, d mu, d logvar
        g = t(R)
        return lambda: logprob.normal_backward(g, eps, mu, lv, True, True, True, out=out)
    raise ValueError(f"op: unknown {op!r}; expected one of {list(OPS)}")  # parse() checked already


def _rotating(calls):
    state = {"i": 0}

    def run():
        calls[state["i"] % len(calls)]()
        state["i"] += 1

    return run


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print(f"stream_stores.py: non-temporal stores are x86-64 only; this is {platform.machine()}", file=sys.stderr)
        return 2
    import kernels  # noqa: F401  (configures numba before the kernels compile)
    from kernels.numba_cpu import _stream

    dtype = getattr(torch, args.dtype)

    @contextlib.contextmanager
    def variant(name):
        before = _stream.ENABLED
        _stream.ENABLED = name == "stream"
        try:
            yield
        finally:
            _stream.ENABLED = before

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "stream_stores.csv"
    rows = []
    print(f"{_stream.describe()}; threshold {_stream.STREAM_MIN_BYTES} bytes; {args.dtype}")
    for op in args.ops:
        for R, D in args.sizes:
            fns = {
                name: _rotating([_cell(op, R, D, dtype, seed=100 * k + j) for j in range(args.sets)])
                for k, name in enumerate(("stream", "plain"))
            }
            ts = time_round_robin(fns, repeats=args.rounds, around=variant)
            med = {name: quantile(v, 0.5) * 1e3 for name, v in ts.items()}
            rows.append(
                {
                    "op": op,
                    "size": f"{R}x{D}",
                    "dtype": args.dtype,
                    "stream_ms": med["stream"],
                    "plain_ms": med["plain"],
                    "ratio": med["stream"] / med["plain"],
                    "streams_here": _stream.streams(R * D * torch.empty((), dtype=dtype).element_size()),
                    "rounds": args.rounds,
                }
            )
            pd.DataFrame(rows).to_csv(path, index=False)  # after every cell: an interruption keeps them
            r = rows[-1]
            print(f"{op:28s} {R}x{D:<6d} stream {r['stream_ms']:8.2f} ms  plain {r['plain_ms']:8.2f} ms  "
                  f"ratio {r['ratio']:.3f}", flush=True)  # fmt: skip
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
