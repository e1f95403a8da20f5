"""Timed gate-level simulation (synth.timed): inertial cell delays, glitches counted;
checked net by net against Icarus Verilog running the same netlist with the same delays."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hwgen import FloatMAC, IntMAC
from hwgen.verify import expected, random_program
from synth.flow import synthesize
from synth.liberty import embedded
from synth.netlist import Netlist, verilog_cell_models
from synth.power import estimate_energy, pack_lanes, uniform_streams
from synth.timed import TimedSimulator, cell_delays, inertial
from test_synth import run_icarus

iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog is not installed")


def waves(bits: str) -> np.ndarray:
    """A one-lane waveform from a string of 0/1, one step each: (steps, 1) words."""
    return np.array([[0xFFFFFFFFFFFFFFFF if c == "1" else 0] for c in bits], dtype=np.uint64)


def text(wave: np.ndarray) -> str:
    return "".join("1" if w & 1 else "0" for w in wave[:, 0])


ONES = np.full(1, np.uint64(0xFFFFFFFFFFFFFFFF))


@pytest.mark.parametrize("g, before, d, want", [
    ("0011111111", "0", 3, "0000011111"),  # a change shows d steps later
    ("0110000000", "0", 3, "0000000000"),  # a 2-step pulse under a delay of 3: swallowed
    ("0111000000", "0", 3, "0000111000"),  # a 3-step pulse: kept, d steps later
    ("1010101111", "0", 2, "0000000011"),  # fast toggling holds the old value
    ("0000000000", "1", 4, "1111000000"),  # the value before the cycle, until the delay has passed
    ("1101111111", "1", 2, "1111111111"),  # a one-step dip under a delay of 2: swallowed
])
def test_inertial_delay_is_verilogs_continuous_assignment(g, before, d, want):
    assert text(inertial(waves(g), waves(before)[0], d, ONES)) == want


def run_timed(result, program, delays):
    sim = TimedSimulator(Netlist(result.netlist, embedded()), 1, delays)
    seen = []
    for a, b, en, clear in program + [(0, 0, 0, 0)]:
        ports = {"a": pack_lanes(np.full((64, 1), a, dtype=np.uint64), len(sim.net.ports["a"][1]))[0],
                 "b": pack_lanes(np.full((64, 1), b, dtype=np.uint64), len(sim.net.ports["b"][1]))[0],
                 "en": [sim.ones if en else sim.zero], "clear": [sim.ones if clear else sim.zero]}
        sim.step(ports, sim.ones)
        acc = sim.read("acc")[:, 0] & np.uint64(1)
        seen.append(sum(int(bit) << i for i, bit in enumerate(acc)))
    return seen[1:], sim


@pytest.mark.parametrize("mac", [IntMAC(4, 4, "int12"), FloatMAC("e4m3", "e5m4:rz")], ids=lambda m: m.describe())
def test_timed_simulation_computes_the_golden_model(mac):
    result = synthesize(mac)
    program = random_program(mac, 200, seed=3)
    got, sim = run_timed(result, program, cell_delays(Netlist(result.netlist, embedded()), 0.5))
    assert got == expected(mac, program)


@iverilog
@pytest.mark.parametrize("mac", [IntMAC(4, 4, "int12"), FloatMAC("e4m3", "e5m4:rz")], ids=lambda m: m.describe())
def test_glitch_counts_match_icarus_verilog_per_net(mac, tmp_path):
    """Every cell a continuous assignment delayed by its steps (one time unit a step),
    flip-flops a clock-to-Q delay: Icarus's transitions per net, glitches included, over
    the cycles the timed simulator counts, equal its counts."""
    lib = embedded()
    result = synthesize(mac)
    net = Netlist(result.netlist, lib)
    delays = cell_delays(net, 0.5)
    program = random_program(mac, 60, seed=5)
    _, sim = run_timed(result, program, delays)
    period = sim.window + 4
    params = "\n".join(f"  defparam dut.{name}.DELAY = {d};" for name, d in delays.items())
    vectors = program + [(0, 0, 0, 0)]  # the first settles before any edge, as the simulator's first cycle
    steps = "\n".join([f"    a <= {vectors[0][0]}; b <= {vectors[0][1]}; en <= {vectors[0][2]}; "
                        f"clear <= {vectors[0][3]}; #{period};"]
                       + [f"    a <= {a}; b <= {b}; en <= {en}; clear <= {clear}; clk <= 1; #{period // 2} clk <= 0; "
                          f"#{period - period // 2};" for a, b, en, clear in vectors[1:]])
    names, changes = run_icarus(tmp_path, mac, result, verilog_cell_models(lib, delayed=True), steps,
                                declarations=params, timescale="// no `timescale anywhere: one time unit is one step")
    start = period  # the timed simulator counts from the first edge on
    ours, netnames, checked = sim.toggles, result.netlist["netnames"], 0
    bad = []
    for code, (name, width) in names.items():
        if name not in netnames or name == "clk":
            continue
        history = changes.get(code, [])
        for i, bit in enumerate(netnames[name]["bits"]):
            if not isinstance(bit, int) or bit not in ours:
                continue
            value, flips = None, 0
            for time, v in history:
                v = v.rjust(width, "0")[width - 1 - i]
                if time >= start and value is not None and v != value and "x" not in (v, value):
                    flips += 1
                value = v
            if flips != ours[bit] // 64:
                bad.append((name, i, flips, ours[bit] // 64))
            checked += 1
    # Where a gate's input changes in the very step its pending update matures, IEEE 1364
    # leaves the order of the two events open (§11.4.1): Icarus may cancel the update this
    # model keeps (one pulse, two transitions). Anything else is a real difference.
    assert all(abs(theirs - mine) <= 2 for _, _, theirs, mine in bad), bad
    assert len(bad) <= checked // 100, bad
    assert checked > 50 and sum(ours.values()) > 0


def test_glitches_add_energy_and_are_labelled():
    mac = IntMAC(4, 4, "int12")
    r = synthesize(mac)
    a = uniform_streams(4, lambda x: np.ones(x.shape, dtype=bool), 64, 16, seed=1)
    b = uniform_streams(4, lambda x: np.ones(x.shape, dtype=bool), 64, 16, seed=2)
    zero = estimate_energy(r.netlist, embedded(), a, b, unit=mac.describe(), operands="random")
    timed = estimate_energy(r.netlist, embedded(), a, b, unit=mac.describe(), operands="random", glitches=True)
    assert (zero.delays, timed.delays) == ("zero", "inertial")
    assert timed.toggles_per_cycle > zero.toggles_per_cycle and timed.energy_per_mac_pj > zero.energy_per_mac_pj
    assert timed.clock_pj == zero.clock_pj and timed.leakage_pj == zero.leakage_pj  # only transitions change


def test_psum_synth_reports_the_glitch_aware_energy_beside_the_zero_delay_one():
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "4", "--acc", "int12", "--glitches",
                           "--streams", "64", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    zero, timed = json.loads(proc.stdout)["energy"]
    assert (zero["delays"], timed["delays"]) == ("zero", "inertial") and zero["operands"] == timed["operands"]
    assert timed["energy_per_mac_pj"] > zero["energy_per_mac_pj"]
