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
  that output, and every transition of an input with its own internal power (a
  flip-flop's D pin) that input's;
- clock: per flip-flop and cycle, its clock pin's internal energy (both edges) and
  ``C V^2`` for charging and discharging its clock-pin capacitance and its wire
  estimate; the clock tree's buffers and long wires, shared by the whole array, are
  not a MAC's and are not modeled;
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

__all__ = ["PowerResult", "estimate_energy", "WIRE_CAP_FF_PER_PIN", "pack_lanes", "pack_terms", "random_operands", "uniform_streams",
           "finite_patterns", "DEFAULT_CLOCK_MHZ", "estimate_output_energy"]

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
    components_pj: dict | None = None  # energy per MAC by part of the unit, when asked
    delays: str = "zero"  # "zero", or "inertial" (cell delays: glitches counted, synth.timed)

    def as_dict(self) -> dict:
        return asdict(self)


def pack_lanes(values: np.ndarray, width: int) -> np.ndarray:
    """(L, T) integers, or (L, T, words) for ports wider than 64 bits (little-endian
    uint64 words) -> (T, width, L / 64) uint64 words: bit i of lane l's value at cycle t
    is bit ``l % 64`` of word ``[t, i, l // 64]``."""
    lanes, cycles = values.shape[:2]
    if values.ndim == 3:
        bits = np.ascontiguousarray(np.stack([(values[:, :, i // 64] >> np.uint64(i % 64)) & np.uint64(1)
                                              for i in range(width)], axis=-1).transpose(1, 2, 0).astype(np.uint8))
    else:
        bits = ((values.T[:, None, :] >> np.arange(width, dtype=np.uint64)[None, :, None]) & 1).astype(np.uint8)
    packed = np.packbits(bits.reshape(cycles, width, lanes // 64, 64), axis=-1, bitorder="little")
    return packed.view(np.uint64).reshape(cycles, width, lanes // 64)


def pack_terms(x, bits: int, terms: int):
    """(S, K) streams of ``bits``-bit patterns as cycles of a dot-product unit:
    ``terms`` consecutive patterns a cycle, term 0 in the low bits, the last cycle padded
    with zero patterns (+0: a zero product). (S, ceil(K / terms)) when a cycle's
    ``terms * bits`` fit 64 bits, else (S, cycles, words) little-endian uint64 words."""
    s, k = x.shape
    cycles = -(-k // terms)
    padded = np.zeros((s, cycles * terms), dtype=np.uint64)
    padded[:, :k] = x
    grouped = padded.reshape(s, cycles, terms)
    words = -(-terms * bits // 64)
    out = np.zeros((s, cycles, words), dtype=np.uint64)
    for i in range(terms):
        first = i * bits
        out[:, :, first // 64] |= grouped[:, :, i] << np.uint64(first % 64)
        if first % 64 + bits > 64:  # straddles two words
            out[:, :, first // 64 + 1] |= grouped[:, :, i] >> np.uint64(64 - first % 64)
    return out[:, :, 0] if words == 1 else out


def random_operands(mac, count: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random finite operand streams for ``mac``: (count, k) patterns of its
    ``a`` (seed ``seed``) and ``b`` (seed ``seed + 1``) formats; for a unit taking
    ``mac.macs_per_cycle`` terms a cycle, ``k`` terms each packed that many a cycle
    (:func:`pack_terms`)."""
    terms = getattr(mac, "macs_per_cycle", 1)
    width_a, width_b = len(mac.a) // terms, len(mac.b) // terms
    a = uniform_streams(width_a, finite_patterns(getattr(mac, "inputs", None)), count, k, seed=seed)
    b = uniform_streams(width_b, finite_patterns(getattr(mac, "weights", None)), count, k, seed=seed + 1)
    if terms > 1:
        a, b = pack_terms(a, width_a, terms), pack_terms(b, width_b, terms)
    return a, b


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


def _check_clock(clock_mhz, wire_cap_ff_per_pin) -> None:
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not 0 < clock_mhz < math.inf:
        raise ValueError(f"clock_mhz must be a positive finite number, not {clock_mhz!r}")
    if not 0 <= wire_cap_ff_per_pin < math.inf:
        raise ValueError(f"wire_cap_ff_per_pin must be a non-negative finite number, not {wire_cap_ff_per_pin!r}")


def _drive(net: Netlist, sequences: dict, cycles: int, steps: int, lanes: int,
           delays: dict | None = None) -> tuple[GateSimulator, float]:
    """Simulate ``steps`` cycles of ``net`` on ``lanes`` lanes, at zero delay or with the
    cell ``delays`` (:func:`synth.timed.cell_delays`). ``sequences`` maps an input
    port to a (lanes, cycles) array of values, or to a (cycles,) array of 0/1 shared by
    every lane (a control); ports absent from it, and every port after ``cycles``, are 0."""
    if delays is None:
        sim = GateSimulator(net, lanes // 64)
    else:
        from synth.timed import TimedSimulator

        sim = TimedSimulator(net, lanes // 64, delays)
    width = {name: len(net.ports[name][1]) for name in sequences}
    start = time.monotonic()
    block = 64
    for t0 in range(0, steps, block):
        t1 = min(t0 + block, steps)
        live = max(0, min(t1, cycles) - t0)
        packed = {name: pack_lanes(seq[:, t0:t0 + live], width[name]) for name, seq in sequences.items()
                  if seq.ndim >= 2 and live}
        for i, t in enumerate(range(t0, t1)):
            ports = {}
            if t < cycles:
                for name, seq in sequences.items():
                    ports[name] = packed[name][i] if seq.ndim >= 2 else [sim.ones if seq[t] else sim.zero]
            sim.step(ports, sim.ones)
    return sim, time.monotonic() - start


def _cell_energies(net: Netlist, sim: GateSimulator, steps: int, lanes: int, period_s: float,
                   wire_cap_ff_per_pin: float) -> dict:
    """Energy (fJ, all lanes and cycles) by its source: per cell (name -> switching of the
    nets it drives, internal, clock, leakage) and ``None`` for the nets the ports drive."""
    cap, pins = net.fanout_capacitance()
    v2 = net.library.voltage ** 2
    toggles = sim.toggles

    def switched(bit) -> float:  # 1/2 C V^2 per transition of the net
        return toggles.get(bit, 0) * 0.5 * (cap.get(bit, 0.0) + wire_cap_ff_per_pin * pins.get(bit, 0)) * v2

    parts = {None: {"switching": sum(switched(b) for b in net.input_bits if isinstance(b, int)),
                    "internal": 0.0, "clock": 0.0, "leakage": 0.0}}
    for cell in net.cells:
        driven = [(pin, bits[0]) for pin, bits in cell.outputs.items() if isinstance(bits[0], int)]
        clock = 0.0
        if cell.lib.ff:  # its clock pin's internal energy, and charging its clock pin and wire once a cycle
            pin = cell.lib.ff["clocked_on"]
            clock = (cell.lib.clock_energy_fj + (cell.lib.inputs.get(pin, 0.0) + wire_cap_ff_per_pin) * v2) \
                * steps * lanes
        parts[cell.name] = {
            "switching": sum(switched(b) for _, b in driven),
            "internal": sum(toggles.get(b, 0) * cell.lib.outputs[pin].energy_fj for pin, b in driven)
            + sum(toggles.get(cell.inputs[pin][0], 0) * e for pin, e in cell.lib.input_energy_fj.items()
                  if pin in cell.inputs),
            "clock": clock,
            "leakage": cell.lib.leakage_nw * 1e-9 * period_s * 1e15 * steps * lanes,
        }
    return parts


def _result(net, sim, seconds, parts, *, unit, operands, streams, k, lanes, macs, steps, clock_mhz,
            wire_cap_ff_per_pin, components, delays="zero") -> PowerResult:
    per_mac = lambda fj: round(fj / macs / 1000.0, 5)  # noqa: E731 (fJ -> pJ per MAC)
    kinds = {kind: sum(p[kind] for p in parts.values()) for kind in ("switching", "internal", "clock", "leakage")}
    total = sum(kinds.values())
    split = None
    if components is not None:  # cell name -> component; the ports' nets are "inputs"
        split = {}
        for name, p in parts.items():
            group = "inputs" if name is None else components(name)
            split[group] = split.get(group, 0.0) + sum(p.values())
        split = {group: per_mac(fj) for group, fj in sorted(split.items())}
    return PowerResult(
        unit=unit, library=net.library.name, operands=operands, streams=streams, k=k, lanes=lanes, macs=macs,
        clock_mhz=clock_mhz, energy_per_mac_pj=per_mac(total), switching_pj=per_mac(kinds["switching"]),
        internal_pj=per_mac(kinds["internal"]), clock_pj=per_mac(kinds["clock"]),
        leakage_pj=per_mac(kinds["leakage"]),
        power_mw=round(total / (steps * lanes) * 1e-15 * clock_mhz * 1e6 * 1e3, 4),
        toggles_per_cycle=round(sum(sim.toggles.values()) / (steps * lanes), 2),
        wire_cap_ff_per_pin=wire_cap_ff_per_pin, sim_seconds=round(seconds, 2),
        mac_cycles_per_s=round(steps * lanes / max(seconds, 1e-9)), components_pj=split, delays=delays)


def _lane_count(items: int, max_lanes: int) -> int:
    return 64 * max(1, min(max_lanes, items) // 64)


def estimate_energy(netlist_json: dict, library: Library, a: np.ndarray, b: np.ndarray, *, unit: str,
                    operands: str, clock_mhz: float = DEFAULT_CLOCK_MHZ, max_lanes: int = 16384,
                    wire_cap_ff_per_pin: float = WIRE_CAP_FF_PER_PIN, pipeline: bool = False,
                    components=None, glitches: bool = False) -> PowerResult:
    """Energy per MAC of the mapped netlist running the streams ``a``, ``b`` (S, K), or
    (S, K, words) for operand ports wider than 64 bits (a dot-product unit's W terms;
    "per MAC" then means per cycle).

    ``components``: a function from a cell's name to the part of the unit it belongs to
    (:func:`synth.components.component_of`); the result's ``components_pj`` then
    splits the energy per MAC by part, the nets driven by the ports counted as "inputs".
    ``glitches``: simulate with the cells' delays (:mod:`synth.timed`, inertial
    delays), counting every transition inside a cycle, not only the settled ones.
    """
    if a.shape[:2] != b.shape[:2] or a.ndim not in (2, 3) or b.ndim not in (2, 3) or a.shape[1] < 1:
        raise ValueError(f"a and b must be (streams, K[, words]) arrays of the same streams and K, not {a.shape} and "
                         f"{b.shape}")
    _check_clock(clock_mhz, wire_cap_ff_per_pin)
    net = Netlist(netlist_json, library)
    streams, k = a.shape[:2]
    lanes = _lane_count(streams, max_lanes)
    rounds = -(-streams // lanes)
    order = np.resize(np.arange(streams), lanes * rounds).reshape(rounds, lanes)  # lane l, round r
    a_seq = np.concatenate([a[order[r]] for r in range(rounds)], axis=1)  # (lanes, rounds*K)
    b_seq = np.concatenate([b[order[r]] for r in range(rounds)], axis=1)
    cycles = rounds * k
    clear = (np.arange(cycles) % k == 0).astype(np.uint64)
    steps = cycles + (1 if pipeline else 0)  # one more cycle lets a pipelined unit finish
    delays = None
    if glitches:
        from synth.timed import cell_delays

        delays = cell_delays(net, wire_cap_ff_per_pin)
    sequences = {"a": a_seq, "b": b_seq, "en": np.ones(cycles, dtype=np.uint64), "clear": clear}
    if "seed" in net.ports:  # a stochastic accumulator's generator: its PE's constant start state
        sequences["seed"] = np.repeat(_lane_seeds(lanes)[:, None], cycles, axis=1)
    sim, seconds = _drive(net, sequences, cycles, steps, lanes, delays)
    parts = _cell_energies(net, sim, steps, lanes, 1.0 / (clock_mhz * 1e6), wire_cap_ff_per_pin)
    return _result(net, sim, seconds, parts, unit=unit, operands=operands, streams=streams, k=k, lanes=lanes,
                   macs=lanes * cycles, steps=steps, clock_mhz=clock_mhz, wire_cap_ff_per_pin=wire_cap_ff_per_pin,
                   components=components, delays="inertial" if glitches else "zero")


def _lane_seeds(lanes: int) -> np.ndarray:
    """The generators' start states of ``lanes`` MAC units: docs/semantics.md §13's
    for outputs (lane, 0) with seed 0, as an accelerator's processing elements would
    hold them (loaded at every clear)."""
    from psum.golden import stochastic_state

    return np.array([stochastic_state(0, lane, 0) for lane in range(lanes)], dtype=np.uint64)


def estimate_output_energy(netlist_json: dict, library: Library, inputs: dict, *, unit: str, operands: str,
                           clock_mhz: float = DEFAULT_CLOCK_MHZ, max_lanes: int = 16384,
                           wire_cap_ff_per_pin: float = WIRE_CAP_FF_PER_PIN) -> PowerResult:
    """Energy per operation of a unit that takes one value per cycle (an output stage:
    :class:`hwgen.output.Requantizer`, :class:`hwgen.output.FloatConverter`).

    ``inputs`` maps each input port to a (N,) array of values, one operation each, or
    to an int held on every cycle (a per-layer constant such as a scale). The N
    operations run in order over the lanes; "per MAC" in the result means per operation.
    """
    arrays = {name: np.asarray(v, dtype=np.uint64) for name, v in inputs.items() if not isinstance(v, int)}
    sizes = {v.shape for v in arrays.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1 or next(iter(sizes))[0] < 1:
        raise ValueError(f"inputs must hold (N,) arrays of one length N >= 1, not shapes {sorted(sizes)}")
    _check_clock(clock_mhz, wire_cap_ff_per_pin)
    net = Netlist(netlist_json, library)
    count = next(iter(sizes))[0]
    lanes = _lane_count(count // 64, max_lanes)  # at least 64 operations per lane when there are enough
    cycles = -(-count // lanes)
    order = np.resize(np.arange(count), lanes * cycles).reshape(cycles, lanes).T  # lane l, cycle t
    order = np.concatenate([order, order[:, -1:]], axis=1)  # the last inputs held while their result is registered
    sequences = {}
    for name, value in inputs.items():
        sequences[name] = (np.full(order.shape, value, dtype=np.uint64) if isinstance(value, int)
                           else arrays[name][order])
    steps = cycles + 1
    sim, seconds = _drive(net, sequences, steps, steps, lanes)
    parts = _cell_energies(net, sim, steps, lanes, 1.0 / (clock_mhz * 1e6), wire_cap_ff_per_pin)
    return _result(net, sim, seconds, parts, unit=unit, operands=operands, streams=count, k=1, lanes=lanes,
                   macs=lanes * cycles, steps=steps, clock_mhz=clock_mhz, wire_cap_ff_per_pin=wire_cap_ff_per_pin,
                   components=None)
