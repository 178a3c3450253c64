"""Issue-2 kernel targets: float32, medians, same run. Usage: python scripts/kernel_targets.py [REPEATS] [OUT_CSV]."""

import sys

import numba
import pandas as pd
import torch

from bench.kernel_speed import kernel_speed, summary

sizes = [(1024, 256), (4096, 1024), (16384, 1024)]
df = kernel_speed(
    sizes=sizes,
    passes=("forward", "backward", "forward_backward"),
    repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 15,
)
df.to_csv(sys.argv[2] if len(sys.argv) > 2 else "kernel_speed.csv", index=False)
pd.set_option("display.width", 250)
pd.set_option("display.max_columns", 30)
s = summary(df)
print(f"torch threads {torch.get_num_threads()}, numba threads {numba.get_num_threads()}")
print(s.to_string(float_format=lambda v: f"{v:.3g}"))
