"""The study's report: ``report.md``, ``results.csv``, ``results.json``, Pareto plots
(accuracy against MAC area and against energy per MAC, FP and INT marked apart, the
Pareto-optimal points labeled), accuracy against accumulator bits per exponent width,
and the Verilog (with testbench) of every Pareto-optimal MAC."""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["write_report", "pareto_front"]


def pareto_front(points: list[dict], cost: str) -> list[dict]:
    """Points not dominated in (higher top-1, lower ``cost``)."""
    front = []
    for p in points:
        dominated = any(q is not p and q["top1"] >= p["top1"] and q[cost] <= p[cost]
                        and (q["top1"] > p["top1"] or q[cost] < p[cost]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[cost])


def _bits(acc: str) -> int:
    name = acc.split(":")[0]
    if name.startswith("int"):
        return int(name[3:])
    from psum.formats import parse

    return parse(acc).bits


def _accuracy_of(points: list[dict], model: str, kind: str, acc: str) -> dict | None:
    best = None
    for p in points:
        pol = p["policy"]
        if p["model"] == model and pol.get("kind") == kind and pol.get("acc") == acc and not pol.get("layers"):
            if best is None or p["total"] > best["total"]:
                best = p
    return best


def _plots(model: str, hw: list[dict], points: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for cost, label, name in (("area_um2", "MAC area (um$^2$)", "pareto_area"),
                              ("energy_pj", "energy per MAC, real operands (pJ)", "pareto_energy")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for family, marker, color in (("fp", "o", "tab:blue"), ("int", "s", "tab:red")):
            sel = [h for h in hw if h["family"] == family]
            ax.scatter([h[cost] for h in sel], [100 * h["top1"] for h in sel], marker=marker, color=color,
                       label="FP accumulator" if family == "fp" else "INT accumulator (int8 operands)")
        front = pareto_front(hw, cost)
        ax.plot([h[cost] for h in front], [100 * h["top1"] for h in front], "k--", lw=0.8, label="Pareto front")
        labeled = {h["unit"] for h in front}
        for family, color in (("fp", "tab:blue"), ("int", "tab:red")):  # each family's own front
            own = pareto_front([h for h in hw if h["family"] == family], cost)
            ax.plot([h[cost] for h in own], [100 * h["top1"] for h in own], ":", color=color, lw=0.8)
            labeled |= {h["unit"] for h in own}
        for h in hw:
            if h["unit"] in labeled:
                ax.annotate(h["acc"], (h[cost], 100 * h["top1"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{model}: accuracy vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{model}_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path.name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_e: dict[int, list] = {}
    for p in points:
        pol = p["policy"]
        if p["model"] == model and pol.get("kind") == "float" and not pol.get("layers") and pol["acc"] != "fp32":
            e = int(pol["acc"].split("m")[0][1:])
            by_e.setdefault(e, []).append((_bits(pol["acc"]), 100 * p["top1"]))
    for e in sorted(by_e):
        xs, ys = zip(*sorted(set(by_e[e])))
        ax.plot(xs, ys, "o-", ms=3, label=f"E={e}")
    ints = sorted({(_bits(p["policy"]["acc"]), 100 * p["top1"]) for p in points if p["model"] == model and
                   p["policy"].get("kind") == "int" and p["policy"]["acc"].endswith(":sat") is False})
    if ints:
        xs, ys = zip(*ints)
        ax.plot(xs, ys, "s:", color="tab:red", ms=3, label="INT (wrap)")
    ax.set_xlabel("accumulator bits")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{model}: accuracy vs accumulator width")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = out / f"{model}_accuracy_vs_bits.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path.name)
    return written


def write_report(results: dict, spec, out: Path) -> None:
    points = results["points"]
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "kind", "acc", "layers", "bits", "top1", "ci_low", "ci_high", "images",
                         "early_stopped", "seconds"])
        for p in points:
            pol = p["policy"]
            acc = pol.get("acc", "fp32")
            writer.writerow([p["model"], pol["kind"], acc, json.dumps(pol.get("layers", {})) if pol.get("layers") else "",
                             _bits(acc) if pol["kind"] != "fp32" else 32, f"{p['top1']:.5f}",
                             f"{p['top1_ci95'][0]:.5f}", f"{p['top1_ci95'][1]:.5f}", p["total"], p["early_stopped"],
                             p["seconds"]])
    lines = ["# psum study: how few partial-sum bits?", "",
             f"Inputs {spec.inputs}; FP accumulator candidates e<E>m<M>{spec.mode} with E in {spec.exp_bits} and "
             f"1+E+M <= {spec.max_width}; INT accumulators int{spec.int_width_range[0]}..int{spec.int_width_range[1]} "
             f"(wrap and saturate) with int{spec.int_bits} operands; tolerances {spec.tolerances} top-1 points; "
             f"{spec.limit or 'all'} test images per point (95% Wilson intervals); seed {spec.seed}.",
             f"Points computed {results['stats']['computed']}, reused from the store {results['stats']['reused']}; "
             f"wall time {results['stats']['seconds']} s.", ""]
    for model, found in results["models"].items():
        base = found["baselines"]
        lines += [f"## {model}", "", "| baseline | top-1 % | 95% CI |", "|---|---|---|"]
        for name, r in base.items():
            lines.append(f"| {name} | {100 * r['top1']:.2f} | {100 * r['top1_ci95'][0]:.2f}-{100 * r['top1_ci95'][1]:.2f} |")
        hw = {h["unit"]: h for h in found.get("hardware", [])}
        fp_hw = {h["acc"]: h for h in hw.values() if h["family"] == "fp"}
        int_hw = {h["acc"]: h for h in hw.values() if h["family"] == "int"}
        lines += ["", "### Minimal accumulators (the central comparison)", "",
                  "FP: the fewest-bit format over all exponent widths within the tolerance of bf16-in/fp32-acc; "
                  "INT: the narrowest wrapping accumulator within the tolerance of int8/int32. Area and energy "
                  "per MAC (real operands) of the bf16 x bf16 FP MAC and the int8 x int8 INT MAC.", "",
                  "| tolerance | FP acc | bits | top-1 % | INT acc | top-1 % | FP area um^2 | INT area um^2 | area FP/INT "
                  "| FP pJ/MAC | INT pJ/MAC | energy FP/INT |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        pct = lambda r: f"{100 * r['top1']:.2f}" if r else "-"  # noqa: E731
        for tol in spec.tolerances:
            fp_opts = [a for f in found["fp"].values() for t, a in f.items() if float(t) == tol and a]
            fp_best = min(fp_opts, key=lambda a: (_bits(a), a)) if fp_opts else None
            int_best = found["int"].get(":wrap", {}).get(tol)
            fh, ih = fp_hw.get(fp_best), int_hw.get(int_best)
            cells = [str(tol), fp_best or "none", str(_bits(fp_best)) if fp_best else "-",
                     pct(_accuracy_of(points, model, "float", fp_best) if fp_best else None),
                     int_best or "none", pct(_accuracy_of(points, model, "int", int_best) if int_best else None)]
            if fh and ih:
                cells += [f"{fh['area_um2']:.0f}", f"{ih['area_um2']:.0f}", f"{fh['area_um2'] / ih['area_um2']:.2f}",
                          f"{fh['energy_pj']:.3f}", f"{ih['energy_pj']:.3f}", f"{fh['energy_pj'] / ih['energy_pj']:.2f}"]
            else:
                cells += ["-"] * 6
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "### Minimal mantissa per exponent width", "",
                  "| E | " + " | ".join(f"tolerance {t}" for t in spec.tolerances) + " |",
                  "|---|" + "---|" * len(spec.tolerances)]
        for e, f in sorted(found["fp"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {e} | " + " | ".join(str(f.get(t) or "none") for t in spec.tolerances) + " |")
        lines += ["", "INT accumulators: " + "; ".join(
            f"{mode[1:]}: " + ", ".join(f"tolerance {t} -> {v or 'none'}" for t, v in d.items())
            for mode, d in found["int"].items()), ""]
        if found["nonmonotone"]:
            lines += ["Non-monotone in the bits (a narrower format passes where a wider one fails):", ""]
            lines += [f"- tolerance {n['tolerance']}: {n['passes']} ({100 * n['top1'][0]:.2f}%) passes, "
                      f"{n['fails']} ({100 * n['top1'][1]:.2f}%) fails" for n in found["nonmonotone"][:20]]
            lines.append("")
        else:
            lines += ["Accuracy was monotone in the mantissa bits among the points evaluated.", ""]
        if found.get("per_layer"):
            pl = found["per_layer"]
            lines += [f"### Per-layer minima (tolerance {pl['tolerance']}, others at {pl['network_format']})", "",
                      "| layer | MACs / image | minimal format |", "|---|---|---|"]
            lines += [f"| {n} | {pl['macs'][n]:,} | {a} |" for n, a in pl["layers"].items()]
            lines += ["", f"MAC-weighted average accumulator bits: {pl['weighted_bits']:.2f} "
                          f"(per-network minimum: {pl['network_bits']}).", ""]
        if found.get("hardware"):
            rows = []
            for h in found["hardware"]:
                acc = _accuracy_of(points, model, "float" if h["family"] == "fp" else "int", h["acc"])
                if acc:
                    rows.append({**h, "top1": acc["top1"]})
            pictures = _plots(model, rows, points, out)
            front = {h["unit"] for cost in ("area_um2", "energy_pj") for h in pareto_front(rows, cost)}
            family_front = {h["unit"] for cost in ("area_um2", "energy_pj") for fam in ("fp", "int")
                            for h in pareto_front([r for r in rows if r["family"] == fam], cost)}
            lines += ["### MACs: accuracy and silicon", "",
                      "| MAC | top-1 % | cells | area um^2 | transistors | depth | delay ns | pJ/MAC real | "
                      "pJ/MAC random | Pareto-optimal (area or energy) |", "|---|---|---|---|---|---|---|---|---|---|"]
            for h in sorted(rows, key=lambda h: h["area_um2"]):
                lines.append(f"| {h['unit']} | {100 * h['top1']:.2f} | {h['cells']} | {h['area_um2']:.0f} | "
                             f"{h['transistors']} | {h['depth']} | {h['critical_path_ns']:.2f} | {h['energy_pj']:.3f} | "
                             f"{h['energy_random_pj']:.3f} | "
                             f"{'overall' if h['unit'] in front else 'within ' + h['family'].upper() if h['unit'] in family_front else ''} |")
            lines += [""] + [f"![{p}]({p})" for p in pictures] + [""]
            lines += _pareto_verilog(rows, front | family_front, out, spec)
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _pareto_verilog(rows: list[dict], front: set, out: Path, spec) -> list[str]:
    from hwgen import FloatMAC, IntMAC
    from hwgen.verilog import write

    folder = out / "verilog"
    names = []
    for h in rows:
        if h["unit"] not in front:
            continue
        mac = FloatMAC(spec.inputs, h["acc"]) if h["family"] == "fp" else IntMAC(spec.int_bits, spec.int_bits, h["acc"])
        stem = f"mac_{h['family']}_{h['acc'].replace(':', '_')}"
        if not (folder / f"{stem}.v").exists():
            write(mac, folder / f"{stem}.v", with_testbench=True, n=500, seed=spec.seed)
        names.append(f"`verilog/{stem}.v`")
    return ["Verilog of the Pareto-optimal MACs (with self-checking testbenches): " + ", ".join(names), ""] if names else []
