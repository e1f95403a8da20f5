"""Static timing analysis of a mapped MAC with OpenSTA (Debian/Ubuntu: ``apt-get install opensta``).

psum's own critical-path figure (:func:`synth.flow.timing`) adds one representative
delay per cell. OpenSTA propagates slews and loads through the library's NLDM tables
(delay and output transition against input transition and the load each net drives:
the pin capacitances of its fanout; no wire-load model) and adds the flip-flops'
clock-to-Q and setup times. The embedded NanGate45 subset carries its cells' published
tables for this (:mod:`synth.nangate45`); a ``--liberty`` file is read as it is.

Constraints: one ideal clock on ``clk``, every other input arriving at the clock edge
and every output required at the next one (zero external delays), so the critical path
is the longest register-to-register, input-to-register or register-to-output path,
setup time included: the shortest clock period the unit meets.

OpenSTA runs as a child process on a Tcl script (no shell); without it, timing is a
clear error naming the package, never a silent substitute.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synth.liberty import Library
from synth.yosys import SynthToolError

__all__ = ["StaError", "StaTiming", "require_sta", "sta_available", "sta_version", "static_timing"]

#: The analysis clock's period; long enough that every path meets it, so the critical
#: path is the period minus the worst slack.
PERIOD_NS = 1000.0


class StaError(Exception):
    """OpenSTA could not analyse the netlist."""


@dataclass(frozen=True)
class StaTiming:
    critical_path_ns: float  # longest path, flip-flop setup included: the shortest clock period met
    startpoint: str
    endpoint: str
    tool: str

    @property
    def fmax_mhz(self) -> float:
        return 1e3 / self.critical_path_ns if self.critical_path_ns > 0 else float("inf")


def require_sta() -> str:
    """The path of OpenSTA's ``sta``, or :class:`SynthToolError` saying how to install it."""
    path = shutil.which("sta")
    if path is None:
        raise SynthToolError("static timing needs OpenSTA's 'sta' on PATH: apt-get install opensta")
    return path


def sta_available() -> bool:
    return shutil.which("sta") is not None


@functools.cache
def sta_version() -> str:
    proc = subprocess.run([require_sta(), "-version"], capture_output=True, text=True, timeout=60, check=False)
    return f"OpenSTA {proc.stdout.strip() or 'unknown version'}"


def script(top: str, clock: str) -> str:
    return "\n".join([
        "read_liberty cells.lib",
        "read_verilog unit.v",
        f"link_design {top}",
        f"create_clock -name {clock} -period {PERIOD_NS} [get_ports {clock}]",
        f"set_input_delay 0 -clock {clock} [delete_from_list [all_inputs] [get_ports {clock}]]",
        f"set_output_delay 0 -clock {clock} [all_outputs]",
        "report_checks -path_delay max -digits 4",
    ]) + "\n"


_SLACK = re.compile(r"^\s*(-?[0-9.]+)\s+slack \((MET|VIOLATED)\)", re.M)
_POINT = re.compile(r"^(Startpoint|Endpoint): (\S+)", re.M)


def parse_report(text: str) -> tuple[float, str, str]:
    """(critical path ns, startpoint, endpoint) from ``report_checks`` output."""
    slack = _SLACK.search(text)
    points = dict(_POINT.findall(text))
    if slack is None or "Startpoint" not in points or "Endpoint" not in points:
        raise StaError("OpenSTA reported no timing path (is the netlist clocked by the named clock?)")
    return round(PERIOD_NS - float(slack.group(1)), 4), points["Startpoint"], points["Endpoint"]


_SIGNED = re.compile(r"^(\s*(?:wire|input|output|inout|reg))\s+signed\b", re.M)


def readable(netlist_verilog: str) -> str:
    """The netlist in the Verilog OpenSTA's reader takes: declarations without
    ``signed`` (it means nothing in a netlist of cells, and the reader rejects it)."""
    return _SIGNED.sub(r"\1", netlist_verilog)


def static_timing(netlist_verilog: str, library: Library, *, top: str = "psum_mac", clock: str = "clk",
                  timeout: float = 600) -> StaTiming:
    """OpenSTA's critical path of a mapped netlist (``SynthResult.netlist_verilog``) on
    ``library`` (the one it was mapped to)."""
    sta = require_sta()
    with tempfile.TemporaryDirectory(prefix="psum-sta-") as tmp:
        work = Path(tmp)
        (work / "unit.v").write_text(readable(netlist_verilog))
        (work / "cells.lib").write_text(library.liberty_text)
        (work / "run.tcl").write_text(script(top, clock))
        proc = subprocess.run([sta, "-no_init", "-no_splash", "-exit", "run.tcl"], cwd=work, capture_output=True,
                              text=True, timeout=timeout, check=False)
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    if errors or proc.returncode != 0:
        raise StaError(errors[0] if errors else f"OpenSTA exited with status {proc.returncode}")
    critical, start, end = parse_report(text)
    return StaTiming(critical, start, end, sta_version())
