"""Emulated layers and model conversion."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import emulator.layers
from emulator import (AccumConfig, EmulatedConv2d, EmulatedLinear, IntAccumConfig, Policy,
                      calibrate, convert)
from emulator.layers import symmetric_quantize
from emulator.matmul import matmul_reference
from emulator.models import LeNet5
from psum import golden
from psum.formats import parse

WIDE = AccumConfig(acc="fp32", inputs="fp32")


def test_linear_with_a_wide_format_is_float_linear():
    torch.manual_seed(0)
    lin = nn.Linear(50, 7)
    x = torch.randn(4, 3, 50)
    emu = EmulatedLinear.from_float(lin, WIDE)
    assert torch.allclose(emu(x), lin(x), rtol=1e-5, atol=1e-6)


def test_linear_adds_the_bias_in_fp32_after_accumulation():
    torch.manual_seed(1)
    lin = nn.Linear(20, 5)
    x = torch.randn(6, 20)
    cfg = AccumConfig(acc="e4m3")
    emu = EmulatedLinear.from_float(lin, cfg)
    acc = matmul_reference(x, lin.weight.detach().t(), cfg).float()
    assert torch.equal(emu(x), acc + lin.bias.detach())


def conv_terms(x, weight, oc, oy, ox, stride, padding, dilation, order):
    """The K terms of one conv output, in the given order, built by plain indexing."""
    c_in, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    xp = F.pad(x, (padding, padding, padding, padding))
    index = [(c, i, j) for c in range(c_in) for i in range(kh) for j in range(kw)]
    if order == "nhwc":
        index = [(c, i, j) for i in range(kh) for j in range(kw) for c in range(c_in)]
    acts = [xp[0, c, oy * stride + i * dilation, ox * stride + j * dilation].item() for c, i, j in index]
    weights = [weight[oc, c, i, j].item() for c, i, j in index]
    return acts, weights


@pytest.mark.parametrize("order", ["im2col", "nhwc"])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv_accumulates_in_the_documented_order(order, stride, padding, dilation):
    """Every output element equals psum.golden.dot over the terms in that order."""
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 2, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(1, 3, 6, 6)
    cfg = AccumConfig(acc="e4m3", inputs="bf16", order=order)
    out = EmulatedConv2d.from_float(conv, cfg)(x)
    bf16, e4m3 = parse("bf16"), parse("e4m3")
    for oc in range(out.shape[1]):
        for oy in range(out.shape[2]):
            for ox in range(out.shape[3]):
                acts, weights = conv_terms(x, conv.weight.detach(), oc, oy, ox, stride, padding, dilation, order)
                want = e4m3.decode(golden.dot([bf16.encode(v) for v in acts], [bf16.encode(v) for v in weights],
                                              acc=e4m3, inputs=bf16))
                assert Fraction(out[0, oc, oy, ox].item()) == Fraction(want)


@pytest.mark.parametrize("kwargs", [dict(stride=1, padding=1), dict(stride=2, padding=0, dilation=2),
                                    dict(groups=2, padding=1), dict(groups=4, bias=False),
                                    dict(stride=(1, 2), padding=(2, 1))])
def test_conv_with_a_wide_format_is_float_conv(kwargs):
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 8, 3, **kwargs)
    x = torch.randn(2, 4, 9, 11)
    emu = EmulatedConv2d.from_float(conv, WIDE)
    assert torch.allclose(emu(x), conv(x), rtol=1e-5, atol=1e-5)
    nhwc = EmulatedConv2d.from_float(conv, AccumConfig(acc="fp32", inputs="fp32", order="nhwc"))
    assert torch.allclose(nhwc(x), conv(x), rtol=1e-5, atol=1e-5)


def test_conv_rejects_what_it_does_not_emulate():
    with pytest.raises(ValueError, match="layer stem: padding_mode='reflect' is not supported"):
        EmulatedConv2d.from_float(nn.Conv2d(3, 3, 3, padding_mode="reflect", padding=1), WIDE, name="stem")
    with pytest.raises(ValueError, match="padding='same' is not supported"):
        EmulatedConv2d.from_float(nn.Conv2d(3, 3, 3, padding="same"), WIDE)


def test_lenet5_wide_reproduces_float_logits_and_narrow_matches_reference(monkeypatch):
    torch.manual_seed(4)
    model = LeNet5().eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(convert(model, WIDE)(x), logits, rtol=1e-4, atol=1e-6)
        narrow = convert(model, Policy(AccumConfig(acc="e4m5"), {"classifier.*": AccumConfig(acc="e5m3", chunk=8)}))
        out = narrow(x)
        assert not torch.allclose(out, logits, rtol=1e-3, atol=1e-3)  # the format matters
        # The same network with every layer's dot products from the reference k-loop.
        monkeypatch.setattr(emulator.layers, "emulated_matmul",
                            lambda a, b, cfg: matmul_reference(a, b, cfg).to(a.dtype))
        assert torch.equal(narrow(x), out)


def test_convert_policy_resolution_and_copy():
    model = LeNet5()
    policy = Policy(AccumConfig(acc="e4m7"), {
        "classifier.5": None,                          # keep the last layer in float
        "classifier.*": AccumConfig(acc="e5m10"),
        "features.3": AccumConfig(acc="e3m4", chunk=4),
    })
    new = convert(model, policy)
    assert isinstance(model.features[0], nn.Conv2d)  # the original is untouched
    assert new.features[0].config.acc == parse("e4m7")
    assert new.features[3].config == AccumConfig(acc="e3m4", chunk=4)
    assert new.classifier[1].config.acc == parse("e5m10")
    assert type(new.classifier[5]) is nn.Linear
    assert convert(model, "e4m7").features[0].config == AccumConfig(acc="e4m7")


def test_convert_errors_name_the_problem():
    with pytest.raises(ValueError, match="policy entries match no layer of the model: feature.0"):
        convert(LeNet5(), Policy(layers={"feature.0": AccumConfig()}))
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"^layer 0 \(Conv1d\) is not supported by the emulator"):
        convert(model, "e4m7")
    kept = convert(model, Policy(layers={"0": None}))
    assert type(kept[0]) is nn.Conv1d and isinstance(kept[2], EmulatedLinear)
    with pytest.raises(TypeError, match="policy must be"):
        convert(model, 3)


def test_hooks_device_and_mode_survive_the_swap():
    model = LeNet5()
    calls = []
    model.classifier[1].register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    model.eval()
    new = convert(model, "e4m7")
    new(torch.randn(1, 3, 32, 32))
    assert calls == ["EmulatedLinear"]
    assert new.classifier[1].weight.device == model.classifier[1].weight.device
    assert not new.training and not new.classifier[1].training


def test_integer_layers_dequantize_an_exact_int_dot_product():
    torch.manual_seed(5)
    lin = nn.Linear(30, 4)
    model = nn.Sequential(lin)
    calib = [torch.randn(8, 30)]
    emu = calibrate(convert(model, IntAccumConfig(acc="int32")), calib)
    layer = emu[0]
    absmax = calib[0].abs().max()
    assert torch.allclose(layer.act_scale, absmax / 127)
    x = torch.randn(3, 30)
    w_scale = lin.weight.detach().abs().amax(dim=1) / 127
    a_int = symmetric_quantize(x, layer.act_scale, 8).double()
    w_int = symmetric_quantize(lin.weight.detach(), w_scale[:, None], 8).double()
    want = ((a_int @ w_int.t()).float() * (layer.act_scale * w_scale)) + lin.bias.detach()
    assert torch.equal(emu(x), want)
    assert torch.allclose(emu(x), lin(x), atol=0.05)
    # A narrow wrapping accumulator changes the result; a wide one does not.
    narrow = calibrate(convert(model, IntAccumConfig(acc="int10")), calib)
    assert not torch.allclose(narrow(x), emu(x))


@pytest.mark.parametrize("acc, order, conv, chunk", [
    ("int32", "im2col", dict(kernel_size=3, padding=1), None),
    ("int12", "im2col", dict(kernel_size=3, stride=2, padding=1), None),  # wraps; stride leaves pixels out
    ("int12", "nhwc", dict(kernel_size=(3, 2), dilation=2, groups=2), None),
    ("int20:sat", "im2col", dict(kernel_size=2, groups=4), None),  # cannot saturate: one exact sum
    ("int12:sat", "im2col", dict(kernel_size=3, padding=(1, 2)), None),  # may saturate: the step-by-step kernel
    ("int12:sat", "nhwc", dict(kernel_size=3, stride=(2, 1), dilation=(1, 2), groups=2), None),
    ("int10", "im2col", dict(kernel_size=3, padding=1), 5),  # chunks: step by step
    ("int16", "nhwc", dict(kernel_size=1, bias=False), None),
])
def test_the_cpu_integer_conv_gives_the_generic_paths_bits(acc, order, conv, chunk, monkeypatch):
    """The CPU conv's integer path (quantize before a strided im2col, a matmul per group:
    one exact sum, or the integer kernel step by step) against the generic path (im2col
    of the float input, quantized columns, the layer's dot) on the same calibrated layer."""
    import emulator.layers as layers

    torch.manual_seed(7)
    layer, calib = nn.Conv2d(8, 12, **conv), [torch.randn(4, 8, 9, 9)]
    cfg = IntAccumConfig(acc=acc, order=order, chunk=chunk)
    emu = calibrate(convert(nn.Sequential(layer), cfg), calib)
    x = torch.randn(3, 8, 9, 9) * 1.5  # beyond the calibration range: clamped integers
    exact = []
    original = layers.exact_int_sum
    monkeypatch.setattr(layers, "exact_int_sum", lambda *args: exact.append(original(*args)) or exact[-1])
    fast = emu(x)
    stepwise = acc == "int12:sat" or chunk is not None
    assert (exact == []) == stepwise and None not in exact
    monkeypatch.setattr(EmulatedConv2d, "_int_forward_cpu", lambda self, *args: None)
    assert torch.equal(fast, emu(x))
    if acc == "int12":
        wide = calibrate(convert(nn.Sequential(layer), IntAccumConfig(acc="int32", order=order)), calib)
        assert not torch.equal(fast, wide(x)), "int12 wraps here"


def test_integer_layers_need_calibration():
    emu = convert(nn.Sequential(nn.Linear(3, 2)), IntAccumConfig())
    with pytest.raises(RuntimeError, match="integer layer 0 has no activation scale"):
        emu(torch.randn(1, 3))


def test_configs_check_their_values():
    with pytest.raises(ValueError, match="chunk must be a positive integer or None, not 0"):
        AccumConfig(chunk=0)
    with pytest.raises(ValueError, match="order must be one of 'im2col', 'nhwc', not 'nchw'"):
        AccumConfig(order="nchw")
    with pytest.raises(ValueError, match="acc must be an integer format, not e4m7"):
        IntAccumConfig(acc="e4m7")
    with pytest.raises(ValueError, match="weight_bits must be an integer between 2 and 16"):
        IntAccumConfig(weight_bits=20)
    assert AccumConfig(acc="e4m7").weights == parse("bf16")
    assert hash(AccumConfig(acc="e4m7")) == hash(AccumConfig(acc=parse("e4m7")))


class MarkedConv(nn.Conv2d):
    """A subclass that keeps Conv2d's forward: emulated as a Conv2d."""


class StandardizedConv(nn.Conv2d):
    """A subclass with MACs of its own (weight standardization in forward)."""

    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True))
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_convert_swaps_subclasses_that_keep_the_base_forward():
    torch.manual_seed(2)
    model = nn.Sequential(MarkedConv(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    new = convert(model, "e4m7")
    assert isinstance(new[0], EmulatedConv2d) and isinstance(new[2], EmulatedLinear)
    x = torch.randn(2, 3, 8, 8)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    plain.load_state_dict(model.state_dict())
    assert torch.equal(new(x), convert(plain, "e4m7")(x))
    assert isinstance(convert(MarkedConv(3, 4, 3), "e4m7"), EmulatedConv2d)


@pytest.mark.parametrize("layer, base", [(StandardizedConv(3, 4, 3), "Conv2d"), (ScaledLinear(4, 4), "Linear")])
def test_convert_refuses_subclasses_with_their_own_forward_by_name(layer, base):
    model = nn.Sequential(nn.Identity(), layer)
    with pytest.raises(ValueError, match=rf"^layer 1: {type(layer).__name__} subclasses nn.{base} but defines its "
                                         r"own forward"):
        convert(model, "e4m7")
    kept = convert(model, Policy(AccumConfig(acc="e4m7"), {"1": None}))
    assert type(kept[1]) is type(layer)
    with pytest.raises(ValueError, match=rf"^layer \(the model\): {type(layer).__name__} subclasses"):
        convert(layer, "e4m7")


def depthwise_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                         nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, groups=4), nn.Flatten(), nn.LazyLinear(4))


def test_policy_type_selectors_pick_layers_by_kind():
    model = depthwise_net()
    model(torch.randn(1, 3, 6, 6))  # materialize the lazy layer
    policy = Policy(AccumConfig(acc="e4m7"), {"type:depthwise": AccumConfig(acc="e5m10"),
                                              "type:pointwise": AccumConfig(acc="e4m3"),
                                              "type:grouped": None,
                                              "type:Linear": AccumConfig(acc="e3m2")})
    new = convert(model, policy)
    assert new[0].config.acc == parse("e4m7")
    assert new[1].config.acc == parse("e5m10")
    assert new[2].config.acc == parse("e4m3")
    assert type(new[3]) is nn.Conv2d
    assert new[5].config.acc == parse("e3m2")
    # An exact name wins over a type selector; the first matching selector decides.
    named = convert(model, Policy(AccumConfig(acc="e4m7"), {"type:depthwise": AccumConfig(acc="e5m10"),
                                                             "type:Conv2d": AccumConfig(acc="e5m2"),
                                                             "3": AccumConfig(acc="e6m3")}))
    assert named[1].config.acc == parse("e5m10") and named[0].config.acc == parse("e5m2")
    assert named[3].config.acc == parse("e6m3") and named[2].config.acc == parse("e5m2")
    with pytest.raises(ValueError, match="unknown layer-type selector 'type:conv'; choose from type:Linear"):
        Policy(layers={"type:conv": None})
    with pytest.raises(ValueError, match="policy entries match no layer of the model: type:depthwise"):
        convert(LeNet5(), Policy(layers={"type:depthwise": AccumConfig()}))


def test_calibrate_takes_dataloader_batches():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(10, 3))
    xs = torch.randn(16, 10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, torch.zeros(16, dtype=torch.long)),
                                         batch_size=8)
    from_loader = calibrate(convert(model, IntAccumConfig()), loader)
    from_tensors = calibrate(convert(model, IntAccumConfig()), [xs[:8], xs[8:]])
    assert torch.equal(from_loader[0].act_scale, from_tensors[0].act_scale)
    with pytest.raises(TypeError, match="calibration batch 0 must be an input tensor or an"):
        calibrate(convert(model, IntAccumConfig()), [{"x": xs}])


def test_layers_inside_a_float_attention_stay_as_they_are():
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 4))
    new = convert(model, Policy(AccumConfig(acc="e4m7"), {"0": None}))
    assert type(new[0].out_proj) is type(model[0].out_proj) and isinstance(new[1], EmulatedLinear)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_operand_streams_of_grouped_convs_are_the_layers_own_dot_products(groups):
    """Each stream pairs an output channel's weights with the columns of its own group
    (a depthwise layer: its own input channel), so its dot product is one of the layer's outputs."""
    from emulator.streams import _pattern_values, operand_streams

    torch.manual_seed(3)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 8, 6, 6)
    a, b = operand_streams(nn.Sequential(conv), "0", x, 64, seed=2, inputs="fp32")
    dots = (_pattern_values(a, "fp32") * _pattern_values(b, "fp32")).sum(dim=1)
    outputs = torch.nn.functional.conv2d(x.double(), conv.weight.double(), padding=1, groups=groups).flatten()
    nearest = (dots[:, None] - outputs[None, :]).abs().min(dim=1).values
    assert (nearest < 1e-9).all(), nearest.max()
