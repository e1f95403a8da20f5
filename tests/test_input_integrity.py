"""Results a user can trust under any input (issue 16): every class of bad input is
one line on stderr with exit status 2, before anything is evaluated or written, and
nothing the user gives is silently ignored, truncated or reused on other data.

Each class is driven with several members, not only the examples that were reported.
"""

import gzip
import json
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from psum.cli import build_policies, build_parser, main
from conftest import tiny_lenet5


def cli(capsys, *args):
    """(exit status, stderr lines) of ``psum ARGS`` run in this process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_one_line(code, err, fragment):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("psum: error: "), err
    assert fragment in err[0], err


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "psum", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic CIFAR-shaped data (npz layout) and a LeNet5 trained on it for one epoch."""
    return tiny_lenet5(tmp_path_factory.mktemp("integrity"), 64, 5)


def eval_args(tiny, *extra):
    root, ckpt = tiny
    return ["eval", "lenet5", "--checkpoint", ckpt, "--data-dir", root / "data", "--limit", "16", "--quiet",
            "--batch-size", "16", *extra]


def spec_text(tiny, **changes):
    """A TOML study spec on ``tiny``; ``changes`` replace or add top-level lines."""
    root, ckpt = tiny
    lines = {"limit": "16", "exp_bits": "[4]", "max_width": "7", "int_width_range": "[8, 9]",
             "tolerances": "[5.0]", "per_layer": "false", "synth": "false",
             "data_dir": json.dumps(str(root / "data")), "batch_size": "16"}
    lines.update(changes)
    models = lines.pop("models", f'[[models]]\nname = "lenet5"\ncheckpoint = {json.dumps(str(ckpt))}\n')
    return "".join(f"{k} = {v}\n" for k, v in lines.items()) + models


# -- numbers that are nonsense ----------------------------------------------------------------


@pytest.mark.parametrize("extra, fragment", [
    (["--limit", "0"], "--limit: must be a positive integer, not 0"),
    (["--limit", "-5"], "--limit: must be a positive integer, not -5"),
    (["--limit", "ten"], "--limit: expected an integer, not 'ten'"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["--batch-size", "-1"], "--batch-size: must be a positive integer"),
    (["--int-acc", "int16", "--calib-batches", "0"], "--calib-batches: must be a positive integer"),
    (["--int-acc", "int16", "--seed", "-1"], "--seed: must be an integer in 0..2^63-1"),
    (["--int-acc", "int16", "--seed", str(2**64)], "--seed: must be an integer in 0..2^63-1"),
    (["--acc", "e4m7", "--chunk", "0"], "--chunk: must be a positive integer"),
    (["--acc", "e4m7", "--chunk", "-16"], "--chunk: must be a positive integer"),
    (["--acc", "e4m4:sr", "--sr-seed", "-1"], "--sr-seed: must be an integer in 0..4294967295, not -1"),
    (["--acc", "e4m4:sr", "--sr-seed", str(2**32)], "--sr-seed: must be an integer in 0..4294967295"),
])
def test_eval_numbers_out_of_range(tiny, capsys, extra, fragment):
    assert_one_line(*cli(capsys, *eval_args(tiny, *extra)), fragment)


@pytest.mark.parametrize("extra, fragment", [
    (["--k", "0"], "--k: must be a positive integer"),
    (["--streams", "0"], "--streams: must be a positive integer"),
    (["--streams", "10"], "--streams must be at least 64"),
    (["--clock-mhz", "0"], "--clock-mhz: must be positive"),
    (["--clock-mhz", "-500"], "--clock-mhz: must be positive"),
    (["--clock-mhz", "nan"], "--clock-mhz: must be a finite number"),
    (["--clock-mhz", "inf"], "--clock-mhz: must be a finite number"),
    (["--seed", "-3"], "--seed: must be an integer in 0..2^63-1"),
    (["--int", "0"], "--int: must be a positive integer"),
])
def test_synth_numbers_out_of_range(capsys, extra, fragment):
    assert_one_line(*cli(capsys, "synth", *extra), fragment)


def test_train_and_verilog_numbers_out_of_range(capsys, tmp_path):
    for extra, fragment in ((["--epochs", "0"], "--epochs: must be a positive integer"),
                            (["--lr", "-0.1"], "--lr: must be positive"), (["--lr", "nan"], "finite number"),
                            (["--limit", "0"], "--limit: must be a positive"),
                            (["--checkpoint-every", "0"], "--checkpoint-every")):
        assert_one_line(*cli(capsys, "train", "lenet5", "--data-dir", tmp_path, *extra), fragment)
    for extra, fragment in ((["--vectors", "0", "--testbench"], "--vectors: must be a positive integer"),
                            (["--chunk", "0"], "--chunk: must be a positive integer")):
        assert_one_line(*cli(capsys, "verilog", "-o", tmp_path / "m.v", *extra), fragment)
    assert not list(tmp_path.iterdir())


def test_train_config_refuses_nonsense_numbers():
    from emulator.train import TrainConfig

    for kwargs in ({"lr": float("nan")}, {"lr": float("inf")}, {"lr": 0}, {"limit": 0}, {"limit": -3},
                   {"seed": -1}, {"epochs": True}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            TrainConfig(model="lenet5", **kwargs)


# -- repeated options, and options that do not apply ----------------------------------------


@pytest.mark.parametrize("extra", [
    ["--acc", "e4m7", "--acc", "e5m10"],
    ["--acc", "e4m7", "--limit", "8"],  # --limit is already in eval_args
    ["--acc", "e4m7", "--inputs", "bf16", "--inputs", "fp16"],
    ["--acc", "e4m7", "--quiet"],
    ["--int-acc", "int16", "--int-acc", "int24"],
    ["--acc", "e4m7", "--order", "nhwc", "--order", "im2col"],
])
def test_eval_repeated_options_are_refused(tiny, capsys, extra):
    assert_one_line(*cli(capsys, *eval_args(tiny, *extra)), "given more than once")


@pytest.mark.parametrize("args", [
    ["format", "--json", "--json", "e4m7"],
    ["synth", "--acc", "e4m7", "--acc", "e4m3"],
    ["verilog", "--inputs", "bf16", "--inputs", "fp16"],
    ["study", "--limit", "10", "--limit", "20"],
    ["study", "--tolerance", "1", "--tolerance", "2"],
    ["train", "lenet5", "--epochs", "1", "--epochs", "2"],
])
def test_other_commands_refuse_repeated_options(capsys, args):
    assert_one_line(*cli(capsys, *args), "given more than once")


@pytest.mark.parametrize("extra, fragment", [
    (["--int-acc", "int16", "--inputs", "e4m3"], "--inputs applies to floating-point accumulators"),
    (["--int-acc", "int16", "--weights", "bf16"], "--weights applies to floating-point accumulators"),
    (["--int-acc", "int16", "--product", "fp16"], "--product applies to floating-point accumulators"),
    (["--acc", "e4m7", "--weight-bits", "4"], "--weight-bits applies to integer accumulators"),
    (["--acc", "e4m7", "--act-bits", "4"], "--act-bits applies to integer accumulators"),
    (["--acc", "e4m7", "--calib-batches", "2"], "--calib-batches applies to integer accumulators"),
    (["--acc", "e4m7", "--seed", "3"], "--seed applies to integer accumulators"),
    (["--acc", "e4m7", "--chunk-acc", "fp32"], "--chunk-acc applies to chunked accumulation"),
    (["--int-acc", "int16", "--chunk", "4", "--chunk-acc", "e4m7"], "--chunk-acc e4m7 is a floating-point format"),
    (["--int-acc", "int16", "--chunk", "4", "--chunk-acc", "fp32"], "is a floating-point format"),
    (["--acc", "e4m7", "--chunk", "4", "--chunk-acc", "int32"], "--chunk-acc int32 is an integer format"),
    (["--acc", "e4m7", "int24"], "use --int-acc for 'int24'"),
    (["--acc", "e4m7", "e4m7"], "names a format twice"),
    (["--no-baselines"], "nothing to evaluate"),
    (["--acc", "fp32", "--align-bits", "8"], "--align-bits applies to dot-product units: give --width W too"),
    (["--acc", "fp32", "--sticky"], "--sticky applies to dot-product units"),
    (["--acc", "fp32", "--width", "8"], "a dot-product unit (--width) needs --align-bits L"),
    (["--int-acc", "int16", "--width", "8", "--align-bits", "8"], "--width applies to floating-point accumulators"),
    (["--acc", "fp32", "--width", "8", "--align-bits", "8", "--chunk", "12"], "multiple of the unit's width 8"),
    (["--acc", "fp32", "--width", "8", "--align-bits", "8", "--product", "bf16"], "keeps its products exact"),
    (["--acc", "fp32", "--width", "32", "--align-bits", "48"], "would not be exact in float64"),
    (["--acc", "e4m7", "--sr-seed", "3"], "--sr-seed applies to stochastically rounding accumulators"),
    (["--acc", "e4m7:sr", "--width", "8", "--align-bits", "8"], "a dot-product unit rounds to nearest or toward"),
    (["--acc", "e4m7", "--inputs", "e4m3:sr"], "inputs e4m3:sr: stochastic rounding is an accumulator mode"),
    (["--acc", "e4m7:sr0"], "random_bits must be between 1 and 32, not 0"),
    (["--acc", "fp32:sr32"], "the emulator rounds stochastically with M + R <= 50"),
])
def test_eval_options_that_do_not_apply_are_refused(tiny, capsys, extra, fragment):
    assert_one_line(*cli(capsys, *eval_args(tiny, *extra)), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["synth", "--int", "8", "--inputs", "fp16"], "--inputs applies to floating-point MACs"),
    (["synth", "--int", "8", "--chunk", "4"], "--chunk applies to floating-point MACs"),
    (["synth", "--weight-int", "4"], "--weight-int applies to integer MACs"),
    (["synth", "--chunk-acc", "e5m10"], "--chunk-acc applies to chunked MACs"),
    (["synth", "--layer", "features.0"], "--activity-layer chooses real operand streams"),
    (["synth", "--activity-layer", "features.0"], "--activity-layer chooses real operand streams"),
    (["synth", "--checkpoint", "x.pt"], "--checkpoint chooses real operand streams"),
    (["synth", "--activity", "lenet5"], "--activity needs --checkpoint"),
    (["verilog", "--vectors", "100"], "--vectors applies to the testbench"),
    (["verilog", "--seed", "3"], "--seed applies to the testbench"),
    (["study", "--workers", "0"], "--workers: must be a positive integer"),
    (["study", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers sets local worker processes"),
    (["study", "--checkpoint", "x.pt"], "--checkpoint applies to --model"),
    (["study", "--dataset", "cifar10"], "--dataset applies to --model"),
    (["study", "--model", "lenet5"], "--model needs --checkpoint"),
    (["study", "--tolerance", "-1"], "--tolerance: must be zero or positive"),
    (["study", "--tolerance", "nan"], "--tolerance: must be a finite number"),
    (["format", "--candidates", "e4m7"], "not both"),
])
def test_hardware_and_study_options_that_do_not_apply(capsys, tmp_path, args, fragment):
    os.chdir(tmp_path)
    assert_one_line(*cli(capsys, *args), fragment)
    assert not list(tmp_path.iterdir())  # nothing written


def test_int_chunk_acc_is_honoured(tiny):
    """``--chunk-acc`` reaches the integer MAC (it used to be int32 whatever was asked)."""
    args = build_parser().parse_args([str(a) for a in eval_args(tiny, "--int-acc", "int16", "--chunk", "8",
                                                                    "--chunk-acc", "int20:sat")])
    (_, policy), = build_policies(args)
    assert str(policy.default.chunk_acc) == "int20:sat" and policy.default.chunk == 8
    args = build_parser().parse_args([str(a) for a in eval_args(tiny, "--int-acc", "int16", "--chunk", "8")])
    (label, policy), = build_policies(args)
    assert str(policy.default.chunk_acc) == "int32" and "chunk_acc=int32" in label


def test_int_chunk_acc_changes_the_result(tiny, capsys):
    """A 10-bit saturating outer accumulator must change the integer network's output."""
    from emulator import IntAccumConfig, Policy, calibrate, convert
    from emulator.models import LeNet5
    from emulator import checkpoint, data

    root, ckpt = tiny
    model = LeNet5()
    checkpoint.load_model(ckpt, model)
    x, _ = next(data.load("cifar10", "test", root / "data").batches(8))
    outs = []
    for outer in ("int32", "int10:sat"):
        m = convert(model, Policy(IntAccumConfig(acc="int16", chunk=4, chunk_acc=outer)))
        calibrate(m, [x])
        outs.append(m(x))
    assert not torch.equal(*outs)


# -- formats that cannot run, and biases beyond what psum represents ------------------------


@pytest.mark.parametrize("extra, fragment", [
    (["--acc", "e9m3"], "acc format e9m3 cannot hold the results in float32"),
    (["--acc", "e10m20"], "cannot hold the results in float32"),
    (["--acc", "e4m7b-500"], "cannot hold the results in float32"),
    (["--acc", "e4m7b900"], "cannot hold the results in float32"),
    (["--acc", "e4m7", "--inputs", "e4m24"], "inputs format e4m24"),
    (["--acc", "e4m7", "--inputs", "e9m2"], "inputs format e9m2"),
    (["--acc", "e4m7", "--weights", "e8m30"], "weights format e8m30"),
    (["--acc", "e4m7", "--product", "e11m51"], "product format e11m51"),
    (["--acc", "e4m7", "--chunk", "4", "--chunk-acc", "e10m10"], "chunk_acc format e10m10"),
    (["--int-acc", "uint16"], "integer accumulators are signed"),
    (["--int-acc", "int64:sat"], "saturating accumulators are supported up to 62 bits"),
    (["--acc", "e4m7", "--layer", "features.0=e9m1"], "--layer features.0"),
    (["--int-acc", "int16", "--weight-bits", "1"], "weight_bits must be an integer between 2 and 16"),
])
def test_formats_the_emulator_cannot_run_fail_before_evaluation(tiny, capsys, extra, fragment):
    assert_one_line(*cli(capsys, *eval_args(tiny, *extra)), fragment)


def test_layers_refuse_unrunnable_configs_when_built_and_when_retargeted():
    from emulator import AccumConfig, EmulatedLinear, convert

    with pytest.raises(ValueError, match="acc format e9m3 cannot hold the results in float32"):
        EmulatedLinear(4, 2, config=AccumConfig(acc="e9m3"))
    layer = EmulatedLinear(4, 2, config=AccumConfig(acc="e4m7"))
    with pytest.raises(ValueError, match="inputs format e4m24"):
        layer.config = AccumConfig(acc="e4m7", inputs="e4m24")
    assert str(layer.config.acc) == "e4m7"
    with pytest.raises(ValueError, match=r"^layer 1: acc format e10m3"):
        convert(nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), AccumConfig(acc="e10m3"))


@pytest.mark.parametrize("spec, fragment", [
    ("e4m7b-99999999999", "bias must be between -1009 and 1068 for e4m7"),
    ("e4m7b99999999999", "bias must be between -1009 and 1068 for e4m7"),
    ("e2m0b-2000", "bias must be between"),
    ("e8m23b5000", "bias must be between"),
    ("e11m52b1000", "bias must be between 1023 and 1023"),
    ("e11m52:sat", "no bias makes every value of e11m52:sat a float64 number"),
])
def test_biases_beyond_float64_are_refused_at_once(capsys, spec, fragment):
    proc = run("format", spec)  # a subprocess: it used to allocate gigabytes and hang
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr


def test_bias_range_holds_exactly_the_float64_formats():
    from psum.formats import FloatFormat, bias_range

    for exp_bits, man_bits, overflow in ((4, 7, "inf"), (8, 23, "saturate"), (11, 52, "inf"), (2, 0, "inf")):
        low, high = bias_range(exp_bits, man_bits, overflow)
        for bias in (low, high):
            fmt = FloatFormat(exp_bits, man_bits, bias, overflow=overflow)
            assert float(fmt.max_finite) < float("inf") and fmt.emin - man_bits >= -1074
            assert float(fmt.min_normal) > 0
        for bias in (low - 1, high + 1):
            with pytest.raises(ValueError, match="bias must be between"):
                FloatFormat(exp_bits, man_bits, bias, overflow=overflow)


# -- files: data, Liberty, checkpoints, out folders, the cache -------------------------------


def _write_npz(folder: Path, split: str, **arrays):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{split}.npz", **arrays)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_zip", "npy", "float_labels", "bool_labels",
                                    "float_images", "pickled"])
def test_malformed_npz_data_is_one_line(tiny, tmp_path, capsys, damage):
    from emulator import data

    folder = tmp_path / "d" / "cifar10"
    good = data.synthetic("cifar10", 8, seed=0)
    images, labels = good.images.numpy(), good.labels.numpy()
    if damage in ("truncated", "empty", "not_zip", "npy", "pickled"):
        folder.mkdir(parents=True)
        _write_npz(tmp_path / "tmp", "test", images=images, labels=labels)
        blob = (tmp_path / "tmp" / "test.npz").read_bytes()
        if damage == "npy":
            np.save(folder / "x.npy", images)
            blob = (folder / "x.npy").read_bytes()
        if damage == "pickled":
            np.save(folder / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
            blob = (folder / "x.npy").read_bytes()
        (folder / "test.npz").write_bytes({"truncated": blob[:500], "empty": b"", "not_zip": b"hello" * 50,
                                           "npy": blob, "pickled": blob}[damage])
    else:
        labels = {"float_labels": labels + 0.7, "bool_labels": labels > 4}.get(damage, labels)
        images = images.astype(np.float32) if damage == "float_images" else images
        _write_npz(folder, "test", images=images, labels=labels)
    _, ckpt = tiny
    code, err = cli(capsys, "eval", "lenet5", "--checkpoint", ckpt, "--data-dir", tmp_path / "d", "--acc", "e4m7",
                    "--quiet")
    assert_one_line(code, err, str(folder / "test.npz"))
    if damage.endswith("labels"):
        assert "labels must be integers" in err[0]


def _liberty(tmp_path, name, text, gz=False):
    path = tmp_path / (name + (".lib.gz" if gz else ".lib"))
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def _osu018():
    path = Path("/usr/share/qflow/tech/osu018/osu018_stdcells.lib")
    if not path.is_file():
        pytest.skip("qflow-tech-osu018 is not installed")
    return path.read_text()


@pytest.mark.parametrize("damage, fragment", [
    ("truncated_gz", "cannot read"),
    ("empty", "is empty"),
    ("garbage", "cannot parse"),
    ("no_area", "has no area"),
    ("negative_area", "area is -"),
    ("nan_leakage", "leakage is nan"),
    ("time_unit", "unknown time_unit"),
    ("cap_unit", "unknown capacitive_load_unit"),
    ("leak_unit", "unknown leakage_power_unit"),
    ("voltage", "nom_voltage must be a positive number"),
])
def test_malformed_liberty_is_one_line(tmp_path, damage, fragment):
    import re

    from synth.liberty import LibraryError, from_liberty

    text = _osu018()
    if damage == "truncated_gz":
        path = tmp_path / "t.lib.gz"
        path.write_bytes(gzip.compress(text.encode())[:300])
    elif damage == "empty":
        path = _liberty(tmp_path, "e", "   \n")
    elif damage == "garbage":
        path = _liberty(tmp_path, "g", "this is not liberty", gz=True)
    else:
        edits = {"no_area": (r"area : [0-9.]+;", "", 1), "negative_area": (r"area : [0-9.]+;", "area : -5;", 3),
                 "nan_leakage": (r"cell_leakage_power : [0-9.]+;", "cell_leakage_power : nan;", 1),
                 "time_unit": (r'time_unit : "1ns"', 'time_unit : "1furlong"', 1),
                 "cap_unit": (r"capacitive_load_unit \(1,\s*pf\)", "capacitive_load_unit (1, qq)", 1),
                 "leak_unit": (r'leakage_power_unit : "1nW"', 'leakage_power_unit : "1nV"', 1),
                 "voltage": (r"nom_voltage : [0-9.]+;", "nom_voltage : -1.8;", 1)}
        pattern, repl, count = edits[damage]
        changed, n = re.subn(pattern, repl, text, count=count)
        assert n, f"the OSU018 library has no {pattern}"
        path = _liberty(tmp_path, damage, changed)
    with pytest.raises(LibraryError, match=fragment):
        from_liberty(path)
    proc = run("synth", "--liberty", path, "--streams", "64", "--k", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("blob, fragment", [
    ({"format": "psum-checkpoint", "version": 1, "meta": {}}, "without weights"),
    ({"format": "psum-checkpoint", "state_dict": {"w": [1, 2]}, "meta": {}}, "is not a tensor"),
    ({"format": "psum-checkpoint", "state_dict": {"w": torch.zeros(1)}, "meta": [1]}, "'meta' must be a dict"),
    ({"format": "psum-checkpoint", "state_dict": {"w": torch.zeros(1)}, "meta": {"model": 5}}, "must be a string"),
    ({"format": "psum-checkpoint", "state_dict": {}, "meta": {}}, "without weights"),
    ([torch.zeros(3)], "neither a psum checkpoint nor a state_dict"),
    ({"w": torch.zeros(2), 3: torch.zeros(1)}, "neither a psum checkpoint nor a state_dict"),
    ({"features.0.weight": torch.zeros(2)}, "does not fit the model"),
])
def test_malformed_checkpoints_are_one_line(tiny, tmp_path, capsys, blob, fragment):
    path = tmp_path / "bad.pt"
    torch.save(blob, path)
    root, _ = tiny
    code, err = cli(capsys, "eval", "lenet5", "--checkpoint", path, "--data-dir", root / "data", "--acc", "e4m7")
    assert_one_line(code, err, fragment)


def test_truncated_or_empty_checkpoint_files(tiny, tmp_path, capsys):
    root, ckpt = tiny
    for name, content in (("trunc.pt", ckpt.read_bytes()[:2000]), ("empty.pt", b""), ("text.pt", b"hello\n")):
        (tmp_path / name).write_bytes(content)
        code, err = cli(capsys, "eval", "lenet5", "--checkpoint", tmp_path / name, "--data-dir", root / "data",
                        "--acc", "e4m7")
        assert_one_line(code, err, "is not a readable checkpoint")


def test_resuming_training_from_a_damaged_partial_is_one_line(tiny, tmp_path, capsys):
    from emulator import checkpoint
    from emulator.models import LeNet5

    root, _ = tiny
    out = tmp_path / "l5.pt"
    config = {"model": "lenet5", "dataset": "cifar10", "epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
              "weight_decay": 5e-4, "warmup": 0.1, "seed": 0, "bf16": True, "limit": None, "checkpoint_every": 200}
    checkpoint.save(tmp_path / "l5.pt.partial", LeNet5().state_dict(), {"train_config": config},
                    training={"optimizer": "garbage"})
    code, err = cli(capsys, "train", "lenet5", "--data-dir", root / "data", "--epochs", "1", "--batch-size", "16",
                    "--out", out, "--quiet")
    assert_one_line(code, err, "cannot be resumed from")
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_folders_that_are_files(tiny, tmp_path, capsys, where):
    (tmp_path / "afile").write_text("keep me")
    out = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "study"
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tiny))
    assert_one_line(*cli(capsys, "study", "--config", spec, "--out", out), "cannot use")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_unwritable_outputs_of_other_commands(tiny, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    root, _ = tiny
    code, err = cli(capsys, "verilog", "-o", tmp_path / "afile" / "mac.v")
    assert_one_line(code, err, "cannot write")
    code, err = cli(capsys, "train", "lenet5", "--data-dir", root / "data", "--epochs", "1", "--batch-size", "32",
                    "--limit", "32", "--out", tmp_path / "afile" / "x.pt", "--quiet")
    assert code == 2 and len(err) == 1 and err[0].startswith("psum: error: "), err


def test_cache_dir_that_is_a_file_is_one_line(tiny, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    root, ckpt = tiny
    env = {**os.environ, "PSUM_CACHE_DIR": str(tmp_path / "cache")}
    proc = run(*eval_args(tiny, "--acc", "e4m7"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "cannot use the cache folder" in proc.stderr and "PSUM_CACHE_DIR" in proc.stderr
    proc = run("synth", "--streams", "64", "--k", "2", env=env)
    assert proc.returncode == 2 and "cannot use the cache folder" in proc.stderr, proc.stderr


def test_a_damaged_compiled_kernel_is_rebuilt_not_loaded(tmp_path):
    """A truncated .so in the cache used to kill the process with SIGBUS."""
    env = {**os.environ, "PSUM_CACHE_DIR": str(tmp_path)}
    probe = ("import torch; from emulator import matmul; "
             "print(matmul(torch.ones(2, 3), torch.ones(3, 2), 'e4m7').sum().item())")
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert first.returncode == 0 and first.stdout.strip() == "12.0", first.stderr
    (lib,) = (tmp_path / "kernels").glob("*.so")
    for damage in (lib.read_bytes()[:4096], b"", b"\x7fELF" + b"\0" * 100):
        lib.write_bytes(damage)
        again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
        assert again.returncode == 0 and again.stdout.strip() == "12.0", again.stderr
        assert lib.stat().st_size > 4096


def test_a_damaged_synthesis_cache_entry_is_resynthesized(tmp_path, monkeypatch):
    from hwgen import IntMAC
    from synth.flow import synthesize

    monkeypatch.setenv("PSUM_CACHE_DIR", str(tmp_path))
    mac = IntMAC(4, 4, "int8")
    fresh = synthesize(mac)
    (entry,) = (tmp_path / "synth").iterdir()
    for name, content in (("result.json", "{trunc"), ("netlist.json", ""), ("result.json", '{"unit": 1}')):
        (entry / name).write_text(content)
        again = synthesize(mac)
        assert not again.cached and again.area_um2 == fresh.area_um2
    assert synthesize(mac).cached


# -- the study spec, checked whole before anything runs ---------------------------------------


@pytest.mark.parametrize("changes, fragment", [
    ({"limit": "0"}, "limit (test images per point, or 'all') must be an integer at least 1, not 0"),
    ({"limit": "-20"}, "must be an integer at least 1, not -20"),
    ({"limit": '"many"'}, "not 'many'"),
    ({"limit": "true"}, "not True"),
    ({"tolerances": "[-0.5]"}, "tolerances are top-1 points in [0, 100)"),
    ({"tolerances": "[nan]"}, "not nan"),
    ({"tolerances": "[inf]"}, "not inf"),
    ({"tolerances": "[]"}, "tolerances must be a non-empty list"),
    ({"tolerances": '["1"]'}, "tolerances are top-1 points"),
    ({"int_width_range": "[32, 8]"}, "2 <= low <= high <= 62, not [32, 8]"),
    ({"int_width_range": "[1, 8]"}, "2 <= low <= high <= 62"),
    ({"int_width_range": "[8, 70]"}, "2 <= low <= high <= 62"),
    ({"int_width_range": "[8]"}, "int_width_range must be two integers"),
    ({"int_width_range": '"8..16"'}, "int_width_range must be two integers"),
    ({"finetune_epochs": "-1"}, "finetune_epochs must be an integer at least 0"),
    ({"finetune_epochs": "1.5"}, "finetune_epochs must be an integer"),
    ({"finetune_steps": "0"}, "finetune_steps must be an integer at least 1"),
    ({"finetune_lr": "0"}, "finetune_lr must be a positive finite number"),
    ({"finetune_lr": "inf"}, "finetune_lr must be a positive finite number"),
    ({"finetune_overflow_penalty": "-1.0"}, "finetune_overflow_penalty must be a finite number at least 0"),
    ({"max_width": "4"}, "max_width 4 leaves no FP candidate with 4 exponent bits"),
    ({"max_width": "3.5"}, "max_width must be an integer"),
    ({"exp_bits": "[9]", "max_width": "12"}, "candidate e9m0"),
    ({"exp_bits": "[4, 4]"}, "exp_bits lists a width twice"),
    ({"exp_bits": "4"}, "exp_bits must be a non-empty list of integers"),
    ({"exp_bits": "[1]"}, "exp_bits must lie in 2..11"),
    ({"mode": '"sat"'}, "starts with ':'"),
    ({"mode": '":bogus"'}, "unknown mode 'bogus'"),
    ({"inputs": '"e4m24"'}, "inputs format e4m24"),
    ({"inputs": '"int8"'}, "inputs must be a floating-point format"),
    ({"inputs": "8"}, "inputs must be a format spec"),
    ({"seed": "-1"}, "seed must be an integer between 0 and"),
    ({"batch_size": "0"}, "batch_size must be an integer at least 1"),
    ({"streams": "10"}, "streams must be an integer at least 64"),
    ({"chunk": "0"}, "chunk must be an integer at least 1"),
    ({"int_bits": "1"}, "int_bits must be an integer between 2 and 16"),
    ({"per_layer": '"no"'}, "per_layer must be true or false"),
    ({"synth": "1"}, "synth must be true or false"),
    ({"sta": '"yes"'}, 'sta must be true, false or "auto"'),
    ({"device": "3"}, "device must be a string"),
    ({"liberty": '""'}, "liberty must be a path"),
    ({"nonsense": "1"}, "unknown keys nonsense"),
    ({"operand_formats": '"e4m3"'}, "operand_formats must be a list of FP formats"),
    ({"operand_formats": '["int8"]'}, "operand_formats must list floating-point formats, not int8"),
    ({"operand_formats": '["e4m3", "e4m3"]'}, "operand_formats lists e4m3 twice"),
    ({"operand_formats": '["e9m"]'}, "operand_formats: invalid format spec 'e9m'"),
    ({"models": "[[models]]\nname = \"lenet5\"\n"}, "[[models]] entry 1 lacks checkpoint"),
    ({"models": "[[models]]\ncheckpoint = \"x.pt\"\n"}, "[[models]] entry 1 lacks name"),
    ({"models": "[[models]]\nname = \"lenet5\"\ncheckpoint = \"x.pt\"\nepochs = 3\n"},
     "[[models]] entry 1 has unknown keys epochs"),
    ({"models": "[[models]]\nname = 3\ncheckpoint = \"x.pt\"\n"}, "unknown model 3"),
    ({"models": "[[models]]\nname = \"vgg\"\ncheckpoint = \"x.pt\"\n"}, "unknown model 'vgg'"),
    ({"models": "[[models]]\nname = \"lenet5\"\ncheckpoint = [1]\n"}, "must be a path"),
    ({"models": "[[models]]\nname = \"lenet5\"\ncheckpoint = \"x.pt\"\ndataset = \"imagenet\"\n"},
     "model lenet5 is trained on cifar10, not 'imagenet'"),
    ({"models": "models = 3\n"}, "models must be one or more [[models]] tables"),
    ({"models": "models = [1]\n"}, "[[models]] entry 1 must be a table"),
    ({"models": "[[models]]\nname = \"lenet5\"\ncheckpoint = \"a.pt\"\n[[models]]\nname = \"lenet5\"\n"
                "checkpoint = \"b.pt\"\n"}, "each model may be listed once"),
    ({"models": "[[models]]\nname = \"lenet5\"\ncheckpoint = \"/nonexistent.pt\"\n"},
     "checkpoint /nonexistent.pt of model lenet5 does not exist"),
    ({"data_dir": '"/nonexistent"'}, "no cifar10 data under /nonexistent"),
    ({"synth": "true", "liberty": '"/nonexistent.lib"'}, "Liberty file /nonexistent.lib does not exist"),
])
def test_bad_study_specs_fail_before_anything_is_written(tiny, tmp_path, capsys, changes, fragment):
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tiny, **changes))
    out = tmp_path / "out"
    assert_one_line(*cli(capsys, "study", "--config", spec, "--out", out), fragment)
    assert not out.exists()


def test_bad_specs_through_the_api(tiny):
    from reports.study import ModelRun, SpecError, StudySpec

    root, ckpt = tiny
    for kwargs in ({"limit": 0}, {"limit": -1}, {"tolerances": [float("nan")]}, {"int_width_range": (32, 8)},
                   {"models": []}, {"models": ["lenet5"]}, {"models": [ModelRun("lenet5", str(ckpt), "imagenet")]},
                   {"max_width": 3}, {"exp_bits": [3, True]}):
        with pytest.raises(SpecError):
            StudySpec(**kwargs)
    assert StudySpec(limit=None).limit is None


def test_limit_all_means_the_whole_split(tiny, tmp_path):
    from reports.study import StudySpec

    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tiny, limit='"all"'))
    assert StudySpec.from_toml(spec).limit is None
    parsed = build_parser().parse_args(["study", "--limit", "all"])
    assert parsed.limit is None


def test_unreachable_scheduler_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    import reports.study

    monkeypatch.setattr(reports.study, "SCHEDULER_TIMEOUT_S", 2)
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tiny))
    for address, fragment in (("tcp://127.0.0.1:9", "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"),
                              ("nonsense", "cannot reach the Dask scheduler at 'nonsense'")):
        assert_one_line(*cli(capsys, "study", "--config", spec, "--out", tmp_path / "out", "--scheduler", address),
                        fragment)
    assert not (tmp_path / "out").exists()


# -- study points keyed by the data they were measured on -------------------------------------


def _spec(tiny, data_dir, **kw):
    from reports.study import ModelRun, StudySpec

    _, ckpt = tiny
    base = dict(models=[ModelRun("lenet5", str(ckpt))], exp_bits=[4], max_width=7, int_width_range=(8, 9),
                tolerances=[5.0], limit=16, per_layer=False, synth=False, data_dir=str(data_dir), batch_size=16,
                screen=0, calibration_seeds=[0], chunk_sizes=[], orders=["im2col"], prediction=False, operand_formats=[])
    return StudySpec(**{**base, **kw})


def _copy_data(tiny, dest, change=None):
    root, _ = tiny
    for split in ("train", "test"):
        with np.load(root / "data" / "cifar10" / f"{split}.npz") as d:
            images, labels = d["images"].copy(), d["labels"].copy()
        if change and change[0] == split:
            images, labels = change[1](images, labels)
        _write_npz(dest / "cifar10", split, images=images, labels=labels)
    return dest


def _relabel(images, labels):
    labels[3] = (labels[3] + 1) % 10
    return images, labels


def _repixel(images, labels):
    images[0, 0, 0, 0] ^= 1
    return images, labels


@pytest.mark.parametrize("change", [("test", _relabel), ("test", _repixel), ("train", _relabel),
                                    ("train", _repixel)])
def test_a_store_made_on_other_data_is_refused(tiny, tmp_path, capsys, change):
    from reports.store import StoreMismatch
    from reports.study import run_study

    root, _ = tiny
    out = tmp_path / "out"
    first = run_study(_spec(tiny, root / "data"), out, log=lambda *_: None)
    rows = sqlite3.connect(out / "results.sqlite").execute("SELECT COUNT(*) FROM points").fetchone()[0]
    other = _copy_data(tiny, tmp_path / "other", change)
    with pytest.raises(StoreMismatch, match="holds results made on other data"):
        run_study(_spec(tiny, other), out, log=lambda *_: None)
    assert sqlite3.connect(out / "results.sqlite").execute("SELECT COUNT(*) FROM points").fetchone()[0] == rows
    assert first["stats"]["computed"] == rows
    # the same content in another folder is the same data: everything is reused
    same = run_study(_spec(tiny, _copy_data(tiny, tmp_path / "copy")), out, log=lambda *_: None)
    assert same["stats"]["computed"] == 0 and same["stats"]["reused"] > 0


def test_point_keys_carry_the_data_fingerprints(tiny, tmp_path):
    from reports.study import run_study

    root, _ = tiny
    results = run_study(_spec(tiny, root / "data"), tmp_path / "out", log=lambda *_: None)
    fingerprints = results["data"]["lenet5"]
    for point in results["points"]:
        assert point["data"]["test"] == fingerprints["test"]
        assert ("calibration" in point["data"]) == (point["policy"]["kind"] == "int")
        if point["policy"]["kind"] == "int":
            assert point["data"]["calibration"]["train"] == fingerprints["train"]
    relabeled = _copy_data(tiny, tmp_path / "other", ("test", _relabel))
    elsewhere = run_study(_spec(tiny, relabeled), tmp_path / "out2", log=lambda *_: None)
    assert elsewhere["data"]["lenet5"]["test"] != fingerprints["test"]
    assert elsewhere["data"]["lenet5"]["train"] == fingerprints["train"]


def test_fingerprints_see_content_not_paths(tmp_path):
    from PIL import Image

    from emulator import data

    a = data.synthetic("cifar10", 10, seed=1)
    b = data.synthetic("cifar10", 10, seed=1)
    assert a.fingerprint() == b.fingerprint() != data.synthetic("cifar10", 10, seed=2).fingerprint()
    as100 = data.ArraySource(a.images.numpy(), a.labels.numpy(), data.DATASETS["cifar100"])
    assert as100.fingerprint() != a.fingerprint()  # other normalization
    for root in (tmp_path / "x", tmp_path / "y"):
        for cls in ("n01", "n02"):
            (root / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(root / cls / "a.png")
    fx = data.ImageFolderSource(tmp_path / "x", data.DATASETS["imagenet"]).fingerprint()
    fy = data.ImageFolderSource(tmp_path / "y", data.DATASETS["imagenet"]).fingerprint()
    assert fx == fy
    Image.new("RGB", (40, 30), (10, 20, 31)).save(tmp_path / "y" / "n02" / "a.png")
    assert data.ImageFolderSource(tmp_path / "y", data.DATASETS["imagenet"]).fingerprint() != fx


def test_report_holds_only_this_runs_points(tiny, tmp_path):
    from reports.study import run_study

    root, _ = tiny
    out = tmp_path / "out"
    run_study(_spec(tiny, root / "data", limit=16), out, log=lambda *_: None)
    second = run_study(_spec(tiny, root / "data", limit=8), out, log=lambda *_: None)
    assert {p["images"]["count"] for p in second["points"]} == {8}
    saved = json.loads((out / "results.json").read_text())
    assert {p["images"]["count"] for p in saved["points"]} == {8}


# -- one study at a time per folder --------------------------------------------------------------


def test_a_second_study_into_a_locked_folder_is_refused(tiny, tmp_path, capsys):
    from reports.store import study_lock

    out = tmp_path / "out"
    out.mkdir()
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(tiny))
    with study_lock(out):
        proc = run("study", "--config", spec, "--out", out)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"another psum study (pid {os.getpid()}) is writing into {out}" in proc.stderr
        assert not (out / "results.sqlite").exists()
    assert main(["study", "--config", str(spec), "--out", str(out)]) == 0  # the lock went with its holder


# -- convert: bare layers and MACs it cannot see ---------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Linear(12, 5), nn.Linear(12, 5, bias=False), nn.Conv2d(3, 4, 3, padding=1),
                                   nn.Conv2d(4, 4, 3, groups=2)])
def test_convert_a_bare_layer_emulates_it(layer):
    from emulator import AccumConfig, EmulatedConv2d, EmulatedLinear, convert
    from emulator.layers import EmulatedConv2d as Conv

    cfg = AccumConfig(acc="e4m3")
    emulated = convert(layer, cfg)
    assert isinstance(emulated, (EmulatedLinear, EmulatedConv2d)) and emulated.config == cfg
    x = torch.randn(2, 12) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 6, 6)
    reference = (EmulatedLinear if isinstance(layer, nn.Linear) else Conv).from_float(layer, cfg)
    assert torch.equal(emulated(x), reference(x))
    assert not torch.equal(emulated(x), layer(x))  # a 4-bit mantissa accumulator is not float
    assert convert(layer, None) is not layer and type(convert(layer, None)) is type(layer)
    with pytest.raises(ValueError, match="policy entries match no layer"):
        from emulator import Policy
        convert(layer, Policy(cfg, {"fc": None}))


def test_convert_refuses_a_bare_unsupported_layer():
    from emulator import convert

    for layer in (nn.Conv1d(3, 3, 3), nn.ConvTranspose2d(3, 3, 3)):
        with pytest.raises(ValueError, match="is not supported by the emulator"):
            convert(layer, "e4m7")


class _Functional(nn.Module):
    """MACs outside layers, of several kinds."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc, self.w = kind, nn.Linear(8, 8), nn.Parameter(torch.randn(8, 8))
        self.head = _Head()

    def forward(self, x):
        x = self.fc(x)
        if self.kind == "matmul_op":
            x = x @ self.w
        elif self.kind == "torch_matmul":
            x = torch.matmul(x, self.w)
        elif self.kind == "linear":
            x = torch.nn.functional.linear(x, self.w)
        elif self.kind == "mm":
            x = x.mm(self.w)
        elif self.kind == "bmm":
            x = torch.bmm(x[None], self.w[None])[0]
        return self.head(x) if self.kind == "einsum" else x


class _Head(nn.Module):
    def forward(self, x):
        return torch.einsum("bi,bj->bij", x, x).sum(-1)


@pytest.mark.parametrize("kind, where", [("matmul_op", "(the model's own forward)"),
                                         ("torch_matmul", "(the model's own forward)"),
                                         ("linear", "(the model's own forward)"), ("mm", "(the model's own forward)"),
                                         ("bmm", "(the model's own forward)"), ("einsum", "head (einsum)")])
def test_convert_warns_by_name_of_macs_it_cannot_see(kind, where):
    from emulator import convert
    from emulator.convert import UnemulatedMACWarning

    model = convert(_Functional(kind), "e4m7")
    x = torch.randn(2, 8)
    with pytest.warns(UnemulatedMACWarning, match="not emulated") as record:
        model(x)
    assert where in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)  # once: the watch ends with the first forward pass
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not model.fc._forward_hooks and not model.fc._forward_pre_hooks


def test_convert_is_quiet_when_every_mac_is_accounted_for():
    from emulator import AccumConfig, Policy, convert
    from emulator.models import LeNet5, ResNet18

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(LeNet5(), "e4m7")(torch.randn(2, 3, 32, 32))
        convert(ResNet18(10, stem="cifar"), Policy(AccumConfig(acc="e5m10"), {"fc": None}))(torch.randn(1, 3, 32, 32))
        convert(_Functional("none"), Policy(AccumConfig(), {"fc": None}))(torch.randn(2, 8))  # kept float on purpose


def test_the_watch_survives_a_failing_first_forward():
    from emulator import convert
    from emulator.convert import UnemulatedMACWarning

    model = convert(_Functional("matmul_op"), "e4m7")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 5))  # wrong width: fails inside fc, before the functional MAC
        torch.matmul(torch.ones(1, 1), torch.ones(1, 1))  # no watch left active outside the model
    with pytest.warns(UnemulatedMACWarning, match="the model's own forward"):
        model(torch.randn(2, 8))  # the first complete pass is watched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 8))


def test_eval_layer_type_selectors_and_fold_bn(tiny, capsys):
    code = main([str(a) for a in eval_args(tiny, "--acc", "e4m7", "--layer", "type:Linear=e5m10", "--fold-bn",
                                           "--no-baselines", "--json")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["fold_bn"] is True
    assert out["results"][0]["policy"].endswith("+ type:Linear=e5m10")
    assert_one_line(*cli(capsys, *eval_args(tiny, "--acc", "e4m7", "--layer", "type:depthwise=e5m10")),
                    "--layer type:depthwise matches no layer of lenet5; its MAC layers are features.0")
    assert_one_line(*cli(capsys, *eval_args(tiny, "--acc", "e4m7", "--layer", "type:dw=e5m10")),
                    "--layer type:dw: unknown layer-type selector; choose from type:Linear")
