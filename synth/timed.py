"""Gate-level simulation with cell delays: the glitches a zero-delay simulation misses.

Inside a clock cycle a net may change several times before it settles: the inputs of
a gate arrive at different times, and every intermediate value of its function
propagates (a glitch). Each transition costs switching and internal energy like a
settled one, so zero-delay toggle counts (:class:`synth.netlist.GateSimulator`)
under-estimate a datapath's energy, the more so the deeper and more unbalanced its
logic (FP alignment and normalization more than an integer adder).

Delay model (documented in docs/synthesis.md):

- each cell has one delay, its slowest output's: the mean over the output's timing arcs
  and over rise and fall of the library's NLDM table at a typical input transition (the
  table's third slew index, as psum's representative delays) and at the load the net
  really drives: the input-pin capacitances of its fanout plus the same wire estimate
  per pin the energy model charges; a cell without tables takes its representative delay;
- flip-flops change their outputs a clock-to-Q delay after the rising edge; primary
  inputs change at the edge;
- *inertial* delays, as a Verilog continuous assignment with a delay has them
  (IEEE 1364 §6.1.3): an output takes a new value of its function only once that value
  has held for the cell's delay; shorter pulses are swallowed. On sampled time: the
  output at step t is v if the function was v at every step of [t - d, t - 1], else its
  value at t - 1 (so a change of the function in the very step a pending update
  matures does not cancel it: an order IEEE 1364 leaves open, §11.4.1);
- time in steps of ``step_ns`` (delays rounded to whole steps, at least one), over a
  window long enough for the slowest path to settle.

Every net holds its waveform over the window, 64 lanes per machine word, so a gate is
evaluated for a whole cycle by a few vectorized operations on (steps, words) arrays;
transitions are counted as changes between consecutive steps. Checked against Icarus
Verilog running the same netlist with the same delays as continuous assignments
(tests/test_timed.py).
"""

from __future__ import annotations

import bisect

import numpy as np

from synth.netlist import GateSimulator, Netlist

__all__ = ["cell_delays", "output_delay", "inertial", "TimedSimulator", "STEP_NS", "GLITCH_LANES"]

#: Time resolution of the timed simulation.
STEP_NS = 0.01

#: Lanes (operand streams) a glitch-aware energy estimate simulates: every net keeps its
#: waveform over a cycle, so it runs on fewer streams than the zero-delay simulation.
GLITCH_LANES = 256

_SLEW_INDEX = 2  # the third input-transition index: psum's typical slew


def _axis(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _interpolate(table: dict, slew: float, load: float) -> float:
    """Bilinear interpolation (extrapolation beyond the edges) of an NLDM table."""
    xs, ys = _axis(table["index_1"]), _axis(table["index_2"])
    rows = [_axis(r) for r in table["values"].split(";")]

    def bracket(axis, v):
        i = min(max(bisect.bisect_right(axis, v) - 1, 0), len(axis) - 2)
        return i, (v - axis[i]) / (axis[i + 1] - axis[i])

    (i, u), (j, w) = bracket(xs, slew), bracket(ys, load)
    low = rows[i][j] + (rows[i][j + 1] - rows[i][j]) * w
    high = rows[i + 1][j] + (rows[i + 1][j + 1] - rows[i + 1][j]) * w
    return low + (high - low) * u


def output_delay(cell, pin: str, load_ff: float) -> float:
    """ns from an input (or the clock) to ``pin`` of ``cell`` driving ``load_ff``."""
    delays = []
    for arc in cell.lib.timing:
        tables = arc["tables"]
        if arc["pin"] != pin or "cell_rise" not in tables or "cell_fall" not in tables:
            continue
        slew = _axis(tables["cell_rise"]["index_1"])[_SLEW_INDEX]
        delays.append((_interpolate(tables["cell_rise"], slew, load_ff)
                       + _interpolate(tables["cell_fall"], slew, load_ff)) / 2)
    return sum(delays) / len(delays) if delays else cell.lib.outputs[pin].delay_ns


def cell_delays(net: Netlist, wire_cap_ff_per_pin: float, step_ns: float = STEP_NS) -> dict:
    """Cell name -> delay in steps (at least 1) of all its outputs: its slowest output's
    at the load each output drives."""
    cap, pins = net.fanout_capacitance()
    out = {}
    for cell in net.cells:
        slowest = 0.0
        for pin, bits in cell.outputs.items():
            load = cap.get(bits[0], 0.0) + wire_cap_ff_per_pin * pins.get(bits[0], 0)
            slowest = max(slowest, output_delay(cell, pin, load))
        out[cell.name] = max(1, round(slowest / step_ns))
    return out


def _window_and(x: np.ndarray, d: int) -> np.ndarray:
    """(len(x) - d + 1) rows: row t is the AND of rows t .. t + d - 1 of ``x``."""
    span, run = 1, x
    while 2 * span <= d:
        run = run[:-span] & run[span:]
        span *= 2
    return run[:len(x) - d + 1] & run[d - span:]


def inertial(g: np.ndarray, before: np.ndarray, d: int, ones: np.ndarray) -> np.ndarray:
    """A cell's output waveform over a cycle: ``g`` (steps, words) its function of its
    inputs' waveforms, ``before`` the output's (settled) value before the cycle, ``d``
    its delay in steps. Step t takes v where g was v over [t - d, t - 1], else step t - 1's
    value (the last such v, forward-filled by doubling)."""
    history = np.concatenate([np.broadcast_to(before, (d, len(before))), g])
    high = _window_and(history, d)[:len(g)]  # g was 1 over [t - d, t - 1]
    low = _window_and(~history, d)[:len(g)]  # g was 0 over it
    known, value = high | low, high
    span = 1
    while not (known == ones).all():
        shifted_known = np.concatenate([np.broadcast_to(ones, (min(span, len(g)), len(ones))), known[:-span]])
        shifted_value = np.concatenate([np.broadcast_to(before, (min(span, len(g)), len(ones))), value[:-span]])
        value = value | (~known & shifted_value)
        known = known | shifted_known
        span *= 2
    return value


class TimedSimulator(GateSimulator):
    """:class:`~synth.netlist.GateSimulator` with the cell delays ``delays`` (steps per
    cell, :func:`cell_delays`): each cycle every net's waveform over ``window`` steps,
    and every transition in it counted."""

    def __init__(self, netlist: Netlist, words: int, delays: dict):
        super().__init__(netlist, words)
        self.comb_delays = [delays[c.name] for c in netlist.order for bits in c.outputs.values()
                            if isinstance(bits[0], int)]
        self.flop_delays = [[delays[c.name] for bits in c.outputs.values() if isinstance(bits[0], int)]
                            for c in netlist.flops]
        self.window = self._settling_steps() + 1
        self.final: np.ndarray | None = None  # every net's value at the end of the last cycle
        self.wave: np.ndarray | None = None  # every net's waveform over the cycle (reused)

    def _settling_steps(self) -> int:
        """The longest path in steps: by then every net has settled."""
        arrival = np.zeros(len(self.values), dtype=np.int64)
        for (_, _, outs), delays in zip(self.flops, self.flop_delays):
            for (r, _), d in zip(outs, delays):
                arrival[r] = d
        for (_, ins, out), d in zip(self.comb, self.comb_delays):
            arrival[out] = max((arrival[r] for r in ins), default=0) + d
        return int(arrival.max()) if len(arrival) else 1

    def step(self, inputs: dict, lane_mask: np.ndarray) -> None:
        if self.final is None:  # the first cycle settles without delays, uncounted, as the zero-delay one
            super().step(inputs, lane_mask)
            self.final = self.values.copy()
            return
        steps, ones = self.window, self.ones
        if self.wave is None:
            self.wave = np.empty((len(self.values), steps, self.words), dtype=np.uint64)
        wave = self.wave
        wave[:] = self.final[:, None, :]
        for name, rows in self.inputs.items():
            words = inputs.get(name)
            for i, r in enumerate(rows):
                wave[r] = self.zero if words is None else words[i]
        for i, ((_, _, outs), delays) in enumerate(zip(self.flops, self.flop_delays)):
            for (r, inverted), d in zip(outs, delays):
                wave[r, d:] = ~self.state[i] if inverted else self.state[i]
        for (fn, ins, out), d in zip(self.comb, self.comb_delays):
            wave[out] = inertial(fn([wave[r] for r in ins], ones), self.final[out], d, ones)
        nets = wave[:len(self.bits)]
        changes = np.bitwise_count((nets[:, 0] ^ self.final[:len(self.bits)]) & lane_mask).sum(axis=1, dtype=np.int64)
        changes += np.bitwise_count((nets[:, 1:] ^ nets[:, :-1]) & lane_mask).sum(axis=(1, 2), dtype=np.int64)
        self.counts += changes
        self.final = wave[:, -1].copy()
        self.values = self.final
        for i, (fn, ins, _) in enumerate(self.flops):
            self.state[i] = fn([self.final[r] for r in ins], ones)

