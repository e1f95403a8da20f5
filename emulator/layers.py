"""Linear and Conv2d layers whose MACs run in emulated formats.

A layer's output is ``acc_result + bias``: the dot products come from
:func:`emulator.matmul.emulated_matmul` (or the integer path), and the bias is added
afterwards in fp32 (the output stage, docs/semantics.md §8). Weights stay float32
parameters; they are rounded to the weight format (or quantized to integers) at each
forward pass, so a layer can be retargeted by changing its ``config``.

Gradients (fine-tuning through the emulated accumulation, docs/semantics.md §12): the
forward value is the emulated one, bit for bit; the backward pass is the float layer's
(``F.linear``/``F.conv2d`` of the layer's float32 weights and inputs), a straight-through
estimator of the operand rounding, the integer quantization and the accumulator: the
gradient of the exact dot product.

Integer layers (:class:`~emulator.config.IntAccumConfig`) quantize symmetrically:
weights per output channel, ``w_int = round(w / s_w[o])`` with
``s_w[o] = max|w[o]| / (2^(b-1) - 1)``; activations per tensor with a calibrated scale
``s_a`` (see :func:`emulator.convert.calibrate`); the accumulator's integer result is
dequantized as ``acc * s_a * s_w[o]`` in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emulator.config import AccumConfig, IntAccumConfig
from emulator.matmul import (_absmax, check_config, emulated_int_matmul, emulated_matmul, exact_int_sum,
                             exact_sum_applies)
from emulator.quantize import quantize

__all__ = ["EmulatedLinear", "EmulatedConv2d", "symmetric_quantize"]

Config = AccumConfig | IntAccumConfig


def symmetric_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``round(x / scale)`` (ties to even) clamped to ``[-(2^(b-1)-1), 2^(b-1)-1]``, int32."""
    return _quantized(x, scale, bits).to(torch.int32)


def _quantized(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`symmetric_quantize`'s integers, in ``x``'s float dtype."""
    limit = (1 << (bits - 1)) - 1
    return torch.round(x / scale).clamp_(-limit, limit)


class _StraightThrough(torch.autograd.Function):
    """The emulated layer's value forward, the float layer's gradient backward."""

    @staticmethod
    def forward(ctx, layer, x, weight, bias):
        ctx.layer = layer
        ctx.save_for_backward(x, weight, bias)
        with torch.no_grad():
            y = layer._emulated(x)
        return y.clone() if y._base is not None else y  # a view would refuse in-place ops after it (nn.ReLU)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            leaves = [t.detach().float().requires_grad_(t.requires_grad) if t is not None else None
                      for t in (x, weight, bias)]
            y = ctx.layer._float(*leaves)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grad = grad.float() * ctx.layer._in_range(*leaves[:2])
            found = iter(torch.autograd.grad(y, wanted, grad) if wanted else ())
        grads = [next(found) if t is not None and t.requires_grad else None for t in leaves]
        return (None, *[g if g is None else g.to(t.dtype) for g, t in zip(grads, (x, weight, bias))])


class _Emulated(nn.Module):
    """What both layer types share: the config, the integer scales, the observer, and
    the straight-through gradient (module docstring)."""

    def _in_range(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | float:
        """Where the output's gradient passes (1) and where it stops (0). Float
        accumulators pass it everywhere; an integer accumulator stops it where the exact
        sum of the integer operands lies outside its range, so that the output was
        wrapped or saturated (the gradient of a clip). The exact sums are integers below
        2^53, exact in float64."""
        cfg = self.config
        if not isinstance(cfg, IntAccumConfig) or self.act_scale is None:
            return 1.0
        with torch.no_grad():
            w2 = weight.reshape(weight.shape[0], -1)
            w_int = _quantized(w2, self._weight_scale(w2)[:, None], cfg.weight_bits).view_as(weight)
            x_int = _quantized(x, self.act_scale, cfg.act_bits)
            exact = self._float(x_int.double(), w_int.double(), None)
            return ((exact >= cfg.acc.min_value) & (exact <= cfg.acc.max_value)).float()

    def overflow(self, x: torch.Tensor) -> torch.Tensor | None:
        """How far this integer layer's dot products of ``x`` reach beyond the
        accumulator's range, differentiably (WrapNet's overflow penalty, Ni et al., ICLR
        2021): the mean over outputs of ``max(0, |A| / limit - 1)``, ``A`` the dot product
        in integer units estimated in float (``x / s_a`` against ``w / s_w``) and
        ``limit`` the accumulator's largest value. None for float accumulators."""
        cfg = self.config
        if not isinstance(cfg, IntAccumConfig) or self.act_scale is None:
            return None
        w2 = self.weight.reshape(self.weight.shape[0], -1)
        w_units = (w2 / self._weight_scale(w2)[:, None]).view_as(self.weight)
        units = self._float(x.float() / self.act_scale, w_units, None)
        return torch.relu(units.abs() / cfg.acc.max_value - 1).mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [t for t in (self.weight, self.bias) if t is not None]
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in params)):
            if self.training and self.penalize_overflow:
                with torch.autocast(x.device.type, enabled=False):
                    self.last_overflow = self.overflow(x)
            return _StraightThrough.apply(self, x, self.weight, self.bias)
        return self._emulated(x)

    @property
    def config(self) -> Config:
        """What this layer's MACs compute; a config the kernels cannot run (an operand
        format wider than float32, say) is refused when set, not mid-forward."""
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        if not isinstance(config, (AccumConfig, IntAccumConfig)):
            raise TypeError(f"config must be an AccumConfig or IntAccumConfig, not {config!r}")
        check_config(config)
        self._config = config

    def _setup(self, config: Config) -> None:
        self.config = config
        # Per-tensor activation scale of the integer path, set by calibration.
        self.register_buffer("act_scale", None)
        self.register_buffer("act_absmax", None)  # running max |x| while observing
        self.observing = False
        # fine-tuning of integer layers: the training forward records overflow(x) here
        self.penalize_overflow, self.last_overflow = False, None

    def _observe(self, x: torch.Tensor) -> None:
        current = x.detach().abs().max().to(torch.float32)
        self.act_absmax = current if self.act_absmax is None else torch.maximum(self.act_absmax, current)

    def finish_calibration(self) -> None:
        """Fix ``act_scale`` from the largest |activation| seen while observing."""
        if self.act_absmax is None:
            raise RuntimeError("no activations were observed; run some batches while observing")
        limit = (1 << (self.config.act_bits - 1)) - 1
        self.act_scale = torch.clamp(self.act_absmax, min=torch.finfo(torch.float32).tiny) / limit
        self.observing = False

    def _weight_scale(self, w2: torch.Tensor) -> torch.Tensor:
        """Per-output-channel symmetric scale of the (O, K) weight matrix."""
        limit = (1 << (self.config.weight_bits - 1)) - 1
        absmax = w2.detach().abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
        return absmax / limit  # (O,)

    def _dot(self, a: torch.Tensor, w2: torch.Tensor, name: str, sample_rows: int = 1) -> torch.Tensor:
        """``a`` (R, K) against weights ``w2`` (O, K): (R, O) float32 before the bias.
        Consecutive runs of ``sample_rows`` rows are one sample's outputs, numbered
        0.. within it for a stochastic accumulator's generators (docs/semantics.md §13)."""
        cfg = self.config
        if isinstance(cfg, AccumConfig):
            if cfg.acc.rounding == "stochastic":
                a = a.reshape(-1, sample_rows, a.shape[-1])  # the rows of the generators
            out = emulated_matmul(a.float(), w2.detach().float().t(), cfg)
            return out.reshape(-1, out.shape[-1])  # (R, O)
        if self.observing:
            self._observe(a)
        if self.act_scale is None:
            raise RuntimeError(
                f"integer layer {name} has no activation scale: calibrate the model first "
                "(emulator.calibrate)"
            )
        w_scale = self._weight_scale(w2)  # (O,)
        a_int = symmetric_quantize(a.float(), self.act_scale, cfg.act_bits)  # (R, K)
        w_int = symmetric_quantize(w2.detach().float(), w_scale[:, None], cfg.weight_bits)  # (O, K)
        acc = emulated_int_matmul(a_int, w_int.t(), cfg)  # (R, O) int64
        return acc.to(torch.float32) * (self.act_scale * w_scale)  # dequantize in fp32



class EmulatedLinear(_Emulated):
    """``nn.Linear`` with emulated MACs: ``y = dot(x, W[o]) + b[o]``, K = in_features
    accumulated in order 0..K-1."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: Config = AccumConfig(), device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._setup(config)
        self.layer_name = "EmulatedLinear"

    @classmethod
    def from_float(cls, linear: nn.Linear, config: Config, name: str = "") -> EmulatedLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, config,
                  device=linear.weight.device)
        with torch.no_grad():
            new.weight.copy_(linear.weight.float())
            if linear.bias is not None:
                new.bias.copy_(linear.bias.float())
        new.layer_name = name or new.layer_name
        return new

    def _float(self, x, weight, bias) -> torch.Tensor:
        """The float layer the gradient is taken of."""
        return F.linear(x, weight, bias)

    def _emulated(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._dot(x.reshape(-1, self.in_features), self.weight, self.layer_name)  # (R, O)
        if self.bias is not None:
            y = y + self.bias.detach().float()  # fp32 output stage
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.config}")


class EmulatedConv2d(_Emulated):
    """``nn.Conv2d`` (zero padding, any stride, dilation and groups) with emulated MACs.

    Each output element is a dot product over K = (C / groups) * kh * kw terms, in the
    config's order: ``"im2col"`` (input channel outermost, then kernel row, then kernel
    column) or ``"nhwc"`` (kernel row, kernel column, input channel innermost).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, config: Config = AccumConfig(),
                 device=None):
        super().__init__()
        pair = torch.nn.modules.utils._pair
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must divide by groups={groups}")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, device=device))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device)) if bias else None
        self._setup(config)
        self.layer_name = "EmulatedConv2d"

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: Config, name: str = "") -> EmulatedConv2d:
        label = name or "a Conv2d"
        if conv.padding_mode != "zeros":
            raise ValueError(f"layer {label}: padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
        padding = conv.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise ValueError(f"layer {label}: padding={padding!r} is not supported (give it in pixels)")
            padding = 0
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                  conv.dilation, conv.groups, conv.bias is not None, config,
                  device=conv.weight.device)
        with torch.no_grad():
            new.weight.copy_(conv.weight.float())
            if conv.bias is not None:
                new.bias.copy_(conv.bias.float())
        new.layer_name = name or new.layer_name
        return new

    def _float(self, x, weight, bias) -> torch.Tensor:
        """The float layer the gradient is taken of."""
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _emulated(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        config = self.config
        if (isinstance(config, AccumConfig) and x.device.type == "cpu" and config.unit is None
                and config.acc.rounding != "stochastic"):
            return self._forward_cpu(x, out_h, out_w)
        if isinstance(self.config, IntAccumConfig):
            y = self._int_forward_cpu(x, out_h, out_w)
            if y is not None:
                return y
        cols = F.unfold(x.float(), self.kernel_size, self.dilation, self.padding, self.stride)
        # cols: (N, C*kh*kw, L), rows ordered (channel, kernel row, kernel column)
        g, cg, og = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        cols = cols.view(n, g, cg, kh * kw, out_h * out_w)  # (N, G, Cg, kh*kw, L)
        weight = self.weight.view(g, og, cg, kh * kw)  # (G, Og, Cg, kh*kw)
        if self.config.order == "nhwc":  # channel innermost
            cols = cols.transpose(2, 3)  # (N, G, kh*kw, Cg, L)
            weight = weight.transpose(2, 3)  # (G, Og, kh*kw, Cg)
        outs = []
        for gi in range(g):
            a = cols[:, gi].reshape(n, -1, out_h * out_w).transpose(1, 2)  # (N, L, K)
            a = a.reshape(n * out_h * out_w, -1)  # (N*L, K)
            w2 = weight[gi].reshape(og, -1)  # (Og, K)
            outs.append(self._dot(a, w2, self.layer_name, out_h * out_w))  # (N*L, Og)
        y = torch.cat(outs, dim=1) if g > 1 else outs[0]  # (N*L, O)
        if self.bias is not None:
            y = y + self.bias.detach().float()  # fp32 output stage
        return y.view(n, out_h * out_w, self.out_channels).transpose(1, 2).reshape(
            n, self.out_channels, out_h, out_w)  # (N, O, H', W')

    def _int_forward_cpu(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor | None:
        """The integer path on the CPU (None elsewhere, and while observing or before
        calibration). The activations are quantized before im2col, which only copies them
        and pads with 0 (whose integer is 0). Each group's integer weights (Og, K) multiply
        the columns of all images: by one exact sum where every output's accumulator is
        one (:func:`emulator.matmul.exact_int_sum`, docs/semantics.md §6), else step by
        step by the integer kernel on the (K, N*L) columns. The same integers in the same
        order as :meth:`_dot`, dequantized and biased by the same float32 operations."""
        cfg = self.config
        if x.device.type != "cpu" or self.observing or self.act_scale is None or not x.numel():
            return None
        n = x.shape[0]
        kh, kw = self.kernel_size
        g, cg, og = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        xq = _quantized(x.float(), self.act_scale, cfg.act_bits)
        windows = self._windows(xq, out_h, out_w)  # (N, C, kh, kw, H', W'): views, no copy
        weight = self.weight.detach().float().view(g, og, cg, kh * kw)
        # the order of a column's K terms: (channel, kernel row, kernel column) as
        # F.unfold's im2col, or channel innermost
        terms = (1, 2, 3) if cfg.order == "im2col" else (2, 3, 1)
        if cfg.order == "nhwc":
            weight = weight.transpose(2, 3)
        x_max, outs = _absmax(xq), []
        for gi in range(g):
            w2 = weight[gi].reshape(og, -1)  # (Og, K)
            w_scale = self._weight_scale(w2)
            wq = _quantized(w2, w_scale[:, None], cfg.weight_bits)
            group, k = windows[:, gi * cg:(gi + 1) * cg], wq.shape[1]
            bound = k * x_max * _absmax(wq)
            if exact_sum_applies(cfg, bound):
                c = group.permute(0, *terms, 4, 5).reshape(n, k, out_h * out_w)  # (N, K, L)
                acc = exact_int_sum(wq, c, cfg, bound)  # (N, Og, L)
            else:  # partial sums may saturate, or chunks: every step as the accumulator takes it
                steps = torch.empty(group.permute(*terms, 0, 4, 5).shape, dtype=torch.int32)
                steps.copy_(group.permute(*terms, 0, 4, 5))  # (K..., N, H', W'): one strided copy
                acc = emulated_int_matmul(wq.to(torch.int32), steps.view(k, -1), cfg)
                acc = acc.view(og, n, -1).permute(1, 0, 2)
            outs.append(acc.to(torch.float32) * (self.act_scale * w_scale)[:, None])  # dequantize in fp32
        y = torch.cat(outs, dim=1) if g > 1 else outs[0]  # (N, O, L)
        if self.bias is not None:
            y = y + self.bias.detach().float()[:, None]  # fp32 output stage
        return y.view(n, self.out_channels, out_h, out_w)

    def _windows(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """(N, C, kh, kw, H', W') view of ``x`` zero-padded: element [n, c, i, j, p, q] is
        the input that kernel tap (i, j) of output pixel (p, q) reads (F.unfold's values)."""
        ph, pw = self.padding
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x.contiguous()
        sn, sc, sh, sw = xp.stride()
        (dh, dw), (th, tw) = self.dilation, self.stride
        return xp.as_strided((x.shape[0], x.shape[1], *self.kernel_size, out_h, out_w),
                             (sn, sc, sh * dh, sw * dw, sh * th, sw * tw))

    def _forward_cpu(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """The float path on the CPU kernel's convolution (``psum_conv2d``): image by
        image, the im2col columns (K, L) built in a per-thread buffer are the b of one
        emulated matmul per group whose a is the group's weights (O/G, K), so the (O, L)
        results land in NCHW order without a batch-sized im2col tensor or any copy. The
        inputs are rounded before im2col, which only copies them (and pads with +0)."""
        from emulator import _native
        from emulator.matmul import _mac_params

        cfg, (n, c, h, w) = self.config, x.shape
        kh, kw = self.kernel_size
        g, cg, og = self.groups, self.in_channels // self.groups, self.out_channels // self.groups
        xq = quantize(x.float(), cfg.inputs).contiguous()
        weight = quantize(self.weight.detach().float(), cfg.weights).view(g, og, cg, kh * kw)
        if cfg.order == "nhwc":  # channel innermost
            weight = weight.transpose(2, 3)
        weight = weight.reshape(g, og, cg * kh * kw).contiguous()
        y = torch.empty(n, self.out_channels, out_h, out_w)
        if y.numel():
            _native.library().psum_conv2d(
                xq.data_ptr(), weight.data_ptr(), y.data_ptr(), n, c, h, w, self.out_channels, g, kh, kw,
                *self.stride, *self.padding, *self.dilation, out_h, out_w, int(cfg.order == "nhwc"),
                _mac_params(cfg), torch.get_num_threads())
        if self.bias is not None:
            y += self.bias.detach().float().view(1, -1, 1, 1)  # fp32 output stage
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, {self.config}")
