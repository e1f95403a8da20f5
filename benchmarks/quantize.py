"""Throughput of emulator.quantize against ml_dtypes casts of the same array.

Prints values/s for psum's quantize (float32 in, float32 out) and, in the same run
on the same array, for ml_dtypes: the cast alone (float32 -> narrow dtype) and the
round trip (float32 -> narrow -> float32), which produces what quantize produces.

    python benchmarks/quantize.py [--n 16777216] [--repeat 5]
"""

from __future__ import annotations

import argparse

import ml_dtypes
import numpy as np
import torch

from emulator import quantize
from _machine import machine_line, timed


def best_rate(fn, n: int, repeat: int) -> float:
    fn()  # warm up (and build the kernel on first use)
    best = min(timed(fn) for _ in range(repeat))
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 24, help="values per array")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_line())

    x = np.random.default_rng(args.seed).standard_normal(args.n).astype(np.float32)
    t = torch.from_numpy(x)
    print(f"{args.n} float32 values (standard normal, seed {args.seed}), "
          f"{torch.get_num_threads()} threads, best of {args.repeat}")
    print("| format | psum quantize (M/s) | ml_dtypes cast (M/s) | ml_dtypes round trip (M/s) "
          "| psum / cast | psum / round trip |")
    print("|---|---|---|---|---|---|")
    for spec, dtype in [("bf16", ml_dtypes.bfloat16), ("e4m3", ml_dtypes.float8_e4m3),
                        ("e5m2", ml_dtypes.float8_e5m2), ("fp16", np.float16)]:
        ours = best_rate(lambda: quantize(t, spec), args.n, args.repeat)
        cast = best_rate(lambda: x.astype(dtype), args.n, args.repeat)
        trip = best_rate(lambda: x.astype(dtype).astype(np.float32), args.n, args.repeat)
        print(f"| {spec} | {ours / 1e6:.0f} | {cast / 1e6:.0f} | {trip / 1e6:.0f} "
              f"| {ours / cast:.2f} | {ours / trip:.2f} |")
    for spec in ("e4m7", "e5m10:rz:ftz", "e6m9b40:sat"):
        ours = best_rate(lambda: quantize(t, spec), args.n, args.repeat)
        print(f"| {spec} | {ours / 1e6:.0f} | - | - | - | - |")


if __name__ == "__main__":
    main()
