"""The study: search, store, resume after kill -9, Dask, report."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from reports.report import pareto_front
from reports.store import Store, point_key
from reports.study import ModelRun, StudySpec, run_study
from conftest import tiny_lenet5


def test_pareto_front():
    pts = [{"unit": "a", "top1": 0.7, "area_um2": 100}, {"unit": "b", "top1": 0.72, "area_um2": 200},
           {"unit": "c", "top1": 0.69, "area_um2": 150}, {"unit": "d", "top1": 0.72, "area_um2": 250}]
    assert [p["unit"] for p in pareto_front(pts, "area_um2")] == ["a", "b"]


def test_store_keeps_one_row_per_key(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = point_key({"x": 1, "y": [1, 2]})
    assert key == point_key({"y": [1, 2], "x": 1})
    store.put(key, "accuracy", {"x": 1}, {"top1": 0.5})
    store.put(key, "accuracy", {"x": 1}, {"top1": 0.9})
    assert store.get(key) == {"top1": 0.5} and store.count() == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A LeNet5 trained for one epoch on synthetic CIFAR-shaped data, in the npz layout."""
    return tiny_lenet5(tmp_path_factory.mktemp("study"), 96, 3)


def tiny_spec(root, ckpt, **kw):
    base = dict(models=[ModelRun("lenet5", str(ckpt))], exp_bits=[3, 4], max_width=10,
                int_width_range=(8, 14), tolerances=[2.0, 10.0], limit=64, per_layer=False, synth=False,
                data_dir=str(root / "data"), batch_size=32, screen=32, calibration_seeds=[0], chunk_sizes=[],
                orders=["im2col"], prediction=False, operand_formats=[])
    return StudySpec(**{**base, **kw})


def accuracies(results):
    return sorted((json.dumps(p["policy"], sort_keys=True), p["top1"], p["total"]) for p in results["points"])


def test_study_end_to_end_with_hardware_and_report(tiny, tmp_path):
    root, ckpt = tiny
    spec = tiny_spec(root, ckpt, exp_bits=[3], max_width=7, int_width_range=(10, 12), per_layer=True,
                     synth=True, streams=64, calibration_seeds=[0, 1], chunk_sizes=[16], orders=["im2col", "nhwc"],
                     prediction=True, tolerances=[2.0, 10.0], operand_formats=["e4m3"], dpu_widths=[2, 4],
                     dpu_align_range=(0, 6), dpu_hopper_bits=3, dpu_promote=8)
    results = run_study(spec, tmp_path / "out", log=lambda *_: None)
    found = results["models"]["lenet5"]
    e4m3 = found["operands"]["e4m3"]  # its own search, against its own reference, which is judged against bf16's
    assert e4m3["against_main"]["paired"]["n"] == 64 and set(e4m3["fp"]) == {3}
    for judged in e4m3["fp"][3]["judged"]:
        assert judged["paired"]["n"] == judged["images"]
    dpu = found["dpu"]  # fused units: a scan of align bits per width, the Hopper-like unit with and without promotion
    for width, entry in dpu["widths"].items():
        bits = [j["align_bits"] for j in entry["scan"]["judged"]]
        assert bits == list(range(len(bits))) and entry["promoted"]["paired"]["n"] == 64
        fewest = entry["scan"]["minima"]["2.0"]
        if fewest is not None:
            unit = next(h for h in found["dpu_hardware"] if h["width"] == width and h["align_bits"] == fewest)
            assert unit["macs_per_cycle"] == width and unit["energy_pj"] == pytest.approx(unit["energy_cycle_pj"] / width)
    costed = {h["acc"]: h for h in found["operand_hardware"]}
    assert "fp32" in costed and all(h["inputs"] == "e4m3" and "inputs=e4m3" in h["unit"] for h in costed.values())
    assert {a for a in e4m3["fp"][3]["minima"].values() if a} <= set(costed)
    assert costed["fp32"]["area_um2"] < next(h for h in found["hardware"] if h["family"] == "fp" and h["acc"] == "fp32"
                                             and not h.get("chunk"))["area_um2"]  # e4m3 operands: a smaller MAC
    assert set(found["baselines"]) == {"fp32", "bf16_fp32acc", "int8_int32acc_seed0", "int8_int32acc_seed1"}
    assert set(found["fp"]) == {3} and set(found["int"]) == {"wrap seed 0", "wrap seed 1", "sat seed 0"}
    for summary in [*found["fp"].values(), *found["int"].values()]:
        for judged in summary["judged"]:  # every candidate paired with its reference on the same images
            paired = judged["paired"]
            assert paired["n"] == judged["images"] and paired["drop_ci95"][0] <= paired["drop"] <= paired["drop_ci95"][1]
            assert judged["stage"] in ("screen", "decision") and (judged["images"] == 64) == (judged["stage"] == "decision")
    assert {h["family"] for h in found["hardware"]} == {"fp", "int"}
    assert all(h["area_um2"] > 0 and h["energy_pj"] > 0 for h in found["hardware"])
    timed = shutil.which("sta") is not None  # sta = "auto": OpenSTA where installed
    assert all(bool(h.get("sta_critical_path_ns")) == timed for h in found["hardware"])
    assert all(h["energy_glitch_pj"] > h["energy_pj"] for h in found["hardware"])  # streams=64: the same ones
    assert bool(found.get("clocked")) == timed  # the central pairs synthesized for clock targets
    for entry in found.get("clocked", []):
        pair = {fam: next(h for h in found["hardware"] if h["unit"] == entry[fam]["unit"]) for fam in ("fp", "int")}
        if entry["target"] == "iso":  # the slower MAC's own clock: both meet it, neither grows
            assert entry["clock_mhz"] <= 1e3 / max(h["sta_critical_path_ns"] for h in pair.values())
            assert all(entry[f]["met"] and entry[f]["area_um2"] <= pair[f]["area_um2"] for f in pair)
        assert all(entry[f]["met"] == (entry[f]["sta_critical_path_ns"] <= 1e3 / entry["clock_mhz"]) for f in pair)
    if found["chunks"][16]["inner_fp32_outer"]["2.0"]:
        assert any(h.get("chunk") == 16 for h in found["hardware"])
    assert set(found["orders"]) == {"im2col", "nhwc"}
    assert set(found["prediction"]["layers"]) == set(found["per_layer"]["macs"])
    report = (tmp_path / "out" / "report.md").read_text()
    for heading in ("## Cross-network summary", "### Minimal accumulators (the central comparison)", "area FP/INT",
                    "### INT accumulators per calibration seed", "### Chunk-size sweep", "### Accumulation order",
                    "### Prediction beside measurement", "**Decision rule**", "energy FP/INT at iso clock",
                    "energy FP/INT with glitches", "### Operand formats: FP minima beside the INT minimum", "### Dot-product units", *(("#### The central pairs synthesized for a clock",) if timed else ())):
        assert heading in report
    assert ("Critical paths from static timing with OpenSTA" in report) == timed
    for name in ("results.csv", "judged.csv", "results.json", "lenet5_pareto_area.png", "lenet5_pareto_energy.png",
                 "lenet5_drop_vs_bits.png", "lenet5_chunks.png"):
        assert (tmp_path / "out" / name).is_file()
    assert list((tmp_path / "out" / "verilog").glob("*_tb.v"))
    assert "weighted_bits" in found["per_layer"]["fp"] and "weighted_bits" in found["per_layer"]["int"]
    again = run_study(spec, tmp_path / "out", log=lambda *_: None)  # nothing recomputed
    assert again["stats"]["computed"] == 0 and accuracies(again) == accuracies(results)


def test_killed_study_resumes_with_nothing_lost_or_duplicated(tiny, tmp_path):
    root, ckpt = tiny
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(f"""
exp_bits = [3, 4]
max_width = 10
int_width_range = [8, 14]
tolerances = [2.0, 10.0]
limit = 64
screen = 32
calibration_seeds = [0]
chunk_sizes = []
orders = ["im2col"]
prediction = false
per_layer = false
synth = false
data_dir = "{root / 'data'}"
batch_size = 32
[[models]]
name = "lenet5"
checkpoint = "{ckpt}"
""")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "psum", "study", "--config", str(spec_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "results.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if sqlite3.connect(db).execute("SELECT COUNT(*) FROM points").fetchone()[0] >= 5:
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM points").fetchone()[0]
    assert before >= 5
    resumed = run_study(StudySpec.from_toml(spec_path), out, log=lambda *_: None)
    straight = run_study(StudySpec.from_toml(spec_path), tmp_path / "straight", log=lambda *_: None)
    total = len(resumed["points"])
    assert total == len(straight["points"])  # nothing duplicated
    assert resumed["stats"]["computed"] == total - before  # nothing lost, nothing recomputed
    assert accuracies(resumed) == accuracies(straight)


def test_dask_cluster_gives_the_same_results(tiny, tmp_path):
    from dask.distributed import Client, LocalCluster

    root, ckpt = tiny
    spec = tiny_spec(root, ckpt, exp_bits=[4])
    local = run_study(spec, tmp_path / "local", log=lambda *_: None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        remote = run_study(spec, tmp_path / "dask", executor=client, log=lambda *_: None)
    assert accuracies(remote) == accuracies(local)


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        StudySpec.from_toml(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("exp_bitz = [3]\n")
    with pytest.raises(ValueError, match="unknown keys exp_bitz"):
        StudySpec.from_toml(tmp_path / "bad.toml")
    proc = subprocess.run([sys.executable, "-m", "psum", "study", "--model", "lenet5", "--checkpoint",
                           str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_study_finetunes_below_the_zero_shot_minima(tiny, tmp_path, monkeypatch):
    """The fine-tuning stage: each candidate below a minimum fine-tuned once (a rerun
    trains nothing), its point the fine-tuned network's own accuracy on the decision
    images, paired with the original network's reference and with its zero-shot point.
    (The tiny network passes every accumulator; the minima are set to leave room below.)"""
    import numpy as np

    import reports.finetune
    from emulator import checkpoint, convert, data
    from emulator.evaluate import evaluate
    from emulator.models import build
    from reports.points import _policy

    monkeypatch.setattr(reports.finetune, "best_fp", lambda found, tol: "e4m3")
    monkeypatch.setattr(reports.finetune, "best_int", lambda found, tol: "int12")
    root, ckpt = tiny
    spec = tiny_spec(root, ckpt, exp_bits=[4], max_width=9, int_width_range=(8, 14), finetune_epochs=1,
                     finetune_steps=2, finetune_lr=0.01)
    out = tmp_path / "out"
    results = run_study(spec, out, log=lambda *_: None)
    tuned = results["models"]["lenet5"]["finetune"]
    assert set(tuned) >= {"fp", "int"} and tuned["epochs"] == 1
    decision = np.random.default_rng(spec.seed).permutation(96)[:64]
    for family in ("fp", "int"):
        entry = tuned[family]
        assert len(entry["candidates"]) == 2 and entry["control"]["acc"] in ("fp32", "int32")
        assert [c["acc"] for c in entry["candidates"]] == (["e4m2", "e4m1"] if family == "fp" else ["int11", "int10"])
        for row in [*entry["candidates"], entry["control"]]:
            for judged in (row["zero_shot"], row["finetuned"]):
                assert judged["stage"] == "decision" and judged["paired"]["n"] == 64
            g = row["gain"]
            assert g["gain_ci95"][0] <= g["gain"] <= g["gain_ci95"][1]
            assert g["gain"] == pytest.approx(row["zero_shot"]["paired"]["drop"] - row["finetuned"]["paired"]["drop"])
            meta = checkpoint.read(out / "finetuned" / row["checkpoint"])["meta"]
            assert meta["epochs"] == 1 and meta["init"] == str(ckpt)
        row = entry["candidates"][0]
        if family == "fp":  # the fine-tuned point is that checkpoint's accuracy under the accumulator
            model, _ = build("lenet5", "cifar10")
            checkpoint.load_model(out / "finetuned" / row["checkpoint"], model)
            policy = _policy({"kind": "float", "acc": row["acc"], "inputs": "bf16", "chunk": None, "order": "im2col"})
            want = evaluate(convert(model, policy), data.load("cifar10", "test", root / "data"), indices=decision)
            assert row["finetuned"]["top1"] == want.top1
            # the same accumulator rounding stochastically (docs/semantics.md §13), on that network too
            sr = row["stochastic"]
            assert sr["acc"] == "e4m2:sr" and sr["seed"] == spec.seed
            sr_policy = _policy({"kind": "float", "acc": "e4m2:sr", "inputs": "bf16", "chunk": None,
                                 "order": "im2col", "sr_seed": spec.seed})
            want = evaluate(convert(model, sr_policy), data.load("cifar10", "test", root / "data"), indices=decision)
            assert sr["finetuned"]["top1"] == want.top1 and sr["zero_shot"]["paired"]["n"] == 64
            assert sr["gain"]["gain"] == pytest.approx(row["zero_shot"]["paired"]["drop"]
                                                       - sr["zero_shot"]["paired"]["drop"])
        assert all(("stochastic" in r) == (family == "fp") for r in entry["candidates"])
        assert "stochastic" not in entry["control"]
    report = (out / "report.md").read_text()
    assert "### Fine-tuning through the accumulator" in report and "(control)" in report
    assert "rounding stochastically" in report and "| e4m2:sr |" in report
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "finetuned").glob("*.pt")}
    again = run_study(spec, out, log=lambda *_: None)
    assert again["stats"]["computed"] == 0 and again["models"]["lenet5"]["finetune"] == tuned
    assert {p.name: p.stat().st_mtime_ns for p in (out / "finetuned").glob("*.pt")} == stamps


def test_finetuned_minima_are_costed():
    from reports.hardware import units

    spec = StudySpec(operand_formats=[], chunk_sizes=[])
    found = {"fp": {4: {"minima": {"0.5": "e4m5", "1.0": "e4m4"}}}, "int": {"wrap seed 0": {"minima": {"0.5": "int18",
                                                                                                     "1.0": "int17"}}},
             "finetune": {"fp": {"finetuned_minimum": "e4m2",
                                 "candidates": [{"acc": "e4m3", "stochastic": {"acc": "e4m3:sr"}}, {"acc": "e4m1"}]},
                          "int": {"finetuned_minimum": "int15"}}}
    named = {(u["family"], u["acc"]) for u in units(spec, found)}
    assert {("fp", "e4m2"), ("int", "int15"), ("fp", "e4m5"), ("int", "int18"), ("fp", "e4m3:sr"),
            ("fp", "e4m3")} <= named and ("fp", "e4m1") not in named
