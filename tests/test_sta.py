"""Static timing with OpenSTA: the embedded library's published NLDM tables and wire-load
model, the critical path of mapped MACs, and clear errors without the tool."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwgen import FloatMAC, IntMAC
from synth import sta
from synth.flow import synthesize
from synth.liberty import embedded, from_liberty
from synth.yosys import SynthToolError

SHARED_LIB = Path(__file__).resolve().parents[2] / "shared" / "lib" / "nangate45_typ.lib.gz"
opensta = pytest.mark.skipif(shutil.which("sta") is None, reason="OpenSTA (apt-get install opensta) is not installed")

REPORT = """Startpoint: b[1] (input port clocked by clk)
Endpoint: _1213_ (rising edge-triggered flip-flop clocked by clk)
Path Group: clk
             1.9645   data arrival time
          1000.0000   clock clk (rise edge)
            -0.0340   library setup time
           998.0015   slack (MET)
"""


def test_the_report_gives_the_shortest_period_met():
    assert sta.parse_report(REPORT) == (1.9985, "b[1]", "_1213_")
    with pytest.raises(sta.StaError, match="no timing path"):
        sta.parse_report("Warning: no paths found\n")


def test_the_embedded_liberty_carries_the_published_tables():
    text = embedded().liberty_text
    assert "lu_table_template (Timing_7_7)" in text and 'default_wire_load : "5K_hvratio_1_1";' in text
    nand = text[text.index("cell (NAND2_X1)"):text.index("cell (NAND3_X1)")]
    assert nand.count("timing ()") == 2 and nand.count("cell_rise (Timing_7_7)") == 2
    # NangateOpenCellLibrary_typical: NAND2_X1 A1 -> ZN, cell_fall at the smallest slew and load
    assert '"0.0068309,0.0100142,0.0139116,0.0216539,0.0370876,0.0679222,0.129575"' in nand
    dff = text[text.index("cell (DFF_X1)"):]
    assert "timing_type : setup_rising;" in dff and "timing_type : rising_edge;" in dff


@opensta
def test_sta_times_a_mac_beyond_the_typical_delay_estimate():
    r = synthesize(IntMAC(4, 4, "int8"))
    t = sta.static_timing(r.netlist_verilog, embedded())
    assert t.tool.startswith("OpenSTA") and t.endpoint.startswith("_")  # a flip-flop: the accumulator loop
    # loads, slews, wire capacitance and setup: longer than one typical delay per cell
    assert r.critical_path_ns < t.critical_path_ns < 3 * r.critical_path_ns


@opensta
@pytest.mark.skipif(not SHARED_LIB.is_file(), reason="../shared/lib is not here")
def test_the_embedded_tables_time_like_the_published_library():
    """The same netlist timed with the whole published NanGate45 file: within 2% (psum's
    subset takes the worse of the state-dependent arcs that file distinguishes)."""
    r = synthesize(FloatMAC("e4m3", "e5m6"))
    ours = sta.static_timing(r.netlist_verilog, embedded()).critical_path_ns
    published = sta.static_timing(r.netlist_verilog, from_liberty(SHARED_LIB)).critical_path_ns
    assert published <= ours <= 1.02 * published


def test_without_opensta_timing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SynthToolError, match="apt-get install opensta"):
        sta.static_timing("module m(); endmodule", embedded())
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "4", "--acc", "int8", "--sta",
                           "--streams", "64"], capture_output=True, text=True, env={"PATH": str(tmp_path)},
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "psum: error: static timing needs OpenSTA's 'sta' on PATH: apt-get install opensta"]


@opensta
def test_psum_synth_reports_both_critical_paths():
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "4", "--acc", "int8", "--sta",
                           "--streams", "64", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sta"]["critical_path_ns"] > report["synthesis"]["critical_path_ns"] > 0
    assert report["energy"][0]["timing"]["fmax_mhz"] == report["sta"]["fmax_mhz"]


@opensta
@pytest.mark.parametrize("mac", [FloatMAC("bf16", "e3m3", chunk=16, chunk_acc="fp32"),
                                 FloatMAC("e4m3", "e5m6", product="e4m3", pipeline=True),
                                 IntMAC(8, 8, "int12:sat", pipeline=True)], ids=lambda m: m.describe())
def test_every_kind_of_netlist_reads_into_opensta(mac):
    """Chunked, unfused, pipelined, saturating: their netlists (signed wires, split
    connections) all read and time."""
    r = synthesize(mac)
    assert sta.static_timing(r.netlist_verilog, embedded()).critical_path_ns > r.critical_path_ns
