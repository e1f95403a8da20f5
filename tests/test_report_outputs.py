"""What the study's outputs say they measured: a chunked study costs the chunked MAC,
every energy carries its clock check, batch-norm folding is keyed and reported, and the
figures carry their bands, reference, tolerances, fronts and labels."""

import json

import pytest
import torch
from torch import nn

from conftest import tiny_lenet5
from reports.plots import chunk_figure, drop_figure, pareto_figure
from reports.report import _costed
from reports.study import ModelRun, StudySpec, run_study
from synth.flow import clock_check


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """A tiny study whose main searches accumulate in chunks of 4 (synthesized)."""
    root, ckpt = tiny_lenet5(tmp_path_factory.mktemp("chunked"), 96, 3)
    spec = StudySpec(models=[ModelRun("lenet5", str(ckpt))], exp_bits=[3, 4], max_width=8, chunk=4,
                     int_width_range=(10, 12), tolerances=[2.0, 10.0], limit=64, per_layer=False, synth=True,
                     streams=64, data_dir=str(root / "data"), batch_size=32, screen=32, calibration_seeds=[0],
                     chunk_sizes=[8], orders=["im2col"], prediction=False)
    out = root / "out"
    return spec, run_study(spec, out, log=lambda *_: None), out


def test_a_chunked_study_costs_the_chunked_mac_it_measured(chunked):
    spec, results, out = chunked
    found = results["models"]["lenet5"]
    rows = _costed(found, spec)
    fp = [h for h in rows if h["family"] == "fp" and h["acc"] != "fp32"]
    assert fp, "the chunked minima are costed"
    assert all(h["chunk"] == 4 and h["chunk_acc"] == "fp32" and "chunk=4 chunk_acc=fp32" in h["unit"] for h in fp)
    assert all(not h.get("chunk") for h in rows if h["acc"] == "fp32")  # the reference is unchunked
    assert not any(h.get("chunk") == 8 for h in rows)  # the chunk sweep's MACs are in its own table
    report = (out / "report.md").read_text()
    mac_table = report[report.index("### MACs: accuracy and silicon"):]
    assert "chunked: every 4 products the inner accumulator is added into an fp32 outer accumulator" in mac_table
    assert "| chunk | outer |" in mac_table and "| 4 | fp32 |" in mac_table
    central = report[report.index("### Minimal accumulators (the central comparison)"):]
    central = central[:central.index("###", 5)]
    assert "chunked: every 4 products" in central
    best = [line for line in central.splitlines() if line.startswith("| 2.0 |")][0]
    assert best.split("|")[9].strip() != "-", "the FP area of the chunked minimum is found"
    verilog = [p for p in (out / "verilog").glob("mac_fp_e*_c4_fp32.v")]
    assert verilog
    header = verilog[0].read_text()
    assert "chunk=4 chunk_acc=fp32" in header.splitlines()[0]
    assert "// Chunked (docs/semantics.md §5): the inner accumulator" in header and "runs of 4 terms" in header


def test_the_central_macs_are_split_by_part_with_their_output_stage(chunked):
    spec, results, out = chunked
    found = results["models"]["lenet5"]
    main = [h for h in found["hardware"] if h.get("parts")]
    assert {h["family"] for h in main} == {"fp", "int"}
    assert not any(h.get("chunk") == 8 for h in main), "the chunk sweep's MACs are not split"
    for h in main:
        parts = h["parts"]
        expected = {"multiplier", "add", "register", "inputs"} | (
            {"decode", "align", "normalize", "round"} if h["family"] == "fp" else set()) | (
            {"outer adder"} if h.get("chunk") else set())
        assert set(parts) == expected, h["unit"]
        assert abs(sum(p["area_um2"] for p in parts.values()) - h["parts_area_um2"]) < 0.01
        assert abs(sum(p["energy_pj"] for p in parts.values()) - h["parts_energy_pj"]) < 1e-3
        assert all(p["area_um2"] > 0 for n, p in parts.items() if n != "inputs")
        # The same unit, optimized within parts: flat synthesis of a narrow wrapping accumulator
        # drops the product bits it never keeps (int10: 404 um^2 flat, 595 by parts).
        assert 0.5 < h["parts_area_um2"] / h["area_um2"] < 2.0
        stage = h["output"]
        assert stage["k"] > 1 and stage["per_mac_pj"] == pytest.approx(stage["energy_pj"] / stage["k"], abs=1e-5)
        assert stage["synthesis"] == ("by parts" if h["family"] == "int" else "flat")
        if h["family"] == "int":
            assert stage["unit"].startswith(f"Requantizer acc={h['acc']}") and stage["scale"]["multiplier"] >= 1 << 15
        else:
            assert stage["unit"] == f"FloatConverter {h['chunk_acc'] or h['acc']} -> {spec.inputs}"
    report = (out / "report.md").read_text()
    section = report[report.index("### Where the FP/INT ratio comes from"):]
    section = section[:section.index("\n### ")]
    for row in ("| multiplier |", "| align |", "| accumulation (all parts but multiplier and inputs; FP/INT ",
                "| outer adder |", "| all parts (hierarchical) |",
                "| flat unit (the tables' figure) |", "| output stage per MAC (K = ", "| MAC + output stage per MAC |"):
        assert row in section
    assert "with each side's output stage" in section


def test_every_energy_carries_its_clock_check(chunked):
    spec, results, out = chunked
    report = (out / "report.md").read_text()
    assert "| f_max MHz |" in report and "| slack ns | meets clock |" in report
    for h in results["models"]["lenet5"]["hardware"]:
        assert h["clock_mhz"] == 500.0
    assert clock_check(1.0, 500.0) == {"clock_mhz": 500.0, "fmax_mhz": 1000.0, "slack_ns": 1.0, "meets": True}
    assert clock_check(16.7, 500.0)["meets"] is False and clock_check(16.7, 500.0)["slack_ns"] == -14.7


def _labels(fig):
    ax = fig.axes[0]
    return ax, ax.get_legend_handles_labels()[1], [t.get_text() for t in ax.texts]


def test_figures_carry_bands_reference_tolerances_fronts_and_labels(chunked):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    spec, results, _ = chunked
    found = results["models"]["lenet5"]
    ax, legend, texts = _labels(drop_figure("lenet5", found, spec))
    assert "reference (drop 0)" in legend and "tolerance 2 points" in legend and "tolerance 10 points" in legend
    assert any(lab.startswith("FP e4m<M>") for lab in legend) and any(lab.startswith("INT (wrap)") for lab in legend)
    assert any(isinstance(c, PolyCollection) for c in ax.collections), "95% bands"
    assert any("minimum at 2" in t for t in texts)
    assert ax.get_xlabel() == "accumulator bits" and "95%" in ax.get_ylabel()
    drawn = {lab.split(",")[0] for lab in legend}
    lone = [e for e, s in found["fp"].items() if sum(j["stage"] == "decision" for j in s["judged"]) < 2]
    for e in lone:  # a one-point series is noted, not drawn
        assert f"FP e{e}m<M>" not in drawn and any("one decision point only" in t for t in texts)
    plt.close("all")

    rows = _costed(found, spec)
    for cost in ("area_um2", "energy_pj"):
        ax, legend, texts = _labels(pareto_figure("lenet5", found, rows, spec, cost))
        for label in ("Pareto front, all MACs (ringed)", "Pareto front, bf16 operands", "Pareto front, int8 operands",
                      "bf16 operands, FP accumulator", "int8 operands, INT accumulator",
                      "reference top-1 (bf16 in, fp32 acc)", "reference minus 2 points"):
            assert label in legend, (label, legend)
        assert len(texts) == len(rows) and all(texts), "every MAC labelled"
        plt.close("all")

    if any(v["inner_fp32_outer"]["10.0"] for v in found["chunks"].values()):
        ax, legend, texts = _labels(chunk_figure("lenet5", found, spec))
        assert "inner minimum, tolerance 10" in legend and texts
        assert any(lab.startswith("whole K (C = 4)") for lab in legend)
        plt.close("all")


def test_batchnorm_folding_is_exact_in_float_and_counted():
    from emulator.fold import fold_batchnorm

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.BatchNorm2d(6), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 3), nn.BatchNorm1d(3))
    for bn in (model[1], model[3], model[6]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
    model.eval()
    folded, n, kept = fold_batchnorm(model)
    assert (n, kept) == (2, 1)  # after the conv and the Linear: folded; after the ReLU: kept
    x = torch.randn(5, 3, 6, 6)
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert isinstance(model[1], nn.BatchNorm2d), "the original is untouched"
    names = [n for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names == ["0", "5"], "layer names are kept for per-layer policies"


def test_fold_bn_is_part_of_every_key_and_the_report(chunked, tmp_path):
    spec, _, _ = chunked
    from reports.spec import StudySpec as S

    folded = S(**{**spec.__dict__, "fold_bn": True, "synth": False, "chunk": None, "chunk_sizes": []})
    results = run_study(folded, tmp_path / "out", log=lambda *_: None)
    assert results["stats"]["computed"] > 0
    assert results["models"]["lenet5"]["batchnorm"] == {"folded": 0, "kept": 0, "fold_bn": True}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "batch norm folded into the layer before it (0 folded, 0 kept in fp32)" in report
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rows["models"]["lenet5"]["batchnorm"]["fold_bn"] is True
    from reports.store import Store

    store = Store(tmp_path / "out" / "results.sqlite")
    assert store.count() > 0
