"""Throughput of the emulated matmul against the reference k-loop and native fp32.

For each shape (M, N, K) it prints, measured in one run on the same operands:
emulated GMAC/s of the compiled kernel (for a few accumulator formats), of the plain
PyTorch k-loop reference (on a slice of rows, it is slow), and of native
``torch.matmul`` in fp32; then the kernel's ratios to both.

    python benchmarks/matmul.py [--repeat 3] [--acc e4m7 e5m10 fp32]
"""

from __future__ import annotations

import argparse
import time

import torch

from emulator import AccumConfig
from emulator.matmul import emulated_matmul, matmul_reference
from _machine import machine_line

SHAPES = {
    "ResNet18 3x3 conv, CIFAR, batch 64": (4096, 256, 2304),
    "LeNet5 fc1, batch 1024": (1024, 120, 400),
}


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (builds the kernel on first use)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--acc", nargs="+", default=["e4m7", "e5m10", "fp32", "e4m7:ftz:rz", "e4m7:sr"])
    parser.add_argument("--reference-rows", type=int, default=128,
                        help="rows of a the reference loop runs on (it is slow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_line())
    torch.manual_seed(args.seed)
    print(f"{torch.get_num_threads()} threads, best of {args.repeat}, seed {args.seed}, bf16 inputs")
    print("| shape (M, N, K) | accumulator | kernel GMAC/s | reference GMAC/s | native fp32 GMAC/s "
          "| kernel / reference | kernel / native |")
    print("|---|---|---|---|---|---|---|")
    for label, (m, n, k) in SHAPES.items():
        a = torch.randn(m, k)
        b = torch.randn(k, n) * k ** -0.5
        native = m * n * k / best_seconds(lambda: torch.matmul(a, b), args.repeat) / 1e9
        for spec in args.acc:
            cfg = AccumConfig(acc=spec)
            kernel = m * n * k / best_seconds(lambda: emulated_matmul(a, b, cfg), args.repeat) / 1e9
            rows = min(args.reference_rows, m)
            ref_s = best_seconds(lambda: matmul_reference(a[:rows], b, cfg), 1)
            reference = rows * n * k / ref_s / 1e9
            print(f"| {label} ({m}, {n}, {k}) | {spec} | {kernel:.2f} | {reference:.3f} | {native:.1f} "
                  f"| {kernel / reference:.0f}x | 1/{native / kernel:.0f} |")


if __name__ == "__main__":
    main()
