"""The accelerator view (accel/): ZigZag on psum's layers, MACs and partial-sum widths."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from accel.engine import Architecture, MacCost, accelerator_yaml, evaluate_layer
from accel.workload import Layer, layers_of, zigzag_layer

#: A 1x1 convolution, K = 16 outputs channels, C = 32 inputs, 4 output columns: 2048 MACs.
LAYER = Layer("t", k=16, c=32, g=1, oy=1, ox=4, fy=1, fx=1, stride=(1, 1), padding=(0, 0), iy=1, ix=4)
#: ws16 with its loops fixed: K across D1, C down D2 (16 each), then in time OX (4)
#: innermost and C (2) outside it, so every output's partial sum leaves the PE after
#: the first half of C and comes back for the second.
FIXED_WS = """- name: default
  spatial_mapping:
    D1:
      - K, 16
    D2:
      - C, 16
  temporal_ordering:
    - [OX, 4]
    - [C, 2]
  memory_operand_links:
    O: O
    W: I2
    I: I1
"""


@pytest.fixture(scope="module")
def fixed_ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("ws") / "mapping.yaml"
    path.write_text(FIXED_WS)
    return replace(Architecture.named("ws16"), mapping=path)


def test_energy_by_hand_and_the_terms_the_partial_sums_change(fixed_ws):
    """Accelerator energy = accesses x energy per access, and the partial sums' width
    moves the MAC and the accumulation buffer's output traffic only."""
    costs = {bits: evaluate_layer(LAYER, fixed_ws, MacCost(f"int{bits}", bits, 1.5, 800.0), operand_bits=8,
                                  output_bits=8) for bits in (32, 16)}
    outputs, passes = 16 * 4, 2
    for bits, cost in costs.items():
        assert cost.mac_pj == pytest.approx(LAYER.macs * 1.5)  # 2048 MACs x the MAC's energy
        # Accumulation buffer (20 pJ per 64 bits): each pass writes every partial sum up and
        # reads it back down (ZigZag counts the first read and the last write too), then
        # the finished outputs are read out at 8 bits.
        by_hand = (2 * passes * outputs * bits + outputs * 8) / 64 * 20
        assert cost.memory["acc_buffer_32KB"]["O"] == pytest.approx(by_hand)
        assert cost.memory["dram"]["W"] == pytest.approx(16 * 32 * 8 / 64 * 1300)  # every weight once, 1.3 nJ / 64 b
        assert cost.memory["dram"]["O"] == pytest.approx(outputs * 8 / 64 * 1300)  # finished outputs at 8 bits
        assert cost.psum_bits_held["psum_reg"] == 16 * bits  # a column's sum per D1 position
        assert cost.psum_bits_held["acc_buffer_32KB"] == outputs * bits
        assert cost.psum_bits_held["dram"] == 0  # holds finished outputs only
    wide, narrow = costs[32], costs[16]
    for level, by_op in wide.memory.items():
        for op, pj in by_op.items():
            if (level, op) != ("acc_buffer_32KB", "O"):
                assert narrow.memory[level][op] == pytest.approx(pj), (level, op)
    assert wide.cycles == narrow.cycles


def test_the_pe_register_is_the_mac_own():
    arch = Architecture.named("os16")
    acc = accelerator_yaml(arch, MacCost("e4m5", 10, 2.0, 1500.0))
    reg = acc["memories"]["psum_reg"]
    assert reg["size"] == 10 and {p["bandwidth_max"] for p in reg["ports"]} == {16}  # one partial sum a cycle
    assert reg["r_cost"] == reg["w_cost"] == 0  # its energy is in the MAC's
    assert acc["operational_array"]["unit_energy"] == 2.0 and acc["operational_array"]["unit_area"] == 1500.0
    assert arch.accelerator["memories"]["psum_reg"]["size"] == 32  # the committed file is not changed


def test_workload_of_a_real_network():
    from emulator.models import build, layer_macs

    model, _ = build("lenet5")
    layers = layers_of(model, 32)
    assert [l.name for l in layers] == list(layer_macs(model, 32))
    assert [l.macs for l in layers] == list(layer_macs(model, 32).values())
    conv = zigzag_layer(layers[0], 0, operand_bits=16, psum_bits=10, output_bits=16)
    assert conv["operand_precision"] == {"I": 16, "W": 16, "O": 10, "O_final": 16}
    assert conv["loop_sizes"] == [1, 1, 6, 3, 28, 28, 5, 5]
    fc = zigzag_layer(layers[-1], 4, operand_bits=8, psum_bits=18, output_bits=8)
    assert fc["operator_type"] == "Gemm" and fc["loop_sizes"] == [1, 10, 84]


def test_grouped_convolutions_keep_their_groups():
    from torch import nn

    layers = layers_of(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, groups=8)), 8)
    dw = layers[1]
    assert (dw.g, dw.k, dw.c, dw.oy, dw.stride) == (8, 1, 1, 3, (2, 2))
    assert dw.macs == 8 * 3 * 3 * 9


def test_psum_accel_bad_input_is_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "psum", "accel", *args], capture_output=True, text=True)

    for args, fragment in ((["--study", str(tmp_path)], "no study results at"),
                           (["--study", str(tmp_path), "--arch", "eyeriss"], "unknown architecture 'eyeriss'"),
                           (["--study", str(tmp_path), "--arch", "os16", "os16"], "--arch lists an architecture twice")):
        proc = run(*args, "--out", str(tmp_path / "o"))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert fragment in proc.stderr
    (tmp_path / "results.json").write_text("{not json")
    proc = run("--study", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "is not a study's results.json" in proc.stderr


def _study_results(root: Path) -> Path:
    """A study's results.json as the accelerator view reads it: LeNet5, its FP and INT
    minima and the hardware rows of the four MACs."""
    judged = lambda accs: {"minima": {"1.0": accs[0]}, "judged": []}  # noqa: E731
    hw = [{"family": "fp", "acc": "fp32", "chunk": None, "energy_pj": 3.0, "area_um2": 4000.0},
          {"family": "fp", "acc": "e4m7", "chunk": None, "energy_pj": 2.5, "area_um2": 1700.0},
          {"family": "int", "acc": "int32", "chunk": None, "energy_pj": 1.5, "area_um2": 800.0},
          {"family": "int", "acc": "int18", "chunk": None, "energy_pj": 1.2, "area_um2": 590.0},
          {"family": "fp", "acc": "e5m2", "inputs": "e4m3", "chunk": None, "energy_pj": 1.0, "area_um2": 600.0}]
    results = {"spec": {"tolerances": [1.0], "inputs": "bf16", "int_bits": 8, "fold_bn": False,
                        "models": [{"name": "lenet5", "checkpoint": str(Path(__file__).resolve().parents[1]
                                                                       / "checkpoints" / "lenet5-cifar10.pt"),
                                    "dataset": None, "factory": None}]},
               "models": {"lenet5": {"fp": {4: judged(["e4m7"])}, "int": {"wrap seed 0": judged(["int18"])},
                                     "hardware": hw}}}
    (root / "results.json").write_text(json.dumps(results))
    return root


def test_psum_accel_runs_a_study_resumes_and_reports(tmp_path):
    study = _study_results(tmp_path)
    cmd = [sys.executable, "-m", "psum", "accel", "--study", str(study), "--arch", "ws16", "--out", str(tmp_path / "a")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    done = json.loads((tmp_path / "a" / "accel.json").read_text())
    runs = {r["acc"]: r for r in done["runs"].values()}
    assert set(runs) == {"fp32", "e4m7", "int32", "int18"}  # the main MACs, not the other operand formats'
    assert (runs["e4m7"]["psum_bits"], runs["e4m7"]["operand_bits"], runs["int18"]["operand_bits"]) == (12, 16, 8)
    for r in runs.values():
        assert [layer["layer"] for layer in r["layers"]] == ["features.0", "features.3", "classifier.1",
                                                            "classifier.3", "classifier.5"]
        assert sum(layer["mac_pj"] for layer in r["layers"]) == pytest.approx(r["mac_energy_pj"] * 651_720)
    report = (tmp_path / "a" / "accel.md").read_text()
    assert "## lenet5" in report and "### ws16" in report and "| int18 | 18 |" in report
    assert (tmp_path / "a" / "lenet5_accel.png").stat().st_size > 0
    again = subprocess.run(cmd, capture_output=True, text=True)  # resumes: nothing evaluated twice
    assert again.returncode == 0 and "uJ [" not in again.stdout


def test_a_layer_that_fits_the_array_whole():
    """K 10 x C 84 on the 128x128 array: no temporal loop at all (ZigZag's own API
    fails on it in its visualization stage, which psum's pipeline leaves out)."""
    fc = Layer("fc", k=10, c=84, g=1, oy=1, ox=1, fy=1, fx=1, stride=(1, 1), padding=(0, 0), iy=1, ix=1)
    cost = evaluate_layer(fc, Architecture.named("tpu128"), MacCost("int18", 18, 1.2, 590.0), operand_bits=8,
                          output_bits=8)
    assert cost.mac_pj == pytest.approx(840 * 1.2)
    assert cost.memory["dram"]["W"] == pytest.approx(840 * 8 / 64 * 1300)
    assert cost.psum_bits_held["psum_reg"] == 10 * 18 and cost.psum_bits_held["acc_buffer_1MB"] == 0
    for psum_bits in (8, 10, 12):  # narrower than the outputs, or 10/12 bits: ZigZag's latency model needs a wide port
        narrow = evaluate_layer(fc, Architecture.named("tpu128"), MacCost("e4m3", psum_bits, 1.0, 500.0),
                                operand_bits=16, output_bits=16)
        assert narrow.psum_bits_held["psum_reg"] == 10 * psum_bits


def test_a_layer_zigzag_cannot_map_is_a_clear_error():
    import copy

    from accel.engine import MappingError

    arch = Architecture.named("tpu128")
    small = copy.deepcopy(arch.accelerator)
    small["memories"]["local_buffer_256KB"]["size"] = 32 * 1024 * 8  # a 128x128 weight tile fills it whole
    conv = Layer("conv", k=128, c=128, g=1, oy=7, ox=7, fy=3, fx=3, stride=(1, 1), padding=(1, 1), iy=7, ix=7)
    with pytest.raises(MappingError, match="ZigZag found no mapping of layer conv on tpu128 with fp32"):
        evaluate_layer(conv, replace(arch, accelerator=small), MacCost("fp32", 32, 2.0, 4000.0), operand_bits=16,
                       output_bits=16)
