"""The study's figures, one builder per figure (each returns the matplotlib figure, so
that tests inspect its artists), and :func:`write_plots` that renders them to PNG.

Every figure carries what a reader needs to judge it: paired 95% bands around each
drop, the reference and the tolerances as labelled lines, labels on the points the
report discusses (the minima, the Pareto-optimal MACs), and a legend entry for every
line style. An FP exponent width with a single decision point (typically E = 3, whose
narrow mantissas are all rejected by screening) is not drawn as a one-point "curve":
the figure notes it and the table lists it.
"""

from __future__ import annotations

from pathlib import Path

from reports.search import acc_bits, best_fp, best_int, int_summary, pareto_front

__all__ = ["drop_figure", "chunk_figure", "pareto_figure", "write_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _decision_points(summary: dict) -> list[tuple]:
    """(bits, drop, low, high, acc) of a search's candidates judged on the decision images."""
    return sorted((acc_bits(j["acc"]), j["paired"]["drop"], *j["paired"]["drop_ci95"], j["acc"])
                  for j in summary["judged"] if j["stage"] == "decision")



def _tolerance_lines(ax, spec, at=lambda t: t, what="tolerance"):
    styles = ["--", "-.", (0, (1, 2)), (0, (6, 2, 1, 2, 1, 2))]
    for i, t in enumerate(sorted(spec.tolerances)):
        ax.axhline(at(t), color="0.35", lw=0.8, ls=styles[i % len(styles)], label=f"{what} {t:g} points")


def drop_figure(model: str, found: dict, spec):
    """Accuracy drop (paired with the reference, points) against accumulator bits: one
    curve with its 95% band per FP exponent width and for INT (wrap, first calibration
    seed); the reference (drop 0) and tolerance lines; the minima labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lone = []
    for e, s in sorted(found["fp"].items(), key=lambda kv: int(kv[0])):
        pts = _decision_points(s)
        if len(pts) < 2:
            lone += [f"E={e} ({p[4]})" for p in pts]
            continue
        xs, ys, lo, hi, _ = zip(*pts)
        line, = ax.plot(xs, ys, "o-", ms=3, label=f"FP e{e}m<M>, {spec.inputs} operands")
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    pts = _decision_points(int_summary(found, spec))
    if pts:
        xs, ys, lo, hi, _ = zip(*pts)
        ax.plot(xs, ys, "s:", color="tab:red", ms=3, label=f"INT (wrap), int{spec.int_bits} operands")
        ax.fill_between(xs, lo, hi, color="tab:red", alpha=0.1)
    ax.axhline(0.0, color="k", lw=1.0, label="reference (drop 0)")
    _tolerance_lines(ax, spec)
    tight = min(spec.tolerances)
    for acc, summary in ((best_fp(found, tight), None), (best_int(found, tight), int_summary(found, spec))):
        if not acc:
            continue
        summary = summary or next(s for s in found["fp"].values() if acc in s["minima"].values())
        j = next((j for j in summary["judged"] if j["acc"] == acc and j["stage"] == "decision"), None)
        if j:
            ax.annotate(f"{acc}: minimum at {tight:g}", (acc_bits(acc), j["paired"]["drop"]),
                        textcoords="offset points", xytext=(6, 10), fontsize=8,
                        arrowprops={"arrowstyle": "-", "lw": 0.6})
    if lone:
        ax.text(0.99, 0.98, "one decision point only, not drawn: " + ", ".join(lone), transform=ax.transAxes,
                ha="right", va="top", fontsize=7, color="0.35")
    ax.set_xlabel("accumulator bits")
    ax.set_ylabel("top-1 drop vs reference (points), paired 95% band")
    ax.set_title(f"{model}: accuracy drop vs accumulator width (decision images)")
    return _finish(fig, ax)


def chunk_figure(model: str, found: dict, spec):
    """Minimal inner accumulator bits (fp32 outer) against the chunk size, per tolerance,
    each point labelled with its format; the unchunked minimum as a reference line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, t in enumerate(sorted(spec.tolerances)):
        cs = sorted((int(c), v["inner_fp32_outer"][str(t)]) for c, v in found["chunks"].items()
                    if v["inner_fp32_outer"][str(t)])
        if not cs:
            continue
        # Tolerances often share minima: later ones hollow and dashed, so none hides another.
        line, = ax.plot([c for c, _ in cs], [acc_bits(a) for _, a in cs], "-" if i == 0 else "--",
                        marker="o" if i == 0 else "s", ms=5 + 3 * i, mfc=None if i == 0 else "none",
                        label=f"inner minimum, tolerance {t:g}")
        for c, a in cs:
            ax.annotate(a, (c, acc_bits(a)), textcoords="offset points", xytext=(4, 5 - 12 * i), fontsize=7,
                        color=line.get_color())
        whole = best_fp(found, t)
        if whole:
            ax.axhline(acc_bits(whole), color=line.get_color(), lw=0.8, ls=":",
                       label=f"whole K ({'C = ' + str(spec.chunk) if spec.chunk else 'unchunked'}): {whole}, "
                             f"tolerance {t:g}")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chunk size C (terms per spill into the fp32 outer accumulator)")
    ax.set_ylabel("inner accumulator bits")
    ax.set_title(f"{model}: chunk size vs minimal inner accumulator")
    return _finish(fig, ax)


def pareto_figure(model: str, found: dict, rows: list[dict], spec, cost: str):
    """Top-1 against MAC ``cost`` (``area_um2`` or ``energy_pj``) of every costed MAC, each
    labelled; the Pareto front per operand type and overall (its points ringed); the
    reference top-1 and reference minus each tolerance as lines."""
    plt = _plt()
    label = {"area_um2": "MAC area (um$^2$)", "energy_pj": "energy per MAC, real operands (pJ)"}[cost]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    kinds = (("fp", "o", "tab:blue", f"{spec.inputs} operands, FP accumulator"),
             ("int", "s", "tab:red", f"int{spec.int_bits} operands, INT accumulator"))
    for family, marker, color, name in kinds:
        sel = [h for h in rows if h["family"] == family]
        if not sel:
            continue
        ax.scatter([h[cost] for h in sel], [100 * h["top1"] for h in sel], marker=marker, color=color, label=name)
        front = pareto_front(sel, cost)
        ax.plot([h[cost] for h in front], [100 * h["top1"] for h in front], ":", color=color, lw=1.0,
                label=f"Pareto front, {name.split(',')[0]}")
    front = pareto_front(rows, cost)
    ax.plot([h[cost] for h in front], [100 * h["top1"] for h in front], "k--", lw=0.9, marker="o", ms=10,
            mfc="none", label="Pareto front, all MACs (ringed)")
    for h in rows:  # every MAC labelled: there are few, and the report discusses each
        ax.annotate(h["acc"] + (f" C{h['chunk']}" if h.get("chunk") else ""), (h[cost], 100 * h["top1"]),
                    textcoords="offset points", xytext=(5, -9 if h["family"] == "int" else 4), fontsize=7)
    ref = 100 * found["baselines"][found["reference"]["fp"]]["top1"]
    ax.axhline(ref, color="k", lw=1.0, label=f"reference top-1 ({spec.inputs} in, fp32 acc)")
    _tolerance_lines(ax, spec, at=lambda t: ref - t, what="reference minus")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{model}: accuracy vs {label.split(' (')[0]}")
    return _finish(fig, ax)


def _finish(fig, ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def write_plots(model: str, found: dict, rows: list[dict], spec, out: Path) -> list[str]:
    """Render the network's figures into ``out``; the file names written."""
    plt = _plt()
    figures = [("drop_vs_bits", drop_figure(model, found, spec))]
    if found.get("chunks"):
        figures.append(("chunks", chunk_figure(model, found, spec)))
    if rows:
        figures += [("pareto_area", pareto_figure(model, found, rows, spec, "area_um2")),
                    ("pareto_energy", pareto_figure(model, found, rows, spec, "energy_pj"))]
    written = []
    for name, fig in figures:
        fig.savefig(out / f"{model}_{name}.png", dpi=120)
        plt.close(fig)
        written.append(f"{model}_{name}.png")
    return written
