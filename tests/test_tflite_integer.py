"""The integer reading of TFLite networks (docs/semantics.md §10): TFLite's fixed-point
arithmetic in the golden model against exact rational arithmetic, the emulator's
vectorized form against the golden model, and whole networks against LiteRT's
reference kernels (the TFLite interpreter, bit for bit at int32) on uint8 and int8
networks the test writes itself and, where ../shared/models exists, the published ones."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from emulator.fixed_point import average, rescale
from emulator.tflite_import import ModelImportError, TFLiteIntNet, _exact_accumulator, _stepwise_accumulator
from psum import golden
from test_tflite_import import IMAGENET, MODELS, RELU, RELU6, SAME, VALID, Writer, UINT8, INT8, INT32

litert = pytest.importorskip("ai_edge_litert.interpreter")


# -- the golden model against exact arithmetic -------------------------------------------------------


def _nearest_away(x: Fraction) -> int:
    """Round to nearest, ties away from zero, of an exact rational."""
    n = abs(x)
    r = int(n) + (1 if n - int(n) >= Fraction(1, 2) else 0)
    return r if x >= 0 else -r


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_multiplier_is_the_scale_to_31_bits(real):
    m0, shift = golden.tflite_multiplier(real)
    if shift == -31 or m0 == 0:
        return
    assert 2**30 <= m0 < 2**31
    assert abs(Fraction(m0, 2**31) * Fraction(2) ** shift - Fraction(real)) <= Fraction(2) ** (shift - 32)


@given(st.integers(-(2**31), 2**31 - 1), st.integers(2**30, 2**31 - 1), st.integers(-31, 0))
def test_rescale_is_two_roundings_to_nearest(x, m0, shift):
    high = math.floor(Fraction(x * m0, 2**31) + Fraction(1, 2))  # SRDHM: ties toward +Inf
    assert golden.tflite_rescale(x, m0, shift) == _nearest_away(Fraction(high, 2**-shift))  # ties away from 0


@given(st.integers(-(2**31), 2**31 - 1), st.integers(2**30, 2**31 - 1), st.integers(-31, 30))
def test_single_rounding_is_one_rounding_to_nearest_ties_up(x, m0, shift):
    exact = Fraction(x * m0, 2**31) * Fraction(2) ** shift
    assert golden.tflite_rescale(x, m0, shift, single=True) == math.floor(exact + Fraction(1, 2))


@given(st.integers(-(2**20), 2**20), st.integers(1, 64))
def test_average_rounds_to_nearest_away(total, count):
    assert golden.tflite_average(total, count) == _nearest_away(Fraction(total, count))


def test_activation_ranges_and_directed_cases():
    assert golden.tflite_activation_range("relu6", 0.0235, 0, 0, 255) == (0, 255)  # 6 / 0.0235 = 255.3
    assert golden.tflite_activation_range("relu6", 0.05, 3, 0, 255) == (3, 123)
    assert golden.tflite_activation_range("relu", 0.1, -5, -128, 127) == (-5, 127)
    assert golden.tflite_activation_range("relu_n1_to_1", 0.1, 0, -128, 127) == (-10, 10)
    assert golden.tflite_activation_range(None, 0.1, 0, 0, 255) == (0, 255)
    assert golden.tflite_multiplier(0.5) == (2**30, 0) and golden.tflite_multiplier(0.0) == (0, 0)
    assert golden.tflite_multiplier(1 - 2**-40) == (2**30, 1)  # rounds up to 2^31: halved, shift + 1
    assert golden.tflite_rescale(-2**31, 2**31 - 1, 0) == -(2**31 - 1)
    assert golden.tflite_rescale(-1, 2**30, 0) == 0 and golden.tflite_rescale(1, 2**30, 0) == 1  # -+0.5: ties up
    assert golden.tflite_rescale(3, 2**30, -1) == 1 and golden.tflite_rescale(-3, 2**30, -1) == -1  # +-0.75
    assert golden.tflite_rescale(2, 2**30, -1) == 1 and golden.tflite_rescale(-2, 2**30, -1) == -1  # +-0.5: away
    assert golden.tflite_rescale(5, 2**30, -2) == 1 and golden.tflite_rescale(-6, 2**30, -2) == -1  # 0.75, -0.75
    for bad in ((2**31, 2**30, 1), (1, -1, 0), (1, 2**30, 31)):
        with pytest.raises(ValueError):
            golden.tflite_rescale(*bad)


def test_vectorized_rescale_and_average_are_the_golden_model():
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**31), 2**31, 4000)
    x[:8] = [-(2**31), 2**31 - 1, 0, 1, -1, 3, -3, 2**20]
    m = rng.integers(2**30, 2**31, 4000)
    s = rng.integers(-31, 1, 4000)
    got = rescale(torch.tensor(x), torch.tensor(m), torch.tensor(s)).tolist()
    assert got == [golden.tflite_rescale(int(a), int(b), int(c)) for a, b, c in zip(x, m, s)]
    small = rng.integers(-(2**12), 2**12, 500)
    shifts = rng.integers(0, 6, 500)
    got = rescale(torch.tensor(small), 2**30 + 12345, torch.tensor(shifts)).tolist()
    assert got == [golden.tflite_rescale(int(a), 2**30 + 12345, int(b)) for a, b in zip(small, shifts)]
    got = rescale(torch.tensor(x), torch.tensor(m), torch.tensor(s), single=True).tolist()
    assert got == [golden.tflite_rescale(int(a), int(b), int(c), single=True) for a, b, c in zip(x, m, s)]
    totals, counts = rng.integers(-5000, 5000, 500), rng.integers(1, 10, 500)
    assert average(torch.tensor(totals), torch.tensor(counts)).tolist() == \
        [golden.tflite_average(int(a), int(b)) for a, b in zip(totals, counts)]


# -- whole networks against LiteRT's reference kernels -----------------------------------------------


def quantized_network(kind: str, seed: int = 0) -> bytes:
    """A valid quantized TFLite network on 10x10 RGB, as TFLite's converter lays them out:
    ``uint8`` (per-tensor weights with zero points, as the published MobileNets) or
    ``int8`` (per-channel symmetric weights): conv 3x3/2 SAME + ReLU6, depthwise 3x3 x2
    SAME + ReLU, 1x1 conv, ADD (other scales) + ReLU, average pool 2x2/2 SAME, reshape,
    fully connected, softmax."""
    rng = np.random.default_rng(seed)
    unsigned = kind == "uint8"
    act_type = UINT8 if unsigned else INT8
    w = Writer()

    def act(name, shape, scale, zero):
        return w.tensor(name, shape, act_type, scale=scale, zero=zero if unsigned else zero - 128)

    def layer(name, shape, axis, in_scale):
        """Weights (and the bias of their output channels, scale s_in * s_w as TFLite wants it)."""
        out = shape[axis]
        if unsigned:
            scale, zero = np.float32(rng.uniform(0.004, 0.02)), int(rng.integers(100, 156))
            q = rng.integers(0, 256, shape).astype(np.uint8)
            wt = w.tensor(name, shape, UINT8, q, scale, zero)
            bias_scale = np.float32(np.float32(in_scale) * scale)
        else:
            scale = rng.uniform(0.004, 0.02, out).astype(np.float32)
            q = rng.integers(-127, 128, shape).astype(np.int8)
            wt = w.tensor(name, shape, INT8, q, scale, np.zeros(out, np.int64), axis)
            bias_scale = (np.float64(in_scale) * scale.astype(np.float64)).astype(np.float32)
        bias = rng.integers(-3000, 3000, out).astype(np.int32)
        bt = w.tensor(name + "_bias", [out], INT32, bias, bias_scale, np.zeros(np.size(bias_scale), np.int64))
        return wt, bt

    x = act("input", [1, 10, 10, 3], 1 / 128, 128)
    c1 = act("c1", [1, 5, 5, 4], 0.04, 0)
    w.op("CONV_2D", [x, *layer("w1", [4, 3, 3, 3], 0, 1 / 128)], [c1], {"padding": SAME, "stride": 2, "act": RELU6})
    d2 = act("d2", [1, 5, 5, 8], 0.05, 0)
    w.op("DEPTHWISE_CONV_2D", [c1, *layer("w2", [1, 3, 3, 8], 3, 0.04)], [d2],
         {"padding": SAME, "stride": 1, "multiplier": 2, "act": RELU})
    p3 = act("p3", [1, 5, 5, 8], 0.11, 120)
    w.op("CONV_2D", [d2, *layer("w3", [8, 1, 1, 8], 0, 0.05)], [p3], {"padding": VALID, "stride": 1})
    a4 = act("a4", [1, 5, 5, 8], 0.07, 10)
    w.op("ADD", [d2, p3], [a4], {"act": RELU})
    g5 = act("g5", [1, 3, 3, 8], 0.07, 10)
    w.op("AVERAGE_POOL_2D", [a4], [g5], {"padding": SAME, "stride": 2, "filter": 2})
    r6 = act("r6", [1, 72], 0.07, 10)
    w.op("RESHAPE", [g5, w.tensor("shape", [2], INT32, np.array([1, 72], np.int32))], [r6])
    f7 = act("f7", [1, 6], 0.09, 131)
    w.op("FULLY_CONNECTED", [r6, *layer("w7", [6, 72], 0, 0.07)], [f7])
    out = act("out", [1, 6], 1 / 256, 0)
    w.op("SOFTMAX", [f7], [out], {"beta": 1.0})
    return w.finish([x], [out])


def reference(path, pixels: np.ndarray, tensor: int) -> np.ndarray:
    """The integer values of ``tensor`` for each image, from LiteRT's reference kernels."""
    it = litert.Interpreter(str(path), experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
                            experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    index = it.get_input_details()[0]["index"]
    rows = []
    for image in pixels:
        it.set_tensor(index, image[None])
        it.invoke()
        rows.append(it.get_tensor(tensor).reshape(-1).astype(np.int64))
    return np.stack(rows)


def psum_integers(net: TFLiteIntNet, x: torch.Tensor) -> np.ndarray:
    """The stored integers of the network's output (its logits) for float inputs ``x``."""
    out = net.graph.tensors[net.output]
    with torch.no_grad():
        logits = net(x).double().numpy()
    return np.round(logits / float(out.scale[0]) + int(out.zero_point[0])).astype(np.int64)


def float_inputs(net: TFLiteIntNet, pixels: np.ndarray) -> torch.Tensor:
    """Float images (NCHW) that the network quantizes back to ``pixels`` (NHWC)."""
    real = (pixels.astype(np.float64) - net.input_zero) * net.input_scale
    return torch.from_numpy(real).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("kind", ["uint8", "int8"])
def test_int32_is_tflites_reference_kernels_bit_for_bit(tmp_path, kind):
    path = tmp_path / f"{kind}.tflite"
    path.write_bytes(quantized_network(kind))
    net = TFLiteIntNet.from_file(path)
    low, high = net.input_range
    pixels = np.random.default_rng(1).integers(low, high + 1, (40, 10, 10, 3)).astype(np.uint8 if kind == "uint8"
                                                                                        else np.int8)
    mine = psum_integers(net, float_inputs(net, pixels))
    theirs = reference(path, pixels, net.output)
    assert np.array_equal(mine, theirs)
    assert len(np.unique(theirs)) > 20  # the outputs vary: the check has teeth
    for order in ("im2col", "nhwc"):  # a wrapping int32 accumulator: any order, the same bits
        assert np.array_equal(psum_integers(TFLiteIntNet.from_file(path, order=order, chunk=7), float_inputs(
            net, pixels)), theirs)


def test_narrow_accumulators_are_the_golden_integer_mac(tmp_path):
    path = tmp_path / "uint8.tflite"
    path.write_bytes(quantized_network("uint8"))
    for acc, order in (("int12", "im2col"), ("int13:sat", "im2col"), ("int13:sat", "nhwc"), ("int11:sat", "nhwc")):
        net = TFLiteIntNet.from_file(path, acc=acc, order=order)
        layer, cfg = net.int_layers["conv0"], net.config("conv0")
        a = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 3, 10, 10))) - layer.input_zero
        from emulator.tflite_import import _pad_same

        a = _pad_same(a, layer.kernel, layer.stride)
        got = _stepwise_accumulator(a, layer, cfg)
        exact = _exact_accumulator(a, layer, cfg)
        assert exact is None or torch.equal(exact, got)
        w = layer.weight.reshape(4, 3, 3, 3)  # O, C, kh, kw
        for (n, o, i, j) in [(0, 0, 0, 0), (1, 3, 2, 4), (0, 2, 4, 1)]:
            patch = a[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            wo = w[o]
            if order == "nhwc":
                terms_a, terms_w = patch.permute(1, 2, 0).reshape(-1), wo.permute(1, 2, 0).reshape(-1)
            else:
                terms_a, terms_w = patch.reshape(-1), wo.reshape(-1)
            expect = golden.int_dot([1, *terms_a.tolist()], [int(layer.bias[o]), *terms_w.tolist()], acc=acc)
            assert int(got[n, o, i, j]) == expect, (acc, order, n, o, i, j)


@pytest.mark.parametrize("acc, chunk", [("int11:sat", None), ("int10", 4), ("int12:sat", 3), ("int9:sat", 20)])
def test_depthwise_steps_are_the_golden_integer_mac(tmp_path, acc, chunk):
    from emulator.tflite_import import _pad_same

    path = tmp_path / "int8.tflite"
    path.write_bytes(quantized_network("int8"))
    net = TFLiteIntNet.from_file(path, acc=acc, chunk=chunk, chunk_acc="int13:sat")
    layer, cfg = net.int_layers["dw1"], net.config("dw1")  # 4 channels x2, 3x3
    a = _pad_same(torch.from_numpy(np.random.default_rng(6).integers(-128, 128, (2, 4, 5, 5))), (3, 3), (1, 1))
    got = _stepwise_accumulator(a, layer, cfg)
    w = layer.weight.reshape(8, 3, 3)
    for n, o, i, j in [(0, 0, 0, 0), (1, 7, 4, 4), (0, 5, 2, 3), (1, 2, 1, 0)]:
        terms = a[n, o // 2, i:i + 3, j:j + 3].reshape(-1).tolist()
        expect = golden.int_dot([1, *terms], [int(layer.bias[o]), *w[o].reshape(-1).tolist()], acc=acc,
                                chunk=chunk, chunk_acc="int13:sat")
        assert int(got[n, o, i, j]) == expect, (n, o, i, j)


def test_wrapping_narrow_accumulators_take_one_exact_sum_and_agree_with_the_steps(tmp_path):
    path = tmp_path / "int8.tflite"
    path.write_bytes(quantized_network("int8"))
    for name in ("conv0", "dw1", "conv2", "fc6"):
        net = TFLiteIntNet.from_file(path, acc="int10")
        layer, cfg = net.int_layers[name], net.config(name)
        rng = np.random.default_rng(3)
        if name == "fc6":
            a = torch.from_numpy(rng.integers(-128, 128, (5, 72)))
        else:
            channels = {"conv0": 3, "dw1": 4, "conv2": 8}[name]
            a = torch.from_numpy(rng.integers(-128, 128, (3, channels, 7, 7)))
        exact = _exact_accumulator(a, layer, cfg)
        assert exact is not None and torch.equal(exact, _stepwise_accumulator(a, layer, cfg)), name


def test_per_layer_accumulators_and_errors(tmp_path):
    from emulator import IntAccumConfig, Policy

    path = tmp_path / "uint8.tflite"
    path.write_bytes(quantized_network("uint8"))
    net = TFLiteIntNet.from_policy(path, Policy(IntAccumConfig(acc="int32"), {"type:depthwise": IntAccumConfig(
        acc="int14:sat"), "fc*": IntAccumConfig(acc="int20")}))
    assert {n: str(net.config(n).acc) for n in net.int_layers} == \
        {"conv0": "int32", "dw1": "int14:sat", "conv2": "int32", "fc6": "int20"}
    from emulator import AccumConfig

    with pytest.raises(ModelImportError, match="layer fc6 would get .*e5m10.*integer accumulator in every layer"):
        TFLiteIntNet.from_policy(path, Policy(IntAccumConfig(acc="int32"), {"fc6": AccumConfig(acc="e5m10")}))
    with pytest.raises(ModelImportError, match="has no layer conv9"):
        TFLiteIntNet.from_file(path, layers={"conv9": "int16"})
    from test_tflite_import import small_network

    (tmp_path / "mixed.tflite").write_bytes(small_network()[0])  # float-reading test network: its softmax input
    TFLiteIntNet.from_file(tmp_path / "mixed.tflite")  # is quantized too; built without error


@pytest.mark.skipif(not MODELS.is_dir() or not IMAGENET.is_dir(), reason="needs ../shared (real MobileNets, ImageNet)")
@pytest.mark.parametrize("stem", ["mobilenet_v1_0.25_128_quant", "mobilenet_v2_1.0_224_quant"])
def test_published_mobilenets_at_int32_are_tflite_bit_for_bit(stem):
    from emulator import data
    from emulator.tflite_import import TFLiteNet

    path = MODELS / f"{stem}.tflite"
    net = TFLiteIntNet.from_file(path)
    source = data.load(data.folder_dataset(IMAGENET, **TFLiteNet.from_file(path).preprocessing), "test")
    x, _ = next(source.batches(6, indices=[0, 9, 12, 400, 800, 1299]))
    pixels = torch.round(x.double() / net.input_scale + net.input_zero).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    theirs = reference(path, pixels, net.output)
    assert net.drop_background and theirs.shape == (6, 1001)
    assert np.array_equal(psum_integers(net, x), theirs[:, 1:])


def test_operand_streams_are_the_integer_networks_own_operands(tmp_path):
    path = tmp_path / "uint8.tflite"
    path.write_bytes(quantized_network("uint8"))
    net = TFLiteIntNet.from_file(path)
    pixels = np.random.default_rng(4).integers(0, 256, (12, 10, 10, 3)).astype(np.uint8)
    x = float_inputs(net, pixels)
    for name in ("conv0", "conv2", "fc6"):
        a, b = net.operand_streams(name, x, 64, seed=1)
        layer = net.int_layers[name]
        assert a.dtype == np.uint64 and a.shape == b.shape == (64, layer.weight.shape[1])
        signed = lambda v: np.where(v >= 256, v.astype(np.int64) - 512, v.astype(np.int64))  # noqa: E731
        sa, sb = signed(a), signed(b)
        assert sa.min() >= -255 and sa.max() <= 255 and sb.min() >= -255 and sb.max() <= 255
        # every stream's weights are one output channel's, in the layer's im2col order
        rows = {tuple(r) for r in layer.weight.tolist()}
        assert all(tuple(r) in rows for r in sb.tolist())
    with pytest.raises(ValueError, match="grouped or depthwise"):
        net.operand_streams("dw1", x, 8)


def test_a_study_of_a_tflite_network_reads_it_both_ways(tmp_path):
    """FP points on the float reading, INT points on the integer reading (no calibration,
    no training split needed), MACs costed with the file's 9-bit operands."""
    from conftest import image_folder
    from reports.spec import ModelRun, StudySpec
    from reports.study import run_study

    path = tmp_path / "uint8.tflite"
    path.write_bytes(quantized_network("uint8"))
    image_folder(tmp_path / "d", ("val",), classes=6, per_class=8, size=10, seed=5)
    spec = StudySpec(models=[ModelRun("small", str(path), str(tmp_path / "d"), factory=str(path))],
                     exp_bits=[4], max_width=10, int_width_range=(12, 16), chunk_sizes=[], orders=["im2col"],
                     prediction=False, per_layer=True, screen=0, streams=64, calibration_seeds=[0, 1], operand_formats=[])
    results = run_study(spec, tmp_path / "out", log=lambda *_: None)
    found = results["models"]["small"]
    assert set(found["int"]) == {"wrap seed 0", "sat seed 0"}  # one reference: the file's scales
    assert results["data"]["small"]["train"].startswith("none")
    int32 = found["baselines"]["int8_int32acc_seed0"]
    net = TFLiteIntNet.from_file(path)
    from emulator import data
    from emulator.evaluate import evaluate

    source = data.load(data.folder_dataset(tmp_path / "d", image_size=10, mean=[128 / 255] * 3,
                                           std=[128 / 255] * 3), "test")
    assert int32["top1"] == evaluate(net, source, batch_size=16).top1  # the integer reading, as eval gives it
    macs = {h["unit"] for h in found["hardware"]}
    assert "IntMAC a=int9 b=int9 acc=int32" in macs and any(u.startswith("FloatMAC") for u in macs)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "INT points its integer reading" in report
    assert "INT MACs take int9 operands (the file's stored values minus their zero points)" in report
