"""The accelerator view of a study: each network's MACs (the references and the minimal
FP and INT accumulators the study found, with the area and energy per MAC psum
synthesized and simulated on the network's real operand streams) in every PE of each
reference architecture, every layer mapped by ZigZag (:mod:`accel.engine`).

Per network, architecture and accumulator: energy by part (MAC, each memory level),
cycles, and the partial sums' footprint (the most bits of partial sums any layer keeps
at once at each level). Every evaluation lands in ``accel.json`` as it finishes, so an
interrupted run resumes where it stopped; the tables go to ``accel.md`` and
``accel.csv``, a stacked bar plot per network to ``<model>_accel.png``.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from accel.engine import ARCHITECTURES, Architecture, MacCost, evaluate_layer

__all__ = ["AccelError", "macs_of_study", "run_accel", "engine_version", "totals"]


class AccelError(ValueError):
    """A study folder or an argument the accelerator view cannot use."""


def engine_version() -> str:
    from importlib.metadata import version

    return f"zigzag-dse {version('zigzag-dse')}"


def macs_of_study(results: dict, model: str) -> list[tuple[str, MacCost, int]]:
    """(label, MAC, operand bits) of a study's network: fp32 and its FP minimum (the
    main inputs' bits), int32 and its INT minimum (the INT operands' bits), at the
    study's tightest tolerance, costed as its hardware stage costed them."""
    from psum.formats import parse
    from reports.search import acc_bits, best_fp, best_int

    spec, found = results["spec"], results["models"][model]
    tol = min(spec["tolerances"])
    rows = found.get("hardware")
    if not rows:
        raise AccelError(f"the study's {model} has no hardware results: run it with synth = true")
    fp_bits = parse(spec["inputs"]).bits
    int_bits = found.get("int_operand_bits", spec["int_bits"])
    out = []
    for family, acc, operand_bits in (("fp", "fp32", fp_bits), ("fp", best_fp(found, tol), fp_bits),
                                      ("int", "int32", int_bits), ("int", best_int(found, tol), int_bits)):
        if acc is None:
            continue
        row = next((h for h in rows if h["family"] == family and h["acc"] == acc and not h.get("chunk")
                    and "inputs" not in h), None)
        if row is None:
            raise AccelError(f"the study's {model} costed no unchunked {acc} MAC")
        label = f"{acc} ({'reference' if acc in ('fp32', 'int32') else 'minimum'})"
        out.append((label, MacCost(acc, acc_bits(acc), row["energy_pj"], row["area_um2"]), operand_bits))
    return out


def _layers(results: dict, model: str):
    from accel.workload import layers_of
    from emulator.data import dataset_spec
    from reports.points import _model

    entry = next(m for m in results["spec"]["models"] if m["name"] == model)
    net, dataset = _model(entry.get("factory") or entry["name"], entry.get("dataset"), entry["checkpoint"],
                          results["spec"].get("fold_bn", False))
    return layers_of(net, dataset_spec(dataset).image_size)


def run_accel(study: str | Path, out: str | Path, architectures: list[str], log=print) -> dict:
    """Every network of the study in ``study`` on each of ``architectures``; writes and
    returns the results (resuming from ``out``/accel.json)."""
    for name in architectures:
        if name not in ARCHITECTURES:
            raise AccelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    study, out = Path(study), Path(out)
    path = study / "results.json" if study.is_dir() else study
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise AccelError(f"no study results at {path} (psum study --out DIR writes DIR/results.json)") from None
    except ValueError as exc:
        raise AccelError(f"{path} is not a study's results.json: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    store = out / "accel.json"
    done = json.loads(store.read_text()) if store.exists() else {"engine": engine_version(), "runs": {}}
    for model in results.get("models", {}):
        layers = _layers(results, model)
        for label, mac, operand_bits in macs_of_study(results, model):
            for arch_name in architectures:
                key = f"{model} | {arch_name} | {mac.acc} | {mac.energy_pj:.6g} pJ | {mac.area_um2:.6g} um2"
                if key in done["runs"]:
                    continue
                start = time.monotonic()
                arch = Architecture.named(arch_name)
                costs = [evaluate_layer(layer, arch, mac, operand_bits=operand_bits, output_bits=operand_bits)
                         for layer in layers]
                done["runs"][key] = {"model": model, "architecture": arch_name, "acc": mac.acc, "label": label,
                                     "psum_bits": mac.psum_bits, "operand_bits": operand_bits,
                                     "mac_energy_pj": mac.energy_pj, "mac_area_um2": mac.area_um2,
                                     "layers": [vars(c) for c in costs], "seconds": round(time.monotonic() - start, 1)}
                partial = store.with_suffix(".json.tmp")
                partial.write_text(json.dumps(done, indent=1))
                partial.replace(store)  # whole or absent
                log(f"  {model} on {arch_name}, {mac.acc}: {sum(c.total_pj for c in costs) / 1e6:.3f} uJ "
                    f"[{time.monotonic() - start:.1f} s]")
    write_accel_report(done, out)
    return done


def totals(run: dict) -> dict:
    """A run's energy by part (pJ, over all layers; memory levels with every operand
    together, and the partial sums' share of each apart), cycles and partial-sum
    footprint (the most bits any layer keeps at once, per level)."""
    parts: dict[str, float] = {"MAC": sum(layer["mac_pj"] for layer in run["layers"])}
    psum_pj: dict[str, float] = {}
    footprint: dict[str, float] = {}
    for layer in run["layers"]:
        for level, by_op in layer["memory"].items():
            parts[level] = parts.get(level, 0.0) + sum(by_op.values())
            psum_pj[level] = psum_pj.get(level, 0.0) + by_op.get("O", 0.0)
        for level, bits in layer["psum_bits_held"].items():
            footprint[level] = max(footprint.get(level, 0.0), bits)
    return {"parts": parts, "total_pj": sum(parts.values()), "outputs_pj": psum_pj,
            "cycles": sum(layer["cycles"] for layer in run["layers"]), "footprint_bits": footprint}


def write_accel_report(done: dict, out: Path) -> None:
    """accel.md (per network and architecture: energy by part, O traffic, cycles,
    footprint, savings of each minimum against its reference), accel.csv, plots."""
    runs = list(done["runs"].values())
    lines = ["# Accelerator view: partial sums in whole arrays", "",
             f"Engine: {done['engine']} (temporal mapping searched by LOMA for minimal energy, per layer). "
             "Architectures: accel/architectures (docs/accel.md). MAC energy and area: psum's synthesized MAC on the "
             "network's real operand streams, from the study. Energies in uJ per image; *outputs* is the share of a "
             "level's energy that moves outputs and partial sums; footprint: the most bits of partial sums any layer "
             "keeps at once at that level.", ""]
    with open(out / "accel.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "architecture", "acc", "psum_bits", "part", "energy_pj", "outputs_pj"])
        for run in runs:
            t = totals(run)
            for part, pj in t["parts"].items():
                writer.writerow([run["model"], run["architecture"], run["acc"], run["psum_bits"], part,
                                 f"{pj:.3f}", f"{t['outputs_pj'].get(part, 0.0):.3f}"])
    for model in dict.fromkeys(r["model"] for r in runs):
        lines += [f"## {model}", ""]
        for arch in dict.fromkeys(r["architecture"] for r in runs if r["model"] == model):
            mine = [r for r in runs if r["model"] == model and r["architecture"] == arch]
            levels = list(dict.fromkeys(level for r in mine for level in totals(r)["parts"]))
            lines += [f"### {arch}", "",
                      "| accumulator | bits | " + " | ".join(levels) + " | total uJ | outputs' traffic uJ | cycles | "
                      "partial-sum footprint (bits by level) | total vs reference |",
                      "|---|---|" + "---|" * len(levels) + "---|---|---|---|---|"]
            refs = {r["acc"]: totals(r)["total_pj"] for r in mine if r["acc"] in ("fp32", "int32")}
            for r in mine:
                t = totals(r)
                ref = refs.get("int32" if r["acc"].startswith("int") else "fp32")
                feet = ", ".join(f"{lv} {b:.0f}" for lv, b in t["footprint_bits"].items() if b)
                ratio = f"{t['total_pj'] / ref:.3f}" if ref else "-"
                lines.append(f"| {r['acc']} | {r['psum_bits']} | "
                             + " | ".join(f"{t['parts'].get(lv, 0.0) / 1e6:.4f}" for lv in levels)
                             + f" | {t['total_pj'] / 1e6:.4f} | {sum(t['outputs_pj'].values()) / 1e6:.4f} | "
                             f"{t['cycles']:.0f} | {feet} | {ratio} |")
            lines.append("")
        _plot(model, [r for r in runs if r["model"] == model], out / f"{model}_accel.png")
        lines += [f"![{model}]({model}_accel.png)", ""]
    (out / "accel.md").write_text("\n".join(lines) + "\n")


def _plot(model: str, runs: list[dict], path: Path) -> None:
    """Stacked bars: energy per image by part, one bar per architecture and accumulator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(p for r in runs for p in totals(r)["parts"]))
    labels = [f"{r['architecture']}\n{r['acc']}" for r in runs]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(runs)), 4.5))
    bottom = [0.0] * len(runs)
    for i, part in enumerate(parts):  # tab20: a distinct color for each of up to 20 parts
        values = [totals(r)["parts"].get(part, 0.0) / 1e6 for r in runs]
        ax.bar(labels, values, bottom=bottom, label=part, color=plt.cm.tab20(i % 20))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("energy per image (uJ)")
    ax.set_title(f"{model}: energy by part, per architecture and accumulator")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
