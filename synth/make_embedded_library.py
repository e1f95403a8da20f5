"""Regenerate synth/nangate45.py from the NanGate FreePDK45 Open Cell Library.

    python -m synth.make_embedded_library path/to/NangateOpenCellLibrary_typical.lib

Reads the typical-corner Liberty file (TypTyp, 1.1 V, 25 C) and writes, for the cells
psum maps to, the published figures: area, leakage, input pin capacitances, the
Boolean functions, one representative delay and internal energy per output transition
(the NLDM table entry at the third input-slew and third load index, averaged over
rise/fall and over the timing arcs), and every timing arc's NLDM tables with the
library's slew thresholds (for static timing analysis). Run by hand; not part of the flow.
"""

from __future__ import annotations

import pprint
import sys
from pathlib import Path

from liberty.parser import parse_liberty

from synth.liberty import extract_cell

CELLS = ["INV_X1", "BUF_X1", "NAND2_X1", "NAND3_X1", "NAND4_X1", "NOR2_X1", "NOR3_X1", "NOR4_X1",
         "AND2_X1", "AND3_X1", "AND4_X1", "OR2_X1", "OR3_X1", "OR4_X1", "XOR2_X1", "XNOR2_X1",
         "AOI21_X1", "AOI22_X1", "AOI211_X1", "OAI21_X1", "OAI22_X1", "OAI211_X1", "MUX2_X1",
         "DFF_X1"]


TABLES = ("cell_rise", "cell_fall", "rise_transition", "fall_transition", "rise_constraint", "fall_constraint")
THRESHOLDS = ("slew_lower_threshold_pct_fall", "slew_lower_threshold_pct_rise", "slew_upper_threshold_pct_fall",
              "slew_upper_threshold_pct_rise", "slew_derate_from_library", "input_threshold_pct_fall",
              "input_threshold_pct_rise", "output_threshold_pct_fall", "output_threshold_pct_rise",
              "default_max_transition")


def _numbers(attribute) -> list[float]:
    return [float(x) for part in attribute for x in str(part).strip('"').split(",")]


def timing_arcs(cell) -> list[dict]:
    """The cell's timing arcs with their NLDM tables, as published: pin, related pin,
    type, sense, and per table its template and its indices and values as Liberty
    writes them (comma-separated numbers; rows joined by ";"). Arcs that differ only by
    a state condition (``when``) become one arc with each table's elementwise maximum,
    the value a timing analyser without the conditions takes."""
    merged: dict[tuple, dict] = {}
    for pin in cell.get_groups("pin"):
        for t in pin.get_groups("timing"):
            kind = str(t["timing_type"]).strip('"') if t["timing_type"] else None
            if kind == "min_pulse_width":
                continue
            key = (str(pin.args[0]).strip('"'), str(t["related_pin"]).strip('"'), kind,
                   str(t["timing_sense"]).strip('"') if t["timing_sense"] else None)
            arc = merged.setdefault(key, {"pin": key[0], "related_pin": key[1], "timing_type": key[2],
                                          "timing_sense": key[3], "tables": {}})
            for g in t.groups:
                if g.group_name not in TABLES:
                    continue
                rows = [_numbers([row]) for row in g["values"]]
                old = arc["tables"].get(g.group_name)
                if old is not None:
                    rows = [[max(x, y) for x, y in zip(r, q)] for r, q in zip(rows, old["rows"])]
                arc["tables"][g.group_name] = {"template": str(g.args[0]), "index_1": _numbers(g["index_1"]),
                                               "index_2": _numbers(g["index_2"]) if g["index_2"] else [],
                                               "rows": rows}
    for arc in merged.values():
        arc["tables"] = {name: {"template": t["template"], "index_1": _text(t["index_1"]),
                                "index_2": _text(t["index_2"]), "values": ";".join(_text(r) for r in t["rows"])}
                         for name, t in arc["tables"].items()}
    return list(merged.values())


def _text(numbers: list[float]) -> str:
    return ",".join(f"{x:g}" for x in numbers)


def templates(lib, used: set[str]) -> dict:
    out = {}
    for g in lib.get_groups("lu_table_template"):
        name = str(g.args[0])
        if name in used:
            out[name] = {"variable_1": str(g["variable_1"]), "variable_2": str(g["variable_2"]),
                         "index_1": _text(_numbers(g["index_1"])), "index_2": _text(_numbers(g["index_2"]))}
    return out


def wire_load(lib) -> dict:
    """The library's default wire-load model (net capacitance and resistance against
    fanout), as published."""
    name = str(lib["default_wire_load"]).strip('"')
    for g in lib.get_groups("wire_load"):
        if str(g.args[0]).strip('"') == name:
            lengths = [[float(v) for v in a.value] for a in g.attributes if a.name == "fanout_length"]
            return {"name": name, "capacitance": float(g["capacitance"]), "resistance": float(g["resistance"]),
                    "slope": float(g["slope"]), "fanout_length": lengths}
    raise SystemExit(f"no wire_load group {name!r}")


def main(path: str) -> None:
    lib = parse_liberty(Path(path).read_text())
    found = {str(c.args[0]).strip('"'): c for c in lib.get_groups("cell")}
    # NanGate's typical library: ns, fF, nW, energies in fF*V^2 = fJ.
    out = {name: extract_cell(found[name], 1.0, 1.0, 1.0) | {"timing": timing_arcs(found[name])} for name in CELLS}
    used = {t["template"] for cell in out.values() for arc in cell["timing"] for t in arc["tables"].values()}
    thresholds = {name: float(lib[name]) for name in THRESHOLDS}
    target = Path(__file__).with_name("nangate45.py")
    header = (
        '"""A subset of the NanGate FreePDK45 Open Cell Library, typical corner (TypTyp,\n'
        "1.1 V, 25 C): the figures psum's default cell library carries.\n\n"
        "Source: NanGate FreePDK45 Open Cell Library v1.3 (Nangate Inc., 2011; Apache License\n"
        "2.0), NangateOpenCellLibrary_typical.lib. Areas in um^2, leakage in nW, pin\n"
        "capacitances in fF, delays in ns and internal energies in fJ per output transition\n"
        "(the NLDM entry at input slew index 3 and load index 3, averaged over rise/fall\n"
        "and over timing arcs); flip-flops carry the clock pin's internal energy per cycle.\n"
        "Each cell's ``timing`` holds its published timing arcs with their NLDM tables (delay\n"
        "and output transition against input transition and load; the flip-flop's setup and\n"
        "hold constraints), and WIRE_LOAD the library's default wire-load model, so that a static\n"
        "timing analyser reading psum's Liberty text sees the library's own delays.\n"
        "Generated by synth/make_embedded_library.py.\n"
        '"""\n\n'
        "VOLTAGE = 1.1\n\n"
    )
    target.write_text(header + "THRESHOLDS = " + pprint.pformat(thresholds, width=100, sort_dicts=False) + "\n\n"
                      + "TEMPLATES = " + pprint.pformat(templates(lib, used), width=100, sort_dicts=False) + "\n\n"
                      + "WIRE_LOAD = " + pprint.pformat(wire_load(lib), width=100, sort_dicts=False) + "\n\n"
                      + "CELLS = " + pprint.pformat(out, width=120, sort_dicts=False) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1])
