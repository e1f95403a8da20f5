"""Machine code of the Triton matmul kernel without a GPU: instructions per MAC.

Compiles the float kernel for sm_90 (Triton ships ptxas and cuobjdump), finds the
innermost k-loop of the float32 fast step in the SASS, and prints its instructions
per MAC (per accumulator and k step), the mix of the most frequent opcodes, loads,
registers and spills, for a few accumulators and tile shapes. A proxy for speed on
machines without a GPU (``benchmarks/gpu.py`` measures on one).

    python benchmarks/triton_sass.py [--acc e5m10 e4m7 ...]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

from emulator import triton_kernels as tk
from emulator.config import AccumConfig
from emulator.matmul import narrow_lanes

SHAPES = [tk.BlockConfig(), tk.BlockConfig(32, 128, 4), tk.BlockConfig(64, 32, 4),
          tk.BlockConfig(64, 64, 4)]
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)")


def compile_kernel(cfg: AccumConfig, blocks: tk.BlockConfig):
    fn = tk._float_matmul_kernel
    narrow = narrow_lanes(cfg)
    constants = {**tk.format_constants(cfg.acc, "A"), **tk.format_constants(cfg.acc, "P"),
                 **tk.format_constants(cfg.acc, "O"),
                 **(tk._narrow_constants(cfg.acc, False) if narrow else tk._NOT_NARROW),
                 "FAST": narrow or tk._fast64(cfg), "NARROW": narrow, "HAS_PRODUCT": False, "CHUNKED": False, "WIDE": False,
                 "BLOCK_M": blocks.block_m, "BLOCK_N": blocks.block_n,
                 "CHECK_EVERY": blocks.check_every}
    types = {"at_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": "*fp64", "M": "i32", "N": "i32",
             "K": "i32", "MP": "i32", "NP": "i32", "CHUNK": "i32"}
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    aligned = ("at_ptr", "b_ptr", "out_ptr", "MP", "NP")  # as a launch on padded operands
    src = triton.compiler.ASTSource(
        fn=fn, signature=signature,
        constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()},
        attrs={(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": blocks.num_warps, "enable_fp_fusion": False})


def disassemble(kernel) -> tuple[str, str]:
    """The kernel's SASS and its registers and stack bytes per thread."""
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        run = lambda *flags: subprocess.run([str(tools / "cuobjdump"), *flags, str(cubin)],  # noqa: E731
                                            capture_output=True, text=True, check=True).stdout
        sass, usage = run("--dump-sass"), run("--dump-resource-usage")
    regs, stack = (re.search(rf"{key}:(\d+)", usage).group(1) for key in ("REG", "STACK"))
    return sass, f"{regs} registers, {stack} B stack"


def inner_loop(sass: str, add: str, other: str) -> list[str] | None:
    """Opcodes of the smallest loop (a backward branch) with ``add`` instructions and
    no ``other`` ones: the k-loop of the float32 fast step (FADD, not DADD) or of the
    general float64 step (DADD, not FADD)."""
    code = [(int(m.group(1), 16), m.group(3)) for m in map(_LINE.search, sass.splitlines()) if m]
    best = None
    for line in sass.splitlines():
        m = re.search(r"/\*([0-9a-f]{4,})\*/.*\bBRA\s+0x([0-9a-f]+)", line)
        if not m or int(m.group(2), 16) >= int(m.group(1), 16):
            continue
        start, end = int(m.group(2), 16), int(m.group(1), 16)
        body = [op for addr, op in code if start <= addr <= end]
        if add in body and other not in body and (best is None or len(body) < len(best)):
            best = body
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acc", nargs="+", default=["e5m10", "e4m7", "e4m7:rz", "e5m4:ftz", "fp32"])
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_90, bf16 inputs; per MAC = per accumulator per k step")
    print("| accumulator | lanes | tile (M x N, warps) | instr/MAC | loads/MAC | top opcodes/MAC | resources |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.acc:
        cfg = AccumConfig(acc=spec)
        lanes = ("FADD", "DADD") if narrow_lanes(cfg) else ("DADD", "FADD")
        for blocks in SHAPES:
            sass, usage = disassemble(compile_kernel(cfg, blocks))
            body = inner_loop(sass, *lanes)
            if body is None:
                print(f"| {spec} | | {blocks.block_m} x {blocks.block_n}, {blocks.num_warps} | loop not found | | "
                      f"| {usage} |")
                continue
            per = blocks.block_m * blocks.block_n / (32 * blocks.num_warps)  # accumulators per thread
            counts = collections.Counter(op.split(".")[0] for op in body)
            top = ", ".join(f"{op} {n / per:.1f}" for op, n in counts.most_common(6))
            print(f"| {spec} | {'float32' if lanes[0] == 'FADD' else 'float64'} "
                  f"| {blocks.block_m} x {blocks.block_n}, {blocks.num_warps} | {len(body) / per:.1f} "
                  f"| {counts['LDG'] / per:.2f} | {top} | {usage} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
