"""Networks from ONNX files as PyTorch modules that :func:`emulator.convert` emulates.

The file is read and checked with the ``onnx`` package (the format's reference
implementation); each node becomes a PyTorch operation, with ``Conv``, ``Gemm`` and
``MatMul`` by a constant as ``nn.Conv2d`` / ``nn.Linear`` submodules, the layers psum
emulates. (``onnx2torch`` would do the same mapping, but it imports torchvision, which
the CPU build of torch pinned here cannot load from PyPI; the operators a CNN classifier
needs are few.) Operators and their meaning:

| ONNX operator | module / operation |
|---|---|
| ``Conv`` (2-D) | ``nn.Conv2d``, any groups; ``pads`` (asymmetric ones applied before the convolution) or ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID |
| ``Gemm`` (constant B, ``alpha = beta = 1``, no ``transA``) | ``nn.Linear`` with C as its bias |
| ``MatMul`` (constant 2-D B) | ``nn.Linear`` without bias |
| ``BatchNormalization`` (inference) | ``nn.BatchNorm2d`` with the file's statistics |
| ``Relu``, ``Clip``, ``LeakyRelu``, ``Sigmoid``, ``HardSigmoid``, ``HardSwish``, ``Softmax`` | the same functions |
| ``MaxPool``, ``AveragePool`` (``count_include_pad``), ``GlobalAveragePool`` | pooling with the node's padding |
| ``Add``, ``Mul``, ``Concat``, ``Flatten``, ``Reshape``, ``Identity``, ``Dropout`` | the same tensor operations (a leading 1, 0 or -1 in a reshape target is the batch) |

Any other operator is a one-line :class:`ModelImportError` naming the operator and the
node. ONNX files do not say how their images were preprocessed: give the dataset's
(``--image-size``, ``--mean``, ``--std``, ``--crop``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emulator.tflite_import import ModelImportError, same_padding

__all__ = ["OnnxNet", "read_onnx", "ONNX_OPERATORS"]

ONNX_OPERATORS = ("Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                  "HardSigmoid", "HardSwish", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Mul",
                  "Concat", "Flatten", "Reshape", "Identity", "Dropout")


def read_onnx(path: str | Path):
    """The checked ``onnx.ModelProto`` of a file."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise ModelImportError(f"model file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 (protobuf and the checker raise many kinds)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"{path} is not a valid ONNX file: {first}") from None
    return model


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _module_name(node, index: int, taken: set) -> str:
    base = re.sub(r"\W+", "_", node.name).strip("_") if node.name else ""
    if not base or base[0].isdigit() or base in taken:
        base = f"{node.op_type.lower()}{index}"
    taken.add(base)
    return base


class OnnxNet(nn.Module):
    """An ONNX graph as an ``nn.Module`` taking NCHW float images. Its ``Conv``,
    ``Gemm``/``MatMul`` and ``BatchNormalization`` nodes are submodules named after the
    nodes (non-word characters as ``_``; ``<op><i>`` for unnamed ones)."""

    def __init__(self, model, where: str = "the model"):
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        self.where = where
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
        inputs = [i.name for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelImportError(f"{where} has {len(inputs)} inputs and {len(graph.output)} outputs; psum takes "
                                   "one image input and one output")
        self.graph_input, self.graph_output = inputs[0], graph.output[0].name
        self.steps: list[tuple] = []
        taken: set = set()
        for index, node in enumerate(graph.node):
            if node.op_type == "Constant":
                continue
            if node.op_type not in ONNX_OPERATORS:
                raise ModelImportError(f"{where}: operator {node.op_type} (node {index}, {node.name or 'unnamed'}) is "
                                       f"not supported; psum imports {', '.join(ONNX_OPERATORS)}")
            attrs = _attributes(node)
            name = self._layer(node, attrs, index, taken)
            self.steps.append((node.op_type, list(node.input), node.output[0], attrs, name))

    def _constant(self, node, position: int) -> np.ndarray:
        if len(node.input) <= position or node.input[position] not in self.constants:
            raise ModelImportError(f"{self.where}: {node.op_type} node {node.name or '?'} needs a constant input "
                                   f"{position} (weights stored in the file)")
        return self.constants[node.input[position]]

    def _layer(self, node, attrs: dict, index: int, taken: set) -> str | None:
        op = node.op_type
        if op == "Conv":
            w = torch.from_numpy(self._constant(node, 1).astype(np.float32))
            if w.dim() != 4:
                raise ModelImportError(f"{self.where}: Conv node {node.name or index} is {w.dim() - 2}-D; psum takes 2-D")
            groups = int(attrs.get("group", 1))
            bias = len(node.input) > 2 and node.input[2] != ""
            layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), tuple(attrs.get("strides", (1, 1))),
                              0, tuple(attrs.get("dilations", (1, 1))), groups, bias=bias)
            with torch.no_grad():
                layer.weight.copy_(w)
                if bias:
                    layer.bias.copy_(torch.from_numpy(self._constant(node, 2).astype(np.float32)))
        elif op in ("Gemm", "MatMul"):
            w = self._constant(node, 1).astype(np.float32)
            if op == "Gemm":
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise ModelImportError(f"{self.where}: Gemm node {node.name or index} has transA, alpha or beta; "
                                           "psum takes y = x W^T + b")
                w = w if attrs.get("transB", 0) else w.T
            else:
                if w.ndim != 2:
                    raise ModelImportError(f"{self.where}: MatMul node {node.name or index} needs a 2-D constant")
                w = w.T
            bias = op == "Gemm" and len(node.input) > 2 and node.input[2] != ""
            layer = nn.Linear(w.shape[1], w.shape[0], bias=bias)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                if bias:
                    layer.bias.copy_(torch.from_numpy(self._constant(node, 2).astype(np.float32)).reshape(-1))
        elif op == "BatchNormalization":
            scale, shift, mean, var = (torch.from_numpy(self._constant(node, i).astype(np.float32)) for i in range(1, 5))
            layer = nn.BatchNorm2d(len(scale), eps=float(attrs.get("epsilon", 1e-5)))
            with torch.no_grad():
                layer.weight.copy_(scale)
                layer.bias.copy_(shift)
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
            layer.eval()
        else:
            return None
        name = _module_name(node, index, taken)
        self.add_module(name, layer)
        return name

    # -- forward ------------------------------------------------------------------------------

    def _value(self, values: dict, name: str) -> torch.Tensor:
        if name in values:
            return values[name]
        return torch.from_numpy(np.array(self.constants[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.graph_input: x}
        for op, inputs, output, attrs, name in self.steps:
            a = self._value(values, inputs[0])
            if name is not None:
                y = self._run_layer(op, a, attrs, getattr(self, name))
            else:
                y = self._run(op, a, [self._value(values, i) for i in inputs[1:] if i], attrs)
            values[output] = y
        return values[self.graph_output]

    def _run_layer(self, op: str, a: torch.Tensor, attrs: dict, module: nn.Module) -> torch.Tensor:
        if op == "Conv":
            a = _pad(a, attrs, module.kernel_size, module.stride, module.dilation)
        return module(a)

    def _run(self, op: str, a: torch.Tensor, rest: list, attrs: dict) -> torch.Tensor:
        if op in ("Identity", "Dropout"):
            return a
        if op == "Relu":
            return F.relu(a)
        if op == "LeakyRelu":
            return F.leaky_relu(a, attrs.get("alpha", 0.01))
        if op == "Sigmoid":
            return torch.sigmoid(a)
        if op == "HardSigmoid":
            return (attrs.get("alpha", 0.2) * a + attrs.get("beta", 0.5)).clamp(0, 1)
        if op == "HardSwish":
            return a * (a / 6 + 0.5).clamp(0, 1)
        if op == "Clip":
            low = rest[0].item() if len(rest) > 0 else attrs.get("min", -math.inf)
            high = rest[1].item() if len(rest) > 1 else attrs.get("max", math.inf)
            return a.clamp(low, high)
        if op == "Softmax":
            return torch.softmax(a, dim=attrs.get("axis", -1))
        if op == "Add":
            return a + rest[0].to(a.dtype)
        if op == "Mul":
            return a * rest[0].to(a.dtype)
        if op == "Concat":
            return torch.cat([a, *rest], dim=attrs["axis"])
        if op == "Flatten":
            axis = attrs.get("axis", 1)
            return a.reshape(math.prod(a.shape[:axis]), -1)
        if op == "Reshape":
            shape = [int(v) for v in rest[0].tolist()]
            if shape and shape[0] in (0, 1, -1):
                shape[0] = a.shape[0]
            shape = [a.shape[i] if v == 0 else v for i, v in enumerate(shape)]
            return a.reshape(shape)
        if op == "GlobalAveragePool":
            return a.mean(dim=(2, 3), keepdim=True)
        return _pool(op, a, attrs)

    @classmethod
    def from_file(cls, path: str | Path) -> OnnxNet:
        return cls(read_onnx(path), where=str(path))


def _pad(a: torch.Tensor, attrs: dict, kernel, stride, dilation, value: float = 0.0) -> torch.Tensor:
    """A node's padding (``pads`` [top, left, bottom, right] or ``auto_pad``) applied to ``a``."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (top, bottom), (left, right) = (same_padding(a.shape[2 + i], kernel[i], stride[i], dilation[i]) for i in (0, 1))
        if auto == "SAME_LOWER":
            top, bottom, left, right = bottom, top, right, left
    elif auto == "VALID":
        top = bottom = left = right = 0
    else:
        top, left, bottom, right = tuple(attrs.get("pads", (0, 0, 0, 0)))
    return F.pad(a, (left, right, top, bottom), value=value) if top or bottom or left or right else a


def _pool(op: str, a: torch.Tensor, attrs: dict) -> torch.Tensor:
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", (1, 1)))
    dilation = tuple(attrs.get("dilations", (1, 1)))
    if attrs.get("ceil_mode", 0):
        raise ModelImportError(f"{op} with ceil_mode is not supported")
    if op == "MaxPool":
        return F.max_pool2d(_pad(a, attrs, kernel, stride, dilation, value=-math.inf), kernel, stride, 0, dilation)
    total = F.avg_pool2d(_pad(a, attrs, kernel, stride, dilation), kernel, stride, divisor_override=1)
    if attrs.get("count_include_pad", 0):
        return total / math.prod(kernel)
    ones = torch.ones_like(a[:1, :1])
    return total / F.avg_pool2d(_pad(ones, attrs, kernel, stride, dilation), kernel, stride, divisor_override=1)
