"""Gate-level synthesis of a MAC unit and what it costs.

Flow (Yosys through :mod:`synth.yosys`):

1. Amaranth -> RTLIL (``amaranth.back.rtlil``);
2. ``synth -flatten``, once as is and once with ``-booth`` (:data:`RECIPES`; the smaller
   mapped area is kept, its recipe recorded); ``dfflibmap -liberty`` (flip-flops, the synchronous reset becomes
   logic in front of plain flip-flops where the library has no such cell);
   ``abc -liberty`` (logic, ABC's default delay-oriented mapping: :data:`MAPPINGS`);
   ``stat -liberty -json`` -> cells by type, area;
   ``write_json``/``write_verilog`` -> the mapped netlist (static timing, power, and
   the cross-check under Icarus Verilog);
3. a library-independent transistor count from a second run: ``abc -g cmos`` and
   ``stat -tech cmos``.

With a clock target (``target_mhz``) the flow is timing-driven: every recipe is also
mapped for area (ABC's ``amap``, about 15% smaller and 10% slower), each netlist is
timed with OpenSTA (:mod:`synth.sta`), and the smallest one that meets the target's
period is kept; where none meets it, the fastest (``target_met`` False says so).

Logic depth (cells on the longest combinational path) and the critical-path delay come
from a static timing pass over the mapped netlist with one
delay per cell output (the library's NLDM entry at a typical slew and load, see
:mod:`synth.liberty`): arrival(out) = max(arrival(inputs)) + delay, from primary inputs
and flip-flop outputs (clock-to-Q) to primary outputs and flip-flop D pins.

Results are cached under ``$PSUM_CACHE_DIR/synth/<key>``, the key a digest of the RTLIL,
the scripts, the Yosys version, the library's Liberty text and the hwgen version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synth.liberty import Library, embedded
from synth.yosys import run_yosys, yosys_version

__all__ = ["SynthResult", "synthesize", "mapped_commands", "candidates", "clock_check", "timing", "MAPPINGS",
           "RECIPES"]


@dataclass
class SynthResult:
    unit: str
    library: str
    cells: dict[str, int]
    area_um2: float
    sequential_area_um2: float
    flip_flops: int
    transistors: int
    depth: int
    critical_path_ns: float
    synth_seconds: float
    recipe: str = "plain"  # the RECIPES entry whose netlist this is (the smallest area)
    mapping: str = "delay"  # the MAPPINGS entry ABC mapped it with
    target_mhz: float | None = None  # the clock target of a timing-driven run
    target_met: bool | None = None  # whether its netlist meets target_mhz under OpenSTA
    sta_critical_path_ns: float | None = None  # OpenSTA's critical path (timing-driven runs)
    cached: bool = False
    netlist: dict = field(default_factory=dict, repr=False)
    netlist_verilog: str = field(default="", repr=False)

    @property
    def num_cells(self) -> int:
        return sum(self.cells.values())

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("netlist")
        d.pop("netlist_verilog")
        d["num_cells"] = self.num_cells
        return d


#: Yosys ``synth`` options tried for every unit; the smaller mapped area wins (a tie: the
#: first). ``-booth`` maps multipliers to radix-4 Booth partial products: it shrinks
#: int8->int32 from 1177 to 802 um^2 and fp16->fp16 by 3%, and grows bf16 MACs by 6%
#: (NanGate45, docs/synthesis.md), so neither alone is each side's best design.
RECIPES = {"plain": "", "booth": "-booth"}


#: ABC scripts mapping the logic to the library. "delay": Yosys's default for a Liberty
#: library (``&nf``, delay-oriented with area recovery), the flow's reference; "area":
#: ``amap`` after choice computation, area-oriented (NanGate45: int8->int32 802 -> 676
#: um^2 at 1.999 -> 2.215 ns; bf16->e4m7 1725 -> 1460 um^2 at 6.92 -> 7.46 ns).
MAPPINGS = {"delay": "abc -liberty cells.lib", "area": "abc -liberty cells.lib -script +strash;dch,-f;amap;topo"}


def mapped_commands(top: str, recipe: str = "plain", mapping: str = "delay") -> list[str]:
    options = RECIPES[recipe]
    return [
        "read_liberty -lib cells.lib",  # cell port directions for ltp and the netlist
        "read_rtlil unit.il",
        f"hierarchy -check -top {top}",
        f"synth -flatten {options + ' ' if options else ''}-top {top}",
        "dfflibmap -liberty cells.lib",
        MAPPINGS[mapping],
        "opt_clean -purge",
        "rename -enumerate",  # plain names (_N_), the same in the JSON and the Verilog netlist
        "tee -q -o stat.json stat -liberty cells.lib -json",
        "write_json netlist.json",
        "write_verilog -noattr -simple-lhs netlist.v",  # no concatenations on the left: OpenSTA reads it
    ]


#: Transistors of one static master-slave D flip-flop (two latches with clocked inverters,
#: the count of a plain DFF like NanGate's DFF_X1), which ``stat -tech cmos`` leaves out.
FLIP_FLOP_TRANSISTORS = 24


def transistor_commands(top: str, recipe: str = "plain") -> list[str]:
    """Library-independent count: logic as CMOS gates (``abc -g cmos``), resets and
    enables turned into logic in front of plain D flip-flops."""
    options = RECIPES[recipe]
    return ["read_rtlil unit.il", f"hierarchy -check -top {top}",
            f"synth -flatten {options + ' ' if options else ''}-top {top}",
            "dfflegalize -cell $_DFF_P_ 01", "abc -g cmos", "opt_clean -purge",
            "tee -q -o cmos.json stat -tech cmos -json"]


def _transistors(cmos: dict) -> int:
    logic = int(str(cmos.get("estimated_num_transistors") or "0").rstrip("+"))
    flops = sum(n for kind, n in cmos.get("num_cells_by_type", {}).items() if kind.startswith("$_DFF"))
    return logic + FLIP_FLOP_TRANSISTORS * flops


def _module(stat: dict, top: str) -> dict:
    modules = stat.get("modules", {})
    return modules.get(f"\\{top}") or next(iter(modules.values()))


def candidates(target_mhz: float | None) -> list[tuple[str, str]]:
    """The (recipe, mapping) pairs a run maps and compares: every recipe with the
    reference mapping; with a clock target, with the area mapping too."""
    mappings = ("delay", "area") if target_mhz is not None else ("delay",)
    return [(recipe, mapping) for mapping in mappings for recipe in RECIPES]


def synthesize(mac, library: Library | None = None, *, top: str = "psum_mac",
               cache: bool = True, target_mhz: float | None = None) -> SynthResult:
    """Synthesize ``mac`` (a hwgen component) to ``library`` (default: embedded NanGate45).

    Without ``target_mhz``: the smallest of the :data:`RECIPES` netlists, each mapped by
    the reference (delay-oriented) mapping. With it: the smallest netlist of every recipe
    and mapping that meets the clock under OpenSTA, or the fastest where none does
    (needs OpenSTA: :func:`synth.sta.require_sta`).

    Returns a :class:`SynthResult` (cells by type, area, flip-flops, transistors,
    logic depth, critical path, the mapped netlist), cached by content.

    >>> from hwgen import IntMAC
    >>> r = synthesize(IntMAC(4, 4, "int8"))
    >>> r.library, r.flip_flops, r.area_um2 > 0
    ('psum_nangate45_subset', 8, True)
    """
    from amaranth.back import rtlil

    from hwgen.mac import HWGEN_VERSION
    from psum.cache import cache_folder

    library = library or embedded()
    if target_mhz is not None:
        if not target_mhz > 0:
            raise ValueError(f"the clock target must be a positive frequency in MHz, not {target_mhz!r}")
        from synth.sta import require_sta, sta_version

        require_sta()
    il = rtlil.convert(mac, name=top, emit_src=False)
    key = hashlib.blake2b(digest_size=16)
    scripts = [line for recipe, mapping in candidates(target_mhz)
               for line in mapped_commands(top, recipe, mapping) + transistor_commands(top, recipe)]
    parts = [il, "\n".join(scripts), yosys_version(), library.digest, HWGEN_VERSION]
    if target_mhz is not None:  # the choice depends on the target and the timer
        parts += [f"target {target_mhz!r} MHz", sta_version()]
    for part in parts:
        key.update(part.encode())
        key.update(b"\0")
    folder = cache_folder("synth") / key.hexdigest() if cache else None
    cached = _cached(folder) if cache else None
    if cached is not None:
        return cached

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="psum-synth-") as tmp:
        work = Path(tmp)
        mapped = []
        for recipe, mapping in candidates(target_mhz):
            run = work / f"{recipe}-{mapping}"
            run.mkdir()
            (run / "unit.il").write_text(il)
            (run / "cells.lib").write_text(library.liberty_text)
            run_yosys(mapped_commands(top, recipe, mapping), run)
            stat = _module(json.loads((run / "stat.json").read_text()), top)
            sta = None
            if target_mhz is not None:
                from synth.sta import static_timing

                sta = static_timing((run / "netlist.v").read_text(), library, top=top).critical_path_ns
            mapped.append({"recipe": recipe, "mapping": mapping, "run": run, "stat": stat,
                           "area": float(stat["area"]), "sta": sta})
        best, met = _choose(mapped, target_mhz)
        run = best["run"]
        run_yosys(transistor_commands(top, best["recipe"]), run)
        cmos = _module(json.loads((run / "cmos.json").read_text()), top)
        netlist = json.loads((run / "netlist.json").read_text())["modules"][top]
        verilog = (run / "netlist.v").read_text()
    stat = best["stat"]
    cells = {k: v for k, v in stat["num_cells_by_type"].items() if not k.startswith("$")}
    flip_flops = sum(n for name, n in cells.items() if library.cells.get(name) and library.cells[name].ff)
    depth, delay = timing(netlist, library)
    result = SynthResult(
        unit=mac.describe(), library=library.name, cells=cells, area_um2=round(best["area"], 3),
        sequential_area_um2=round(float(stat.get("sequential_area", 0.0)), 3), flip_flops=flip_flops,
        transistors=_transistors(cmos), depth=depth,
        critical_path_ns=round(delay, 4),
        synth_seconds=round(time.monotonic() - start, 2), recipe=best["recipe"], mapping=best["mapping"],
        target_mhz=target_mhz, target_met=met, sta_critical_path_ns=best["sta"],
        netlist=netlist, netlist_verilog=verilog)
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)  # written last: absent while the rest is rewritten
        (folder / "netlist.json").write_text(json.dumps(netlist))
        (folder / "netlist.v").write_text(verilog)
        data = result.as_dict()
        data.pop("num_cells")
        partial = folder / "result.json.tmp"
        partial.write_text(json.dumps(data, indent=1))
        partial.replace(folder / "result.json")  # atomic: a cache entry is whole or absent
    return result


def _choose(mapped: list[dict], target_mhz: float | None) -> tuple[dict, bool | None]:
    """The netlist a run keeps, and whether it meets the target (None: no target).
    Without a target: the smallest area (a tie: the first). With one: the smallest
    that meets the period under OpenSTA, else the fastest."""
    if target_mhz is None:
        return min(mapped, key=lambda m: m["area"]), None
    period_ns = 1e3 / target_mhz
    meeting = [m for m in mapped if m["sta"] <= period_ns]
    if meeting:
        return min(meeting, key=lambda m: m["area"]), True
    return min(mapped, key=lambda m: (m["sta"], m["area"])), False


def _cached(folder: Path) -> SynthResult | None:
    """The cached result in ``folder``, or None when absent or damaged (then resynthesized)."""
    try:
        data = json.loads((folder / "result.json").read_text())
        data["netlist"] = json.loads((folder / "netlist.json").read_text())
        data["netlist_verilog"] = (folder / "netlist.v").read_text()
        result = SynthResult(**{**data, "cached": True})
    except (OSError, ValueError, TypeError):  # ValueError covers malformed JSON
        return None
    if not isinstance(result.netlist, dict) or not isinstance(result.cells, dict) or not result.netlist_verilog:
        return None
    return result


def timing(netlist: dict, library: Library) -> tuple[int, float]:
    """(logic depth in cells, critical-path delay in ns) of a mapped netlist.

    Paths run from primary inputs and flip-flop outputs (starting at clock-to-Q) to
    primary outputs and flip-flop inputs; each cell adds its output's delay.
    """
    from synth.netlist import Netlist

    net = Netlist(netlist, library)
    arrival: dict = {b: 0.0 for b in net.input_bits}
    depth: dict = {}
    for cell in net.flops:
        for pin, bits in cell.outputs.items():
            for b in bits:
                arrival[b] = cell.lib.outputs[pin].delay_ns
    for cell in net.order:  # combinational cells in topological order
        ins = [b for bits in cell.inputs.values() for b in bits]
        start = max((arrival.get(b, 0.0) for b in ins), default=0.0)
        level = 1 + max((depth.get(b, 0) for b in ins), default=0)
        for pin, bits in cell.outputs.items():
            for b in bits:
                arrival[b] = start + cell.lib.outputs[pin].delay_ns
                depth[b] = level
    ends = list(net.output_bits) + [b for cell in net.flops for pin, bits in cell.inputs.items()
                                     if pin != cell.lib.ff["clocked_on"] for b in bits]
    return (max((depth.get(b, 0) for b in ends), default=0),
            max((arrival.get(b, 0.0) for b in ends), default=0.0))


def clock_check(critical_path_ns: float, clock_mhz: float) -> dict:
    """Whether a MAC with this critical path meets ``clock_mhz``: ``fmax_mhz`` (1 /
    critical path), ``slack_ns`` (clock period - critical path; negative: the clock is
    not met) and ``meets``. The path is :func:`timing`'s estimate (one NLDM delay per
    cell at a typical slew and load), not a sign-off timing analysis."""
    period_ns = 1e3 / clock_mhz
    return {"clock_mhz": clock_mhz, "fmax_mhz": round(1e3 / critical_path_ns, 1) if critical_path_ns > 0 else None,
            "slack_ns": round(period_ns - critical_path_ns, 3), "meets": critical_path_ns <= period_ns}
