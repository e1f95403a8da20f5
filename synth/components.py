"""Where a MAC's area and energy go: the unit synthesized with its hierarchy kept.

hwgen builds every MAC from named parts (``mac.components()``: decoders, multiplier,
the adder's alignment, add, normalization and rounding, the registers and control).
Here the unit is synthesized *without* flattening (``synth -top``, ``dfflibmap``,
``abc`` per module), so every mapped cell belongs to exactly one part, and then
flattened for simulation; the flattened cells keep their instance path in their names
(``$flatten\\add.\\round.$abc$...``), which :func:`component_of` reads.

Keeping the hierarchy stops Yosys and ABC from optimizing across the parts' borders,
so the parts add up to a little more than :func:`synth.flow.synthesize`'s flat unit
(the figure every table quotes): :class:`ComponentResult` carries both totals.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from synth.liberty import Library, embedded
from synth.yosys import run_yosys, yosys_version

__all__ = ["ComponentResult", "synthesize_components", "component_of", "instance_path", "costs_by_part"]


@dataclass
class ComponentResult:
    unit: str
    library: str
    area_um2: float  # the hierarchical unit, all parts together
    parts: dict[str, dict]  # part -> {"area_um2", "cells"}
    netlist: dict = field(default_factory=dict, repr=False)  # flattened after mapping

    def as_dict(self) -> dict:
        return {"unit": self.unit, "library": self.library, "area_um2": self.area_um2, "parts": self.parts}


def hierarchical_commands(top: str, recipe: str = "plain") -> list[str]:
    from synth.flow import RECIPES

    options = RECIPES[recipe]
    return [
        "read_liberty -lib cells.lib",
        "read_rtlil unit.il",
        f"hierarchy -check -top {top}",
        f"synth {options + ' ' if options else ''}-top {top}",  # no -flatten: each part mapped on its own
        "dfflibmap -liberty cells.lib",
        "abc -liberty cells.lib",
        "opt_clean -purge",
        "flatten -noscopeinfo",  # for simulation; the cells' names keep their instance paths
        "write_json parts.json",
    ]


def instance_path(cell_name: str) -> str:
    """The dotted instance path of a flattened cell (``"add.round"``), "" for the top's own."""
    path, rest = [], cell_name
    if rest.startswith("$flatten"):
        rest = rest[len("$flatten"):]
        while rest.startswith("\\") and "." in rest:
            segment, rest = rest[1:].split(".", 1)
            path.append(segment)
    return ".".join(path)


def component_of(table: dict[str, str]):
    """A function cell name -> part, by the longest instance-path prefix in ``table``
    (``""`` names the top's own cells only); a cell of an instance the table does not
    name is a KeyError, never silently the top's."""
    def part(cell_name: str) -> str:
        path = instance_path(cell_name).split(".") if instance_path(cell_name) else []
        for n in range(len(path), 0 if path else -1, -1):  # "" is the top's own cells only
            prefix = ".".join(path[:n])
            if prefix in table:
                return table[prefix]
        raise KeyError(f"cell {cell_name} (instance {'.'.join(path) or 'top'}) belongs to no part")
    return part


def synthesize_components(mac, library: Library | None = None, *, top: str = "psum_mac",
                          cache: bool = True, recipe: str = "plain") -> ComponentResult:
    """Synthesize ``mac`` with its hierarchy and split area and cell counts by part;
    ``recipe`` names the :data:`synth.flow.RECIPES` options (those of the flat unit)."""
    from amaranth.back import rtlil

    from hwgen.mac import HWGEN_VERSION
    from psum.cache import cache_folder
    from synth.netlist import Netlist

    library = library or embedded()
    il = rtlil.convert(mac, name=top, emit_src=False)
    key = hashlib.blake2b(digest_size=16)
    for part in (il, "\n".join(hierarchical_commands(top, recipe)), yosys_version(), library.digest, HWGEN_VERSION):
        key.update(part.encode())
        key.update(b"\0")
    folder = cache_folder("synth-parts") / key.hexdigest() if cache else None
    netlist = None
    if folder is not None:
        try:
            netlist = json.loads((folder / "parts.json").read_text())
        except (OSError, ValueError):
            netlist = None
    if not isinstance(netlist, dict):
        with tempfile.TemporaryDirectory(prefix="psum-parts-") as tmp:
            work = Path(tmp)
            (work / "unit.il").write_text(il)
            (work / "cells.lib").write_text(library.liberty_text)
            run_yosys(hierarchical_commands(top, recipe), work)
            netlist = json.loads((work / "parts.json").read_text())["modules"][top]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / "parts.json.tmp"
            partial.write_text(json.dumps(netlist))
            partial.replace(folder / "parts.json")  # atomic: whole or absent
    part_of = component_of(mac.components())
    parts: dict[str, dict] = {}
    for cell in Netlist(netlist, library).cells:
        entry = parts.setdefault(part_of(cell.name), {"area_um2": 0.0, "cells": 0})
        entry["area_um2"] += cell.lib.area
        entry["cells"] += 1
    parts = {name: {"area_um2": round(p["area_um2"], 3), "cells": p["cells"]} for name, p in sorted(parts.items())}
    return ComponentResult(unit=mac.describe(), library=library.name,
                           area_um2=round(sum(p["area_um2"] for p in parts.values()), 3), parts=parts,
                           netlist=netlist)


def costs_by_part(mac, library: Library, a, b, *, operands: str, cache: bool = True, **energy) -> dict:
    """``mac``'s area and energy per MAC by part, on the operand streams ``a``, ``b``
    (``energy``: more arguments of :func:`synth.power.estimate_energy`): ``parts`` maps
    each part, and "inputs" (the nets the ports drive, no area), to area, cells and
    pJ/MAC; ``area_um2`` and ``energy_pj`` are the hierarchical unit's totals."""
    from synth.flow import synthesize
    from synth.power import estimate_energy

    recipe = synthesize(mac, library, cache=cache).recipe  # the parts of the unit the tables quote
    split = synthesize_components(mac, library, cache=cache, recipe=recipe)
    e = estimate_energy(split.netlist, library, a, b, unit=mac.describe(), operands=operands,
                        components=component_of(mac.components()), **energy)
    table = {name: {**part, "energy_pj": e.components_pj.get(name, 0.0)} for name, part in split.parts.items()}
    table["inputs"] = {"area_um2": 0.0, "cells": 0, "energy_pj": e.components_pj.get("inputs", 0.0)}
    return {"area_um2": split.area_um2, "energy_pj": e.energy_per_mac_pj, "operands": operands, "parts": table}
