"""The study's searches: for each granularity, the narrowest accumulator within each
tolerance of its reference (docs/study.md, "Method").

Every search is a :func:`scan`: candidates from narrowest to widest, each judged
against the reference on the same images (screened first, :meth:`Runner.judge`); the
minimum for a tolerance is the **first** candidate within it, every narrower one having
been evaluated and found outside. Monotonicity is not assumed below a minimum; above the
tightest minimum, ``window`` more candidates are evaluated and the rest are not (the
report says so).
"""

from __future__ import annotations

import concurrent.futures as cf

from reports.points import Judged, Runner
from reports.spec import ModelRun

__all__ = ["scan", "search_model", "dpu_search", "dpu_unit", "mantissa", "exponent", "acc_bits", "pareto_front", "best_fp", "best_int", "int_summary"]

#: McNemar p-value below which two candidates are said to differ.
SIGNIFICANT_P = 0.05


def mantissa(acc: str) -> int:
    return int(acc.split("m")[1].split(":")[0])


def exponent(acc: str) -> int:
    return int(acc.split("m")[0][1:])


def int_width(acc: str) -> int:
    return int(acc.split(":")[0][3:])


def scan(runner: Runner, run: ModelRun, policies: list[dict], reference: dict, window: int) -> dict:
    """Judge ``policies`` (narrowest first) until every tolerance has its minimum and
    ``window`` more have been judged. Returns ``{"minima": {tol: index | None},
    "judged": [Judged, ...], "nonmonotone": [...], "flat": [...]}``."""
    tolerances = sorted(runner.spec.tolerances)
    minima: dict[float, int | None] = {t: None for t in tolerances}
    judged: list[Judged] = []
    for i, policy in enumerate(policies):
        j = runner.judge(run, policy, reference)
        judged.append(j)
        for t in tolerances:
            if minima[t] is None and j.within(t):
                minima[t] = i
        if all(m is not None for m in minima.values()) and i >= max(minima.values()) + window:
            break
    out = {"minima": minima, "judged": judged, "nonmonotone": [], "flat": []}
    for t in tolerances:  # a narrower candidate within t, a wider one outside
        for i, a in enumerate(judged):
            for b in judged[i + 1:]:
                if a.within(t) and not b.within(t):
                    paired = runner.compare(run, a, b)
                    entry = {"tolerance": t, "passes": _label(a.policy), "fails": _label(b.policy),
                             "drops": [a.paired.drop, b.paired.drop], "mcnemar_p": paired.p_value}
                    out["nonmonotone" if paired.p_value < SIGNIFICANT_P else "flat"].append(entry)
    return out


def _label(policy: dict) -> str:
    """What a scan varies in ``policy``: its accumulator, or a unit's align bits."""
    return f"L={policy['unit']['align_bits']}" if policy.get("unit") else policy["acc"]


def _summary(policies: list[dict], found: dict) -> dict:
    """A scan as JSON: minima by tolerance and every candidate judged."""
    return {"minima": {str(t): (None if i is None else policies[i]["acc"]) for t, i in found["minima"].items()},
            "judged": [j.as_dict() for j in found["judged"]],
            "evaluated_up_to": found["judged"][-1].policy["acc"] if found["judged"] else None,
            "nonmonotone": found["nonmonotone"], "flat": found["flat"]}


def _batchnorm(run: ModelRun, fold: bool) -> dict:
    """How the network's batch norms are treated: with ``fold``, how many were folded
    into the layer before them and how many were kept; else all kept, in fp32."""
    from emulator.fold import count_batchnorms
    from reports.points import _model

    present = count_batchnorms(_model(run.ref, run.dataset, run.checkpoint, False)[0])
    kept = count_batchnorms(_model(run.ref, run.dataset, run.checkpoint, fold)[0])  # both cached
    return {"folded": present - kept, "kept": kept, "fold_bn": fold}


def search_model(runner: Runner, run: ModelRun, log) -> dict:
    """All searches of one network; the model's section of ``results.json``."""
    from emulator.data import dataset_spec
    from emulator.models import has_integer_reading, layer_macs
    from reports.points import _model

    spec = runner.spec
    order = spec.orders[0]
    model, dataset = _model(run.ref, run.dataset, run.checkpoint, spec.fold_bn)
    macs = layer_macs(model, dataset_spec(dataset).image_size)
    fp_ref = {"kind": "float", "acc": "fp32", "inputs": spec.inputs, "chunk": None, "order": order}
    seeds = spec.calibration_seeds if not has_integer_reading(run.ref) else spec.calibration_seeds[:1]  # file's scales
    int_ref = {s: {"kind": "int", "acc": "int32", "bits": spec.int_bits, "calibration_seed": s} for s in seeds}
    out = {"baselines": {"fp32": runner.point(run, {"kind": "fp32"}), "bf16_fp32acc": runner.point(run, fp_ref),
                         **{f"int{spec.int_bits}_int32acc_seed{s}": runner.point(run, int_ref[s]) for s in seeds}},
           "reference": {"fp": "bf16_fp32acc", "int": f"int{spec.int_bits}_int32acc_seed{seeds[0]}"},
           "macs": macs, "batchnorm": _batchnorm(run, spec.fold_bn)}
    if has_integer_reading(run.ref):  # INT points run the file's integer network: its operands, not calibrated ones
        from emulator.tflite_import import TFLiteIntNet

        out["int_operand_bits"] = TFLiteIntNet.OPERAND_BITS

    def fp(acc: str, **extra) -> dict:
        return {**fp_ref, "acc": acc, "chunk": spec.chunk, **extra}

    def search_e(exp_bits: int) -> dict:
        policies = [fp(a) for a in spec.candidates(exp_bits)]
        return _summary(policies, scan(runner, run, policies, fp_ref, spec.window))

    log(f"{run.name}: FP accumulators, {len(spec.exp_bits)} exponent widths")
    with cf.ThreadPoolExecutor(max_workers=len(spec.exp_bits)) as pool:  # exponent widths in parallel
        out["fp"] = dict(zip(spec.exp_bits, pool.map(search_e, spec.exp_bits)))

    log(f"{run.name}: INT accumulators, calibration seeds {seeds}")
    out["int"] = {}
    for mode, mode_seeds in (("", seeds), (":sat", seeds[:1])):  # saturation: the first seed only
        for s in mode_seeds:
            policies = [{**int_ref[s], "acc": a} for a in spec.int_candidates(mode)]
            out["int"][f"{mode[1:] or 'wrap'} seed {s}"] = _summary(policies, scan(runner, run, policies, int_ref[s],
                                                                                   spec.window))
    if spec.dpu_widths:
        log(f"{run.name}: dot-product units of widths {spec.dpu_widths}")
        out["dpu"] = dpu_search(runner, run, order)
    if spec.operand_formats:
        log(f"{run.name}: FP accumulators with operands {', '.join(spec.operand_formats)}")
        out["operands"] = {fmt: operand_search(runner, run, fmt, fp_ref) for fmt in spec.operand_formats}
    best = best_fp(out, min(spec.tolerances))
    if best is not None and len(spec.orders) > 1:
        log(f"{run.name}: accumulation orders {spec.orders} at E={exponent(best)}")
        out["orders"] = {order: out["fp"][exponent(best)]["minima"]}
        for other in spec.orders[1:]:
            ref = {**fp_ref, "order": other}
            policies = [{**fp(a), "order": other} for a in spec.candidates(exponent(best))]
            out["orders"][other] = _summary(policies, scan(runner, run, policies, ref, spec.window))["minima"]
    if spec.per_layer:
        log(f"{run.name}: per-layer minima")
        out["per_layer"] = _per_layer(runner, run, out, fp, fp_ref, int_ref[seeds[0]])
    if spec.chunk_sizes and best is not None:
        log(f"{run.name}: chunk sizes {spec.chunk_sizes}")
        out["chunks"] = _chunk_sweep(runner, run, best, fp_ref)
    return out


def operand_search(runner: Runner, run: ModelRun, fmt: str, fp_ref: dict) -> dict:
    """The network-level FP search with ``fmt`` operands (activations and weights),
    every exponent width of the spec, each candidate judged against ``fmt`` operands
    with fp32 accumulation; that reference itself judged against the main FP reference
    (``fp_ref``: what the operand format alone costs), paired on the same images."""
    spec = runner.spec
    ref = {**fp_ref, "inputs": fmt}
    out = {"reference": runner.point(run, ref), "against_main": runner.judge(run, ref, fp_ref).as_dict()}

    def search_e(exp_bits: int) -> dict:
        policies = [{**ref, "acc": a, "chunk": spec.chunk} for a in spec.candidates(exp_bits)]
        return _summary(policies, scan(runner, run, policies, ref, spec.window))

    out["fp"] = {e: search_e(e) for e in spec.exp_bits}
    return out


def dpu_unit(width: int, align_bits: int) -> dict:
    """A policy's dot-product unit: truncation, the accumulator aligned with the
    products (the Hopper-like structure, docs/semantics.md §11)."""
    return {"width": width, "align_bits": align_bits, "include_acc": True, "sticky": False}


def dpu_search(runner: Runner, run: ModelRun, order: str) -> dict:
    """Per unit width W of the spec: the fewest align bits within each tolerance of
    ``dpu_inputs`` operands with a sequential ``dpu_acc`` accumulator (a scan over
    ``dpu_align_range``, paired on the same images), and the unit with
    ``dpu_hopper_bits`` without and with promotion into fp32 every ``dpu_promote``
    terms, judged against the same reference."""
    spec = runner.spec
    ref = {"kind": "float", "acc": spec.dpu_acc, "inputs": spec.dpu_inputs, "chunk": None, "order": order}
    low, high = spec.dpu_align_range
    out = {"reference": runner.point(run, ref), "inputs": spec.dpu_inputs, "acc": spec.dpu_acc, "widths": {}}
    for width in spec.dpu_widths:
        bits = list(range(low, high + 1))
        policies = [{**ref, "unit": dpu_unit(width, b)} for b in bits]
        found = scan(runner, run, policies, ref, spec.window)
        summary = _summary(policies, found)
        summary["minima"] = {str(t): (None if i is None else bits[i]) for t, i in found["minima"].items()}
        for judged, b in zip(summary["judged"], bits):
            judged["align_bits"] = b
        hopper = {**ref, "unit": dpu_unit(width, spec.dpu_hopper_bits)}
        promoted = {**hopper, "chunk": spec.dpu_promote, "chunk_acc": "fp32"}
        out["widths"][width] = {"scan": summary, "hopper": runner.judge(run, hopper, ref).as_dict(),
                                "promoted": runner.judge(run, promoted, ref).as_dict()}
    return out


def best_fp(out: dict, tolerance: float) -> str | None:
    """The fewest-bit FP minimum over all exponent widths (ties: the smaller E)."""
    found = [s["minima"][str(tolerance)] for s in out["fp"].values() if s["minima"][str(tolerance)]]
    return min(found, key=lambda a: (exponent(a) + mantissa(a), exponent(a))) if found else None


def best_int(out: dict, tolerance: float, mode: str = "wrap") -> str | None:
    """The INT minimum of the first calibration seed."""
    key = next(k for k in out["int"] if k.startswith(mode))
    return out["int"][key]["minima"][str(tolerance)]


def _per_layer(runner: Runner, run: ModelRun, out: dict, fp, fp_ref: dict, int_ref: dict) -> dict:
    """Per layer, with every other layer at the network's minimum (tightest tolerance),
    the narrowest accumulator that layer tolerates; FP and INT."""
    spec = runner.spec
    tol = min(spec.tolerances)
    macs = out["macs"]
    result = {"tolerance": tol, "macs": macs}
    net_fp = best_fp(out, tol)
    if net_fp:
        e, m_net = exponent(net_fp), mantissa(net_fp)
        layers = {}
        for name in macs:
            policies = [fp(net_fp, layers={name: f"e{e}m{m}{spec.mode}"}) for m in range(0, m_net + 1)]
            found = scan(runner, run, policies, fp_ref, 0)["minima"][tol]
            layers[name] = policies[found]["layers"][name] if found is not None else net_fp
        bits = {n: 1 + e + mantissa(a) for n, a in layers.items()}
        result["fp"] = {"network_format": net_fp, "layers": layers, "network_bits": 1 + e + m_net,
                        "weighted_bits": sum(macs[n] * bits[n] for n in macs) / sum(macs.values())}
    net_int = best_int(out, tol)
    if net_int:
        w_net = int_width(net_int)
        layers = {}
        for name in macs:
            widths = [a for a in spec.int_candidates() if int_width(a) <= w_net]
            policies = [{**int_ref, "acc": net_int, "layers": {name: a}} for a in widths]
            found = scan(runner, run, policies, int_ref, 0)["minima"][tol]
            layers[name] = widths[found] if found is not None else net_int
        result["int"] = {"network_format": net_int, "layers": layers, "network_bits": w_net,
                         "weighted_bits": sum(macs[n] * int_width(layers[n]) for n in macs) / sum(macs.values())}
    return result


def _chunk_sweep(runner: Runner, run: ModelRun, best: str, fp_ref: dict) -> dict:
    """Per chunk size C: the narrowest inner accumulator (exponent width of the
    network's minimum) with an fp32 outer one, then with that inner the narrowest outer
    accumulator (as wide as the inner one or wider) that still passes."""
    spec = runner.spec
    tol = min(spec.tolerances)
    e = exponent(best)
    cands = spec.candidates(e)
    sweep = {}
    for c in spec.chunk_sizes:
        policies = [{**fp_ref, "acc": a, "chunk": c, "chunk_acc": "fp32"} for a in cands]
        inner = _summary(policies, scan(runner, run, policies, fp_ref, spec.window))
        entry = {"inner_fp32_outer": inner["minima"], "inner_judged": inner["judged"]}
        narrow = inner["minima"][str(tol)]
        if narrow:
            outers = [a for a in cands if mantissa(a) >= mantissa(narrow)]
            policies = [{**fp_ref, "acc": narrow, "chunk": c, "chunk_acc": a} for a in outers]
            found = scan(runner, run, policies, fp_ref, 0)
            entry["outer"] = None if found["minima"][tol] is None else outers[found["minima"][tol]]
        sweep[c] = entry
    return sweep


def pareto_front(points: list[dict], cost: str) -> list[dict]:
    """Points not dominated in (higher top-1, lower ``cost``)."""
    front = []
    for p in points:
        dominated = any(q is not p and q["top1"] >= p["top1"] and q[cost] <= p[cost]
                        and (q["top1"] > p["top1"] or q[cost] < p[cost]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[cost])


def acc_bits(acc: str) -> int:
    """Bits of an accumulator spec (``int18`` -> 18, ``e4m5`` -> 10)."""
    if acc.startswith("int"):
        return int_width(acc)
    from psum.formats import parse

    return parse(acc).bits


def int_summary(found: dict, spec) -> dict:
    """The INT search the report's central comparison uses: wrapping, first calibration seed."""
    return found["int"][f"wrap seed {spec.calibration_seeds[0]}"]
