"""ONNX import: graphs built with onnx.helper, run by psum's module and by onnxruntime
(the independent oracle), and through the command line."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from onnx import TensorProto, checker, helper, numpy_helper, save

from conftest import image_folder
from emulator import data
from emulator.models import build, is_model_file, label
from emulator.onnx_import import OnnxNet
from emulator.tflite_import import ModelImportError

ort = pytest.importorskip("onnxruntime")


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def cnn(classes=4, extra=None):
    """A CNN on 3x12x12 exercising every kind of node psum takes: convolutions with
    asymmetric pads, SAME_UPPER and groups (depthwise), batch norm, Clip (ReLU6, bounds as
    inputs), LeakyRelu, HardSwish, max and average pooling (count_include_pad 0 and 1),
    Add, Mul, Concat, GlobalAveragePool, Flatten, Gemm (transB), MatMul + Add, Reshape (-1),
    Dropout, Softmax."""
    rng = np.random.default_rng(0)
    inits = [_init("w1", rng.normal(0, 0.3, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
             _init("w2", rng.normal(0, 0.3, (8, 1, 3, 3))),
             _init("bn_s", rng.uniform(0.5, 1.5, 8)), _init("bn_b", rng.normal(0, 0.1, 8)),
             _init("bn_m", rng.normal(0, 0.1, 8)), _init("bn_v", rng.uniform(0.5, 1.5, 8)),
             _init("lo", 0.0), _init("hi", 6.0), _init("w3", rng.normal(0, 0.3, (8, 8, 1, 1))),
             _init("half", 0.5), _init("wg", rng.normal(0, 0.3, (6, 16))), _init("bg", rng.normal(0, 0.1, 6)),
             _init("wm", rng.normal(0, 0.3, (6, classes))), _init("bm", rng.normal(0, 0.1, classes)),
             numpy_helper.from_array(np.array([-1, 6], np.int64), "shape")]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="stem.conv", pads=[0, 0, 1, 1], strides=[2, 2]),  # 12 -> 6
        n("Clip", ["c1", "lo", "hi"], ["r1"]),
        n("Conv", ["r1", "w2"], ["c2"], name="dw", group=8, auto_pad="SAME_UPPER", strides=[1, 1]),
        n("BatchNormalization", ["c2", "bn_s", "bn_b", "bn_m", "bn_v"], ["n2"], epsilon=1e-3),
        n("LeakyRelu", ["n2"], ["l2"], alpha=0.1),
        n("Conv", ["l2", "w3"], ["c3"]),
        n("HardSwish", ["c3"], ["h3"]),
        n("Add", ["h3", "r1"], ["a3"]),
        n("Mul", ["a3", "half"], ["m3"]),
        n("MaxPool", ["m3"], ["p4"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
        n("AveragePool", ["m3"], ["q4"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("AveragePool", ["m3"], ["s4"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        n("Add", ["q4", "s4"], ["u4"]),
        n("Concat", ["p4", "u4"], ["k4"], axis=1),
        n("GlobalAveragePool", ["k4"], ["g5"]),
        n("Flatten", ["g5"], ["f5"]),
        n("Dropout", ["f5"], ["d5"]),
        n("Gemm", ["d5", "wg", "bg"], ["e6"], name="fc1", transB=1),
        n("Relu", ["e6"], ["r6"]),
        n("Reshape", ["r6", "shape"], ["z6"]),
        n("MatMul", ["z6", "wm"], ["mm"], name="fc2"),
        n("Add", ["mm", "bm"], ["y0"]),
        n(extra or "Softmax", ["y0"], ["y"], axis=1) if extra != "Resize" else n("Resize", ["y0"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if extra is None:
        checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    save(cnn(), str(path))
    return path


def test_psum_reads_onnx_as_onnxruntime_runs_it(onnx_file):
    net = OnnxNet.from_file(onnx_file).eval()
    assert [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))] == \
        ["stem_conv", "dw", "conv5", "fc1", "fc2"]
    assert net.dw.groups == 8 and isinstance(net.batchnormalization3, torch.nn.BatchNorm2d)
    x = np.random.default_rng(1).normal(0, 1, (5, 3, 12, 12)).astype(np.float32)
    expect = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 4) and np.allclose(got, expect, rtol=1e-5, atol=1e-6)
    from emulator import AccumConfig, convert

    with torch.no_grad():  # every MAC emulated with an fp32 accumulator and fp32 operands: the same to float precision
        assert np.allclose(convert(net, AccumConfig(acc="fp32", inputs="fp32"))(torch.from_numpy(x)).numpy(), expect, rtol=1e-4, atol=1e-5)


def test_unsupported_and_invalid_onnx_files_are_one_line_errors(tmp_path):
    save(cnn(extra="Resize"), str(tmp_path / "resize.onnx"))
    with pytest.raises(ModelImportError, match=r"operator Resize \(node 22, unnamed\) is not supported"):
        OnnxNet.from_file(tmp_path / "resize.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage that is no protobuf of a model")
    with pytest.raises(ModelImportError, match="is not a valid ONNX file"):
        OnnxNet.from_file(tmp_path / "junk.onnx")
    proc = subprocess.run([sys.executable, "-m", "psum", "eval", str(tmp_path / "resize.onnx"), "--dataset", "cifar10"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "operator Resize" in proc.stderr and "Traceback" not in proc.stderr


def test_an_onnx_file_through_the_command_line(onnx_file, tmp_path):
    image_folder(tmp_path / "d", ("train", "test"), classes=4, per_class=3, size=12, seed=2)
    assert is_model_file(str(onnx_file)) and label(str(onnx_file)) == "cnn"
    model, _ = build(str(onnx_file), data.folder_dataset(tmp_path / "d"))
    assert model.fc2.out_features == 4
    run = lambda *a: subprocess.run([sys.executable, "-m", "psum", *a], capture_output=True, text=True)  # noqa: E731
    listed = run("models", str(onnx_file), "--dataset", str(tmp_path / "d"))
    assert listed.returncode == 0 and "cnn on folder d (12x12, 4 classes): 5 MAC layers" in listed.stdout
    assert "| dw | Conv2d 3x3 depthwise | 9 |" in listed.stdout, listed.stdout
    ev = run("eval", str(onnx_file), "--dataset", str(tmp_path / "d"), "--acc", "e5m10", "--int-acc", "int16",
             "--calib-batches", "1", "--quiet")  # ONNX: the INT side calibrates on the training split
    assert ev.returncode == 0 and "| acc=e5m10 inputs=bf16 |" in ev.stdout and "| int8xint8 acc=int16 |" in ev.stdout, \
        ev.stdout + ev.stderr
