"""List kernel backends, the devices each serves, whether it runs here, and why not."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  elbobench backends
  ELBOBENCH_TRITON_INTERPRET=1 elbobench backends   # triton through its CPU interpreter
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def main(args: argparse.Namespace) -> int:
    import json

    import kernels

    rows = kernels.backend_report()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"configured: {kernels.get_backend()}   auto on cpu -> {kernels.get_backend(device='cpu')}")
    print(f"{'backend':8} {'device':6} {'runs':5} {'how / why not'}")
    for r in rows:
        how = r["mode"] if r["available"] else r["reason"]
        print(f"{r['backend']:8} {r['device']:6} {'yes' if r['available'] else 'no':5} {how}")
    return 0
