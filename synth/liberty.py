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
import re
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
                       clock_energy_fj=e["clock_energy_fj"])
            for name, e in table.items()}


def _liberty_text(name: str, voltage: float, cells: dict[str, Cell]) -> str:
    """Liberty for ABC and dfflibmap: areas, pins, functions, flip-flops, scalar delays."""
    out = [f"library ({name}) {{", "  delay_model : table_lookup;", '  time_unit : "1ns";',
           '  voltage_unit : "1V";', '  current_unit : "1mA";', "  capacitive_load_unit (1, ff);",
           '  leakage_power_unit : "1nW";', '  pulling_resistance_unit : "1kohm";',
           f"  nom_voltage : {voltage};", "  nom_temperature : 25;", "  nom_process : 1;"]
    for cell in cells.values():
        out += [f"  cell ({cell.name}) {{", f"    area : {cell.area};", f"    cell_leakage_power : {cell.leakage_nw};"]
        if cell.ff:
            out += [f'    ff ({", ".join(cell.ff["state"])}) {{', f'      next_state : "{cell.ff["next_state"]}";',
                    f'      clocked_on : "{cell.ff["clocked_on"]}";', "    }"]
        for pin, cap in cell.inputs.items():
            clock = cell.ff is not None and pin == cell.ff["clocked_on"]
            out += [f"    pin ({pin}) {{", "      direction : input;", f"      capacitance : {cap};"]
            out += ["      clock : true;"] if clock else []
            out += ["    }"]
        for pin, o in cell.outputs.items():
            out += [f"    pin ({pin}) {{", "      direction : output;", f'      function : "{o.function}";']
            related = [cell.ff["clocked_on"]] if cell.ff else list(cell.inputs)
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
                   _liberty_text("psum_nangate45_subset", nangate45.VOLTAGE, cells))


# -- reading real Liberty files ------------------------------------------------------

_UNIT = re.compile(r"^\s*([0-9.eE+-]+)\s*([a-zA-Z]+)\s*$")
_SCALE = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3}


def _unit(text, base: str, target: float) -> float:
    """Factor from a Liberty unit string (``"1nW"``, ``"1ns"``) to ``target`` (in base units)."""
    match = _UNIT.match(str(text).strip('"'))
    if not match:
        raise LibraryError(f"cannot read the unit {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    prefix = unit[:-len(base)] if unit.lower().endswith(base.lower()) else unit
    return number * _SCALE.get(prefix, 1.0) / target


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


def extract_cell(cell, time_scale: float, cap_scale: float, leak_scale: float) -> dict:
    """A Liberty cell group as the dict :mod:`synth.nangate45` holds (units converted)."""
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
        raise LibraryError(f"Liberty file {path} does not exist")
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode(errors="replace")
    try:
        lib = parse_liberty(text)
    except Exception as exc:  # noqa: BLE001 (the parser's errors are of many kinds)
        raise LibraryError(f"cannot parse {path} as Liberty: {str(exc).splitlines()[0][:200]}") from None
    time_scale = _unit(lib["time_unit"] or "1ns", "s", 1e-9)
    cap_attr = lib["capacitive_load_unit"]
    cap_scale = float(cap_attr[0]) * _SCALE[str(cap_attr[1]).strip('"').lower()[0]] / 1e-15 if cap_attr else 1.0
    leak_scale = _unit(lib["leakage_power_unit"] or "1nW", "W", 1e-9)
    voltage = float(lib["nom_voltage"] or 1.0)
    cells, notes = {}, []
    for cell in lib.get_groups("cell"):
        name = str(cell.args[0]).strip('"')
        if str(cell["dont_use"]).strip('"') == "true":
            continue
        try:
            entry = extract_cell(cell, time_scale, cap_scale, leak_scale)
        except (TypeError, ValueError):
            continue  # cells psum cannot model (pads, macros) stay out of the power model
        if entry["outputs"]:
            cells[name] = entry
    if not any(e["ff"] for e in cells.values()):
        raise LibraryError(f"{path} has no flip-flop cell (ff group) to map registers to")
    if not any(o["energy_fj"] for e in cells.values() for o in e["outputs"].values()):
        notes.append("the library has no internal-power tables: energies are switching and leakage only")
    return Library(str(lib.args[0]).strip('"') if lib.args else path.stem, voltage, _cells_from_dict(cells),
                   text, tuple(notes))
