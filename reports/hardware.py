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

import time

import numpy as np

from reports.points import Runner, _model, _source
from reports.spec import ModelRun, StudySpec
from reports.store import point_key

__all__ = ["library", "units", "hardware", "output_stage", "output_cost"]


def library(spec: StudySpec):
    from synth.liberty import embedded, from_liberty

    return from_liberty(spec.liberty) if spec.liberty else embedded()


def units(spec: StudySpec, found: dict) -> list[dict]:
    """The MACs a model's searches name: the references, every FP and INT minimum, and
    per chunk size the chunked MAC with an fp32 outer and with the narrowest outer."""
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
    network's output stage."""
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
    if unit["chunk"]:
        return FloatMAC(spec.inputs, unit["acc"], chunk=unit["chunk"], chunk_acc=unit["chunk_acc"])
    return FloatMAC(spec.inputs, unit["acc"])


def hardware(runner: Runner, run: ModelRun, found: dict, log, lib, timing: str = "estimate") -> list[dict]:
    """Synthesis, timing (``timing``: :func:`timing_source`) and energy of every MAC
    :func:`units` names for ``run``, on ``lib``."""
    from emulator import data
    from emulator.models import has_integer_reading
    from emulator.streams import largest_layer, operand_streams
    from emulator.tflite_import import TFLiteIntNet
    from hwgen.mac import HWGEN_VERSION
    from synth.components import costs_by_part
    from synth.flow import synthesize
    from synth.power import estimate_energy, finite_patterns, uniform_streams
    from synth.timed import GLITCH_LANES

    spec = runner.spec
    model, dataset = _model(run.ref, run.dataset, run.checkpoint, spec.fold_bn)
    batch, _ = next(_source(dataset, "test", spec.data_dir, spec.download).batches(64, shuffle=True, seed=spec.seed))
    layer = largest_layer(model, data.dataset_spec(dataset).image_size)
    rows = []
    integer_net = TFLiteIntNet.from_file(run.ref) if has_integer_reading(run.ref) else None
    for unit in units(spec, found):
        if integer_net is not None and unit["family"] == "int":  # the file's operands: stored values minus zero points
            unit = {**unit, "operand_bits": TFLiteIntNet.OPERAND_BITS}
        mac = build(spec, unit)
        fields = {"unit": mac.describe(), "costing": COSTING, "hwgen": HWGEN_VERSION, "timing": timing,
                  "library": lib.digest, "model": run.name,
                  "checkpoint": runner.data[run.name].checkpoint, "data": {"test": runner.data[run.name].test},
                  "layer": layer, "streams": spec.streams, "seed": spec.seed, "psum": runner.version}
        if spec.fold_bn:  # the operand streams come from the folded weights
            fields["fold_bn"] = True
        if runner.data[run.name].architecture is not None:  # a network of one's own: its source
            fields["architecture"] = runner.data[run.name].architecture
        key = point_key(fields)
        row = runner.store.get(key)
        if row is None:
            start = time.monotonic()
            r = synthesize(mac, lib)
            if unit["family"] == "int" and integer_net is not None:
                a, b = integer_net.operand_streams(layer, batch, spec.streams, seed=spec.seed)
            elif unit["family"] == "int":
                a, b = operand_streams(model, layer, batch, spec.streams, seed=spec.seed, int_bits=spec.int_bits)
            else:
                a, b = operand_streams(model, layer, batch, spec.streams, seed=spec.seed, inputs=spec.inputs)
            finite = finite_patterns(getattr(mac, "inputs", None))
            real = estimate_energy(r.netlist, lib, a, b, unit=mac.describe(), operands=f"{run.name} {layer}")
            ra = uniform_streams(len(mac.a), finite, spec.streams, 64, seed=spec.seed + 1)
            rb = uniform_streams(len(mac.b), finite, spec.streams, 64, seed=spec.seed + 2)
            rand = estimate_energy(r.netlist, lib, ra, rb, unit=mac.describe(), operands="uniform random")
            glitchy = estimate_energy(r.netlist, lib, a[:GLITCH_LANES], b[:GLITCH_LANES], unit=mac.describe(),
                                      operands=f"{run.name} {layer}", glitches=True, max_lanes=GLITCH_LANES)
            row = {**unit, "unit": mac.describe(), "library": lib.name,
                   "area_um2": r.area_um2, "cells": r.num_cells, "transistors": r.transistors, "depth": r.depth,
                   "critical_path_ns": r.critical_path_ns, "clock_mhz": real.clock_mhz,
                   "energy_pj": real.energy_per_mac_pj, "leakage_pj": real.leakage_pj, "recipe": r.recipe,
                   "energy_glitch_pj": glitchy.energy_per_mac_pj, "glitch_streams": glitchy.streams,
                   "energy_random_pj": rand.energy_per_mac_pj, "synth_seconds": r.synth_seconds}
            if timing == "sta":
                from synth.sta import static_timing

                t = static_timing(r.netlist_verilog, lib)
                row |= {"sta_critical_path_ns": t.critical_path_ns, "sta_tool": t.tool}
            if _is_main(spec, unit):
                split = costs_by_part(mac, lib, a, b, operands=f"{run.name} {layer}")
                row |= {"parts": split["parts"], "parts_area_um2": split["area_um2"],
                        "parts_energy_pj": split["energy_pj"]}
                row["output"] = output_cost(spec, unit, mac, lib, a, b, f"{run.name} {layer}")
            runner.store.put(key, "hardware", fields, row)
            log(f"  {mac.describe()}: {r.area_um2:.0f} um^2, {real.energy_per_mac_pj:.3f} pJ/MAC "
                f"[{time.monotonic() - start:.1f} s]")
        rows.append(row)
    return rows
