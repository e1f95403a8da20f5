"""``psum accel``: the accelerator view of a study (accel/, docs/accel.md)."""

from __future__ import annotations

import argparse

from psum.cli._common import COMMANDS, UsageError


def cmd_accel(args: argparse.Namespace) -> int:
    from accel.engine import ARCHITECTURES
    from accel.run import AccelError, run_accel

    archs = args.arch or list(ARCHITECTURES)
    if len(set(archs)) != len(archs):
        raise UsageError(f"--arch lists an architecture twice: {' '.join(archs)}")
    try:
        run_accel(args.study, args.out, archs)
    except AccelError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.out}/accel.md (+ accel.csv, accel.json, plots)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("accel", help="partial sums in whole accelerators: a study's MACs on reference arrays (ZigZag)",
                       description="Every network and MAC of a study (references and minimal FP and INT accumulators, "
                       "with psum's synthesized energy and area) in every PE of reference architectures, each layer "
                       "mapped by ZigZag: energy by part (MAC, registers, buffers, SRAM, DRAM), cycles and the "
                       "partial sums' footprint. Resumes from OUT/accel.json.")
    p.add_argument("--study", required=True, metavar="DIR", help="a study's folder (its results.json)")
    p.add_argument("--arch", nargs="+", metavar="NAME", help="architectures: os16, ws16, tpu128 (default: all)")
    p.add_argument("--out", default="accel", help="output folder (default accel)")
    COMMANDS["accel"] = cmd_accel
