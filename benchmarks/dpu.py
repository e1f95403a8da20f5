"""Throughput of the fused dot-product unit's CPU kernel (docs/semantics.md §11).

For each shape (M, N, K) and unit it prints, measured in one run on the same e4m3
operands with an fp32 accumulator: GMAC/s of the unit's kernel (``psum_dpu_matmul``),
of the float64-tensor reference (``dpu_matmul_reference``, on a slice of rows: it is
slow) and of the sequential MAC's kernel (one rounding per product), and the unit
kernel's ratios to both.

    python benchmarks/dpu.py [--repeat 3] [--widths 4 8 16 32] [--align-bits 13]
"""

from __future__ import annotations

import argparse

import torch

from emulator import AccumConfig
from emulator.config import DotUnit
from emulator.dpu import cpu_dpu_matmul, dpu_matmul_reference
from emulator.matmul import emulated_matmul
from emulator.quantize import quantize
from _machine import machine_line
from matmul import best_seconds

SHAPES = {
    "AlexNet-CIFAR conv, batch 64": (1024, 256, 1728),
    "LeNet5 fc1, batch 1024": (1024, 120, 400),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--align-bits", type=int, default=13)
    parser.add_argument("--reference-rows", type=int, default=32,
                        help="rows of a the tensor reference runs on (it is slow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_line())
    torch.manual_seed(args.seed)
    print(f"{torch.get_num_threads()} threads, best of {args.repeat}, seed {args.seed}, e4m3 operands, fp32 accumulator")
    print("| shape (M, N, K) | unit | kernel GMAC/s | reference GMAC/s | sequential MAC GMAC/s "
          "| kernel / reference | kernel / sequential |")
    print("|---|---|---|---|---|---|---|")
    for label, (m, n, k) in SHAPES.items():
        a = quantize(torch.randn(m, k, dtype=torch.float64), "e4m3").float()
        b = quantize(torch.randn(k, n, dtype=torch.float64) * k ** -0.5, "e4m3").float()
        sequential = AccumConfig(acc="fp32", inputs="e4m3")
        seq = m * n * k / best_seconds(lambda: emulated_matmul(a, b, sequential), args.repeat) / 1e9
        for width in args.widths:
            for sticky in (False, True):
                unit = DotUnit(width, args.align_bits, True, sticky)
                cfg = AccumConfig(acc="fp32", inputs="e4m3", unit=unit)
                kernel = m * n * k / best_seconds(lambda: cpu_dpu_matmul(a, b, cfg), args.repeat) / 1e9
                rows = min(args.reference_rows, m)
                ref_s = best_seconds(lambda: dpu_matmul_reference(a[:rows], b, "fp32", width=width,
                                                                  align_bits=args.align_bits, sticky=sticky,
                                                                  inputs="e4m3"), 1)
                reference = rows * n * k / ref_s / 1e9
                print(f"| {label} ({m}, {n}, {k}) | {unit} | {kernel:.2f} | {reference:.3f} | {seq:.2f} "
                      f"| {kernel / reference:.0f}x | {kernel / seq:.2f} |")


if __name__ == "__main__":
    main()
