"""The MAC designs of the hardware comparison (docs/synthesis.md, "Hardware against
published designs"), measured under one flow on the embedded NanGate45 subset.

Per design: area of the reference flow (ABC's delay-oriented mapping, the smaller of the
plain and Booth recipes), OpenSTA's critical path, energy per MAC at 500 MHz from
uniform random finite operands (``--streams`` streams of K = 64) at zero delay and,
from their first 256, with glitches (cell delays, synth.timed); then the area of the
same design synthesized for a clock (timing-driven: the smallest netlist meeting it),
at 500 MHz and at its own reference f_max / 1.25 (25% slack traded for area). Ratios:
against Berkeley HardFloat's MACs under the same Yosys flow and library as an
independent review measured them (bf16 2038 um^2, fp16 2686 um^2) and against
int8->int32.

    python benchmarks/designs.py [--streams 1024]
"""

from __future__ import annotations

import argparse
import time

from _machine import machine_line
from hwgen import FloatMAC, IntMAC
from synth.flow import synthesize
from synth.liberty import embedded
from synth.power import estimate_energy, finite_patterns, uniform_streams
from synth.sta import static_timing
from synth.timed import GLITCH_LANES

DESIGNS = [("bf16->bf16", FloatMAC("bf16", "bf16")), ("fp16->fp16", FloatMAC("fp16", "fp16")),
           ("bf16->e4m7", FloatMAC("bf16", "e4m7")), ("bf16->e4m4", FloatMAC("bf16", "e4m4")),
           ("e4m3->e5m6", FloatMAC("e4m3", "e5m6")), ("int8->int32", IntMAC(8, 8, "int32")),
           ("int8->int18", IntMAC(8, 8, "int18"))]
#: Berkeley HardFloat's MAC areas under the review's flow (NanGate45, um^2).
HARDFLOAT_UM2 = {"bf16->bf16": 2038.0, "fp16->fp16": 2686.0}
FIXED_MHZ = 500.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1024)
    parser.add_argument("--k", type=int, default=64)
    args = parser.parse_args()
    print(machine_line())
    lib = embedded()
    print(f"uniform random finite operands, {args.streams} streams of K={args.k} (glitches: the first "
          f"{GLITCH_LANES}); 500 MHz; areas um^2, paths ns (OpenSTA), energies pJ/MAC")
    print("| MAC | area | STA ns | vs HardFloat | area / int8->int32 | pJ zero-delay | pJ glitches | glitch factor "
          "| area for 500 MHz (met) | area for f_max/1.25 (MHz) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    int32_area = synthesize(IntMAC(8, 8, "int32"), lib).area_um2
    for name, mac in DESIGNS:
        start = time.monotonic()
        r = synthesize(mac, lib)
        sta = static_timing(r.netlist_verilog, lib).critical_path_ns
        finite = finite_patterns(getattr(mac, "inputs", None))
        a = uniform_streams(len(mac.a), finite, args.streams, args.k, seed=1)
        b = uniform_streams(len(mac.b), finite, args.streams, args.k, seed=2)
        zero = estimate_energy(r.netlist, lib, a, b, unit=mac.describe(), operands="random")
        glitchy = estimate_energy(r.netlist, lib, a[:GLITCH_LANES], b[:GLITCH_LANES], unit=mac.describe(),
                                  operands="random", glitches=True, max_lanes=GLITCH_LANES)
        fixed = synthesize(mac, lib, target_mhz=FIXED_MHZ)
        relaxed_mhz = round(1e3 / sta / 1.25, 1)
        relaxed = synthesize(mac, lib, target_mhz=relaxed_mhz)
        hf = f"{r.area_um2 / HARDFLOAT_UM2[name]:.2f}x" if name in HARDFLOAT_UM2 else "-"
        print(f"| {name} | {r.area_um2:.0f} | {sta:.2f} | {hf} | {r.area_um2 / int32_area:.2f} | "
              f"{zero.energy_per_mac_pj:.3f} | {glitchy.energy_per_mac_pj:.3f} | "
              f"{glitchy.energy_per_mac_pj / zero.energy_per_mac_pj:.2f} | "
              f"{fixed.area_um2:.0f} ({'yes' if fixed.target_met else f'no, {fixed.sta_critical_path_ns:.2f} ns'}) | "
              f"{relaxed.area_um2:.0f} ({relaxed_mhz:g}, {relaxed.mapping}) | {time.monotonic() - start:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
