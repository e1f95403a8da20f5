"""synth: cell libraries, the Yosys flow, the gate-level simulator (checked for function
against the golden model and for toggle counts against Icarus Verilog), energy."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwgen import FloatMAC, IntMAC
from hwgen.verify import expected, random_program
from synth.flow import synthesize
from synth.liberty import LibraryError, embedded, from_liberty
from synth.netlist import GateSimulator, Netlist, closure, compile_function, to_verilog_expr, verilog_cell_models
from synth.power import estimate_energy, pack_lanes, uniform_streams

SHARED_LIB = Path(__file__).resolve().parents[2] / "shared" / "lib" / "nangate45_typ.lib.gz"
OSU018 = Path("/usr/share/qflow/tech/osu018/osu018_stdcells.lib")
iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog is not installed")


def test_embedded_library_carries_the_published_nangate45_figures():
    lib = embedded()
    inv, nand, dff = lib.cells["INV_X1"], lib.cells["NAND2_X1"], lib.cells["DFF_X1"]
    assert (inv.area, round(inv.leakage_nw, 1), round(inv.inputs["A"], 2)) == (0.532, 14.4, 1.70)
    assert (nand.area, round(nand.leakage_nw, 1), round(nand.inputs["A1"], 2)) == (0.798, 17.4, 1.60)
    assert (dff.area, round(dff.leakage_nw, 1)) == (4.522, 79.1) and dff.ff["next_state"] == "D"
    assert lib.voltage == 1.1 and lib.cells["XOR2_X1"].area == 1.596


def test_written_liberty_reads_back(tmp_path):
    lib = embedded()
    path = tmp_path / "embedded.lib"
    path.write_text(lib.liberty_text)
    again = from_liberty(path)
    assert set(again.cells) == set(lib.cells)
    for name, cell in lib.cells.items():
        other = again.cells[name]
        assert other.area == cell.area and other.inputs == pytest.approx(cell.inputs)
        assert {p: o.function for p, o in other.outputs.items()} == {p: o.function for p, o in cell.outputs.items()}


@pytest.mark.parametrize("text, pins, table", [
    ("!(A1 & A2)", "A1 A2", lambda a1, a2: not (a1 and a2)),
    ("(A B) + C'", "A B C", lambda a, b, c: (a and b) or not c),
    ("A ^ B", "A B", lambda a, b: a != b),
    ("!((A1 & A2) | B)", "A1 A2 B", lambda a1, a2, b: not ((a1 and a2) or b)),
    ("A*B+!A*C", "A B C", lambda a, b, c: (a and b) or ((not a) and c)),
    ("(S & B) | (A & !S)", "A B S", lambda a, b, s: (s and b) or (a and not s)),
    ("!A !B", "A B", lambda a, b: (not a) and (not b)),
])
def test_liberty_functions_against_truth_tables(text, pins, table):
    names = pins.split()
    fn = closure(compile_function(text), {p: i for i, p in enumerate(names)})
    ones = np.array([np.uint64(0xFFFFFFFFFFFFFFFF)])
    for code in range(1 << len(names)):
        values = [(code >> i) & 1 for i in range(len(names))]
        rows = [ones if v else ones ^ ones for v in values]
        assert int(fn(rows, ones)[0] & np.uint64(1)) == int(bool(table(*values))), (text, values)
    assert to_verilog_expr(compile_function("!(A1 & A2)")) == "~((A1 & A2))"


@pytest.fixture(scope="module")
def small_units():
    return {"int": IntMAC(4, 4, "int12"), "float": FloatMAC("e4m3", "e5m4:rz"),
            "chunked": FloatMAC("e4m3", "e3m4", chunk=3, chunk_acc="e5m7")}


def test_synthesis_reports_and_caches(small_units, tmp_path, monkeypatch):
    monkeypatch.setenv("PSUM_CACHE_DIR", str(tmp_path))
    r = synthesize(small_units["int"])
    assert not r.cached and r.area_um2 > 100 and r.flip_flops == 12 and r.depth > 5
    assert r.transistors > 1000 and 0.1 < r.critical_path_ns < 5
    assert r.area_um2 == pytest.approx(sum(embedded().cells[c].area * n for c, n in r.cells.items()), rel=1e-6)
    again = synthesize(small_units["int"])
    assert again.cached and again.as_dict() | {"cached": False, "synth_seconds": 0} == \
        r.as_dict() | {"synth_seconds": 0}


def run_netlist(result, program, words=1):
    """Simulate the mapped netlist: every lane gets the same program; acc per cycle (lane 0)."""
    sim = GateSimulator(Netlist(result.netlist, embedded()), words)
    seen = []
    for a, b, en, clear in program + [(0, 0, 0, 0)]:
        width_a, width_b = len(sim.net.ports["a"][1]), len(sim.net.ports["b"][1])
        ports = {"a": pack_lanes(np.full((64 * words, 1), a, dtype=np.uint64), width_a)[0],
                 "b": pack_lanes(np.full((64 * words, 1), b, dtype=np.uint64), width_b)[0],
                 "en": [sim.ones if en else sim.zero], "clear": [sim.ones if clear else sim.zero]}
        sim.step(ports, sim.ones)
        acc = sim.read("acc")[:, 0] & np.uint64(1)
        seen.append(sum(int(bit) << i for i, bit in enumerate(acc)))
    return seen[1:], sim  # acc after each edge = the value read in the next cycle


@pytest.mark.parametrize("which", ["int", "float", "chunked"])
def test_gate_level_netlist_computes_the_golden_model(small_units, which):
    mac = small_units[which]
    program = random_program(mac, 300, seed=4)
    got, _ = run_netlist(synthesize(mac), program)
    assert got == expected(mac, program)


def parse_vcd(text: str) -> tuple[dict, dict]:
    """{identifier code: (name, width)} and {code: [(time, value string)]} of a VCD."""
    names, changes, time, scope = {}, {}, 0, []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "$scope":
            scope.append(parts[2])
        elif parts[0] == "$upscope":
            scope.pop()
        elif parts[0] == "$var" and scope[-1:] == ["dut"]:
            names[parts[3]] = (parts[4], int(parts[2]))
        elif line.startswith("#"):
            time = int(line[1:])
        elif line[0] in "01xz" and line[1:] in names:
            changes.setdefault(line[1:], []).append((time, line[0]))
        elif line[0] == "b" and len(parts) == 2 and parts[1] in names:
            changes.setdefault(parts[1], []).append((time, parts[0][1:]))
    return names, changes


def run_icarus(folder, mac, result, cells: str, steps: str, *, declarations: str = "",
               timescale: str = "`timescale 1ns/1ns") -> tuple[dict, dict]:
    """The mapped netlist of ``mac`` under Icarus Verilog with the cell models ``cells``,
    driven by the testbench statements ``steps``; its VCD, parsed (:func:`parse_vcd`)."""
    (folder / "cells.v").write_text(cells)
    (folder / "netlist.v").write_text(result.netlist_verilog)
    (folder / "tb.v").write_text(f"""{timescale}
module tb;
  reg clk = 0, rst = 0, en = 0, clear = 0;
  reg [{len(mac.a) - 1}:0] a = 0;
  reg [{len(mac.b) - 1}:0] b = 0;
  wire [{len(mac.acc) - 1}:0] acc;
  psum_mac dut(.clk(clk), .rst(rst), .a(a), .b(b), .en(en), .clear(clear), .acc(acc));
{declarations}
  initial begin
    $dumpfile("tb.vcd");
    $dumpvars(0, tb.dut);
{steps}
    $finish;
  end
endmodule
""")
    subprocess.run(["iverilog", "-o", "tb", "cells.v", "netlist.v", "tb.v"], cwd=folder, check=True)
    subprocess.run(["vvp", "-n", "tb"], cwd=folder, check=True, capture_output=True)
    return parse_vcd((folder / "tb.vcd").read_text())


@iverilog
@pytest.mark.parametrize("which", ["int", "float"])
def test_toggle_counts_match_icarus_verilog_per_net(small_units, which, tmp_path):
    """The same netlist and stimulus under iverilog: per-net transitions between cycle
    samples (taken just before each rising edge) equal the bit-parallel simulator's."""
    mac, lib = small_units[which], embedded()
    result = synthesize(mac)
    program = random_program(mac, 120, seed=9)
    _, sim = run_netlist(result, program[:-0 or None])
    steps = "\n".join(f"    a = {a}; b = {b}; en = {en}; clear = {clear}; #5 clk = 1; #5 clk = 0;"
                      for a, b, en, clear in program + [(0, 0, 0, 0)])
    names, changes = run_icarus(tmp_path, mac, result, verilog_cell_models(lib), steps)
    samples = [10 * i + 4 for i in range(len(program) + 1)]  # settled, before each rising edge

    def sampled(code):
        history, out, j, value = changes.get(code, []), [], 0, None
        for s in samples:
            while j < len(history) and history[j][0] <= s:
                value = history[j][1]
                j += 1
            out.append(value)
        return out

    ours = sim.toggles  # lane 0..63 all ran the same program: divide by 64
    netnames = result.netlist["netnames"]
    checked = 0
    for code, (name, width) in names.items():
        if name not in netnames:
            continue
        series = sampled(code)
        for i, bit in enumerate(netnames[name]["bits"]):
            if not isinstance(bit, int) or bit not in ours or name == "clk":
                continue
            values = [s.rjust(width, "0")[width - 1 - i] if s else "0" for s in series]
            flips = sum(1 for x, y in zip(values, values[1:]) if x != y)
            assert flips == ours[bit] // 64, f"net {name}[{i}]: iverilog {flips}, ours {ours[bit] // 64}"
            checked += 1
    assert checked > 100


def test_energy_report(small_units):
    mac, lib = small_units["int"], embedded()
    r = synthesize(mac)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 16, (256, 20), dtype=np.uint64), rng.integers(0, 16, (256, 20), dtype=np.uint64)
    e = estimate_energy(r.netlist, lib, a, b, unit=mac.describe(), operands="uniform", clock_mhz=500)
    parts = e.switching_pj + e.internal_pj + e.clock_pj + e.leakage_pj
    assert e.energy_per_mac_pj == pytest.approx(parts, rel=1e-3) and e.macs == 256 * 20
    assert e.power_mw == pytest.approx(e.energy_per_mac_pj * 1e-12 * 500e6 * 1e3 * 20 / 20, rel=1e-3)
    quiet = estimate_energy(r.netlist, lib, np.zeros_like(a), np.zeros_like(b), unit="", operands="zeros")
    assert quiet.switching_pj < 0.05 * e.switching_pj and quiet.leakage_pj == pytest.approx(e.leakage_pj)
    finite = lambda bits: np.ones(bits.shape, dtype=bool)  # noqa: E731
    assert uniform_streams(4, finite, 10, 3, seed=1).max() < 16


@pytest.mark.skipif(not OSU018.is_file() and not SHARED_LIB.is_file(), reason="no real Liberty file here")
def test_real_liberty_files(small_units):
    for path in (OSU018, SHARED_LIB):
        if not path.is_file():
            continue
        lib = from_liberty(path)
        r = synthesize(small_units["int"], lib)
        assert r.area_um2 > 0 and r.library == lib.name and all(c in lib.cells for c in r.cells)
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, 16, (128, 10), dtype=np.uint64), rng.integers(0, 16, (128, 10), dtype=np.uint64)
        e = estimate_energy(r.netlist, lib, a, b, unit="", operands="uniform")
        assert e.energy_per_mac_pj > 0


def test_liberty_errors(tmp_path):
    with pytest.raises(LibraryError, match="does not exist"):
        from_liberty(tmp_path / "missing.lib")
    (tmp_path / "bad.lib").write_text("library (x) { cell (A) { area : 1; } ")
    with pytest.raises(LibraryError):
        from_liberty(tmp_path / "bad.lib")


def test_synth_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "4", "--acc", "int12", "--json",
                           "--streams", "256", "--k", "8"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["synthesis"]["flip_flops"] == 12 and report["energy"][0]["macs"] == 256 * 8
    timing = report["energy"][0]["timing"]
    assert timing["clock_mhz"] == 500.0 and timing["meets"] == (report["synthesis"]["critical_path_ns"] <= 2.0)
    assert timing["fmax_mhz"] == round(1e3 / report["synthesis"]["critical_path_ns"], 1)
    # A clock the MAC cannot meet is said beside its energy.
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "4", "--acc", "int12", "--clock-mhz",
                           "100000", "--streams", "64", "--k", "8"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "energy/MAC" in x)
    assert "at 100000 MHz (slack -" in line and "the MAC does NOT meet this clock" in line
    assert "f_max" in proc.stdout
    for args, fragment in [(["--acc", "e4q7"], "invalid format spec"),
                           (["--liberty", str(tmp_path / "none.lib")], "does not exist"),
                           (["--activity", "lenet5"], "--activity needs --checkpoint")]:
        proc = subprocess.run([sys.executable, "-m", "psum", "synth", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_missing_yosys_is_a_clear_error(monkeypatch):
    import importlib.util

    from synth import yosys

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(yosys.SynthToolError, match="pip install pyosys"):
        yosys.run_yosys(["help"], ".")


def test_clock_energy_is_the_flip_flops_pins_by_hand(small_units):
    """Per flip-flop and cycle: its clock pin's internal energy plus C V^2 of its clock pin
    and wire; per MAC, with one MAC a cycle."""
    mac, lib = small_units["int"], embedded()
    r = synthesize(mac)
    dff = lib.cells["DFF_X1"]
    a = uniform_streams(4, lambda x: np.ones(x.shape, dtype=bool), 64, 16, seed=1)
    e = estimate_energy(r.netlist, lib, a, a, unit=mac.describe(), operands="random", wire_cap_ff_per_pin=0.5)
    per_cycle_fj = r.flip_flops * (dff.clock_energy_fj + (dff.inputs["CK"] + 0.5) * lib.voltage ** 2)
    assert r.cells == {**r.cells, "DFF_X1": r.flip_flops}
    assert e.clock_pj == pytest.approx(per_cycle_fj / 1000, abs=1e-5)
    assert dff.input_energy_fj["D"] > 0  # the D pin's internal power is charged per transition too
