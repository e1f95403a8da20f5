"""Switching-activity energy of a synthesized MAC driven by operand streams.

A *stream* is one dot product as a MAC unit sees it: K operand pairs (bit patterns) in
accumulation order. Each simulated lane is one MAC instance that runs streams back to
back (``clear`` with the first term of each, ``en`` always), per the port contract.
The mapped netlist is simulated at zero delay, 64 lanes per machine word
(:class:`synth.netlist.GateSimulator`), counting transitions on every net.

Energy per cycle and instance:

- switching: ``sum_nets toggles * 1/2 * C_net * V^2`` with ``C_net`` = the input-pin
  capacitances on the net + a wire-load estimate of :data:`WIRE_CAP_FF_PER_PIN` per pin
  (about 2.5 um of local wire at 0.2 fF/um, a 45 nm figure; stated in every result);
- internal: every output transition of a cell costs the library's internal energy for
  that output (flip-flops: plus their clock pin's energy every cycle; the clock tree
  itself is not modeled);
- leakage: ``sum_cells leakage * clock period``.

Reported: energy per MAC (pJ, total / MACs), its parts, and power at the given clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from synth.liberty import Library
from synth.netlist import GateSimulator, Netlist

__all__ = ["PowerResult", "estimate_energy", "WIRE_CAP_FF_PER_PIN", "pack_lanes", "uniform_streams",
           "finite_patterns", "DEFAULT_CLOCK_MHZ"]

WIRE_CAP_FF_PER_PIN = 0.5

#: The clock at which power and leakage per MAC are quoted unless one is given.
DEFAULT_CLOCK_MHZ = 500.0


@dataclass
class PowerResult:
    unit: str
    library: str
    operands: str  # where the streams came from
    streams: int
    k: int
    lanes: int
    macs: int
    clock_mhz: float
    energy_per_mac_pj: float
    switching_pj: float
    internal_pj: float
    clock_pj: float
    leakage_pj: float
    power_mw: float
    toggles_per_cycle: float
    wire_cap_ff_per_pin: float
    sim_seconds: float
    mac_cycles_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def pack_lanes(values: np.ndarray, width: int) -> np.ndarray:
    """(L, T) integers -> (T, width, L / 64) uint64 words: bit i of lane l's value at
    cycle t is bit ``l % 64`` of word ``[t, i, l // 64]``."""
    lanes, cycles = values.shape
    bits = ((values.T[:, None, :] >> np.arange(width, dtype=np.uint64)[None, :, None]) & 1).astype(np.uint8)
    packed = np.packbits(bits.reshape(cycles, width, lanes // 64, 64), axis=-1, bitorder="little")
    return packed.view(np.uint64).reshape(cycles, width, lanes // 64)


def finite_patterns(fmt):
    """A predicate on bit patterns of operand format ``fmt``: True where the value is
    finite (every pattern for integer or saturating formats)."""
    if fmt is None or not getattr(fmt, "has_inf", False):
        return lambda bits: np.ones(bits.shape, dtype=bool)
    top = np.uint64((1 << fmt.exp_bits) - 1)
    return lambda bits: ((bits >> np.uint64(fmt.man_bits)) & top) != top


def uniform_streams(fmt_bits: int, finite_mask, count: int, k: int, seed: int) -> np.ndarray:
    """(count, k) uniformly random bit patterns of a ``fmt_bits``-wide format, redrawn
    where ``finite_mask(patterns)`` is False (NaN/Inf would freeze the accumulator)."""
    if count < 1 or k < 1:
        raise ValueError(f"streams need a positive count and length, not {count} x {k}")
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 1 << fmt_bits, (count, k), dtype=np.uint64)
    bad = ~finite_mask(out)
    while bad.any():
        out[bad] = rng.integers(0, 1 << fmt_bits, int(bad.sum()), dtype=np.uint64)
        bad = ~finite_mask(out)
    return out


def estimate_energy(netlist_json: dict, library: Library, a: np.ndarray, b: np.ndarray, *, unit: str,
                    operands: str, clock_mhz: float = DEFAULT_CLOCK_MHZ, max_lanes: int = 16384,
                    wire_cap_ff_per_pin: float = WIRE_CAP_FF_PER_PIN, pipeline: bool = False) -> PowerResult:
    """Energy per MAC of the mapped netlist running the streams ``a``, ``b`` (S, K)."""
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"a and b must be (streams, K) arrays of the same shape, not {a.shape} and {b.shape}")
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not 0 < clock_mhz < math.inf:
        raise ValueError(f"clock_mhz must be a positive finite number, not {clock_mhz!r}")
    if not 0 <= wire_cap_ff_per_pin < math.inf:
        raise ValueError(f"wire_cap_ff_per_pin must be a non-negative finite number, not {wire_cap_ff_per_pin!r}")
    net = Netlist(netlist_json, library)
    streams, k = a.shape
    lanes = 64 * max(1, min(max_lanes, streams) // 64)
    rounds = -(-streams // lanes)
    order = np.resize(np.arange(streams), lanes * rounds).reshape(rounds, lanes)  # lane l, round r
    a_seq = np.concatenate([a[order[r]] for r in range(rounds)], axis=1)  # (lanes, rounds*K)
    b_seq = np.concatenate([b[order[r]] for r in range(rounds)], axis=1)
    cycles = rounds * k
    clear = (np.arange(cycles) % k == 0).astype(np.uint64)
    extra = 1 if pipeline else 0  # one more cycle lets a pipelined unit finish
    sim = GateSimulator(net, lanes // 64)
    ones = sim.ones
    mask = ones
    width_a, width_b = len(net.ports["a"][1]), len(net.ports["b"][1])
    start = time.monotonic()
    block = 64
    for t0 in range(0, cycles + extra, block):
        t1 = min(t0 + block, cycles + extra)
        live = max(0, min(t1, cycles) - t0)
        pa = pack_lanes(a_seq[:, t0:t0 + live], width_a) if live else None
        pb = pack_lanes(b_seq[:, t0:t0 + live], width_b) if live else None
        for i, t in enumerate(range(t0, t1)):
            if t < cycles:
                ports = {"a": pa[i], "b": pb[i], "en": [ones], "clear": [ones if clear[t] else sim.zero]}
            else:
                ports = {}
            sim.step(ports, mask)
    seconds = time.monotonic() - start
    steps = cycles + extra
    macs = lanes * cycles

    cap, pins = net.fanout_capacitance()
    v2 = library.voltage ** 2
    switching = sum(t * 0.5 * (cap.get(bit, 0.0) + wire_cap_ff_per_pin * pins.get(bit, 0)) * v2
                    for bit, t in sim.toggles.items())  # fJ
    internal = sum(sim.toggles.get(bits[0], 0) * cell.lib.outputs[pin].energy_fj
                   for cell in net.cells for pin, bits in cell.outputs.items() if isinstance(bits[0], int))
    clock = sum(cell.lib.clock_energy_fj for cell in net.flops) * steps * lanes
    period_s = 1.0 / (clock_mhz * 1e6)
    leakage = sum(cell.lib.leakage_nw for cell in net.cells) * 1e-9 * period_s * 1e15 * steps * lanes  # fJ
    total = switching + internal + clock + leakage
    per_mac = lambda fj: fj / macs / 1000.0  # noqa: E731 (fJ -> pJ per MAC)
    return PowerResult(
        unit=unit, library=library.name, operands=operands, streams=streams, k=k, lanes=lanes, macs=macs,
        clock_mhz=clock_mhz, energy_per_mac_pj=round(per_mac(total), 5), switching_pj=round(per_mac(switching), 5),
        internal_pj=round(per_mac(internal), 5), clock_pj=round(per_mac(clock), 5),
        leakage_pj=round(per_mac(leakage), 5),
        power_mw=round(total / (steps * lanes) * 1e-15 * clock_mhz * 1e6 * 1e3, 4),
        toggles_per_cycle=round(sum(sim.toggles.values()) / (steps * lanes), 2),
        wire_cap_ff_per_pin=wire_cap_ff_per_pin, sim_seconds=round(seconds, 2),
        mac_cycles_per_s=round(steps * lanes / max(seconds, 1e-9)))
