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

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModelImportError", "TFLiteNet", "TFLiteIntNet", "read_tflite", "TFLiteGraph", "TensorInfo", "OPERATORS"]


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
    """Decode the tensors and operators of a TFLite flatbuffer (its first subgraph).
    The result is shared between calls for the same unchanged file: treat it as read-only."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelImportError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _read_tflite(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_tflite(where: str, mtime_ns: int, size: int) -> TFLiteGraph:
    import tflite

    path = Path(where)
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


def input_preprocessing(graph: TFLiteGraph) -> dict:
    """The input a graph expects, as a folder dataset's preprocessing: its size (crop 1:
    resized to it), and the mean and std that map a pixel ``p`` to ``scale * (p -
    zero_point)``, the input tensor's quantization (a float input: ``p / 255``)."""
    source = graph.tensors[graph.inputs[0]]
    scale = float(source.scale[0]) if source.scale.size else 1 / 255
    mean = float(source.zero_point[0]) / 255 if source.scale.size else 0.0
    return {"image_size": source.shape[1], "crop": 1.0, "mean": [mean] * 3, "std": [1 / (255 * scale)] * 3}


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
        self.preprocessing = input_preprocessing(graph)

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
        return self._reshape_to(x, self.shapes[output])

    @staticmethod
    def _reshape_to(x: torch.Tensor, shape) -> torch.Tensor:
        """TFLite's reshape to ``shape`` (batch axis taken from ``x``), in NHWC order."""
        nhwc = x.permute(0, 2, 3, 1) if x.dim() == 4 else x
        y = nhwc.reshape([x.shape[0], *list(shape)[1:]])
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> TFLiteNet:
        return cls(read_tflite(path), where=str(path), **kwargs)


# -- the integer reading -------------------------------------------------------------------------

_INT_RANGES = {np.uint8: (0, 255), np.int8: (-128, 127), np.int16: (-32768, 32767)}
_ACTIVATION_NAMES = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
#: TFLite's quantized ADD shifts both inputs left by this many bits before rescaling them.
ADD_LEFT_SHIFT = 20


@dataclass
class _IntLayer:
    """One convolution or fully connected layer of the integer reading: its operands
    with zero points removed, bias, and the output stage's fixed-point parameters."""

    kind: str
    weight: torch.Tensor  # (O, K) int64 (q_w - z_w), K in im2col order (c, kh, kw); depthwise: (O, kh*kw)
    bias: torch.Tensor  # (O,) int64
    multiplier: torch.Tensor  # (O,)
    shift: torch.Tensor  # (O,)
    input_zero: int
    output_zero: int
    range: tuple[int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    same: bool = False
    groups: int = 1
    single_rounding: bool = False  # LiteRT's int8 FULLY_CONNECTED rounds once (semantics §10)
    input_bound: int = 255  # the largest |q_x - z_x| the input's type allows


class TFLiteIntNet(nn.Module):
    """The **integer reading** of a quantized TFLite network (docs/semantics.md §10):
    the published integer arithmetic, with psum's integer accumulator in place of
    TFLite's int32.

    Activations are the stored integers (uint8 or int8) between layers. A convolution or
    fully connected output is the dot product of ``q_x - z_x`` and ``q_w - z_w`` (both
    operands with their zero points removed: at most 9-bit signed values), accumulated
    in ``acc`` from the bias as its first term (``acc = fit(bias)``, then ``fit(acc +
    a * w)`` for every term in the ``order`` given: ``"im2col"`` input channel, kernel
    row, kernel column; ``"nhwc"`` TFLite's own, kernel row, kernel column, input
    channel), then requantized as TFLite does (:func:`psum.golden.tflite_rescale` with
    the multiplier of ``s_x * s_w / s_y`` computed in double), offset by the output zero
    point and clamped to the fused activation's range. SAME padding pads with the
    input's zero point (a real 0). With ``acc = int32`` the result is TFLite's, bit for
    bit (tested against LiteRT). The float input is quantized with the input tensor's
    scale and zero point, ``round(x / s + z)``; the network's output, the input of a
    final softmax where there is one (a monotonic map: top-k unchanged), is returned
    dequantized, ``s * (q - z)``.

    ``layers`` maps layer names (``conv<i>``, ``dw<i>``, ``fc<i>``) to the accumulator
    configs that differ from ``acc``.
    """

    def __init__(self, graph: TFLiteGraph, *, acc="int32", chunk: int | None = None, chunk_acc="int32",
                 order: str = "im2col", layers: dict | None = None, drop_background: bool | None = None,
                 where: str = "the model"):
        super().__init__()
        from emulator.config import IntAccumConfig

        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ModelImportError(f"{where} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                                   "psum takes one image input and one output")
        self.where, self.graph = where, graph
        self.default = IntAccumConfig(acc=acc, chunk=chunk, chunk_acc=chunk_acc, order=order)
        self.int_layers: dict[str, _IntLayer] = {}
        self.steps: list[tuple[OperatorInfo, str | None]] = []
        t = graph.tensors
        source = t[graph.inputs[0]]
        if source.dtype not in _INT_RANGES or source.scale.size != 1:
            raise ModelImportError(f"{where}: the input is {np.dtype(source.dtype).name} without one scale; the "
                                   "integer reading takes a quantized network (uint8 or int8 activations)")
        ops = graph.operators
        self.output = graph.outputs[0]
        if ops and ops[-1].name == "SOFTMAX" and ops[-1].outputs[0] == self.output:
            self.output = ops[-1].inputs[0]  # the logits: softmax is monotonic
            ops = ops[:-1]
        for op in ops:
            if op.name not in _INT_OPERATORS:
                out = t[op.outputs[0]].name if op.outputs else "?"
                raise ModelImportError(f"{where}: operator {op.name} (layer {op.index}, output {out}) is not supported "
                                       f"by the integer reading; it takes {', '.join(_INT_OPERATORS)}"
                                       + (" (SOFTMAX as the last operator)" if op.name == "SOFTMAX" else ""))
            for i in op.inputs[:1] + op.outputs:
                if t[i].dtype not in _INT_RANGES or t[i].scale.size != 1:
                    raise ModelImportError(f"{where}: tensor {t[i].name} of layer {op.index} ({op.name}) is not a "
                                           "quantized activation with one scale and zero point")
            self.steps.append((op, self._int_layer(op) if op.name in _MAC_OPERATORS else None))
        classes = t[graph.outputs[0]].shape[-1]
        self.drop_background = classes == 1001 if drop_background is None else drop_background
        self.layers = {}
        for name, cfg in (layers or {}).items():
            if name not in self.int_layers:
                raise ModelImportError(f"{where} has no layer {name}; its MAC layers are {', '.join(self.int_layers)}")
            self.layers[name] = cfg if isinstance(cfg, IntAccumConfig) else \
                IntAccumConfig(acc=cfg, chunk=chunk, chunk_acc=chunk_acc, order=order)
        self.input_scale, self.input_zero = float(source.scale[0]), int(source.zero_point[0])
        self.largest_activation = max(math.prod(x.shape[1:]) for x in t if x.data is None and x.shape)
        self.input_range = _INT_RANGES[source.dtype]

    def _activation_range(self, op: OperatorInfo) -> tuple[int, int]:
        from psum.golden import tflite_activation_range

        out = self.graph.tensors[op.outputs[0]]
        low, high = _INT_RANGES[out.dtype]
        act = op.options.get("activation", 0)
        if act not in _ACTIVATION_NAMES:
            raise ModelImportError(f"{self.where}: layer {op.index} ({op.name}) has fused activation {act}, which the "
                                   "integer reading does not take")
        return tflite_activation_range(_ACTIVATION_NAMES[act], float(out.scale[0]), int(out.zero_point[0]), low, high)

    def _int_layer(self, op: OperatorInfo) -> str:
        from psum.golden import tflite_multiplier

        t = self.graph.tensors
        x, w, y = t[op.inputs[0]], t[op.inputs[1]], t[op.outputs[0]]
        if w.data is None or w.dtype not in _INT_RANGES or w.scale.size == 0:
            raise ModelImportError(f"{self.where}: layer {op.index} ({op.name}) has no quantized constant weights")
        q = torch.from_numpy(w.data.astype(np.int64))
        zero = torch.from_numpy(w.zero_point.astype(np.int64))
        axis = w.quantized_dimension if w.scale.size > 1 else None
        if axis is not None:
            shape = [1] * q.dim()
            shape[axis] = -1
            q = q - zero.reshape(shape)
        else:
            q = q - int(zero[0])
        has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
        kind = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dw", "FULLY_CONNECTED": "fc"}[op.name]
        if kind == "conv":  # OHWI -> O, (I, H, W): the im2col order of the unfolded input
            weight = q.permute(0, 3, 1, 2).reshape(q.shape[0], -1)
        elif kind == "dw":  # 1HW(C*M) -> (C*M), (H, W)
            weight = q[0].permute(2, 0, 1).reshape(q.shape[3], -1)
        else:
            weight = q
        out_channels = weight.shape[0]
        bias = torch.from_numpy(t[op.inputs[2]].data.astype(np.int64)) if has_bias else \
            torch.zeros(out_channels, dtype=torch.int64)
        scales = np.broadcast_to(w.scale, (out_channels,)) if w.scale.size > 1 else [w.scale[0]] * out_channels
        params = [tflite_multiplier(conv_scale(x, float(s), y)) for s in scales]
        name = f"{kind}{op.index}"
        layer = _IntLayer(kind, weight, bias, torch.tensor([m for m, _ in params]),
                          torch.tensor([s for _, s in params]), int(x.zero_point[0]), int(y.zero_point[0]),
                          self._activation_range(op))
        if kind in ("conv", "dw"):
            kh, kw = (q.shape[1], q.shape[2])
            layer.kernel, layer.stride = (kh, kw), op.options["stride"]
            layer.dilation, layer.same = op.options["dilation"], op.options["padding"] == _SAME
            layer.groups = x.shape[3] if kind == "dw" else 1
        layer.single_rounding = kind == "fc" and x.dtype is np.int8
        low, high = _INT_RANGES[x.dtype]
        layer.input_bound = max(abs(low - layer.input_zero), abs(high - layer.input_zero))
        self.int_layers[name] = layer
        return name

    def config(self, name: str):
        """The accumulator config of layer ``name``."""
        return self.layers.get(name, self.default)

    # -- forward ----------------------------------------------------------------------------

    #: Elements of the largest integer tensor of one pass: a large batch's int64 tensors no
    #: longer fit the caches, and a small one pays Python's overhead per layer.
    PASS_ELEMENTS = 2**23

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, self.PASS_ELEMENTS // self.largest_activation)
        if x.shape[0] > step:
            return torch.cat([self.forward(part) for part in x.split(step)])
        t = self.graph.tensors
        low, high = self.input_range
        q = torch.round(x.double() / self.input_scale + self.input_zero).clamp(low, high).to(torch.int64)
        values = {self.graph.inputs[0]: q}
        for op, name in self.steps:
            a = values[op.inputs[0]]
            if name is not None:
                y = self._mac_layer(a, self.int_layers[name], self.config(name))
            elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
                y = self._pool(op, a)
            elif op.name == "ADD":
                y = self._add(op, a, values[op.inputs[1]])
            else:  # RESHAPE, SQUEEZE: the stored integers rearranged
                y = TFLiteNet._reshape_to(a, t[op.outputs[0]].shape)
            values[op.outputs[0]] = y
        out = t[self.output]
        logits = (values[self.output].double() - int(out.zero_point[0])) * float(out.scale[0])
        logits = logits.float()
        return logits[:, 1:] if self.drop_background else logits

    def _mac_layer(self, q: torch.Tensor, layer: _IntLayer, cfg) -> torch.Tensor:
        from emulator.fixed_point import rescale

        a = q - layer.input_zero  # a real 0 is 0: SAME padding with zeros pads with the zero point
        n = a.shape[0]
        if layer.kind == "fc":
            a = a.permute(0, 2, 3, 1).reshape(n, -1) if a.dim() == 4 else a.reshape(n, -1)
        elif layer.same:
            a = _pad_same(a, layer.kernel, layer.stride, layer.dilation)
        acc = _exact_accumulator(a, layer, cfg)
        if acc is None:  # partial sums may saturate, or chunks: every step as the accumulator takes it
            acc = _stepwise_accumulator(a, layer, cfg)
        channels = (1, -1) if acc.dim() == 2 else (1, -1, 1, 1)
        y = rescale(acc, layer.multiplier.reshape(channels), layer.shift.reshape(channels),
                    single=layer.single_rounding) + layer.output_zero
        return y.clamp(*layer.range)

    def _pool(self, op: OperatorInfo, q: torch.Tensor) -> torch.Tensor:
        from emulator.fixed_point import average

        t = self.graph.tensors
        x, y = t[op.inputs[0]], t[op.outputs[0]]
        if float(x.scale[0]) != float(y.scale[0]) or int(x.zero_point[0]) != int(y.zero_point[0]):
            raise ModelImportError(f"{self.where}: layer {op.index} ({op.name}) changes the quantization; TFLite's "
                                   "quantized pooling keeps it")
        kernel, stride = op.options["filter"], op.options["stride"]
        same = op.options["padding"] == _SAME
        ones = torch.ones_like(q[:1, :1], dtype=torch.float64)
        if op.name == "MAX_POOL_2D":
            padded = _pad_same(q.double(), kernel, stride) if same else q.double()
            inside = _pad_same(ones, kernel, stride) if same else ones
            out = F.max_pool2d(padded.masked_fill(inside == 0, -math.inf), kernel, stride).to(torch.int64)
        else:
            total = F.avg_pool2d(_pad_same(q.double(), kernel, stride) if same else q.double(), kernel, stride,
                                 divisor_override=1)
            count = F.avg_pool2d(_pad_same(ones, kernel, stride) if same else ones, kernel, stride,
                                 divisor_override=1)
            out = average(total.round().to(torch.int64), count.round().to(torch.int64))
        return out.clamp(*self._activation_range(op))

    def _add(self, op: OperatorInfo, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
        from emulator.fixed_point import rescale
        from psum.golden import tflite_multiplier

        t = self.graph.tensors
        s1, s2, so = (float(t[i].scale[0]) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
        z1, z2, zo = (int(t[i].zero_point[0]) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
        twice_max = 2 * max(s1, s2)
        m1, m2 = tflite_multiplier(s1 / twice_max), tflite_multiplier(s2 / twice_max)
        mo = tflite_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * so))
        left = 1 << ADD_LEFT_SHIFT
        total = rescale((q1 - z1) * left, *m1) + rescale((q2 - z2) * left, *m2)
        return (rescale(total, *mo) + zo).clamp(*self._activation_range(op))

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> TFLiteIntNet:
        return cls(read_tflite(path), where=str(path), **kwargs)

    #: The MAC operand width of the integer reading: a stored uint8 or int8 value minus
    #: its zero point lies in [-255, 255], a 9-bit signed integer.
    OPERAND_BITS = 9

    def operand_streams(self, layer: str, x: torch.Tensor, count: int, *, seed: int = 0):
        """``count`` streams of ``layer`` on the float images ``x``: (count, K) uint64
        arrays of :data:`OPERAND_BITS`-bit two's-complement patterns of the MAC's operands
        ``q_x - z_x`` and ``q_w - z_w`` (im2col order, SAME padding's zero terms included;
        the bias, the accumulator's starting value, is not a term), for output elements
        (image, position, channel) drawn with ``seed`` as :func:`emulator.streams.operand_streams`
        draws them."""
        if layer not in self.int_layers:
            raise ValueError(f"layer {layer!r} is not a MAC layer of {self.where}; choose from "
                             f"{', '.join(self.int_layers)}")
        seen = []
        target = self.int_layers[layer]
        original = self._mac_layer

        def capture(q, mac, cfg):
            if mac is target:
                seen.append(q)
            return original(q, mac, cfg)

        self._mac_layer = capture
        try:
            with torch.no_grad():
                self.forward(x)
        finally:
            del self._mac_layer
        a = torch.cat(seen) - target.input_zero
        n = a.shape[0]
        if target.kind == "fc":
            rows = (a.permute(0, 2, 3, 1) if a.dim() == 4 else a).reshape(n, 1, -1)
        else:
            if target.same:
                a = _pad_same(a, target.kernel, target.stride, target.dilation)
            if target.groups != 1:
                raise ValueError(f"operand streams of grouped or depthwise layers ({layer}) are not supported")
            rows = F.unfold(a.double(), target.kernel, target.dilation, 0, target.stride).transpose(1, 2)
        rng = np.random.default_rng(seed)
        img, pos = rng.integers(0, n, count), rng.integers(0, rows.shape[1], count)
        out = rng.integers(0, target.weight.shape[0], count)
        acts = rows[torch.from_numpy(img), torch.from_numpy(pos)].to(torch.int64).numpy()
        weights = target.weight[torch.from_numpy(out)].numpy()
        mask = (1 << self.OPERAND_BITS) - 1
        return (acts & mask).astype(np.uint64), (weights & mask).astype(np.uint64)

    @classmethod
    def from_policy(cls, path: str | Path, policy) -> TFLiteIntNet:
        """The integer reading with the accumulators a :class:`emulator.Policy` gives each
        layer (names, patterns and type selectors as :func:`emulator.convert` reads
        them); every layer's config must be an :class:`~emulator.IntAccumConfig` (its
        operand widths do not apply: the operands are the file's)."""
        from emulator.config import IntAccumConfig

        graph = read_tflite(path)
        layers = {}
        for name, module in TFLiteNet(graph, where=str(path)).named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                cfg = policy.config_for(name, module)
                if not isinstance(cfg, IntAccumConfig):
                    raise ModelImportError(f"{path}: layer {name} would get {cfg or 'float'}; the integer reading takes "
                                           "an integer accumulator in every layer")
                layers[name] = cfg
        d = policy.default
        return cls(graph, acc=d.acc, chunk=d.chunk, chunk_acc=d.chunk_acc, order=d.order, layers=layers,
                   where=str(path))


_MAC_OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: The operators of the integer reading (a SOFTMAX may end the graph: its input is the output).
_INT_OPERATORS = _MAC_OPERATORS + ("AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "RESHAPE", "SQUEEZE")


def conv_scale(x: TensorInfo, filter_scale: float, y: TensorInfo) -> float:
    """The real multiplier of a convolution or fully connected layer's output stage,
    ``s_x * s_w / s_y``, as TFLite computes it: for uint8 layers (the legacy per-tensor
    path, ``GetQuantizedConvolutionMultipler``) ``s_x * s_w`` is a float32 product, for
    int8 ones a double product; the division is in double."""
    if x.dtype is np.uint8:
        product = float(np.float32(x.scale[0]) * np.float32(filter_scale))
    else:
        product = float(x.scale[0]) * filter_scale
    return product / float(y.scale[0])


def _absmax(t: torch.Tensor) -> int:
    return int(t.abs().max()) if t.numel() else 0


def _exact_accumulator(a: torch.Tensor, layer: _IntLayer, cfg) -> torch.Tensor | None:
    """The accumulator values of a layer by one exact sum (float64 convolution or
    matmul: every partial sum is an integer below 2^53), where docs/semantics.md §6
    allows it: a wrapping accumulator (the exact sum reduced once), or one no partial sum
    can leave. None otherwise (saturation possible, chunks)."""
    from emulator.matmul import fit_int

    bits = cfg.acc.bits
    k = layer.weight.shape[1]
    bound = k * layer.input_bound * _absmax(layer.weight) + _absmax(layer.bias)  # from the types: no pass over a
    if cfg.chunk is not None or bound > 2**53 or (cfg.acc.overflow != "wrap" and bound >= 2 ** (bits - 1)):
        return None
    if layer.kind == "fc":
        exact = _exact_products(a, layer.weight, layer.input_bound) + layer.bias
    elif layer.kernel == (1, 1) and layer.groups == 1:  # pointwise: one matrix product over the channels
        x = a[:, :, ::layer.stride[0], ::layer.stride[1]]
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        exact = (_exact_products(rows, layer.weight, layer.input_bound) + layer.bias).reshape(
            x.shape[0], x.shape[2], x.shape[3], -1)
        exact = exact.permute(0, 3, 1, 2)
    else:  # float32 for a depthwise layer whose sums stay below 2^24 (a direct convolution), else float64
        dtype = torch.float32 if layer.groups == a.shape[1] and bound <= 2**24 else torch.float64
        out_channels = layer.weight.shape[0]
        weight = layer.weight.to(dtype).reshape(out_channels, -1, *layer.kernel)
        exact = F.conv2d(a.to(dtype), weight, layer.bias.to(dtype), layer.stride, 0, layer.dilation, layer.groups)
        exact = exact.to(torch.int64)
    return exact if bound < 2 ** (bits - 1) else fit_int(exact, cfg.acc)


def _exact_products(a: torch.Tensor, weight: torch.Tensor, bound: int) -> torch.Tensor:
    """``a @ weight.T`` of integer tensors, exactly, by float32 matrix products: the
    weights split into base-``2^p`` digits small enough that every partial sum of each
    product is an integer below 2^24 (float32 holds it exactly, in any order of
    summation), ``bound`` at least the largest ``|a|``; float64 where even one-bit digits
    would not keep it (the caller bounds the whole sum below 2^53). Returns int64."""
    k = a.shape[1]
    limit = 2**24 // max(1, k * max(1, bound))  # the largest digit magnitude allowed
    if limit < 1:
        return (a.double() @ weight.T.double()).to(torch.int64)
    p = (limit + 1).bit_length() - 1  # digits 0 .. 2^p - 1 <= limit
    a32, rest, shift = a.float(), weight, 0
    total = torch.zeros(a.shape[0], weight.shape[0], dtype=torch.int64)
    while _absmax(rest) > limit:
        digit = rest & ((1 << p) - 1)
        total += (a32 @ digit.T.float()).to(torch.int64) << shift
        rest, shift = rest >> p, shift + p
    return total + ((a32 @ rest.T.float()).to(torch.int64) << shift)


def _depthwise_steps(cols: torch.Tensor, layer: _IntLayer, cfg) -> torch.Tensor:
    from emulator.matmul import fit_int

    """A depthwise layer's accumulators step by step, as :func:`psum.golden.int_dot` with
    the bias as the first term: ``cols`` (N, C, k, L) the input's terms (one channel per
    group), the weights (C * M, k); every output's k + 1 terms taken in order, each add
    fitted to ``cfg.acc``, chunks of ``cfg.chunk`` terms added into ``cfg.chunk_acc``.
    Returns (N, C * M, L) int64."""
    n, channels, k, positions = cols.shape
    per = layer.weight.shape[0] // channels
    a = cols.repeat_interleave(per, dim=1)  # (N, C * M, k, L): output channel o reads input channel o // M
    terms = [(None, layer.bias.view(1, -1, 1))] + [(a[:, :, j], layer.weight[:, j].view(1, -1, 1)) for j in range(k)]
    step = cfg.chunk or len(terms)
    outer = None
    for start in range(0, len(terms), step):
        acc = torch.zeros(n, channels * per, positions, dtype=torch.int64)
        for x, w in terms[start:start + step]:
            acc = fit_int(acc + (w if x is None else x * w), cfg.acc)
        if cfg.chunk is None:
            return acc
        outer = fit_int(acc if outer is None else outer + acc, cfg.chunk_acc)  # the outer accumulator starts at 0
    return outer


def _stepwise_accumulator(a: torch.Tensor, layer: _IntLayer, cfg) -> torch.Tensor:
    """The accumulator values of a layer step by step (:func:`emulator.int_matmul`):
    every output's terms in ``cfg.order``, the bias first."""
    from emulator.matmul import int_matmul

    n = a.shape[0]
    if layer.kind == "fc":
        return _biased_matmul(a, layer.weight, layer.bias, cfg, int_matmul)
    h = (a.shape[2] - layer.dilation[0] * (layer.kernel[0] - 1) - 1) // layer.stride[0] + 1
    w = (a.shape[3] - layer.dilation[1] * (layer.kernel[1] - 1) - 1) // layer.stride[1] + 1
    cols = F.unfold(a.double(), layer.kernel, layer.dilation, 0, layer.stride)  # exact: small integers
    k = layer.kernel[0] * layer.kernel[1]
    if layer.groups == a.shape[1]:  # depthwise: a few terms per output, stepped over all outputs at once
        acc = _depthwise_steps(cols.reshape(n, layer.groups, k, -1).to(torch.int64), layer, cfg)
        return acc.reshape(n, -1, h, w)
    per_group = cols.shape[1] // layer.groups  # input channels per group times kernel positions
    outputs = layer.weight.shape[0] // layer.groups
    parts = []
    for g in range(layer.groups):
        rows = cols[:, g * per_group:(g + 1) * per_group].transpose(1, 2).reshape(-1, per_group)
        weight = layer.weight[g * outputs:(g + 1) * outputs]
        channels = per_group // k
        parts.append(_biased_matmul(_ordered(rows, channels, k, cfg.order), _ordered(weight, channels, k, cfg.order),
                                    layer.bias[g * outputs:(g + 1) * outputs], cfg, int_matmul))
    acc = torch.cat(parts, dim=1)  # (n * h * w, out channels)
    return acc.reshape(n, h * w, -1).transpose(1, 2).reshape(n, -1, h, w)


def _ordered(rows: torch.Tensor, channels: int, k: int, order: str) -> torch.Tensor:
    """Rows whose last axis is im2col-ordered (channel, kernel position) reordered to
    ``order``: ``"nhwc"`` puts the channel innermost."""
    if order == "im2col":
        return rows
    return rows.reshape(rows.shape[0], channels, k).transpose(1, 2).reshape(rows.shape[0], -1)


def _biased_matmul(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cfg, int_matmul) -> torch.Tensor:
    """Each row's dot product with each weight row, accumulated in ``cfg`` from the bias:
    the bias enters as the first term (times 1)."""
    ones = torch.ones(rows.shape[0], 1, dtype=torch.int32)
    a = torch.cat([ones, rows.to(torch.int32)], dim=1)
    b = torch.cat([bias[None, :], weight.T], dim=0).to(torch.int32)
    return int_matmul(a, b, cfg.acc, chunk=cfg.chunk, chunk_acc=cfg.chunk_acc)
