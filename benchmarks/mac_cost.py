"""Area, timing and energy of the study's reference MACs, on one or more cell libraries.

For bf16-input MACs with fp32, fp16, bf16, e5m10, e4m7 and e4m3 accumulators and int8
MACs with int32, int24 and int16 accumulators it prints cells, area, transistors, logic
depth, critical path, synthesis time, and energy per MAC with uniform random operands
and with real operands (LeNet5's largest layer on CIFAR-10 test images), plus the
simulation throughput and the int8/int32 MAC against Horowitz's 45 nm figures
(ISSCC 2014: int8 multiply 0.2 pJ + int32 add 0.1 pJ).

    python benchmarks/mac_cost.py [--liberty FILE ...] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from emulator import checkpoint, data
from emulator.models import build
from emulator.streams import largest_layer, operand_streams
from hwgen import FloatMAC, IntMAC
from synth.flow import synthesize
from synth.liberty import embedded, from_liberty
from synth.power import estimate_energy, finite_patterns, uniform_streams
from _machine import machine_line

UNITS = [FloatMAC("bf16", acc) for acc in ("fp32", "fp16", "bf16", "e5m10", "e4m7", "e4m3")] + \
        [IntMAC(8, 8, acc) for acc in ("int32", "int24", "int16")]
HOROWITZ_INT8_MAC_PJ = 0.2 + 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--liberty", nargs="*", default=[], help="more Liberty files")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--checkpoint", default="checkpoints/lenet5-cifar10.pt")
    parser.add_argument("--streams", type=int, default=16384)
    parser.add_argument("--k", type=int, default=64, help="terms per random stream")
    args = parser.parse_args()
    print(machine_line())
    libraries = [embedded()] + [from_liberty(p) for p in args.liberty if Path(p).is_file()]

    model, dataset = build("lenet5")
    checkpoint.load_model(args.checkpoint, model)
    batch, _ = next(data.load(dataset, "test", args.data_dir).batches(64, shuffle=True, seed=0))
    layer = largest_layer(model, 32)
    torch.manual_seed(0)
    real = {}
    for mac in UNITS:
        if isinstance(mac, IntMAC):
            real[mac.describe()] = operand_streams(model, layer, batch, args.streams, int_bits=8)
        else:
            real[mac.describe()] = operand_streams(model, layer, batch, args.streams, inputs=mac.inputs)

    print(f"real operands: lenet5 {layer} (K={real[UNITS[0].describe()][0].shape[1]}) on 64 CIFAR-10 test "
          f"images; random: uniform finite bit patterns, K={args.k}; {args.streams} streams; 500 MHz")
    print("| library | MAC | cells | area um^2 | transistors | depth | delay ns | synth s | "
          "pJ/MAC real | pJ/MAC random | sim M MAC-cycles/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lib in libraries:
        for mac in UNITS:
            r = synthesize(mac, lib)
            a, b = real[mac.describe()]
            e_real = estimate_energy(r.netlist, lib, a, b, unit=mac.describe(), operands="lenet5")
            finite = finite_patterns(getattr(mac, "inputs", None))
            ra = uniform_streams(len(mac.a), finite, args.streams, args.k, seed=1)
            rb = uniform_streams(len(mac.b), finite, args.streams, args.k, seed=2)
            e_rand = estimate_energy(r.netlist, lib, ra, rb, unit=mac.describe(), operands="random")
            label = mac.describe().replace("FloatMAC inputs=bf16 weights=bf16 ", "bf16 ").replace(
                "IntMAC a=int8 b=int8 ", "int8 ")
            print(f"| {lib.name} | {label} | {r.num_cells} | {r.area_um2:.1f} | {r.transistors} | {r.depth} | "
                  f"{r.critical_path_ns:.2f} | {'cached' if r.cached else f'{r.synth_seconds:.1f}'} | "
                  f"{e_real.energy_per_mac_pj:.3f} | {e_rand.energy_per_mac_pj:.3f} | "
                  f"{e_real.mac_cycles_per_s / 1e6:.2f} |")
            if isinstance(mac, IntMAC) and mac.acc_format.bits == 32:
                print(f"|  | (Horowitz 45 nm int8 mult + int32 add = {HOROWITZ_INT8_MAC_PJ:.2f} pJ; ours/Horowitz: "
                      f"real {e_real.energy_per_mac_pj / HOROWITZ_INT8_MAC_PJ:.1f}x, random "
                      f"{e_rand.energy_per_mac_pj / HOROWITZ_INT8_MAC_PJ:.1f}x) |||||||||")


if __name__ == "__main__":
    main()
