"""``elbobench gpu-kernels``: time the triton kernels on a CUDA GPU against torch eager, torch.compile and copy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli.options import OptionError, parse_sizes
from bench.measure import gpu_kernels

EXAMPLES = """examples:
  elbobench gpu-kernels --out reports/gpu/h100.csv
  elbobench gpu-kernels --out reports/gpu/quick.csv --sizes 256x64,4096x1024 --ops normal_rsample_kl
  elbobench gpu-kernels --out reports/gpu/h100.csv --resume      # finish an interrupted run
"""

#: The options passed on to :func:`bench.measure.gpu_kernels.run`.
KEYS = ("out", "sizes", "ops", "dtype", "rep_ms", "warmup_ms", "compile_dynamic", "no_compile", "resume", "seed")


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        return parse_sizes(text, "--sizes")
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_ops(text: str) -> list[str]:
    ops = [o.strip() for o in text.split(",") if o.strip()]
    bad = [o for o in ops if o not in gpu_kernels.OPS]
    if bad or not ops:
        raise argparse.ArgumentTypeError(f"--ops: expected a comma list of {list(gpu_kernels.OPS)}, got {text!r}")
    return ops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write (e.g. reports/gpu/h100.csv)")
    parser.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=list(gpu_kernels.DEFAULT_SIZES),
        help="comma list of RxD (default: " + ",".join(f"{r}x{d}" for r, d in gpu_kernels.DEFAULT_SIZES) + ")",
    )
    parser.add_argument(
        "--ops",
        type=_parse_ops,
        default=list(gpu_kernels.OPS),
        help=f"comma list of ops (default: all of {gpu_kernels.OPS})",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument(
        "--rep-ms", type=float, default=100.0, help="timed repetitions fill this long per measurement (ms)"
    )
    parser.add_argument(
        "--warmup-ms", type=float, default=25.0, help="warm-up calls fill this long per measurement (ms)"
    )
    parser.add_argument(
        "--compile-dynamic",
        action="store_true",
        help="torch.compile(dynamic=True): one compile per op instead of one per size (faster, less specialised)",
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baseline")
    parser.add_argument("--resume", action="store_true", help="append to an existing --out, skipping finished sizes")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    reason = gpu_kernels.gpu_unavailable_reason()
    if reason is not None:
        print(
            f"elbobench gpu-kernels: needs compiled triton on a CUDA device: {reason}. Nothing was measured; "
            "run it on a GPU machine (see docs/triton-backend.md).",
            file=sys.stderr,
        )
        return gpu_kernels.NO_GPU_EXIT
    kwargs = {k: getattr(args, k) for k in KEYS}
    try:
        gpu_kernels.run(**kwargs, device="cuda")
    except (ValueError, FileExistsError) as exc:
        print(f"elbobench gpu-kernels: error: {exc}", file=sys.stderr)
        return 2
    return 0
