"""Timing-driven synthesis (synth.flow.synthesize with a clock target): the smallest
netlist that meets the clock under OpenSTA, or the fastest where none does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwgen import IntMAC
from synth.flow import _choose, candidates, synthesize
from synth.liberty import embedded
from synth.sta import sta_available, static_timing

needs_sta = pytest.mark.skipif(not sta_available(), reason="OpenSTA (apt-get install opensta) is not installed")


def test_a_target_adds_the_area_mapping_to_every_recipe():
    assert candidates(None) == [("plain", "delay"), ("booth", "delay")]
    assert sorted(candidates(500.0)) == sorted([(r, m) for r in ("plain", "booth") for m in ("delay", "area")])


def test_the_choice_is_the_smallest_that_meets_else_the_fastest():
    mapped = [{"area": 100.0, "sta": 3.0}, {"area": 80.0, "sta": 4.5}, {"area": 90.0, "sta": 3.9}]
    assert _choose(mapped, None) == (mapped[1], None)
    assert _choose(mapped, 250.0) == (mapped[2], True)  # 4 ns: 90 meets, 80 does not
    assert _choose(mapped, 1e3 / 3.0) == (mapped[0], True)  # exactly the period: met
    assert _choose(mapped, 400.0) == (mapped[0], False)  # 2.5 ns: none meets, the fastest


@needs_sta
def test_a_loose_target_trades_slack_for_area_and_a_tight_one_keeps_the_fastest():
    mac = IntMAC(6, 6, "int16")
    reference = synthesize(mac)
    ref_path = static_timing(reference.netlist_verilog, embedded()).critical_path_ns
    loose = synthesize(mac, target_mhz=100.0)
    assert loose.target_met and loose.sta_critical_path_ns <= 10.0
    assert loose.area_um2 < reference.area_um2 and loose.mapping == "area"  # amap: smaller, slower
    tight = synthesize(mac, target_mhz=1e3 / (0.5 * ref_path))  # twice as fast as any netlist: missed
    assert tight.target_met is False and tight.sta_critical_path_ns <= ref_path + 1e-9
    exact = synthesize(mac, target_mhz=1e3 / loose.sta_critical_path_ns)
    assert exact.target_met and exact.area_um2 <= loose.area_um2


def test_a_nonpositive_target_is_an_error():
    with pytest.raises(ValueError, match="positive frequency"):
        synthesize(IntMAC(4, 4, "int8"), target_mhz=0.0)


def test_a_target_without_opensta_is_a_clear_error(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "4", "--acc", "int8", "--target-mhz", "400",
                           "--streams", "64", "--no-cache"], capture_output=True, text=True,
                          env={"PATH": str(tmp_path)}, cwd=root)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "psum: error: static timing needs OpenSTA's 'sta' on PATH: apt-get install opensta"]


@needs_sta
def test_psum_synth_for_a_target_reports_the_netlist_kept_and_quotes_energy_there():
    proc = subprocess.run([sys.executable, "-m", "psum", "synth", "--int", "6", "--acc", "int16", "--target-mhz",
                           "100", "--streams", "64", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    s = report["synthesis"]
    assert (s["target_mhz"], s["target_met"], s["mapping"]) == (100.0, True, "area")
    assert report["sta"]["critical_path_ns"] == s["sta_critical_path_ns"]
    assert report["energy"][0]["clock_mhz"] == 100.0 and report["energy"][0]["timing"]["meets"]
