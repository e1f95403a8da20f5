"""The CPU kernel's convolution (``psum_conv2d``: per-image im2col in a thread's buffer,
one emulated matmul per group) against the plain path it replaces on the CPU, F.unfold
columns through ``emulated_matmul``, bit for bit; and the layers' linear path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emulator import AccumConfig, EmulatedConv2d, EmulatedLinear, quantize
from emulator.matmul import emulated_matmul
from test_matmul import identical


def unfold_reference(conv: nn.Conv2d, x: torch.Tensor, cfg: AccumConfig) -> torch.Tensor:
    """The convolution as F.unfold + emulated_matmul per group, in cfg's order."""
    n = x.shape[0]
    kh, kw = conv.kernel_size
    g, cg, og = conv.groups, conv.in_channels // conv.groups, conv.out_channels // conv.groups
    cols = F.unfold(x.float(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    lanes = cols.shape[-1]
    cols = cols.view(n, g, cg, kh * kw, lanes)
    weight = conv.weight.detach().float().view(g, og, cg, kh * kw)
    if cfg.order == "nhwc":
        cols, weight = cols.transpose(2, 3), weight.transpose(2, 3)
    outs = []
    for gi in range(g):
        a = cols[:, gi].reshape(n, -1, lanes).transpose(1, 2).reshape(n * lanes, -1)
        outs.append(emulated_matmul(a.contiguous(), weight[gi].reshape(og, -1).t().contiguous(), cfg).float())
    y = torch.cat(outs, dim=1).view(n, lanes, conv.out_channels).transpose(1, 2)
    out_h = (x.shape[2] + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    y = y.reshape(n, conv.out_channels, out_h, -1)
    return y + conv.bias.detach().float().view(1, -1, 1, 1) if conv.bias is not None else y


CONVS = [dict(in_channels=3, out_channels=6, kernel_size=5),
         dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1),
         dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, padding=2, dilation=2),
         dict(in_channels=6, out_channels=6, kernel_size=3, groups=6, padding=1, bias=False),
         dict(in_channels=5, out_channels=7, kernel_size=(3, 2), stride=(1, 2), padding=(2, 0)),
         dict(in_channels=2, out_channels=37, kernel_size=1)]


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("acc, order", [("e4m7", "im2col"), ("e5m10", "nhwc"), ("fp32", "im2col"),
                                        ("e4m7:rz", "nhwc"), ("e4m3:ftz", "im2col"), ("bf16", "im2col")])
@pytest.mark.parametrize("batch, threads", [(1, 2), (5, 2), (3, 1)])
def test_conv_kernel_equals_the_unfold_path(spec, acc, order, batch, threads):
    torch.manual_seed(len(str(spec)) + batch)
    conv = nn.Conv2d(**spec)
    x = torch.randn(batch, spec["in_channels"], 9, 10) * 2
    cfg = AccumConfig(acc=acc, order=order)
    emulated = EmulatedConv2d.from_float(conv, cfg)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = emulated(x)
    finally:
        torch.set_num_threads(before)
    want = unfold_reference(conv, x, cfg)
    assert got.shape == want.shape and identical(got.double(), want.double())


def test_conv_kernel_with_tiny_and_special_inputs():
    """Tiny operands (the float32 tiles' precondition fails: blocks), Inf, NaN, -0."""
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(4, 3, 8, 8)
    x[0, 0, 0, 0], x[1, 1, 2, 3], x[2, 2, 4, 4], x[3, 0, 5, 5] = 2.0 ** -120, float("inf"), float("nan"), -0.0
    for acc in ("e4m7", "e5m10:sat", "fp32"):
        cfg = AccumConfig(acc=acc)
        got = EmulatedConv2d.from_float(conv, cfg)(x)
        assert identical(got.double(), unfold_reference(conv, x, cfg).double()), acc


@pytest.mark.parametrize("rows, outputs", [(1, 10), (250, 10), (7, 120), (300, 84), (64, 64)])
@pytest.mark.parametrize("acc", ["e4m7", "fp32", "e4m7:rz"])
def test_linear_path_equals_emulated_matmul(rows, outputs, acc):
    torch.manual_seed(rows + outputs)
    linear = nn.Linear(40, outputs)
    x = torch.randn(rows, 40)
    cfg = AccumConfig(acc=acc)
    got = EmulatedLinear.from_float(linear, cfg)(x)
    want = emulated_matmul(x, linear.weight.detach().t().contiguous(), cfg).float() + linear.bias.detach()
    assert identical(got.double(), want.double())


def test_rounded_matmul_into_checks_its_operands():
    from emulator.matmul import _rounded_matmul_into

    cfg = AccumConfig(acc="e4m7")
    a, b, out = torch.zeros(2, 3), torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)
    assert _rounded_matmul_into(a, b, out, cfg) is out
    with pytest.raises(ValueError, match="do not chain"):
        _rounded_matmul_into(a, torch.zeros(1, 4, 4), out, cfg)
    with pytest.raises(ValueError, match="float32 CPU tensor"):
        _rounded_matmul_into(a.double(), b, out, cfg)
    with pytest.raises(ValueError, match="cannot hold the results in float32"):
        _rounded_matmul_into(a, b, out, AccumConfig(acc="e10m3", inputs="bf16"))
    rng = np.random.default_rng(0)
    b = quantize(torch.from_numpy(rng.standard_normal((2, 3, 40)).astype(np.float32)), "bf16")[:, :, ::2]  # strided
    out = torch.empty(2, 2, 20)
    _rounded_matmul_into(torch.ones(2, 3), b, out, cfg)
    assert identical(out[1].double(), emulated_matmul(torch.ones(2, 3), b[1].contiguous(), cfg).double())
