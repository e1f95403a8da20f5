"""Networks from TensorFlow Lite files as PyTorch modules that :func:`emulator.convert`
emulates: the **float reading** of a (quantized) TFLite network.

The flatbuffer is read with the ``tflite`` package (the schema's generated Python
bindings; no TensorFlow needed). Every weight is dequantized as TFLite defines it,
``real = scale * (q - zero_point)`` (per tensor or per output channel), biases likewise
(``int32 * scale``); activations stay float between layers (no requantization), so
the only rounding left is what the emulated MACs do. Operators and their meaning:

| TFLite operator | module / operation |
|---|---|
| ``CONV_2D`` | ``nn.Conv2d`` (weights OHWI -> OIHW), fused activation |
| ``DEPTHWISE_CONV_2D`` | ``nn.Conv2d`` with ``groups = in_channels`` (weights 1HW(C*M) -> (C*M)1HW) |
| ``FULLY_CONNECTED`` | ``nn.Linear`` on the input flattened in NHWC order, as TFLite flattens |
| ``AVERAGE_POOL_2D``, ``MAX_POOL_2D`` | pooling; a SAME average counts only the positions inside the image, as TFLite does |
| ``ADD`` | elementwise sum, fused activation |
| ``RESHAPE``, ``SQUEEZE`` | reshape in NHWC order (tensors are NCHW inside the module) |
| ``SOFTMAX`` | softmax over the last axis with ``beta`` |
| ``RELU``, ``RELU6``, ``QUANTIZE``, ``DEQUANTIZE`` | the activation; identity in the float reading |

"SAME" padding is TensorFlow's: ``total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``,
``total // 2`` before and the rest after, so a stride-2 layer pads more at the bottom and
right than PyTorch's symmetric padding would; it is applied (zeros) before the
convolution, whose own padding is 0.

Google's ImageNet classifiers have 1001 outputs, index 0 "background"; with
``drop_background`` (the default where there are 1001 outputs) the module returns the
1000 ImageNet classes in sorted-wnid order. The input the network expects is recorded
(:attr:`TFLiteNet.preprocessing`): its size, and the mean and std that map a pixel
``p`` (0-255) to ``scale * (p - zero_point)``, the input tensor's quantization
(MobileNets: ``p / 128 - 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModelImportError", "TFLiteNet", "read_tflite", "TFLiteGraph", "TensorInfo", "OPERATORS"]


class ModelImportError(ValueError):
    """A model file that cannot be imported: unreadable, or using an operator psum does not
    take (the message names the operator and the layer)."""


#: The operators the import takes.
OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
             "RESHAPE", "SQUEEZE", "SOFTMAX", "RELU", "RELU6", "QUANTIZE", "DEQUANTIZE")

_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


@dataclass
class TensorInfo:
    """One tensor of the graph: its NHWC shape, storage type, constant data (None for
    activations) and quantization (empty arrays where it has none)."""

    name: str
    shape: tuple[int, ...]
    dtype: type
    data: np.ndarray | None
    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0

    def real(self) -> np.ndarray:
        """The constant's real values: ``scale * (q - zero_point)`` along its quantized axis."""
        if self.data is None:
            raise ModelImportError(f"tensor {self.name} has no constant data")
        values = self.data.astype(np.float64)
        if self.scale.size == 0 or np.issubdtype(self.dtype, np.floating):
            return values.astype(np.float32)
        shape = [1] * values.ndim
        if self.scale.size > 1:
            shape[self.quantized_dimension] = -1
        scale, zero = self.scale.reshape(shape), self.zero_point.astype(np.float64).reshape(shape)
        return (scale * (values - zero)).astype(np.float32)


@dataclass
class OperatorInfo:
    index: int
    name: str  # the TFLite builtin name, e.g. CONV_2D
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)


@dataclass
class TFLiteGraph:
    """The first subgraph of a TFLite file, decoded."""

    tensors: list[TensorInfo]
    operators: list[OperatorInfo]
    inputs: list[int]
    outputs: list[int]


def _builtin_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _options(op, name: str) -> dict:
    """The builtin options psum reads, as a plain dict."""
    import tflite

    table = op.BuiltinOptions()
    kinds = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
             "AVERAGE_POOL_2D": tflite.Pool2DOptions, "MAX_POOL_2D": tflite.Pool2DOptions,
             "FULLY_CONNECTED": tflite.FullyConnectedOptions, "ADD": tflite.AddOptions,
             "SOFTMAX": tflite.SoftmaxOptions, "SQUEEZE": tflite.SqueezeOptions}
    if name not in kinds or table is None:
        return {}
    opts = kinds[name]()
    opts.Init(table.Bytes, table.Pos)
    out = {"activation": getattr(opts, "FusedActivationFunction", lambda: 0)()}
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D"):
        out |= {"padding": opts.Padding(), "stride": (opts.StrideH(), opts.StrideW())}
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        out["dilation"] = (opts.DilationHFactor(), opts.DilationWFactor())
    if name == "DEPTHWISE_CONV_2D":
        out["depth_multiplier"] = opts.DepthMultiplier()
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        out["filter"] = (opts.FilterHeight(), opts.FilterWidth())
    if name == "SOFTMAX":
        out["beta"] = opts.Beta()
    if name == "SQUEEZE":
        out["dims"] = [opts.SqueezeDims(j) for j in range(opts.SqueezeDimsLength())]
    return out


def read_tflite(path: str | Path) -> TFLiteGraph:
    """Decode the tensors and operators of a TFLite flatbuffer (its first subgraph)."""
    import tflite

    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise ModelImportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelImportError(f"{path} is not a TensorFlow Lite file (no TFL3 identifier)")
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        if model.SubgraphsLength() < 1:
            raise ModelImportError(f"{path} has no subgraph")
        graph = model.Subgraphs(0)
        names = _builtin_names()
        tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            dtype = _DTYPES.get(t.Type())
            if dtype is None:
                raise ModelImportError(f"{path}: tensor {t.Name().decode()} has TFLite type {t.Type()}, "
                                       "which psum does not read")
            buffer = model.Buffers(t.Buffer())
            raw = buffer.DataAsNumpy() if buffer is not None and buffer.DataLength() else None
            shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            data = None if raw is None or isinstance(raw, int) else \
                np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
            q = t.Quantization()
            scale = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else np.zeros(0)
            zero = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else np.zeros(0, np.int64)
            tensors.append(TensorInfo(t.Name().decode(), shape, dtype, data, np.asarray(scale, np.float64),
                                      np.asarray(zero, np.int64), q.QuantizedDimension() if q is not None else 0))
        operators = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            operators.append(OperatorInfo(i, name, [int(j) for j in op.InputsAsNumpy()] if op.InputsLength() else [],
                                          [int(j) for j in op.OutputsAsNumpy()], _options(op, name)))
        inputs = [int(j) for j in graph.InputsAsNumpy()]
        outputs = [int(j) for j in graph.OutputsAsNumpy()]
    except ModelImportError:
        raise
    except Exception as exc:  # noqa: BLE001 (a corrupt flatbuffer fails anywhere in the bindings)
        raise ModelImportError(f"{path} is not a readable TensorFlow Lite file: {type(exc).__name__}: "
                               f"{str(exc).strip()[:200]}") from None
    return TFLiteGraph(tensors, operators, inputs, outputs)


# -- the module --------------------------------------------------------------------------------

_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
_SAME, _VALID = 0, 1


def _activate(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    if kind == "relu":
        return F.relu(x)
    if kind == "relu6":
        return x.clamp(0, 6)
    if kind == "relu_n1_to_1":
        return x.clamp(-1, 1)
    return x


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride, dilation=(1, 1)) -> torch.Tensor:
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


class TFLiteNet(nn.Module):
    """A TFLite graph's float reading as an ``nn.Module`` taking NCHW float images.

    Its convolutions and fully connected layers are ``nn.Conv2d`` / ``nn.Linear``
    submodules named ``conv<i>``, ``dw<i>`` (depthwise) and ``fc<i>`` after the position
    ``i`` of their operator in the graph, which ``--layer`` and policies take."""

    def __init__(self, graph: TFLiteGraph, *, drop_background: bool | None = None, where: str = "the model"):
        super().__init__()
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ModelImportError(f"{where} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                                   "psum takes one image input and one output")
        self.graph_input, self.graph_output = graph.inputs[0], graph.outputs[0]
        self.ranks = {i: len(t.shape) for i, t in enumerate(graph.tensors)}
        self.shapes = {i: t.shape for i, t in enumerate(graph.tensors)}
        self.steps: list[tuple[str, OperatorInfo, str | None]] = []
        for op in graph.operators:
            if op.name not in OPERATORS:
                out = graph.tensors[op.outputs[0]].name if op.outputs else "?"
                raise ModelImportError(f"{where}: operator {op.name} (layer {op.index}, output {out}) is not supported; "
                                       f"psum imports {', '.join(OPERATORS)}")
            self.steps.append((op.name, op, self._layer(op, graph, where)))
        source = graph.tensors[self.graph_input]
        if len(source.shape) != 4 or source.shape[3] != 3 or source.shape[1] != source.shape[2]:
            raise ModelImportError(f"{where}: the input is {source.shape}; psum takes square RGB images (1, N, N, 3)")
        classes = graph.tensors[self.graph_output].shape[-1]
        self.drop_background = classes == 1001 if drop_background is None else drop_background
        scale = float(source.scale[0]) if source.scale.size else 1 / 255
        zero = float(source.zero_point[0]) if source.zero_point.size else 0.0
        mean = zero / 255 if source.scale.size else 0.0
        self.preprocessing = {"image_size": source.shape[1], "crop": 1.0, "mean": [mean] * 3,
                              "std": [1 / (255 * scale)] * 3}

    def _layer(self, op: OperatorInfo, graph: TFLiteGraph, where: str) -> str | None:
        t = graph.tensors
        if op.name == "CONV_2D":
            w = torch.from_numpy(t[op.inputs[1]].real()).permute(0, 3, 1, 2).contiguous()  # OHWI -> OIHW
            layer = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), op.options["stride"], 0,
                              op.options["dilation"], bias=len(op.inputs) > 2 and op.inputs[2] >= 0)
            name = f"conv{op.index}"
        elif op.name == "DEPTHWISE_CONV_2D":
            w = torch.from_numpy(t[op.inputs[1]].real())[0].permute(2, 0, 1).unsqueeze(1).contiguous()
            channels = t[op.inputs[0]].shape[3]
            layer = nn.Conv2d(channels, w.shape[0], tuple(w.shape[2:]), op.options["stride"], 0,
                              op.options["dilation"], groups=channels, bias=len(op.inputs) > 2 and op.inputs[2] >= 0)
            name = f"dw{op.index}"
        elif op.name == "FULLY_CONNECTED":
            w = torch.from_numpy(t[op.inputs[1]].real())
            layer = nn.Linear(w.shape[1], w.shape[0], bias=len(op.inputs) > 2 and op.inputs[2] >= 0)
            name = f"fc{op.index}"
        else:
            return None
        if tuple(layer.weight.shape) != tuple(w.shape):
            raise ModelImportError(f"{where}: layer {op.index} ({op.name}) has weights {tuple(w.shape)}, "
                                   f"expected {tuple(layer.weight.shape)}")
        with torch.no_grad():
            layer.weight.copy_(w)
            if layer.bias is not None:
                layer.bias.copy_(torch.from_numpy(t[op.inputs[2]].real()))
        self.add_module(name, layer)
        return name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.graph_input: x}
        for kind, op, layer in self.steps:
            a = values[op.inputs[0]]
            act = _ACTIVATIONS.get(op.options.get("activation", 0), "unsupported")
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                module = getattr(self, layer)
                if op.options["padding"] == _SAME:
                    a = _pad_same(a, module.kernel_size, module.stride, module.dilation)
                y = _activate(module(a), act)
            elif kind == "FULLY_CONNECTED":
                flat = a.permute(0, 2, 3, 1).reshape(a.shape[0], -1) if a.dim() == 4 else a.reshape(a.shape[0], -1)
                y = _activate(getattr(self, layer)(flat), act)
            elif kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
                y = _activate(self._pool(kind, a, op.options), act)
            elif kind == "ADD":
                y = _activate(a + values[op.inputs[1]], act)
            elif kind in ("RESHAPE", "SQUEEZE"):
                y = self._reshape(a, op.outputs[0])
            elif kind == "SOFTMAX":
                y = torch.softmax(a * op.options.get("beta", 1.0), dim=-1)
            elif kind == "RELU":
                y = F.relu(a)
            elif kind == "RELU6":
                y = a.clamp(0, 6)
            else:  # QUANTIZE, DEQUANTIZE: the float reading keeps real values
                y = a
            values[op.outputs[0]] = y
        out = values[self.graph_output]
        return out[:, 1:] if self.drop_background else out

    @staticmethod
    def _pool(kind: str, x: torch.Tensor, options: dict) -> torch.Tensor:
        kernel, stride = options["filter"], options["stride"]
        if options["padding"] == _VALID:
            pool = F.avg_pool2d if kind == "AVERAGE_POOL_2D" else F.max_pool2d
            return pool(x, kernel, stride)
        if kind == "MAX_POOL_2D":
            return F.max_pool2d(_pad_same(x, kernel, stride).masked_fill(_pad_same(torch.ones_like(x[:1, :1]), kernel,
                                                                                  stride) == 0, -math.inf),
                                kernel, stride)
        total = F.avg_pool2d(_pad_same(x, kernel, stride), kernel, stride, divisor_override=1)
        count = F.avg_pool2d(_pad_same(torch.ones_like(x[:1, :1]), kernel, stride), kernel, stride, divisor_override=1)
        return total / count  # the mean over the positions inside the image, as TFLite averages

    def _reshape(self, x: torch.Tensor, output: int) -> torch.Tensor:
        shape = list(self.shapes[output])
        nhwc = x.permute(0, 2, 3, 1) if x.dim() == 4 else x
        y = nhwc.reshape([x.shape[0], *shape[1:]])
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> TFLiteNet:
        return cls(read_tflite(path), where=str(path), **kwargs)
