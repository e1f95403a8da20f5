"""Standard-cell libraries: the figures psum's area, timing and power models use.

A :class:`Library` holds, per cell, its area (um^2), leakage (nW), input pin
capacitances (fF), output functions (Liberty syntax), one representative delay (ns) and
internal energy per output transition (fJ), and for flip-flops the state function and
the clock pin's internal energy per cycle; plus the Liberty text that Yosys/ABC map with.

- :func:`embedded`: the default, a subset of the NanGate FreePDK45 Open Cell Library
  (typical corner; figures in :mod:`synth.nangate45`, with their source), written out as
  Liberty with scalar timing;
- :func:`from_liberty`: any real Liberty file (``.lib`` or ``.lib.gz``), parsed with the
  ``liberty-parser`` package; units are converted to the ones above.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Library", "Cell", "OutputPin", "embedded", "from_liberty", "LibraryError"]


class LibraryError(Exception):
    """A Liberty file is missing or lacks what psum needs."""


@dataclass(frozen=True)
class OutputPin:
    function: str
    delay_ns: float
    energy_fj: float


@dataclass(frozen=True)
class Cell:
    name: str
    area: float
    leakage_nw: float
    inputs: dict[str, float]
    outputs: dict[str, OutputPin]
    ff: dict | None = None  # {"next_state", "clocked_on", "state": [IQ, IQN]}
    clock_energy_fj: float = 0.0
    timing: tuple = ()  # published timing arcs with NLDM tables (synth.make_embedded_library); may be empty
    input_energy_fj: dict = field(default_factory=dict)  # internal energy per transition of an input (a D pin)


@dataclass(frozen=True)
class Library:
    name: str
    voltage: float
    cells: dict[str, Cell]
    liberty_text: str = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.blake2b(self.liberty_text.encode(), digest_size=12).hexdigest()


def _cells_from_dict(table: dict) -> dict[str, Cell]:
    return {name: Cell(name=name, area=e["area"], leakage_nw=e["leakage_nw"], inputs=dict(e["inputs"]),
                       outputs={p: OutputPin(**o) for p, o in e["outputs"].items()}, ff=e["ff"],
                       clock_energy_fj=e["clock_energy_fj"], timing=tuple(e.get("timing", ())),
                       input_energy_fj=dict(e.get("input_energy_fj", {})))
            for name, e in table.items()}


def _table_lines(name: str, table: dict, indent: str) -> list[str]:
    """One NLDM table group (``cell_rise (Timing_7_7) { index_1 ...; values ...; }``)."""
    lines = [f"{indent}{name} ({table['template']}) {{", f'{indent}  index_1 ("{table["index_1"]}");']
    if table["index_2"]:
        lines.append(f'{indent}  index_2 ("{table["index_2"]}");')
    rows = ", ".join(f'"{row}"' for row in table["values"].split(";"))
    return lines + [f"{indent}  values ({rows});", f"{indent}}}"]


def _arc_lines(arc: dict, indent: str) -> list[str]:
    lines = [f"{indent}timing () {{", f'{indent}  related_pin : "{arc["related_pin"]}";']
    lines += [f"{indent}  timing_type : {arc['timing_type']};"] if arc["timing_type"] else []
    lines += [f"{indent}  timing_sense : {arc['timing_sense']};"] if arc["timing_sense"] else []
    for table_name, table in arc["tables"].items():
        lines += _table_lines(table_name, table, indent + "  ")
    return lines + [f"{indent}}}"]


def _wire_load_lines(model: dict) -> list[str]:
    return ([f'  wire_load ("{model["name"]}") {{', f"    capacitance : {model['capacitance']};",
             f"    resistance : {model['resistance']};", f"    slope : {model['slope']};"]
            + [f"    fanout_length ({int(n)}, {length});" for n, length in model["fanout_length"]]
            + ["  }", f'  default_wire_load : "{model["name"]}";'])


def _liberty_text(name: str, voltage: float, cells: dict[str, Cell], thresholds: dict | None = None,
                  templates: dict | None = None, wire_load: dict | None = None) -> str:
    """Liberty for ABC, dfflibmap and static timing: areas, pins, functions, flip-flops,
    and each pin's published timing arcs (NLDM tables) where the cell carries them,
    else one scalar delay per output."""
    out = [f"library ({name}) {{", "  delay_model : table_lookup;", '  time_unit : "1ns";',
           '  voltage_unit : "1V";', '  current_unit : "1mA";', "  capacitive_load_unit (1, ff);",
           '  leakage_power_unit : "1nW";', '  pulling_resistance_unit : "1kohm";',
           f"  nom_voltage : {voltage};", "  nom_temperature : 25;", "  nom_process : 1;"]
    out += [f"  {key} : {value};" for key, value in (thresholds or {}).items()]
    out += _wire_load_lines(wire_load) if wire_load else []
    for template, t in (templates or {}).items():
        out += [f"  lu_table_template ({template}) {{", f"    variable_1 : {t['variable_1']};",
                f"    variable_2 : {t['variable_2']};", f'    index_1 ("{t["index_1"]}");',
                f'    index_2 ("{t["index_2"]}");', "  }"]
    for cell in cells.values():
        out += [f"  cell ({cell.name}) {{", f"    area : {cell.area};", f"    cell_leakage_power : {cell.leakage_nw};"]
        if cell.ff:
            out += [f'    ff ({", ".join(cell.ff["state"])}) {{', f'      next_state : "{cell.ff["next_state"]}";',
                    f'      clocked_on : "{cell.ff["clocked_on"]}";', "    }"]
        for pin, cap in cell.inputs.items():
            clock = cell.ff is not None and pin == cell.ff["clocked_on"]
            out += [f"    pin ({pin}) {{", "      direction : input;", f"      capacitance : {cap};"]
            out += ["      clock : true;"] if clock else []
            for arc in cell.timing:
                if arc["pin"] == pin:
                    out += _arc_lines(arc, "      ")
            out += ["    }"]
        for pin, o in cell.outputs.items():
            out += [f"    pin ({pin}) {{", "      direction : output;", f'      function : "{o.function}";']
            arcs = [arc for arc in cell.timing if arc["pin"] == pin]
            for arc in arcs:
                out += _arc_lines(arc, "      ")
            related = [] if arcs else [cell.ff["clocked_on"]] if cell.ff else list(cell.inputs)
            for rp in related:
                out += ["      timing () {", f'        related_pin : "{rp}";']
                out += ["        timing_type : rising_edge;"] if cell.ff else []
                for table in ("cell_rise", "cell_fall"):
                    out += [f'        {table} (scalar) {{ values ("{o.delay_ns}"); }}']
                for table in ("rise_transition", "fall_transition"):
                    out += [f'        {table} (scalar) {{ values ("{o.delay_ns / 2}"); }}']
                out += ["      }"]
            out += ["    }"]
        out += ["  }"]
    out.append("}")
    return "\n".join(out) + "\n"


def embedded() -> Library:
    """psum's default library: the NanGate45 subset of :mod:`synth.nangate45`."""
    from synth import nangate45

    cells = _cells_from_dict(nangate45.CELLS)
    return Library("psum_nangate45_subset", nangate45.VOLTAGE, cells,
                   _liberty_text("psum_nangate45_subset", nangate45.VOLTAGE, cells, nangate45.THRESHOLDS,
                                 nangate45.TEMPLATES, nangate45.WIRE_LOAD))


# -- reading real Liberty files ------------------------------------------------------

_UNIT = re.compile(r"^\s*([0-9.eE+-]+)\s*([a-zA-Z]+)\s*$")
_SCALE = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3}


def _unit(text, base: str, target: float, what: str = "unit") -> float:
    """Factor from a Liberty unit string (``"1nW"``, ``"1ns"``) to ``target`` (in base units)."""
    match = _UNIT.match(str(text).strip('"'))
    if not match:
        raise LibraryError(f"cannot read the {what} {text!r}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise LibraryError(f"cannot read the {what} {text!r}") from None
    unit = match.group(2)
    if not unit.lower().endswith(base.lower()) or unit[:-len(base)].lower() not in _SCALE \
            or not number > 0:
        raise LibraryError(f"unknown {what} {text!r} (expected a positive number, a prefix of "
                           f"{', '.join(p or '(none)' for p in _SCALE)} and {base!r}, e.g. '1n{base}')")
    return number * _SCALE[unit[:-len(base)].lower()] / target


def _cap_unit(attr) -> float:
    """Factor from ``capacitive_load_unit (N, ff|pf|...)`` to fF."""
    if not attr:
        return 1.0
    try:
        number, unit = float(attr[0]), str(attr[1]).strip('"').lower()
    except (TypeError, ValueError, IndexError):
        raise LibraryError(f"cannot read capacitive_load_unit {attr!r}") from None
    if not unit.endswith("f") or unit[:-1] not in _SCALE or not number > 0:
        raise LibraryError(f"unknown capacitive_load_unit {attr!r} (expected e.g. (1, ff) or (1, pf))")
    return number * _SCALE[unit[:-1]] / 1e-15


def _table_value(group) -> float | None:
    """The NLDM entry at the third slew/load index (a representative operating point)."""
    if group is None:
        return None
    values = group["values"]
    rows = values if isinstance(values, list) else [values]
    parsed = [[float(x) for x in str(r).strip('"').split(",")] for r in rows]
    row = parsed[min(2, len(parsed) - 1)]
    return row[min(2, len(row) - 1)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _group(cell, name):
    groups = cell.get_groups(name)
    return groups[0] if groups else None


def _check_figures(name: str, entry: dict) -> None:
    """Every figure of a cell psum uses must be a finite, non-negative number: a negative
    area or energy would silently flatter a design (zero-area cells are noted)."""
    figures = [("area", entry["area"]), ("leakage", entry["leakage_nw"]), ("clock pin energy", entry["clock_energy_fj"])]
    figures += [(f"capacitance of pin {p}", c) for p, c in entry["inputs"].items()]
    for pin, o in entry["outputs"].items():
        figures += [(f"delay of pin {pin}", o["delay_ns"]), (f"internal energy of pin {pin}", o["energy_fj"])]
    for what, value in figures:
        if not math.isfinite(value) or value < 0:
            raise LibraryError(f"cell {name}: {what} is {value}; psum needs a non-negative finite number")


def extract_cell(cell, time_scale: float, cap_scale: float, leak_scale: float) -> dict:
    """A Liberty cell group as the dict :mod:`synth.nangate45` holds (units converted)."""
    if cell["area"] is None:
        raise LibraryError(f"cell {str(cell.args[0]).strip(chr(34))} has no area")
    leakage = cell["cell_leakage_power"]
    if leakage is None:  # only state-dependent values: their mean
        leakage = _mean([float(g["value"]) for g in cell.get_groups("leakage_power")])
    energy_scale = cap_scale  # internal power tables are in cap_unit * V^2
    entry = {"area": float(cell["area"] or 0.0), "leakage_nw": round(float(leakage) * leak_scale, 6),
             "inputs": {}, "outputs": {}, "ff": None, "clock_energy_fj": 0.0}
    ff = cell.get_groups("ff")
    if ff:
        entry["ff"] = {"next_state": str(ff[0]["next_state"]).strip('"'),
                       "clocked_on": str(ff[0]["clocked_on"]).strip('"'),
                       "state": [str(a).strip('"') for a in ff[0].args]}

    def energies(pin) -> list[float]:
        found = []
        for ip in pin.get_groups("internal_power"):
            rise, fall = _table_value(_group(ip, "rise_power")), _table_value(_group(ip, "fall_power"))
            if rise is not None and fall is not None:
                found.append((rise + fall) / 2 * energy_scale)
        return found

    for pin in cell.get_groups("pin"):
        pname = str(pin.args[0]).strip('"')
        direction = str(pin["direction"]).strip('"')
        if direction == "input":
            entry["inputs"][pname] = float(pin["capacitance"] or 0.0) * cap_scale
            if str(pin["clock"]).strip('"') == "true":
                entry["clock_energy_fj"] = 2 * _mean(energies(pin))  # both clock edges
            elif energies(pin):  # a data input with its own internal power (a flip-flop's D)
                entry.setdefault("input_energy_fj", {})[pname] = round(_mean(energies(pin)), 6)
        elif direction == "output" and pin["function"] is not None:
            delays = []
            for t in pin.get_groups("timing"):
                rise, fall = _table_value(_group(t, "cell_rise")), _table_value(_group(t, "cell_fall"))
                if rise is not None and fall is not None:
                    delays.append((rise + fall) / 2 * time_scale)
            entry["outputs"][pname] = {"function": str(pin["function"]).strip('"'),
                                       "delay_ns": round(_mean(delays), 6),
                                       "energy_fj": round(_mean(energies(pin)), 6)}
    return entry


def from_liberty(path: str | Path) -> Library:
    """A real Liberty file; combinational cells and single-output flip-flops are used."""
    from liberty.parser import parse_liberty

    path = Path(path)
    if not path.is_file():
        raise LibraryError(f"Liberty file {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    try:
        raw = path.read_bytes()
        text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode(errors="replace")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LibraryError(f"cannot read {path}: {why}") from None
    if not text.strip():
        raise LibraryError(f"{path} is empty")
    try:
        lib = parse_liberty(text)
    except Exception as exc:  # noqa: BLE001 (the parser's errors are of many kinds)
        lines = str(exc).strip().splitlines()
        raise LibraryError(f"cannot parse {path} as Liberty: {(lines[0] if lines else type(exc).__name__)[:200]}") \
            from None
    time_scale = _unit(lib["time_unit"] or "1ns", "s", 1e-9, "time_unit")
    cap_scale = _cap_unit(lib["capacitive_load_unit"])
    leak_scale = _unit(lib["leakage_power_unit"] or "1nW", "W", 1e-9, "leakage_power_unit")
    try:
        voltage = float(lib["nom_voltage"] or 1.0)
    except (TypeError, ValueError):
        raise LibraryError(f"{path}: cannot read nom_voltage {lib['nom_voltage']!r}") from None
    if not math.isfinite(voltage) or voltage <= 0:
        raise LibraryError(f"{path}: nom_voltage must be a positive number, not {voltage}")
    cells, notes = {}, []
    for cell in lib.get_groups("cell"):
        name = str(cell.args[0]).strip('"')
        if str(cell["dont_use"]).strip('"') == "true":
            continue
        try:
            entry = extract_cell(cell, time_scale, cap_scale, leak_scale)
        except (TypeError, ValueError):
            continue  # cells psum cannot model (pads, macros) stay out of the power model
        except LibraryError as exc:
            raise LibraryError(f"{path}: {exc}") from None
        if entry["outputs"]:
            _check_figures(name, entry)
            cells[name] = entry
    if not cells:
        raise LibraryError(f"{path} has no cell psum can map logic to (cells with area and output functions)")
    free = sorted(name for name, e in cells.items() if e["area"] == 0)
    if free:
        notes.append(f"cells with zero area in the library: {', '.join(free)}")
    if not any(e["ff"] for e in cells.values()):
        raise LibraryError(f"{path} has no flip-flop cell (ff group) to map registers to")
    if not any(o["energy_fj"] for e in cells.values() for o in e["outputs"].values()):
        notes.append("the library has no internal-power tables: energies are switching and leakage only")
    return Library(str(lib.args[0]).strip('"') if lib.args else path.stem, voltage, _cells_from_dict(cells),
                   text, tuple(notes))
