"""elbobench harness: datasets, models, the variance/speed/train benchmarks, results and reports."""
