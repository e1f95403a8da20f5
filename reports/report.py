"""The study's report: ``report.md`` (a cross-network summary, then per network every
granularity with its paired statistics), ``results.csv`` (every point), ``judged.csv``
(every candidate against its reference), ``results.json``, plots (accuracy drop against
accumulator bits with its 95% band, the chunk sweep, Pareto fronts of accuracy against
MAC area and energy) and the Verilog (with testbench) of every Pareto-optimal MAC."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from psum.formats import parse
from reports.plots import write_plots
from reports.search import acc_bits as _bits
from reports.search import best_fp, best_int, exponent, int_summary, mantissa, pareto_front

__all__ = ["write_report", "pareto_front"]


def _pct(r: dict | None) -> str:
    return f"{100 * r['top1']:.2f}" if r else "-"


def _drop(judged: dict | None) -> str:
    """``drop [low, high]`` in points, as the report prints it."""
    if not judged:
        return "-"
    p = judged["paired"]
    return f"{p['drop']:+.2f} [{p['drop_ci95'][0]:+.2f}, {p['drop_ci95'][1]:+.2f}]"


def _judged(summary: dict, acc: str | None) -> dict | None:
    return next((j for j in summary["judged"] if j["acc"] == acc), None) if acc else None


def _hw_of(found: dict, family: str, acc: str | None, chunk=None, chunk_acc=None) -> dict | None:
    return next((h for h in found.get("hardware", []) if h["family"] == family and h["acc"] == acc
                 and h.get("chunk") == chunk and (chunk is None or h.get("chunk_acc") == chunk_acc)), None)


def _main_fp(found: dict, spec, acc: str | None) -> dict | None:
    """The MAC of a main-search FP minimum, built as its accuracy was measured."""
    return _hw_of(found, "fp", acc, *spec.main_chunk())


def _critical(h: dict) -> float:
    """The MAC's critical path: OpenSTA's where the study timed it, else psum's estimate."""
    return h.get("sta_critical_path_ns") or h["critical_path_ns"]


def _timing(h: dict) -> dict:
    from synth.flow import clock_check
    from synth.power import DEFAULT_CLOCK_MHZ

    # Rows stored before "clock_mhz" was recorded were simulated at the default clock.
    return clock_check(_critical(h), h.get("clock_mhz", DEFAULT_CLOCK_MHZ))


def _energy(h: dict | None) -> str:
    """``pJ/MAC`` with the clock it is quoted at and whether the MAC meets it."""
    if not h:
        return "-"
    t = _timing(h)
    return f"{h['energy_pj']:.3f}" + ("" if t["meets"] else f" (misses {t['clock_mhz']:g} MHz)")


def energy_at(h: dict, clock_mhz: float) -> float:
    """pJ/MAC at another clock: the switching, internal and clock energy per cycle stay,
    the leakage energy per cycle scales with the period."""
    leak = h["leakage_pj"]
    return h["energy_pj"] - leak + leak * h["clock_mhz"] / clock_mhz


def iso_frequency(fp: dict, it: dict) -> dict:
    """The pair at the fastest clock the slower MAC meets: that clock, each one's pJ/MAC
    there, and their ratio (areas do not change: both are synthesized for area, not timing)."""
    clock = 1e3 / max(_critical(fp), _critical(it))
    e_fp, e_int = energy_at(fp, clock), energy_at(it, clock)
    return {"clock_mhz": clock, "fp_pj": e_fp, "int_pj": e_int, "ratio": e_fp / e_int}


def _timing_note(found: dict) -> str:
    """Where the critical paths come from."""
    rows = found.get("hardware") or []
    tools = sorted({h["sta_tool"] for h in rows if h.get("sta_tool")})
    if tools and all(h.get("sta_critical_path_ns") for h in rows):
        return (f"Critical paths from static timing with {', '.join(tools)} (the library's NLDM delays and slews at "
                "each net's load and wire-load model, flip-flop setup included; docs/synthesis.md).")
    return ("Critical paths are psum's estimate (one typical delay per cell), about 2x shorter than static timing "
            "finds (docs/synthesis.md); OpenSTA was not used (apt-get install opensta, or sta = false).")


def _configuration(found: dict, spec) -> str:
    """The arithmetic that every accuracy and every MAC of a network's section share."""
    chunk, outer = spec.main_chunk()
    chunk = (f"chunked: every {chunk} products the inner accumulator is added into an {outer} outer "
             "accumulator, in the emulator and in the synthesized MAC alike" if spec.chunk else
             "unchunked (one accumulator over each whole dot product)")
    bn = found["batchnorm"]
    if bn["fold_bn"]:
        norm = f"batch norm folded into the layer before it ({bn['folded']} folded, {bn['kept']} kept in fp32)"
    elif bn["kept"]:
        norm = f"batch norm not folded ({bn['kept']} layers, fp32, after their layer)"
    else:
        norm = "no batch norm"
    return (f"Configuration of every accuracy and MAC in this section: FP MACs take {spec.inputs} activations and "
            f"weights, exact products (not rounded before the add), {chunk}; INT MACs take "
            f"int{found.get('int_operand_bits', spec.int_bits)} operands{_int_operands(found)}, exact products, one "
            f"wrapping or saturating accumulator; accumulation order "
            f"{spec.orders[0]} (the order of the terms, not a property of the MAC); {norm}.")


def _ratio(a: dict | None, b: dict | None, key: str) -> str:
    return f"{a[key] / b[key]:.2f}" if a and b else "-"


def _value(h: dict, key: str) -> str:
    return f"{h[key]:.3f}" if key in h else "-"


def _iso_ratio(fp: dict | None, it: dict | None) -> str:
    """Energy per MAC FP/INT with both at the fastest clock the slower meets."""
    if not (fp and it and "leakage_pj" in fp and "leakage_pj" in it):
        return "-"
    return f"{iso_frequency(fp, it)['ratio']:.2f}"


def _with_outputs(fp: dict | None, it: dict | None) -> str:
    """Energy per MAC FP/INT, each side with its output stage's energy over K."""
    if not (fp and it and fp.get("output") and it.get("output")):
        return "-"
    return f"{(fp['energy_pj'] + fp['output']['per_mac_pj']) / (it['energy_pj'] + it['output']['per_mac_pj']):.2f}"



# -- the cross-network summary --------------------------------------------------------------


def _summary(results: dict, spec) -> list[str]:
    lines = ["## Cross-network summary", "",
             "Minimal accumulators per tolerance (drop in top-1 points against the reference, paired 95% Newcombe "
             "interval, on the decision images); area and energy ratios of the FP MAC (bf16 operands) to the INT MAC "
             "(int8 operands); chunked minima (inner accumulator, fp32 outer) at C = 16 and 64.", "",
             "| network | MACs/image | K range | tolerance | FP acc (bits) | FP drop | INT acc | INT drop | INT width "
             "over seeds | area FP/INT | energy FP/INT | energy FP/INT at iso clock | energy FP/INT with output stages "
             "| chunk 16 | chunk 64 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, found in results["models"].items():
        pred = found.get("prediction", {}).get("layers", {})
        ks = [v["K"] for v in pred.values()]
        macs = sum(found["macs"].values())
        for tol in spec.tolerances:
            fp = best_fp(found, tol)
            it = best_int(found, tol)
            fp_j = _judged(found["fp"][exponent(fp)], fp) if fp else None
            it_j = _judged(int_summary(found, spec), it)
            seeds = sorted({found["int"][k]["minima"][str(tol)] or "none" for k in found["int"] if k.startswith("wrap")})
            chunks = found.get("chunks", {})
            cells = [model, f"{macs:,}",
                     f"{min(ks)}-{max(ks)}" if ks else "-", str(tol),
                     f"{fp} ({_bits(fp)})" if fp else "none", _drop(fp_j), it or "none", _drop(it_j),
                     ", ".join(seeds),
                     _ratio(_main_fp(found, spec, fp), _hw_of(found, "int", it), "area_um2"),
                     _ratio(_main_fp(found, spec, fp), _hw_of(found, "int", it), "energy_pj"),
                     _iso_ratio(_main_fp(found, spec, fp), _hw_of(found, "int", it)),
                     _with_outputs(_main_fp(found, spec, fp), _hw_of(found, "int", it))]
            for c in (16, 64):
                entry = chunks.get(c) or chunks.get(str(c))
                cells.append((entry["inner_fp32_outer"][str(tol)] or "none") if entry else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# -- one network --------------------------------------------------------------------------


def _int_operands(found: dict) -> str:
    """What an imported integer network's INT MAC operands are, where they are not calibrated."""
    return " (the file's stored values minus their zero points)" if "int_operand_bits" in found else ""


def _what_ran(model: str, results: dict, spec) -> str:
    """The network, checkpoint and dataset (with its preprocessing) behind a model's section."""
    from emulator.data import dataset_spec
    from emulator.models import has_integer_reading, is_model_file

    run = next(r for r in spec.models if r.name == model)
    data = results["data"][model]
    if run.factory is None:
        where = f"registered network `{run.name}`"
    elif is_model_file(run.factory):
        where = f"model file `{run.factory}` (digest {data['architecture']})"
    else:
        where = f"network of your own `{run.factory}` (source digest {data['architecture']})"
    d = dataset_spec(data["dataset"])
    dataset = f"`{data['dataset']}`" if d.root is None else \
        f"folder `{d.root}` ({d.num_classes} classes; images resized to {d.image_size}/{d.crop:g} on the shorter side, " \
        f"center-cropped to {d.image_size}x{d.image_size}, normalized by mean {list(d.mean)} and std {list(d.std)})"
    text = (f"Network: {where}, weights `{run.checkpoint}` (digest {data['checkpoint']}); dataset {dataset}, "
            f"{data['test_images']:,} test images.")
    if has_integer_reading(run.ref):
        text += (" FP points run the file's float reading (dequantized weights); INT points its integer reading "
                 "(docs/semantics.md §10): the file's own operands and scales, no calibration (one reference, "
                 "`int8_int32acc_seed*` names it), MAC operands the stored values minus their zero points (int9).")
    return text


def _baselines(found: dict) -> list[str]:
    lines = ["| baseline | top-1 % | 95% Wilson interval | images |", "|---|---|---|---|"]
    for name, r in found["baselines"].items():
        lines.append(f"| {name} | {100 * r['top1']:.2f} | {100 * r['top1_ci95'][0]:.2f}-"
                     f"{100 * r['top1_ci95'][1]:.2f} | {r['total']} |")
    return lines + [""]


def _central(found: dict, spec) -> list[str]:
    lines = ["### Minimal accumulators (the central comparison)", "",
             "FP: the fewest-bit format over all exponent widths within the tolerance of bf16-in/fp32-acc; INT: the "
             "narrowest wrapping accumulator within the tolerance of int8/int32 (first calibration seed). Drop: "
             "reference minus candidate top-1, points, paired 95% interval; *confident*: the interval's upper bound "
             "is within the tolerance too. Energies are quoted at the clock of the energy simulation; one the MAC's "
             "critical path does not meet is marked. *Iso-frequency*: both MACs at the fastest clock the slower of "
             "the two meets (leakage per cycle scaled to that period). *With glitches*: simulated with the cells' "
             "delays (inertial, from the library's tables at each net's load), every transition inside a cycle "
             "counted, on the first streams of the same real operands (docs/synthesis.md). " + _timing_note(found), "",
             _configuration(found, spec), "",
             "| tolerance | FP acc | bits | FP drop | confident | INT acc | INT drop | confident | FP area um^2 "
             "| INT area um^2 | area FP/INT | FP pJ/MAC | INT pJ/MAC | energy FP/INT | iso clock MHz "
             "| energy FP/INT at iso clock | FP pJ/MAC with glitches | INT pJ/MAC with glitches "
             "| energy FP/INT with glitches |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tol in spec.tolerances:
        fp, it = best_fp(found, tol), best_int(found, tol)
        fj = _judged(found["fp"][exponent(fp)], fp) if fp else None
        ij = _judged(int_summary(found, spec), it)
        fh, ih = _main_fp(found, spec, fp), _hw_of(found, "int", it)
        conf = lambda j: ("yes" if j["confidently_within"][str(tol)] else "no") if j else "-"  # noqa: E731
        cells = [str(tol), fp or "none", str(_bits(fp)) if fp else "-", _drop(fj), conf(fj), it or "none",
                 _drop(ij), conf(ij)]
        if fh and ih:
            cells += [f"{fh['area_um2']:.0f}", f"{ih['area_um2']:.0f}", _ratio(fh, ih, "area_um2"),
                      _energy(fh), _energy(ih), _ratio(fh, ih, "energy_pj")]
            iso = iso_frequency(fh, ih) if "leakage_pj" in fh and "leakage_pj" in ih else None
            cells += [f"{iso['clock_mhz']:.0f}", f"{iso['ratio']:.2f}"] if iso else ["-", "-"]
            glitchy = "energy_glitch_pj" in fh and "energy_glitch_pj" in ih
            cells += ([f"{fh['energy_glitch_pj']:.3f}", f"{ih['energy_glitch_pj']:.3f}",
                       _ratio(fh, ih, "energy_glitch_pj")] if glitchy else ["-"] * 3)
        else:
            cells += ["-"] * 11
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _clocked(found: dict) -> list[str]:
    """The central pairs synthesized for a clock target (reports.hardware.clock_targets)."""
    entries = found.get("clocked") or []
    if not entries:
        return []
    lines = ["#### The central pairs synthesized for a clock", "",
             "Each MAC of a pair synthesized for the clock (timing-driven: every recipe mapped for delay and for "
             "area, the smallest netlist that meets the clock under OpenSTA kept, or the fastest where none does; "
             "docs/synthesis.md). *iso*: the fastest clock the slower MAC of the pair meets in the reference flow; "
             "*fixed*: a 500 MHz target. Energies: zero-delay, real operand streams, at that clock.", "",
             "| tolerance | target | MHz | FP acc | FP area um^2 | FP mapping | FP meets | FP pJ/MAC | INT acc "
             "| INT area um^2 | INT mapping | INT meets | INT pJ/MAC | area FP/INT | energy FP/INT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        fp, it = e["fp"], e["int"]
        side = lambda h: [h["acc"], f"{h['area_um2']:.0f}", f"{h['recipe']}/{h['mapping']}",  # noqa: E731
                          "yes" if h["met"] else f"NO ({h['sta_critical_path_ns']:.2f} ns)", f"{h['energy_pj']:.3f}"]
        lines.append("| " + " | ".join([str(e["tolerance"]), e["target"], f"{e['clock_mhz']:g}", *side(fp), *side(it),
                                        _ratio(fp, it, "area_um2"), _ratio(fp, it, "energy_pj")]) + " |")
    return lines + [""]


def _operands(found: dict, spec) -> list[str]:
    """The FP minima of every operand format (the main inputs and ``operand_formats``)
    beside the INT minimum, with their MACs' silicon (reports.hardware.operand_units)."""
    if not found.get("operands"):
        return []
    lines = ["### Operand formats: FP minima beside the INT minimum", "",
             f"Each operand format's own network-level FP search (every exponent width), candidates judged against "
             f"that format's operands with fp32 accumulation; that reference in turn judged against the main one "
             f"({spec.inputs} operands, fp32 accumulation; *operands' cost*). Silicon as in the tables above (same "
             f"layer, real operand streams in each MAC's own format); *vs INT*: against the INT minimum of the same "
             f"tolerance.", "",
             "| tolerance | operands | reference top-1 % | operands' cost | FP minimum | bits | drop | area um^2 "
             "| critical path ns | pJ/MAC | pJ/MAC with glitches | area vs INT | energy vs INT | energy with glitches vs INT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    hw = {(h.get("inputs", spec.inputs), h["acc"]): h for h in [*found.get("hardware", []),
                                                               *found.get("operand_hardware", [])]
          if h["family"] == "fp" and (h.get("chunk"), h.get("chunk_acc")) == spec.main_chunk()}
    for tol in spec.tolerances:
        it = best_int(found, tol)
        ih = _hw_of(found, "int", it)
        searches = [(spec.inputs, found, found["baselines"]["bf16_fp32acc"], None)] + [
            (fmt, s, s["reference"], s["against_main"]) for fmt, s in found["operands"].items()]
        for fmt, search, ref, cost in searches:
            acc = best_fp(search, tol)
            h = hw.get((fmt, acc))
            cells = [str(tol), fmt, _pct(ref), _drop(cost) if cost else "(main)", acc or "none",
                     str(_bits(acc)) if acc else "-", _drop(_judged(search["fp"][exponent(acc)], acc)) if acc else "-"]
            if h:
                cells += [f"{h['area_um2']:.0f}", f"{_critical(h):.2f}", f"{h['energy_pj']:.3f}",
                          _value(h, "energy_glitch_pj"), _ratio(h, ih, "area_um2"), _ratio(h, ih, "energy_pj"),
                          _ratio(h, ih, "energy_glitch_pj") if ih and "energy_glitch_pj" in ih else "-"]
            else:
                cells += ["-"] * 7
            lines.append("| " + " | ".join(cells) + " |")
        if ih:
            lines.append(f"| {tol} | int{spec.int_bits} | - | - | {it} | {_bits(it)} | "
                         f"{_drop(_judged(int_summary(found, spec), it))} | {ih['area_um2']:.0f} | {_critical(ih):.2f} | "
                         f"{ih['energy_pj']:.3f} | {_value(ih, 'energy_glitch_pj')} | 1.00 | 1.00 | 1.00 |")
    return lines + [""]


def _dpu(found: dict, spec) -> list[str]:
    """Fused dot-product units: fewest align bits per width, the Hopper-like unit with
    and without promotion, and the units' silicon against the sequential MAC."""
    d = found.get("dpu")
    if not d:
        return []
    tol = min(spec.tolerances)
    hw = {(h["width"], h["align_bits"]): h for h in found.get("dpu_hardware", [])}
    seq = found.get("operands", {}).get(d["inputs"])
    seq_acc = best_fp(seq, tol) if seq else None
    seq_hw = next((h for h in found.get("operand_hardware", []) if h.get("inputs") == d["inputs"]
                   and h["acc"] == seq_acc), None)
    lines = ["### Dot-product units (docs/semantics.md §11)", "",
             f"{d['inputs']} operands, {d['acc']} accumulator; W products a step aligned with the accumulator to the "
             f"largest exponent, each keeping L bits below its leading bit (truncated), summed exactly, rounded once. "
             f"Judged against {d['inputs']} operands with a sequential {d['acc']} MAC (top-1 {_pct(d['reference'])} %), "
             f"paired on the same images. *Hopper-like*: L = {spec.dpu_hopper_bits}, without and with promotion into "
             f"fp32 every {spec.dpu_promote} terms. Silicon of the unit with the fewest L at tolerance {tol}: area, "
             "OpenSTA path, energy per MAC (W MACs a cycle) on the real operand streams"
             + (f"; against the sequential MAC of the same accuracy ({d['inputs']} operands, {seq_acc}: "
                f"{seq_hw['area_um2']:.0f} um^2, {seq_hw['energy_pj']:.3f} pJ/MAC)" if seq_hw else "") + ".", "",
             "| W | " + " | ".join(f"fewest L (tol {t})" for t in spec.tolerances) + " | its drop | Hopper-like drop "
             "| with promotion | area um^2 | area / W | critical path ns | pJ/MAC | pJ/MAC with glitches "
             "| area/W vs sequential | energy vs sequential |",
             "|---|" + "---|" * len(spec.tolerances) + "---|---|---|---|---|---|---|---|---|---|"]
    for width, entry in d["widths"].items():
        minima = entry["scan"]["minima"]
        fewest = minima[str(tol)]
        judged = next((j for j in entry["scan"]["judged"] if j["align_bits"] == fewest), None)
        h = hw.get((int(width), fewest))
        cells = [str(width), *[str(minima[str(t)]) if minima[str(t)] is not None else "none" for t in spec.tolerances],
                 _drop(judged), _drop(entry["hopper"]), _drop(entry["promoted"])]
        if h:
            per_lane = h["area_um2"] / int(width)
            cells += [f"{h['area_um2']:.0f}", f"{per_lane:.0f}", f"{_critical(h):.2f}", f"{h['energy_pj']:.3f}",
                      _value(h, "energy_glitch_pj"),
                      f"{per_lane / seq_hw['area_um2']:.2f}" if seq_hw else "-", _ratio(h, seq_hw, "energy_pj")]
        else:
            cells += ["-"] * 7
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _finetune(found: dict, spec) -> list[str]:
    """Zero-shot against fine-tuned minimal accumulators (reports.finetune): every
    candidate below the zero-shot minimum, both ways, paired; the control; the silicon
    of the two minima."""
    f = found.get("finetune")
    if not f:
        return []
    lines = ["### Fine-tuning through the accumulator (docs/semantics.md §12)", ""]
    if f.get("skipped"):
        return lines + [f"Not run: {f['skipped']}.", ""]
    tol = f["tolerance"]
    lines += [f"Each accumulator below the zero-shot minimum (tolerance {tol}) fine-tuned {f['epochs']} epochs "
              f"(peak learning rate {f['lr']}, seed {f['seed']}; forward the emulated accumulator, backward the float "
              "gradient" + (f"; INT with overflow penalty {f['overflow_penalty']}" if f.get("overflow_penalty") else "")
              + ") from the trained network, then judged against the *original* network's reference on the same "
              "images; *gain*: fine-tuned against zero-shot, paired (95% Newcombe). *Control*: fine-tuned through the "
              "reference accumulator itself: the gain that more training alone gives.", "",
              "| family | accumulator | zero-shot drop | fine-tuned drop | gain | within tol | fine-tuning s |",
              "|---|---|---|---|---|---|---|"]
    for family in ("fp", "int"):
        entry = f.get(family)
        if not entry:
            continue
        for row in [*entry["candidates"], {**entry["control"], "acc": entry["control"]["acc"] + " (control)"}]:
            g = row["gain"]
            lines.append(f"| {family.upper()} | {row['acc']} | {_drop(row['zero_shot'])} | {_drop(row['finetuned'])} "
                         f"| {g['gain']:+.2f} [{g['gain_ci95'][0]:+.2f}, {g['gain_ci95'][1]:+.2f}] "
                         f"| {'yes' if row['finetuned']['within'][str(tol)] else 'no'} "
                         f"| {row['train_seconds'] if row['train_seconds'] is not None else '-'} |")
    lines += _stochastic(found, spec, f, tol)
    lines += ["", "| family | zero-shot minimum | fine-tuned minimum | area um^2 | pJ/MAC | area ratio | energy ratio |",
              "|---|---|---|---|---|---|---|"]
    for family in ("fp", "int"):
        entry = f.get(family)
        if not entry:
            continue
        zero, tuned = entry["zero_shot_minimum"], entry["finetuned_minimum"]
        hw = (lambda a: _main_fp(found, spec, a)) if family == "fp" else (lambda a: _hw_of(found, "int", a))
        hz, ht = hw(zero), hw(tuned)
        cost = f"{hz['area_um2']:.0f} -> {ht['area_um2']:.0f} | {hz['energy_pj']:.3f} -> {ht['energy_pj']:.3f}" \
            if hz and ht else "- | -"
        lines.append(f"| {family.upper()} | {zero} | {tuned} | {cost} | {_ratio(ht, hz, 'area_um2')} "
                     f"| {_ratio(ht, hz, 'energy_pj')} |")
    return lines + [""]


def _stochastic(found: dict, spec, f: dict, tol: float) -> list[str]:
    """The FP candidates with their accumulator rounding stochastically (reports.finetune),
    with the MAC's cost beside the nearest-even one's."""
    rows = [(row["acc"], row["stochastic"]) for row in (f.get("fp") or {}).get("candidates", [])
            if row.get("stochastic")]
    if not rows:
        return []
    first = rows[0][1]
    lines = ["", "The same FP accumulators rounding stochastically (docs/semantics.md §13; "
             f"{parse(first['acc']).random_bits} random bits, generators seeded {first['seed']}), on the trained and "
             "on the fine-tuned network; *gain*: stochastic against nearest-even zero-shot, paired; the MAC with its "
             "generator against the nearest-even MAC of the same width.", "",
             "| accumulator | zero-shot drop | within tol | on the fine-tuned network | within tol "
             "| gain over nearest-even | area um^2 | pJ/MAC | area ratio | energy ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for nearest, row in rows:
        g = row["gain"]
        hs, hn = _main_fp(found, spec, row["acc"]), _main_fp(found, spec, nearest)
        cost = f"{hs['area_um2']:.0f} | {hs['energy_pj']:.3f}" if hs else "- | -"
        lines.append(f"| {row['acc']} | {_drop(row['zero_shot'])} | {'yes' if row['zero_shot']['within'][str(tol)] else 'no'} "
                     f"| {_drop(row['finetuned'])} | {'yes' if row['finetuned']['within'][str(tol)] else 'no'} "
                     f"| {g['gain']:+.2f} [{g['gain_ci95'][0]:+.2f}, {g['gain_ci95'][1]:+.2f}] | {cost} "
                     f"| {_ratio(hs, hn, 'area_um2')} | {_ratio(hs, hn, 'energy_pj')} |")
    return lines


_PART_ORDER = ("decode", "multiplier", "product rounding", "align", "add", "normalize", "round", "random generator",
               "outer adder", "register", "inputs")


def _accumulation(h: dict) -> dict:
    """Area and energy per MAC of everything in a MAC but its multiplier (and the ports'
    nets): the part of the unit that the accumulator's format decides."""
    return {key: sum(p[key] for n, p in h["parts"].items() if n not in ("multiplier", "inputs"))
            for key in ("area_um2", "energy_pj")}


def _breakdown(found: dict, spec) -> list[str]:
    """Where each central pair's area and energy go, part by part, and what an output
    costs on each side (FP: rounding into the inputs' format; INT: requantization)."""
    pairs = []
    for tol in spec.tolerances:
        fh, ih = _main_fp(found, spec, best_fp(found, tol)), _hw_of(found, "int", best_int(found, tol))
        if fh and ih and fh.get("parts") and ih.get("parts") and (fh, ih) not in pairs:
            pairs.append((fh, ih))
    if not pairs:
        return []
    lines = ["### Where the FP/INT ratio comes from", "",
             "Each MAC of the central comparison synthesized with its hierarchy kept (docs/synthesis.md, parts): area "
             "and energy per MAC by part, on the same operand streams as the tables. *inputs* is the energy of the "
             "nets the ports drive. Keeping the hierarchy stops optimization across parts, so the parts add up to "
             "somewhat more or less than the flat unit every other table quotes (both totals are given). The output "
             "stage runs once per output: its energy per MAC is its energy per output over K, the length of the "
             "costed layer's dot products.", ""]
    for fh, ih in pairs:
        lines += [f"**{fh['acc']} (FP) against {ih['acc']} (INT)**", "",
                  "| part | FP area um^2 | INT area um^2 | FP pJ/MAC | INT pJ/MAC |", "|---|---|---|---|---|"]
        names = [n for n in _PART_ORDER if n in fh["parts"] or n in ih["parts"]]
        names += sorted((set(fh["parts"]) | set(ih["parts"])) - set(names))
        cell = lambda h, n, key: f"{h['parts'][n][key]:.{0 if key == 'area_um2' else 3}f}" if n in h["parts"] else "-"  # noqa: E731
        for n in names:
            lines.append(f"| {n} | {cell(fh, n, 'area_um2')} | {cell(ih, n, 'area_um2')} | {cell(fh, n, 'energy_pj')} "
                         f"| {cell(ih, n, 'energy_pj')} |")
        fa, ia = _accumulation(fh), _accumulation(ih)
        lines += [f"| accumulation (all parts but multiplier and inputs; FP/INT "
                  f"{fa['area_um2'] / ia['area_um2']:.2f} area, {fa['energy_pj'] / ia['energy_pj']:.2f} energy) | "
                  f"{fa['area_um2']:.0f} | {ia['area_um2']:.0f} | {fa['energy_pj']:.3f} | {ia['energy_pj']:.3f} |"]
        lines += [f"| all parts (hierarchical) | {fh['parts_area_um2']:.0f} | {ih['parts_area_um2']:.0f} | "
                  f"{fh['parts_energy_pj']:.3f} | {ih['parts_energy_pj']:.3f} |",
                  f"| flat unit (the tables' figure) | {fh['area_um2']:.0f} | {ih['area_um2']:.0f} | "
                  f"{fh['energy_pj']:.3f} | {ih['energy_pj']:.3f} |"]
        fo, io = fh.get("output"), ih.get("output")
        if fo and io:
            lines += [f"| output stage, per output: {fo['unit']} ({fo.get('synthesis', 'by parts')}) / {io['unit']} "
                      f"({io.get('synthesis', 'by parts')}) | {fo['area_um2']:.0f} | "
                      f"{io['area_um2']:.0f} | {fo['energy_pj']:.3f} | {io['energy_pj']:.3f} |",
                      f"| output stage per MAC (K = {fo['k']}) | - | - | {fo['per_mac_pj']:.4f} | {io['per_mac_pj']:.4f} |",
                      f"| MAC + output stage per MAC | - | - | {fh['energy_pj'] + fo['per_mac_pj']:.3f} | "
                      f"{ih['energy_pj'] + io['per_mac_pj']:.3f} |", "",
                      f"Energy FP/INT: {_ratio(fh, ih, 'energy_pj')} for the MACs alone, "
                      f"{_with_outputs(fh, ih)} with each side's output stage. The requantizer multiplies by a "
                      f"{io['scale']['multiplier']} / 2^{io['scale']['shift']} scale (the streams' largest output at the int range's top); "
                      "one output stage serves a whole array column, so its area is not added per MAC."]
        lines.append("")
    return lines


def _per_e(found: dict, spec) -> list[str]:
    lines = ["### Minimal mantissa per exponent width", "",
             "Each E scanned from M = 0 up (screened, then judged on the decision images) until every tolerance has "
             f"its minimum and {spec.window} wider formats were judged; every narrower M was evaluated and failed.",
             "", "| E | " + " | ".join(f"tolerance {t}: minimum, drop" for t in spec.tolerances)
             + " | evaluated up to | screened out |", "|---|" + "---|" * (len(spec.tolerances) + 2)]
    for e, s in sorted(found["fp"].items(), key=lambda kv: int(kv[0])):
        cells = [f"{s['minima'][str(t)] or 'none'}, {_drop(_judged(s, s['minima'][str(t)]))}" for t in spec.tolerances]
        screened = sum(j["stage"] == "screen" for j in s["judged"])
        lines.append(f"| {e} | " + " | ".join(cells) + f" | {s['evaluated_up_to']} | {screened} |")
    lines.append("")
    sig = [n for s in found["fp"].values() for n in s["nonmonotone"]]
    flat = [n for s in found["fp"].values() for n in s["flat"]]
    if sig:
        lines += ["Non-monotone in the bits, significantly (exact McNemar p < 0.05 between the two formats):", ""]
        lines += [f"- tolerance {n['tolerance']}: {n['passes']} (drop {n['drops'][0]:+.2f}) passes, {n['fails']} "
                  f"(drop {n['drops'][1]:+.2f}) fails, p = {n['mcnemar_p']:.3g}" for n in sig[:20]]
        lines.append("")
    lines += [f"{len(flat)} pair(s) where a narrower format passes and a wider one fails differ by no more than noise "
              "(McNemar p >= 0.05): the curve is flat within noise there." if flat else
              "No narrower format passes where a wider one fails: the curve is monotone among the formats judged.", ""]
    return lines


def _ints(found: dict, spec) -> list[str]:
    lines = ["### INT accumulators per calibration seed", "",
             "Scales calibrated once per seed on the int32 reference (1,000 training images of a seeded shuffle) and "
             "shared by every width of that seed; each width judged against the int32 reference of its seed.", "",
             "| overflow, calibration seed | reference top-1 % | " + " | ".join(f"tolerance {t}" for t in spec.tolerances)
             + " |", "|---|---|" + "---|" * len(spec.tolerances)]
    for name, s in found["int"].items():
        seed = name.split()[-1]
        ref = found["baselines"][f"int{spec.int_bits}_int32acc_seed{seed}"]
        lines.append(f"| {name} | {_pct(ref)} | " + " | ".join(
            f"{s['minima'][str(t)] or 'none'} {_drop(_judged(s, s['minima'][str(t)]))}" for t in spec.tolerances) + " |")
    for t in spec.tolerances:
        widths = {s["minima"][str(t)] for k, s in found["int"].items() if k.startswith("wrap")}
        lines.append("")
        lines.append(f"Tolerance {t}: the minimal wrapping width " + ("does not move" if len(widths) == 1 else
                     "moves") + f" over calibration seeds {spec.calibration_seeds} ({', '.join(sorted(map(str, widths)))}).")
    return lines + [""]


def _per_layer(found: dict) -> list[str]:
    pl = found.get("per_layer")
    if not pl:
        return []
    lines = [f"### Per-layer minima (tolerance {pl['tolerance']}, every other layer at the network's minimum)", "",
             "| layer | MACs / image | K | FP minimum | INT minimum |", "|---|---|---|---|---|"]
    ks = {n: v["K"] for n, v in found.get("prediction", {}).get("layers", {}).items()}
    for n, macs in pl["macs"].items():
        lines.append(f"| {n} | {macs:,} | {ks.get(n, '-')} | {pl.get('fp', {}).get('layers', {}).get(n, '-')} | "
                     f"{pl.get('int', {}).get('layers', {}).get(n, '-')} |")
    lines.append("")
    for family in ("fp", "int"):
        if pl.get(family):
            lines.append(f"{family.upper()}: MAC-weighted average accumulator bits {pl[family]['weighted_bits']:.2f} "
                         f"(per-network minimum {pl[family]['network_format']}: {pl[family]['network_bits']} bits).")
    return lines + [""]


def _chunks(found: dict, spec) -> list[str]:
    chunks = found.get("chunks")
    if not chunks:
        return []
    tight = str(min(spec.tolerances))
    lines = ["### Chunk-size sweep", "",
             "Accumulate C terms from +0 in the inner accumulator, then add each chunk's result into the outer one. "
             f"Inner minimum with an fp32 outer accumulator per tolerance; then, with the inner minimum of tolerance "
             f"{tight}, the narrowest outer accumulator that still passes; area and energy of those chunked MACs. "
             "Whole K is the unchunked minimum.", "",
             "| C | " + " | ".join(f"inner (tol {t})" for t in spec.tolerances)
             + " | outer | area um^2 (fp32 outer) | pJ/MAC (fp32 outer) | area um^2 (narrow outer) | pJ/MAC (narrow outer) |",
             "|---|" + "---|" * (len(spec.tolerances) + 5)]
    for c, entry in sorted(chunks.items(), key=lambda kv: int(kv[0])):
        inner = entry["inner_fp32_outer"]
        wide = _hw_of(found, "fp", inner[tight], int(c), "fp32")
        narrow = _hw_of(found, "fp", inner[tight], int(c), entry.get("outer"))
        cell = lambda h, k, f: f.format(h[k]) if h else "-"  # noqa: E731
        lines.append(f"| {c} | " + " | ".join(inner[str(t)] or "none" for t in spec.tolerances) +
                     f" | {entry.get('outer') or '-'} | {cell(wide, 'area_um2', '{:.0f}')} | "
                     f"{_energy(wide)} | {cell(narrow, 'area_um2', '{:.0f}')} | {_energy(narrow)} |")
    best = best_fp(found, min(spec.tolerances))
    h = _main_fp(found, spec, best)
    label = f"main search (C = {spec.chunk}, fp32 outer)" if spec.chunk else "whole K"
    lines.append(f"| {label} | {' | '.join(best_fp(found, t) or 'none' for t in spec.tolerances)} | - | "
                 f"{h['area_um2']:.0f} | {_energy(h)} | - | - |" if h else
                 f"| {label} | {' | '.join(best_fp(found, t) or 'none' for t in spec.tolerances)} | - | - | - | - | - |")
    return lines + [""]


def _orders(found: dict, spec) -> list[str]:
    orders = found.get("orders")
    if not orders:
        return []
    lines = ["### Accumulation order", "", "Minimal format at the network's exponent width under each order of a "
             "convolution's K terms (linear layers have one order).", "",
             "| order | " + " | ".join(f"tolerance {t}" for t in spec.tolerances) + " |",
             "|---|" + "---|" * len(spec.tolerances)]
    for order, minima in orders.items():
        lines.append(f"| {order} | " + " | ".join(minima[str(t)] or "none" for t in spec.tolerances) + " |")
    same = len({json.dumps(m, sort_keys=True) for m in orders.values()}) == 1
    return lines + ["", "The minima do not change with the order." if same else "The minima change with the order.", ""]


def _prediction(found: dict) -> list[str]:
    pred = found.get("prediction")
    if not pred:
        return []
    per_layer = found.get("per_layer", {}).get("fp", {}).get("layers", {})
    lines = [f"### Prediction beside measurement (E = {pred['exp_bits']}, {pred['images']} test images)", "",
             "Predicted minimal M: the smallest M whose accumulation error (NMSE against the exact float64 sum of "
             "the same rounded operands) is at most the error bf16 operand rounding already makes. Under "
             "round-to-nearest with independent zero-mean errors the NMSE grows as K 2^(-2M): the slope of log2 NMSE "
             "per mantissa bit is then -2 and NMSE 2^(2M)/K a constant.", "",
             "| layer | K | operand NMSE | predicted M | measured M (per layer) | slope log2 NMSE / M | "
             "NMSE 2^(2M)/K (median) |", "|---|---|---|---|---|---|---|"]
    for name, v in pred["layers"].items():
        c = sorted(v.get("nmse_over_k_2^-2m", {}).values())
        measured = per_layer.get(name)
        lines.append(f"| {name} | {v['K']} | {v['operand_nmse']:.2e} | {v['predicted_m']} | "
                     f"{mantissa(measured) if measured else '-'} | {v.get('slope_log2_nmse_per_m', float('nan')):.2f} | "
                     f"{c[len(c) // 2]:.3g} |" if c else
                     f"| {name} | {v['K']} | {v['operand_nmse']:.2e} | {v['predicted_m']} | "
                     f"{mantissa(measured) if measured else '-'} | - | - |")
    lines += ["", f"Network: predicted M = {pred['network_predicted_m']} (the largest over layers); measured minimum "
                  f"{pred['measured_format']} (M = {pred['measured_m']}, tolerance {pred['tolerance']}).", ""]
    if pred.get("failing"):
        lines += [f"### Why {pred['failing']} fails (the first failing format at E = {pred['exp_bits']})", "",
                  "| layer | NMSE / operand NMSE | outputs overflowed | outputs zeroed | addends swamped |",
                  "|---|---|---|---|---|"]
        rows = sorted(pred["layers"].items(), key=lambda kv: -kv[1]["failing"]["nmse_over_operand"])
        for name, v in rows:
            f = v["failing"]
            lines.append(f"| {name} | {f['nmse_over_operand']:.3g} | {100 * f['overflow']:.3f}% | "
                         f"{100 * f['zeroed']:.3f}% | {100 * f['swamped']:.2f}% |")
        lines.append("")
    return lines


def _hardware_table(rows: list[dict], found: dict, spec) -> list[str]:
    front = {h["unit"] for cost in ("area_um2", "energy_pj") for h in pareto_front(rows, cost)}
    family_front = {h["unit"] for cost in ("area_um2", "energy_pj") for fam in ("fp", "int")
                    for h in pareto_front([r for r in rows if r["family"] == fam], cost)}
    lines = ["### MACs: accuracy and silicon", "", _configuration(found, spec) + " Each MAC below is synthesized "
             "exactly as that arithmetic (the MAC column is the unit's own description, as in its Verilog header). "
             "Estimate ns is psum's per-cell estimate of the longest path, inputs and registers to registers "
             "and outputs; STA ns OpenSTA's (docs/synthesis.md); f_max and slack follow STA where it ran. "
             "Energies are quoted at the clock given, and slack < 0 means the MAC does not meet it.", "",
             "| MAC | chunk | outer | top-1 % | cells | area um^2 | transistors | depth | estimate ns | STA ns | "
             "f_max MHz | pJ/MAC real | pJ/MAC real with glitches | pJ/MAC random | at MHz | slack ns | meets clock | "
             "Pareto-optimal (area or energy) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in sorted(rows, key=lambda h: h["area_um2"]):
        where = "overall" if h["unit"] in front else f"within {h['family'].upper()}" if h["unit"] in family_front else ""
        t = _timing(h)
        sta = f"{h['sta_critical_path_ns']:.2f}" if h.get("sta_critical_path_ns") else "-"
        lines.append(f"| {h['unit']} | {h.get('chunk') or '-'} | {h.get('chunk_acc') or '-'} | {100 * h['top1']:.2f} | "
                     f"{h['cells']} | {h['area_um2']:.0f} | {h['transistors']} | {h['depth']} | "
                     f"{h['critical_path_ns']:.2f} | {sta} | {t['fmax_mhz']} | {h['energy_pj']:.3f} | "
                     f"{_value(h, 'energy_glitch_pj')} | "
                     f"{h['energy_random_pj']:.3f} | {t['clock_mhz']:g} | {t['slack_ns']:+.2f} | "
                     f"{'yes' if t['meets'] else 'NO'} | {where} |")
    return lines + [""]


def _costed(found: dict, spec) -> list[dict]:
    """The MACs of the main searches (the references and every minimum, FP ones built
    with the spec's chunking) with the top-1 of their point on the decision images."""
    rows = []
    main = spec.main_chunk()
    for h in found.get("hardware", []):
        if h["family"] == "fp":
            if h["acc"] == "fp32" and not h.get("chunk"):
                ref = found["baselines"]["bf16_fp32acc"]
            elif (h.get("chunk"), h.get("chunk_acc")) == main:
                ref = _judged(found["fp"][exponent(h["acc"])], h["acc"])
            else:
                continue  # a chunk-sweep MAC: costed in the chunk table
        else:
            ref = found["baselines"][f"int{spec.int_bits}_int32acc_seed{spec.calibration_seeds[0]}"] \
                if h["acc"] == "int32" else _judged(int_summary(found, spec), h["acc"])
        if ref and ref.get("stage", "decision") == "decision":
            rows.append({**h, "top1": ref["top1"]})
    return rows


def _pareto_verilog(rows: list[dict], out: Path, spec) -> list[str]:
    from hwgen.verilog import write
    from reports.hardware import build

    front = {h["unit"] for cost in ("area_um2", "energy_pj") for fam in ("fp", "int", None)
             for h in pareto_front([r for r in rows if fam is None or r["family"] == fam], cost)}
    folder = out / "verilog"
    names = []
    for h in rows:
        if h["unit"] not in front:
            continue
        stem = f"mac_{h['family']}_{h['acc'].replace(':', '_')}"
        if h.get("chunk"):
            stem += f"_c{h['chunk']}_{h['chunk_acc'].replace(':', '_')}"
        if not (folder / f"{stem}.v").exists():
            write(build(spec, h), folder / f"{stem}.v", with_testbench=True, n=500, seed=spec.seed)
        names.append(f"`verilog/{stem}.v`")
    return ["Verilog of the Pareto-optimal MACs (with self-checking testbenches): " + ", ".join(names), ""] if names else []


# -- files ----------------------------------------------------------------------------------


def _csvs(results: dict, out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "kind", "acc", "chunk", "chunk_acc", "order", "calibration_seed", "layers", "bits",
                         "top1", "ci_low", "ci_high", "images", "seconds"])
        for p in results["points"]:
            pol = p["policy"]
            acc = pol.get("acc", "fp32")
            writer.writerow([p["model"], pol["kind"], acc, pol.get("chunk") or "", pol.get("chunk_acc") or "",
                             pol.get("order", ""), pol.get("calibration_seed", ""),
                             json.dumps(pol["layers"]) if pol.get("layers") else "",
                             _bits(acc) if pol["kind"] != "fp32" else 32, f"{p['top1']:.5f}",
                             f"{p['top1_ci95'][0]:.5f}", f"{p['top1_ci95'][1]:.5f}", p["total"], p["seconds"]])
    with open(out / "judged.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "search", "acc", "stage", "images", "top1", "drop", "drop_low", "drop_high",
                         "mcnemar_p", "lost", "gained"])
        for model, found in results["models"].items():
            searches = [(f"fp E={e}", s) for e, s in found["fp"].items()] + \
                       [(f"int {k}", s) for k, s in found["int"].items()] + \
                       [(f"chunk {c}", {"judged": v["inner_judged"]}) for c, v in found.get("chunks", {}).items()]
            for name, s in searches:
                for j in s["judged"]:
                    p = j["paired"]
                    writer.writerow([model, name, j["acc"], j["stage"], j["images"], f"{j['top1']:.5f}",
                                     f"{p['drop']:.4f}", f"{p['drop_ci95'][0]:.4f}", f"{p['drop_ci95'][1]:.4f}",
                                     f"{p['mcnemar_p']:.4g}", p["lost"], p["gained"]])


def write_report(results: dict, spec, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    _csvs(results, out)
    stats = results["stats"]
    images = ", ".join(f"{m}: {v['decision']} decision / {v['screen']} screening" for m, v in stats["images"].items())
    lines = ["# psum study: how few partial-sum bits?", "",
             f"Inputs {spec.inputs}; FP accumulator candidates e<E>m<M>{spec.mode} with E in {spec.exp_bits} and "
             f"1+E+M <= {spec.max_width}; INT accumulators int{spec.int_width_range[0]}..int{spec.int_width_range[1]} "
             f"(wrap; saturate for the first calibration seed) with int{spec.int_bits} operands; tolerances "
             f"{spec.tolerances} top-1 points; seed {spec.seed}, screening seed {spec.screen_seed}, calibration seeds "
             f"{spec.calibration_seeds}.", "",
             "**Decision rule** (docs/study.md): a candidate is *within tolerance t* when the point estimate of its "
             "top-1 drop against the reference, paired on the same decision images, is at most t points; the paired "
             "95% interval (Newcombe's method 10) is given beside it, and *confident* when its upper bound is at most "
             "t too. Screening may only reject: a candidate whose screening interval's lower bound exceeds every "
             "tolerance is not evaluated further.", "",
             f"Images: {images}. Screening rejected {stats['screening']['rejected']} candidates and saved "
             f"{stats['screening']['image_evaluations_saved']:,} image evaluations. Points computed "
             f"{stats['computed']}, reused from the store {stats['reused']}; wall time {stats['seconds']} s.", ""]
    lines += _summary(results, spec)
    for model, found in results["models"].items():
        lines += [f"## {model}", "", _what_ran(model, results, spec), ""] + _baselines(found) + _central(found, spec) + _clocked(found) + _operands(found, spec) + _dpu(found, spec) + _finetune(found, spec) + _breakdown(found, spec) + \
            _per_e(found, spec) + _ints(found, spec) + _per_layer(found) + _chunks(found, spec) + _orders(found, spec) + _prediction(found)
        rows = _costed(found, spec)
        if rows:
            lines += _hardware_table(rows, found, spec)
        lines += [f"![{p}]({p})" for p in write_plots(model, found, rows, spec, out)] + [""]
        if rows:
            lines += _pareto_verilog(rows, out, spec)
    (out / "report.md").write_text("\n".join(lines) + "\n")
