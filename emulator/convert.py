"""Turning a float model into an emulated one: :func:`convert` and :class:`Policy`.

In the spirit of ``torch.ao.quantization``'s module swapping: :func:`convert` returns a
copy of the model in which every ``nn.Linear`` and ``nn.Conv2d`` is replaced by its
emulated counterpart (built with ``from_float``), configured by a :class:`Policy`.
Subclasses that keep the base class's forward (weight parametrizations, marker
subclasses) are swapped like their base; subclasses with a forward of their own are
refused by name, since their MACs are not the base layer's.
Everything else (activations, pooling, batch norm, residual additions) stays as it was
and runs in fp32: only the MACs of conv and linear layers are emulated. A bare layer
(``convert(nn.Linear(...), cfg)``) converts to its emulated counterpart.

MACs that no module holds (a functional ``x @ w``, ``F.linear``, ``torch.einsum`` in a
model's own ``forward``) cannot be swapped: the converted model watches its first
forward pass and warns (:class:`UnemulatedMACWarning`) naming the module and function
of every such MAC, which then runs in float.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from emulator.config import AccumConfig, IntAccumConfig
from emulator.device import model_device
from emulator.layers import EmulatedConv2d, EmulatedLinear

__all__ = ["Policy", "convert", "calibrate", "emulated_layers", "UnemulatedMACWarning", "TYPE_SELECTORS"]

Config = AccumConfig | IntAccumConfig

#: Float module type -> emulated type. New types register here.
SWAPS: dict[type, type] = {nn.Linear: EmulatedLinear, nn.Conv2d: EmulatedConv2d}

#: Layers that do MACs the emulator does not model; converting a model that has one is
#: an error naming it (keep it in float with a ``None`` policy entry instead).
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d, nn.Bilinear, nn.MultiheadAttention, nn.RNNBase)


#: Layer-type selectors of a policy entry (``"type:depthwise"``), each a predicate on
#: the float module: every Linear; every Conv2d; depthwise (groups = input channels > 1);
#: grouped (1 < groups < input channels); pointwise (1x1 kernel, groups = 1).
TYPE_SELECTORS = {
    "type:Linear": lambda m: isinstance(m, nn.Linear),
    "type:Conv2d": lambda m: isinstance(m, nn.Conv2d),
    "type:depthwise": lambda m: isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels,
    "type:grouped": lambda m: isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels,
    "type:pointwise": lambda m: isinstance(m, nn.Conv2d) and m.groups == 1 and tuple(m.kernel_size) == (1, 1),
}


@dataclass(frozen=True)
class Policy:
    """Which accumulation config each layer gets.

    Parameters
    ----------
    default : the config of every layer no entry of ``layers`` names; ``None`` keeps
        such layers in float.
    layers : ``{selector: config or None}`` in priority order. A selector is a layer
        name, a glob pattern (``fnmatch``: ``features.*``, ``*fc*``) or a layer-type
        selector of :data:`TYPE_SELECTORS` (``"type:Linear"``, ``"type:depthwise"``). An
        exact layer name wins, then the first matching pattern or type selector.
        ``None`` keeps the layer in float.
    """

    default: Config | None = AccumConfig()
    layers: Mapping[str, Config | None] = field(default_factory=dict)

    def __post_init__(self):
        items = tuple(self.layers.items()) if isinstance(self.layers, Mapping) else tuple(self.layers)
        for pattern, cfg in items:
            if not isinstance(pattern, str):
                raise TypeError(f"policy selectors are layer names, patterns or type selectors, not {pattern!r}")
            if pattern.startswith("type:") and pattern not in TYPE_SELECTORS:
                raise ValueError(f"unknown layer-type selector {pattern!r}; choose from {', '.join(TYPE_SELECTORS)}")
            if cfg is not None and not isinstance(cfg, (AccumConfig, IntAccumConfig)):
                raise TypeError(f"policy entry {pattern!r} must be an AccumConfig, IntAccumConfig or None, not {cfg!r}")
        if self.default is not None and not isinstance(self.default, (AccumConfig, IntAccumConfig)):
            raise TypeError(f"policy default must be an AccumConfig, IntAccumConfig or None, not {self.default!r}")
        object.__setattr__(self, "layers", items)

    def __str__(self) -> str:
        """The default config, then each selector's: ``acc=e4m7 inputs=bf16 + fc=float``."""
        text = "float" if self.default is None else str(self.default)
        return text + "".join(f" + {n}={c if c is not None else 'float'}" for n, c in self.layers)

    def match(self, name: str, module: nn.Module | None = None) -> str | None:
        """The entry of ``layers`` that decides layer ``name`` (the float ``module``, for
        type selectors), or None for the default."""
        for pattern, _ in self.layers:
            if pattern == name:
                return pattern
        for pattern, _ in self.layers:
            if pattern in TYPE_SELECTORS:
                if module is not None and TYPE_SELECTORS[pattern](module):
                    return pattern
            elif fnmatch.fnmatchcase(name, pattern):
                return pattern
        return None

    def config_for(self, name: str, module: nn.Module | None = None) -> Config | None:
        pattern = self.match(name, module)
        return self.default if pattern is None else dict(self.layers)[pattern]


def _as_policy(policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (AccumConfig, IntAccumConfig)) or policy is None:
        return Policy(default=policy)
    if isinstance(policy, str):
        return Policy(default=AccumConfig(acc=policy))
    raise TypeError(f"policy must be a Policy, an AccumConfig, an IntAccumConfig or a format spec, not {policy!r}")


class UnemulatedMACWarning(UserWarning):
    """A converted model computes MACs outside any swappable layer; they run in float."""


def _base(module: nn.Module) -> type | None:
    """The :data:`SWAPS` class ``module`` is emulated as: its own class, or the base class
    of a subclass whose MACs are the base's (same ``forward``/``_conv_forward``); None for
    a module that is no Linear/Conv2d. A subclass with MACs of its own is a ValueError."""
    for base in SWAPS:
        if type(module) is base:
            return base
        if isinstance(module, base):
            own = [f for f in ("forward", "_conv_forward") if getattr(type(module), f, None) is not getattr(base, f, None)]
            if own:
                raise ValueError(f"{type(module).__name__} subclasses nn.{base.__name__} but defines its own "
                                 f"{' and '.join(own)}, so its MACs are not nn.{base.__name__}'s; keep it in float "
                                 "with a None policy entry, or register an emulated counterpart in "
                                 "emulator.convert.SWAPS")
            return base
    return None


def _swap(module: nn.Module, cfg: Config, name: str) -> nn.Module:
    """The emulated counterpart of ``module`` (hooks and train/eval mode carried over)."""
    try:
        emulated = SWAPS[_base(module)].from_float(module, cfg, name=name)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith("layer ") else f"layer {name or '(the model)'}: "
                         f"{message}") from None
    emulated._forward_pre_hooks.update(module._forward_pre_hooks)
    emulated._forward_hooks.update(module._forward_hooks)
    emulated.train(module.training)
    return emulated


def convert(model: nn.Module, policy: Policy | Config | str) -> nn.Module:
    """A copy of ``model`` with its Linear/Conv2d layers emulated as ``policy`` says.

    ``policy`` may also be a single config (every layer) or an accumulator spec
    (``"e4m7"``: that accumulator, bf16 inputs). The original model is not changed;
    forward hooks and the device of each swapped layer carry over. A bare Linear or
    Conv2d becomes the emulated layer (configured by ``policy.default``). Raises
    ValueError naming the layer for a MAC layer or format the emulator does not
    support, and for policy entries that match no layer. MACs outside any layer are
    reported at the first forward pass (:class:`UnemulatedMACWarning`).

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> emulated = convert(model, Policy(AccumConfig(acc="e4m7"), {"2": None}))  # the last stays float
    >>> [type(m).__name__ for m in emulated], emulated is model, type(model[0]).__name__
    (['EmulatedLinear', 'ReLU', 'Linear'], False, 'Linear')
    """
    policy = _as_policy(policy)
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert needs an nn.Module, not {type(model).__name__}")
    if isinstance(model, tuple(SWAPS)) or isinstance(model, UNSUPPORTED):
        if policy.layers:
            raise ValueError(f"policy entries match no layer of the model: {', '.join(p for p, _ in policy.layers)} "
                             f"(a bare {type(model).__name__} is configured by the policy's default)")
        if isinstance(model, UNSUPPORTED) and policy.default is not None:
            raise ValueError(f"a bare {type(model).__name__} is not supported by the emulator")
        return copy.deepcopy(model) if policy.default is None else _swap(model, policy.default, "")
    new = copy.deepcopy(model)
    used: set[str] = set()
    floats: set[str] = set()
    for name, module in list(new.named_modules()):
        if not name or any(name.startswith(f"{kept}.") for kept in floats):
            continue  # inside a layer kept in float (an attention's out_proj is used by its parent's own MACs)
        pattern = policy.match(name, module)
        if pattern is not None:
            used.add(pattern)
        cfg = policy.config_for(name, module)
        if isinstance(module, UNSUPPORTED) and cfg is not None:
            raise ValueError(f"layer {name} ({type(module).__name__}) is not supported by the emulator; "
                             "keep it in float with a None policy entry")
        if isinstance(module, tuple(SWAPS)) or isinstance(module, UNSUPPORTED):
            if cfg is None:
                floats.add(name)  # kept in float on purpose
                continue
            parent_name, _, child = name.rpartition(".")
            setattr(new.get_submodule(parent_name) if parent_name else new, child, _swap(module, cfg, name))
    unused = [p for p, _ in policy.layers if p not in used]
    if unused:
        raise ValueError(f"policy entries match no layer of the model: {', '.join(unused)}")
    _watch_first_forward(new, floats)
    return new


# -- MACs outside layers -------------------------------------------------------------------

#: Torch functions that compute multiply-accumulates; called outside an emulated layer
#: (or a layer kept in float on purpose) they are MACs the emulator never sees.
MAC_FUNCTIONS = {
    torch.matmul, torch.mm, torch.bmm, torch.mv, torch.addmm, torch.addmv, torch.baddbmm, torch.addbmm,
    torch.einsum, torch.tensordot, torch.inner, torch.dot, torch.vdot, torch.chain_matmul, torch.linalg.matmul,
    torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d, torch.conv_transpose2d,
    torch.conv_transpose3d, F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d,
    F.conv_transpose2d, F.conv_transpose3d, F.scaled_dot_product_attention,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.mm, torch.Tensor.bmm,
    torch.Tensor.mv, torch.Tensor.dot, torch.Tensor.addmm, torch.Tensor.baddbmm,
}


class _MacWatch(TorchFunctionMode):
    """Records MAC functions called while the innermost running module is not a layer
    that accounts for its own MACs."""

    def __init__(self, stack: list[tuple[str, nn.Module]], floats: set[str]):
        super().__init__()
        self.stack, self.floats, self.found = stack, floats, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in MAC_FUNCTIONS:
            name, module = self.stack[-1] if self.stack else ("", None)
            accounted = isinstance(module, (EmulatedLinear, EmulatedConv2d)) or name in self.floats
            if not accounted:
                label = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
                self.found.setdefault(name or "(the model's own forward)", set()).add(label)
        return func(*args, **(kwargs or {}))


def _watch_first_forward(model: nn.Module, floats: set[str]) -> None:
    """Hooks on ``model`` that watch its first complete forward pass for MACs outside
    layers (a pass that raises, as the first ones of :func:`calibrate` do, is not counted)."""
    state: dict = {}

    def begin(root, inputs):
        if "mode" in state:  # the root called again inside its own forward
            return
        stack: list[tuple[str, nn.Module]] = []
        handles = []
        def enter(module, inputs, name):
            stack.append((name, module))

        def leave(module, inputs, output):
            stack.pop()

        for name, module in root.named_modules():
            if module is root:
                continue
            handles.append(module.register_forward_pre_hook(functools.partial(enter, name=name)))
            handles.append(module.register_forward_hook(leave, always_call=True))
        mode = _MacWatch(stack, floats)
        mode.__enter__()
        state.update(mode=mode, handles=handles)

    def end(root, inputs, output):
        mode = state.pop("mode", None)
        if mode is None:
            return
        mode.__exit__(None, None, None)
        for handle in state.pop("handles"):
            handle.remove()
        if sys.exc_info()[0] is not None:  # the forward pass failed (as in calibration): watch the next one
            return
        state["pre"].remove()
        state["post"].remove()
        if mode.found:
            where = "; ".join(f"{name} ({', '.join(sorted(fns))})" for name, fns in mode.found.items())
            warnings.warn(f"MACs outside Linear/Conv2d layers are not emulated and run in float: {where}",
                          UnemulatedMACWarning, stacklevel=2)

    state["pre"] = model.register_forward_pre_hook(begin)
    state["post"] = model.register_forward_hook(end, always_call=True)


def emulated_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """``(name, layer)`` of every emulated layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (EmulatedLinear, EmulatedConv2d))]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Fix the activation scale of every integer layer from ``batches`` of inputs.

    ``batches`` yields input tensors, or ``(inputs, targets, ...)`` tuples as a
    ``DataLoader`` over a labelled dataset does (the first element is the input).

    Runs the model on each batch while the integer layers record the largest |input|
    they see; each layer's per-tensor scale becomes ``absmax / (2^(b-1) - 1)``. Layers
    are calibrated in the model's own forward order, each seeing the activations that
    the already-quantized earlier layers produce. Returns ``model``.

    >>> from torch import nn
    >>> model = convert(nn.Sequential(nn.Linear(4, 2)), IntAccumConfig(acc="int16"))
    >>> calibrate(model, [torch.full((8, 4), 2.54)])[0].act_scale  # 2.54 / 127
    tensor(0.0200)
    """
    int_layers = [m for _, m in emulated_layers(model) if isinstance(m.config, IntAccumConfig)]
    if not int_layers:
        return model
    was_training = model.training
    model.eval()
    for layer in int_layers:  # one layer at a time, in order
        layer.act_scale, layer.act_absmax, layer.observing = None, None, True
    pending = list(int_layers)
    device = model_device(model)
    batches = [_inputs_of(batch, i).to(device) for i, batch in enumerate(batches)]
    if not batches:
        raise ValueError("calibration needs at least one batch")
    while pending:
        for batch in batches:
            try:
                model(batch)
            except RuntimeError as exc:  # a later layer without a scale yet: expected
                if "has no activation scale" not in str(exc):
                    raise
        done = [layer for layer in pending if layer.act_absmax is not None]
        if not done:
            raise RuntimeError("calibration made no progress: no integer layer saw an input")
        for layer in done:
            layer.finish_calibration()
        pending = [layer for layer in pending if layer.act_scale is None]
    model.train(was_training)
    return model


def _inputs_of(batch, index: int) -> torch.Tensor:
    """The input tensor of calibration batch ``index``: the batch, or its first element."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"calibration batch {index} must be an input tensor or an (inputs, targets) pair, "
                        f"not {type(batch).__name__}")
    return batch
