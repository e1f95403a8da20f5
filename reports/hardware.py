# amaranth: UnusedElaboratable=no
# (a MAC is built to key its stored row; only a MAC not yet costed is elaborated)
"""The study's silicon: synthesis and energy per MAC of every MAC the searches name.

Each unit is synthesized (``synth.flow``) on the study's Liberty library, and its
energy per MAC estimated from gate-level switching driven by real operand streams of
the network's largest layer (and by uniform random ones, for comparison). Chunked MACs
(hwgen's ``chunk``/``chunk_acc``) are costed as built: inner accumulator, chunk
counter and outer accumulator in one unit.

The MACs of the main searches are also split by part (decode, multiplier, align, add,
normalize, round, register; :mod:`synth.components`) and costed with the output stage
every output of their layer passes through (:mod:`hwgen.output`: requantization for
INT, rounding into the inputs' format for FP), per output and per MAC over K.
"""

from __future__ import annotations

import math
import time

import numpy as np

from reports.points import Runner, _model, _source
from reports.spec import ModelRun, StudySpec
from reports.store import point_key

__all__ = ["library", "units", "hardware", "clock_targets", "output_stage", "output_cost"]


def library(spec: StudySpec):
    from synth.liberty import embedded, from_liberty

    return from_liberty(spec.liberty) if spec.liberty else embedded()


def units(spec: StudySpec, found: dict) -> list[dict]:
    """The MACs a model's searches name: the references, every FP and INT minimum (the
    fine-tuned ones too, and the FP candidates rounding stochastically beside their
    nearest-even MACs), and per chunk size the chunked MAC with an fp32 outer and with
    the narrowest outer."""
    fp = {("fp32", None, None)}
    for summary in found["fp"].values():
        fp |= {(a, *spec.main_chunk()) for a in summary["minima"].values() if a}
    tight = str(min(spec.tolerances))
    for c, entry in found.get("chunks", {}).items():
        inner = entry["inner_fp32_outer"][tight]
        if inner:
            fp.add((inner, int(c), "fp32"))
            if entry.get("outer"):
                fp.add((inner, int(c), entry["outer"]))
    ints = {"int32"}
    for name, summary in found["int"].items():
        if name.endswith(f"seed {spec.calibration_seeds[0]}"):
            ints |= {a for a in summary["minima"].values() if a}
    tuned = found.get("finetune", {})  # the fine-tuned minima (reports.finetune)
    if tuned.get("fp"):
        fp.add((tuned["fp"]["finetuned_minimum"], *spec.main_chunk()))
        for row in tuned["fp"]["candidates"]:  # the stochastically rounding candidates, and their nearest-even
            if row.get("stochastic"):
                fp |= {(row["stochastic"]["acc"], *spec.main_chunk()), (row["acc"], *spec.main_chunk())}
    if tuned.get("int"):
        ints.add(tuned["int"]["finetuned_minimum"])
    rows = [{"family": "fp", "acc": a, "chunk": c, "chunk_acc": o} for a, c, o in sorted(fp, key=str)]
    return rows + [{"family": "int", "acc": a, "chunk": None, "chunk_acc": None} for a in sorted(ints)]


#: What a hardware row holds; part of its key, so that rows costed otherwise are redone.
#: 2: the main MACs also split by part, with the output stage an output needs; 3: converters flat;
#: 4: leakage apart (energy at other clocks), OpenSTA's critical path when timed with it,
#: the energy with glitches (synth.timed) on the first synth.timed.GLITCH_LANES real streams.
COSTING = 4



def timing_source(spec: StudySpec) -> str:
    """How the study times its MACs: "sta" (OpenSTA) or "estimate" (psum's per-cell
    estimate only). ``sta = true`` without OpenSTA installed is an error."""
    from synth.sta import require_sta, sta_available

    if spec.sta is True:
        require_sta()
        return "sta"
    return "sta" if spec.sta == "auto" and sta_available() else "estimate"


#: The fixed-point scale's width in an integer network's requantizer.
REQUANT_MULTIPLIER_BITS = 16


def _is_main(spec: StudySpec, unit: dict) -> bool:
    """A MAC of the main searches (not of the chunk sweep): split by part, with its
    network's output stage. An operand_formats MAC is not."""
    if "inputs" in unit:
        return False
    if unit["family"] == "int":
        return True
    chunk = (unit["chunk"], unit["chunk_acc"])
    return chunk == spec.main_chunk() or (unit["acc"] == "fp32" and chunk == (None, None))


def output_stage(spec: StudySpec, unit: dict, mac):
    """What each output of a layer built from ``mac`` passes through before the next
    layer: requantization to int<int_bits> (INT) or rounding into the inputs' format (FP)."""
    from hwgen import FloatConverter, Requantizer

    if unit["family"] == "int":
        return Requantizer(unit["acc"], multiplier_bits=REQUANT_MULTIPLIER_BITS, out_bits=spec.int_bits)
    return FloatConverter(mac.result_format, spec.inputs)


def output_cost(spec: StudySpec, unit: dict, mac, lib, a, b, operands: str) -> dict:
    """Area, delay and energy of the output stage, per output and per MAC (over K, the
    streams' length), driven by the outputs the emulator computes for the streams; the
    requantizer's scale maps the largest of them to the int range's top. A converter is
    synthesized flat like the MACs; a requantizer by parts (synth.components: flat, ABC
    takes about a minute on it; int18: 2848 um^2 by parts, 2970 flat)."""
    from emulator.streams import stream_results
    from synth.components import synthesize_components
    from synth.flow import synthesize, timing
    from synth.power import estimate_output_energy

    stage = output_stage(spec, unit, mac)
    k = a.shape[1]
    if unit["family"] == "int":
        results = stream_results(a, b, acc=unit["acc"], int_bits=unit.get("operand_bits", spec.int_bits))
        bits = stage.acc_format.bits
        signed = results.astype(np.int64) - ((results >= 1 << (bits - 1)).astype(np.int64) << bits)
        top = (1 << (spec.int_bits - 1)) - 1
        multiplier, shift = stage.fixed_point(top / max(1, int(np.abs(signed).max())))
        inputs = {"value": results, "multiplier": multiplier, "shift": shift}
    else:
        results = stream_results(a, b, acc=unit["acc"], inputs=spec.inputs, chunk=unit["chunk"],
                                 chunk_acc=unit["chunk_acc"])
        inputs = {"value": results}
    if unit["family"] == "int":  # flat, ABC takes a minute on its multiplier and shifter; by parts 4% smaller
        r = synthesize_components(stage, lib)
        cost = {"synthesis": "by parts", "area_um2": r.area_um2, "cells": sum(p["cells"] for p in r.parts.values()),
                "critical_path_ns": round(timing(r.netlist, lib)[1], 4)}
    else:  # flat: by parts its decoder's normalization and its rounder's denormalization stay apart
        r = synthesize(stage, lib)
        cost = {"synthesis": "flat", "area_um2": r.area_um2, "cells": r.num_cells,
                "critical_path_ns": r.critical_path_ns}
    e = estimate_output_energy(r.netlist, lib, inputs, unit=stage.describe(), operands=operands)
    out = {"unit": stage.describe(), **cost, "energy_pj": e.energy_per_mac_pj, "k": k,
           "per_mac_pj": round(e.energy_per_mac_pj / k, 5)}
    if unit["family"] == "int":
        out["scale"] = {"multiplier": multiplier, "shift": shift}
    return out


def build(spec: StudySpec, unit: dict):
    from hwgen import FloatMAC, IntMAC

    if unit["family"] == "int":
        bits = unit.get("operand_bits", spec.int_bits)
        return IntMAC(bits, bits, unit["acc"])
    if unit["family"] == "dpu":
        from hwgen.dpu import DotProductUnit

        return DotProductUnit(unit["inputs"], unit["acc"], width=unit["width"], align_bits=unit["align_bits"])
    inputs = unit.get("inputs", spec.inputs)  # an operand_formats MAC names its own
    if unit["chunk"]:
        return FloatMAC(inputs, unit["acc"], chunk=unit["chunk"], chunk_acc=unit["chunk_acc"])
    return FloatMAC(inputs, unit["acc"])


def hardware(runner: Runner, run: ModelRun, found: dict, log, lib, timing: str = "estimate") -> list[dict]:
    """Synthesis, timing (``timing``: :func:`timing_source`) and energy of every MAC
    :func:`units` names for ``run``, on ``lib``. Where OpenSTA times them, the central
    comparison's pairs are also synthesized for clock targets (:func:`clock_targets`)
    into ``found["clocked"]``; with ``operand_formats``, each format's minimal MACs are
    costed into ``found["operand_hardware"]``."""
    from emulator.tflite_import import TFLiteIntNet

    ctx = _Context(runner, run, lib, timing)
    costed = []  # (unit, mac, row)
    for unit in units(runner.spec, found):
        if ctx.integer_net is not None and unit["family"] == "int":  # the file's operands: stored values minus zero points
            unit = {**unit, "operand_bits": TFLiteIntNet.OPERAND_BITS}
        mac = build(runner.spec, unit)
        costed.append((unit, mac, ctx.cost(unit, mac, log)))
    if timing == "sta":
        found["clocked"] = clock_targets(ctx, found, costed, log)
    if runner.spec.operand_formats:
        found["operand_hardware"] = [ctx.cost(unit, build(runner.spec, unit), log)
                                     for unit in operand_units(runner.spec, found)]
    if found.get("dpu"):
        found["dpu_hardware"] = [ctx.cost(unit, build(runner.spec, unit), log) for unit in dpu_units(runner.spec, found)]
    return [row for _, _, row in costed]


def dpu_units(spec: StudySpec, found: dict) -> list[dict]:
    """Per unit width, the unit with the fewest align bits within the tightest
    tolerance, and the Hopper-like unit (``dpu_hopper_bits``)."""
    tol = str(min(spec.tolerances))
    out = []
    for width, entry in found["dpu"]["widths"].items():
        bits = {entry["scan"]["minima"][tol], spec.dpu_hopper_bits} - {None}
        out += [{"family": "dpu", "acc": spec.dpu_acc, "inputs": spec.dpu_inputs, "width": int(width),
                 "align_bits": b, "chunk": None, "chunk_acc": None} for b in sorted(bits)]
    return out


def operand_units(spec: StudySpec, found: dict) -> list[dict]:
    """Per extra operand format, its FP minima (every tolerance) and its fp32-accumulator
    reference MAC."""
    out = []
    for fmt, search in found.get("operands", {}).items():
        accs = {"fp32"} | {a for summary in search["fp"].values() for a in summary["minima"].values() if a}
        chunk = spec.main_chunk()
        out += [{"family": "fp", "acc": a, "inputs": fmt, "chunk": None if a == "fp32" else chunk[0],
                 "chunk_acc": None if a == "fp32" else chunk[1]} for a in sorted(accs)]
    return out


class _Context:
    """What costing a MAC of one network needs: its largest layer, the real operand
    streams there (drawn once per operand format), the library and the timing source."""

    def __init__(self, runner: Runner, run: ModelRun, lib, timing: str):
        from emulator import data
        from emulator.models import has_integer_reading
        from emulator.streams import largest_layer
        from emulator.tflite_import import TFLiteIntNet

        spec = runner.spec
        self.runner, self.run, self.lib, self.timing = runner, run, lib, timing
        self.model, dataset = _model(run.ref, run.dataset, run.checkpoint, spec.fold_bn)
        self.batch, _ = next(_source(dataset, "test", spec.data_dir, spec.download).batches(64, shuffle=True,
                                                                                            seed=spec.seed))
        self.layer = largest_layer(self.model, data.dataset_spec(dataset).image_size)
        self.integer_net = TFLiteIntNet.from_file(run.ref) if has_integer_reading(run.ref) else None
        self.operands = f"{run.name} {self.layer}"
        self._drawn: dict[tuple, tuple] = {}

    def streams(self, unit: dict) -> tuple[np.ndarray, np.ndarray]:
        """Real operand streams for ``unit``: FP MACs' in their input format, INT MACs'
        as calibrated int operands (or the file's, for an integer network)."""
        from emulator.streams import operand_streams

        spec = self.runner.spec
        if unit["family"] == "dpu":  # the FP streams of its operand format, W consecutive terms a cycle
            from synth.power import pack_terms
            from psum.formats import parse

            a, b = self.streams({"family": "fp", "inputs": unit["inputs"]})
            bits = parse(unit["inputs"]).bits
            return pack_terms(a, bits, unit["width"]), pack_terms(b, bits, unit["width"])
        key = (unit["family"], unit.get("inputs", spec.inputs))
        if key not in self._drawn:
            if unit["family"] == "int" and self.integer_net is not None:
                drawn = self.integer_net.operand_streams(self.layer, self.batch, spec.streams, seed=spec.seed)
            elif unit["family"] == "int":
                drawn = operand_streams(self.model, self.layer, self.batch, spec.streams, seed=spec.seed,
                                        int_bits=spec.int_bits)
            else:
                drawn = operand_streams(self.model, self.layer, self.batch, spec.streams, seed=spec.seed,
                                        inputs=key[1])
            self._drawn[key] = drawn
        return self._drawn[key]

    def fields(self, mac) -> dict:
        """The key fields of ``mac``'s hardware row."""
        from hwgen.mac import HWGEN_VERSION

        runner, run, spec = self.runner, self.run, self.runner.spec
        fields = {"unit": mac.describe(), "costing": COSTING, "hwgen": HWGEN_VERSION, "timing": self.timing,
                  "library": self.lib.digest, "model": run.name,
                  "checkpoint": runner.data[run.name].checkpoint, "data": {"test": runner.data[run.name].test},
                  "layer": self.layer, "streams": spec.streams, "seed": spec.seed, "psum": runner.version}
        if spec.fold_bn:  # the operand streams come from the folded weights
            fields["fold_bn"] = True
        if runner.data[run.name].architecture is not None:  # a network of one's own: its source
            fields["architecture"] = runner.data[run.name].architecture
        return fields

    def cost(self, unit: dict, mac, log) -> dict:
        """``mac``'s hardware row (stored, or synthesized, timed and simulated now):
        area, cells, paths, energy on real and random streams, with glitches; a MAC of
        the main searches also by part and with its output stage."""
        from synth.components import costs_by_part
        from synth.flow import synthesize
        from synth.power import estimate_energy, random_operands
        from synth.timed import GLITCH_LANES

        spec, lib = self.runner.spec, self.lib
        fields = self.fields(mac)
        key = point_key(fields)
        row = self.runner.store.get(key)
        if row is not None:
            return row
        start = time.monotonic()
        r = synthesize(mac, lib)
        a, b = self.streams(unit)
        real = estimate_energy(r.netlist, lib, a, b, unit=mac.describe(), operands=self.operands)
        terms = getattr(mac, "macs_per_cycle", 1)
        ra, rb = random_operands(mac, spec.streams, 64, spec.seed + 1)
        rand = estimate_energy(r.netlist, lib, ra, rb, unit=mac.describe(), operands="uniform random")
        glitchy = estimate_energy(r.netlist, lib, a[:GLITCH_LANES], b[:GLITCH_LANES], unit=mac.describe(),
                                  operands=self.operands, glitches=True, max_lanes=GLITCH_LANES)
        row = {**unit, "unit": mac.describe(), "library": lib.name,
               "area_um2": r.area_um2, "cells": r.num_cells, "transistors": r.transistors, "depth": r.depth,
               "critical_path_ns": r.critical_path_ns, "clock_mhz": real.clock_mhz,
               "energy_pj": real.energy_per_mac_pj, "leakage_pj": real.leakage_pj, "recipe": r.recipe,
               "energy_glitch_pj": glitchy.energy_per_mac_pj, "glitch_streams": glitchy.streams,
               "energy_random_pj": rand.energy_per_mac_pj, "synth_seconds": r.synth_seconds}
        if self.timing == "sta":
            from synth.sta import static_timing

            t = static_timing(r.netlist_verilog, lib)
            row |= {"sta_critical_path_ns": t.critical_path_ns, "sta_tool": t.tool}
        if terms > 1:  # a dot-product unit: energies per MAC, W MACs a cycle
            row |= {"macs_per_cycle": terms, "energy_cycle_pj": row["energy_pj"],
                    **{key: row[key] / terms for key in ("energy_pj", "leakage_pj", "energy_glitch_pj",
                                                         "energy_random_pj")}}
        if _is_main(spec, unit):
            split = costs_by_part(mac, lib, a, b, operands=self.operands)
            row |= {"parts": split["parts"], "parts_area_um2": split["area_um2"],
                    "parts_energy_pj": split["energy_pj"]}
            row["output"] = output_cost(spec, unit, mac, lib, a, b, self.operands)
        self.runner.store.put(key, "hardware", fields, row)
        log(f"  {mac.describe()}: {r.area_um2:.0f} um^2, {row['energy_pj']:.3f} pJ/MAC "
            f"[{time.monotonic() - start:.1f} s]")
        return row


#: The fixed clock target every central pair is also synthesized for (MHz).
FIXED_TARGET_MHZ = 500.0


def clock_targets(ctx: _Context, found: dict, costed: list[tuple], log) -> list[dict]:
    """Timing-driven synthesis of each tolerance's central pair (FP minimum, INT
    minimum): both MACs synthesized for the fastest clock the slower of the two meets
    under OpenSTA (each then free to trade its slack for area) and for
    :data:`FIXED_TARGET_MHZ`; area, OpenSTA path and zero-delay energy on the real
    streams at that clock. ``costed``: (unit, mac, hardware row) of every MAC costed.
    One entry per tolerance and target."""
    from reports.search import best_fp, best_int
    from synth.flow import synthesize
    from synth.power import estimate_energy

    runner, lib, spec = ctx.runner, ctx.lib, ctx.runner.spec
    out = []
    for tol in spec.tolerances:
        fp, it = best_fp(found, tol), best_int(found, tol)
        pair = [next((c for c in costed if c[2]["family"] == fam and c[2]["acc"] == acc and _is_main(spec, c[2])),
                     None) for fam, acc in (("fp", fp), ("int", it))]
        if None in pair or not all(row.get("sta_critical_path_ns") for _, _, row in pair):
            continue
        iso = math.floor(10 * 1e3 / max(row["sta_critical_path_ns"] for _, _, row in pair)) / 10  # 0.1 MHz below
        for kind, target in (("iso", iso), ("fixed", FIXED_TARGET_MHZ)):
            entry = {"tolerance": tol, "target": kind, "clock_mhz": target}
            for unit, mac, row in pair:
                fields = ctx.fields(mac)
                key = point_key({**fields, "target_mhz": target})
                cost = runner.store.get(key)
                if cost is None:
                    r = synthesize(mac, lib, target_mhz=target)
                    a, b = ctx.streams(unit)
                    e = estimate_energy(r.netlist, lib, a, b, unit=mac.describe(), operands=ctx.operands,
                                        clock_mhz=target)
                    cost = {"unit": mac.describe(), "acc": row["acc"], "area_um2": r.area_um2, "recipe": r.recipe,
                            "mapping": r.mapping, "met": r.target_met, "sta_critical_path_ns": r.sta_critical_path_ns,
                            "energy_pj": e.energy_per_mac_pj}
                    runner.store.put(key, "hardware at a clock target", {**fields, "target_mhz": target}, cost)
                    log(f"  {mac.describe()} for {target:g} MHz: {r.area_um2:.0f} um^2 ({r.mapping} mapping, "
                        f"{'met' if r.target_met else 'NOT met'}), {e.energy_per_mac_pj:.3f} pJ/MAC")
                entry[row["family"]] = cost
            out.append(entry)
    return out
