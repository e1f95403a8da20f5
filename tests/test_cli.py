"""The psum command line, run as a user runs it (a subprocess) and in-process."""

import json
import subprocess
import sys

import pytest

from psum import __version__
from psum.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "psum", *args], capture_output=True, text=True)


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"psum {__version__}"


def test_format_table_and_json(capsys):
    assert main(["format", "e4m7", "bf16", "int24:sat"]) == 0
    out = capsys.readouterr().out
    assert "| e4m7 " in out and "| bf16 " in out and "| int24:sat " in out
    assert main(["format", "--json", "e4m3", "e5m10b12:sat:ftz:rz", "int8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {**rows[0], "spec": "e4m3", "max_finite": 240.0, "min_subnormal": 2.0**-9,
                       "epsilon": 0.125, "bits": 8, "has_inf": True}
    assert rows[1]["overflow"] == "saturate" and rows[1]["min_subnormal"] is None
    assert rows[1]["max_finite"] == (2 - 2**-10) * 2.0 ** (31 - 12)
    assert rows[2] == {"spec": "int8", "kind": "int", "bits": 8, "signed": True,
                       "overflow": "wrap", "min": -128, "max": 127}
    assert rows[0]["random_bits"] is None
    assert main(["format", "e4m4:sr12"]) == 0 and "| stochastic (R=12) |" in capsys.readouterr().out
    assert main(["format", "--json", "e4m4:sr"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["rounding"], row["random_bits"]) == ("stochastic", 8)


def test_candidates(capsys):
    assert main(["format", "--candidates", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    specs = {r["spec"] for r in rows}
    assert len(rows) >= 40 and {"fp16", "bf16", "fp32", "e4m7"} <= specs


@pytest.mark.parametrize("args, fragment", [
    (["format", "e4x7"], "invalid format spec 'e4x7'"),
    (["format", "e4m53"], "man_bits must be between 0 and 52, not 53"),
    (["format", "e4m7:foo"], "unknown mode 'foo'"),
    (["format", "int1"], "bits must be between 2 and 64"),
    (["format"], "needs at least one SPEC"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    proc = run(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("psum: error: ") and fragment in lines[-1]
    assert len([line for line in lines if line.startswith("psum: error")]) == 1


def test_models(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lenet5"]["params"] == 62006 and rows["resnet18-imagenet"]["macs_per_image"] == 1_814_073_344


def test_models_lists_a_networks_layers_with_k_and_macs(capsys):
    assert main(["models", "lenet5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"]
    assert rows[0] == {"name": "features.0", "kind": "Conv2d 5x5", "k": 75, "output": [6, 28, 28],
                       "outputs": 4704, "macs": 352_800}
    total = json.loads(run("models", "--json").stdout)
    assert sum(r["macs"] for r in rows) == next(r for r in total if r["name"] == "lenet5")["macs_per_image"]
    assert main(["models", "alexnet-cifar", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "names for --layer NAME=SPEC" in out and "| features.3 | Conv2d 5x5 | 800 | 96 x 15 x 15 | 17,280,000 |" in out
    proc = run("models", "--layers")
    assert proc.returncode == 2 and "--layers applies to one network" in proc.stderr


def test_help_texts_say_what_they_mean():
    assert "95% Wilson" in run("eval", "--help").stdout and "95%%" not in run("eval", "--help").stdout
    for args, fragment in ((["verilog", "--inputs", "int8"], "--inputs int8 is an integer format: an integer "
                            "MAC is --int 8"),
                           (["synth", "--weights", "int4"], "--weight-int 4")):
        proc = run(*args)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_a_closed_pipe_ends_quietly():
    """``psum ... | head``: the reader going away is exit status 141 and no message."""
    code = ("import sys\nfrom psum import cli\n"
            "def gone(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli.COMMANDS['models'] = gone\nsys.exit(cli.main(['models']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 141 and proc.stderr == "" and proc.stdout == ""


@pytest.fixture
def npz_data(tmp_path):
    import numpy as np

    from emulator import data

    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    src = data.synthetic("cifar10", 48, seed=1)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=src.images.numpy(), labels=src.labels.numpy())
    return tmp_path / "data"


def test_train_then_eval_end_to_end(npz_data, tmp_path, capsys):
    ckpt = tmp_path / "l5.pt"
    assert main(["train", "lenet5", "--data-dir", str(npz_data), "--epochs", "1", "--batch-size", "16",
                 "--out", str(ckpt), "--quiet"]) == 0
    assert "test top-1" in capsys.readouterr().out
    assert main(["eval", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(npz_data), "--limit", "20",
                 "--acc", "e4m7", "e3m4:sat", "--int-acc", "int32", "int12:sat", "--chunk", "16",
                 "--layer", "classifier.5=float", "--json", "--quiet", "--batch-size", "16",
                 "--calib-batches", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    policies = [r["policy"] for r in out["results"]]
    assert policies[:2] == ["fp32", "bf16 inputs, fp32 acc"] and len(policies) == 6
    assert "acc=e3m4:sat inputs=bf16 chunk=16 chunk_acc=fp32 + classifier.5=float" in policies
    assert all(r["total"] == 20 and 0 <= r["top1_ci95"][0] <= r["top1"] <= r["top1_ci95"][1] <= 1
               for r in out["results"])


def test_eval_runs_a_dot_product_unit(npz_data, tmp_path, capsys):
    """psum eval --width W --align-bits L: the network on the unit's kernel, labelled
    with the unit, and the same accuracy as the unit run through the Python API."""
    from emulator import AccumConfig, Policy, convert, checkpoint, data
    from emulator.config import DotUnit
    from emulator.evaluate import evaluate
    from emulator.models import build

    ckpt = tmp_path / "l5.pt"
    assert main(["train", "lenet5", "--data-dir", str(npz_data), "--epochs", "1", "--batch-size", "16",
                 "--out", str(ckpt), "--quiet", "--limit", "32"]) == 0
    capsys.readouterr()
    assert main(["eval", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(npz_data), "--acc", "e5m7",
                 "--inputs", "e4m3", "--width", "8", "--align-bits", "4", "--sticky", "--chunk", "16", "--json",
                 "--quiet", "--no-baselines"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["policy"] == "acc=e5m7 inputs=e4m3 chunk=16 chunk_acc=fp32 unit=W8 L4 sticky"
    model, dataset = build("lenet5", "cifar10")
    checkpoint.load_model(ckpt, model)
    unit = Policy(AccumConfig(acc="e5m7", inputs="e4m3", chunk=16, unit=DotUnit(8, 4, True, True)))
    want = evaluate(convert(model, unit), data.load(dataset, "test", npz_data), progress=False)
    assert (row["correct"], row["total"]) == (want.correct, want.total)


@pytest.mark.parametrize("extra, fragment", [
    (["--checkpoint", "/nonexistent.pt"], "checkpoint /nonexistent.pt does not exist"),
    (["--checkpoint", "X", "--layer", "features.0"], "--layer takes NAME=SPEC"),
    (["--checkpoint", "X", "--int-acc", "e4m7"], "--int-acc takes integer formats"),
    (["--checkpoint", "X", "--acc", "e4q7"], "invalid format spec 'e4q7'"),
    (["--checkpoint", "X", "--acc", "e4m7", "--chunk", "0"], "--chunk: must be a positive integer"),
    (["--checkpoint", "X", "--acc", "e4m7", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_eval_bad_input_is_one_line(extra, fragment, tmp_path):
    proc = run("eval", "lenet5", "--data-dir", str(tmp_path), *extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("psum: error:") and fragment in proc.stderr


def test_asking_for_a_missing_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for args in (["eval", "lenet5", "--checkpoint", "X", "--acc", "e4m7", "--device", "cuda"],
                 ["study", "--out", str(tmp_path / "s"), "--device", "cuda:0"],
                 ["train", "lenet5", "--device", "cuda", "--data-dir", str(tmp_path)]):
        proc = run(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert "sees no CUDA GPU" in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()  # refused before any work


def test_eval_missing_data_and_corrupt_checkpoint(tmp_path):
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(b"\x00" * 64)
    proc = run("eval", "lenet5", "--checkpoint", str(ckpt), "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "is not a readable checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    good = tmp_path / "good.pt"
    from emulator import checkpoint
    from emulator.models import LeNet5
    checkpoint.save(good, LeNet5().state_dict(), {"model": "lenet5"})
    proc = run("eval", "lenet5", "--checkpoint", str(good), "--data-dir", str(tmp_path / "none"))
    assert proc.returncode == 2 and "no cifar10 data under" in proc.stderr and "Traceback" not in proc.stderr


def test_study_flags_reach_the_spec_and_help_lists_every_toml_key(monkeypatch, capsys):
    import dataclasses

    import reports.study
    from psum.cli.study import TOML_KEYS
    from reports.spec import StudySpec

    listed = TOML_KEYS.replace("\n", " ")
    for f in dataclasses.fields(StudySpec):
        assert f"{f.name} (" in listed, f.name
    default = StudySpec()
    for name in ("inputs", "max_width", "int_bits", "screen", "screen_seed", "window", "streams", "batch_size",
                 "seed"):
        assert f"{name} ({getattr(default, name)!r})".replace("'", '"') in listed, name
    assert f"chunk_sizes ({default.chunk_sizes})" in listed and f"exp_bits ({default.exp_bits})" in listed
    seen = {}
    monkeypatch.setattr(reports.study, "run_study", lambda spec, out, **kw: seen.setdefault(
        "spec", spec) and {"stats": {"computed": 0, "reused": 0, "seconds": 0}})
    assert main(["study", "--inputs", "fp16", "--mode", ":sat", "--max-width", "12", "--chunk", "8",
                 "--chunk-sizes", "--orders", "nhwc", "--int-bits", "6", "--int-width-range", "10", "20",
                 "--calibration-seeds", "3", "--streams", "128", "--batch-size", "64", "--no-prediction",
                 "--operand-formats", "e5m2", "e4m3", "--out", "/tmp/psum-never-written"]) == 0
    spec = seen["spec"]
    assert spec.operand_formats == ["e5m2", "e4m3"]
    assert (spec.inputs, spec.mode, spec.max_width, spec.chunk, spec.chunk_sizes, spec.orders) == \
        ("fp16", ":sat", 12, 8, [], ["nhwc"])
    assert (spec.int_bits, spec.int_width_range, spec.calibration_seeds, spec.streams, spec.batch_size,
            spec.prediction) == (6, (10, 20), [3], 128, 64, False)
    assert "wrote /tmp/psum-never-written/report.md" in capsys.readouterr().out
