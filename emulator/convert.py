"""Turning a float model into an emulated one: :func:`convert` and :class:`Policy`.

In the spirit of ``torch.ao.quantization``'s module swapping: :func:`convert` returns a
copy of the model in which every ``nn.Linear`` and ``nn.Conv2d`` is replaced by its
emulated counterpart (built with ``from_float``), configured by a :class:`Policy`.
Everything else (activations, pooling, batch norm, residual additions) stays as it was
and runs in fp32: only the MACs of conv and linear layers are emulated.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from emulator.config import AccumConfig, IntAccumConfig
from emulator.device import model_device
from emulator.layers import EmulatedConv2d, EmulatedLinear

__all__ = ["Policy", "convert", "calibrate", "emulated_layers"]

Config = AccumConfig | IntAccumConfig

#: Float module type -> emulated type. New types register here.
SWAPS: dict[type, type] = {nn.Linear: EmulatedLinear, nn.Conv2d: EmulatedConv2d}

#: Layers that do MACs the emulator does not model; converting a model that has one is
#: an error naming it (keep it in float with a ``None`` policy entry instead).
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d, nn.Bilinear, nn.MultiheadAttention, nn.RNNBase)


@dataclass(frozen=True)
class Policy:
    """Which accumulation config each layer gets.

    Parameters
    ----------
    default : the config of every layer no entry of ``layers`` names; ``None`` keeps
        such layers in float.
    layers : ``{name or glob pattern: config or None}`` in priority order: an exact
        layer name wins, then the first matching pattern (``fnmatch``: ``features.*``,
        ``*fc*``). ``None`` keeps the layer in float.
    """

    default: Config | None = AccumConfig()
    layers: Mapping[str, Config | None] = field(default_factory=dict)

    def __post_init__(self):
        items = tuple(self.layers.items()) if isinstance(self.layers, Mapping) else tuple(self.layers)
        for pattern, cfg in items:
            if cfg is not None and not isinstance(cfg, (AccumConfig, IntAccumConfig)):
                raise TypeError(f"policy entry {pattern!r} must be an AccumConfig, IntAccumConfig or None, not {cfg!r}")
        if self.default is not None and not isinstance(self.default, (AccumConfig, IntAccumConfig)):
            raise TypeError(f"policy default must be an AccumConfig, IntAccumConfig or None, not {self.default!r}")
        object.__setattr__(self, "layers", items)

    def match(self, name: str) -> str | None:
        """The entry of ``layers`` that decides layer ``name``, or None for the default."""
        for pattern, _ in self.layers:
            if pattern == name:
                return pattern
        for pattern, _ in self.layers:
            if fnmatch.fnmatchcase(name, pattern):
                return pattern
        return None

    def config_for(self, name: str) -> Config | None:
        pattern = self.match(name)
        return self.default if pattern is None else dict(self.layers)[pattern]


def _as_policy(policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (AccumConfig, IntAccumConfig)) or policy is None:
        return Policy(default=policy)
    if isinstance(policy, str):
        return Policy(default=AccumConfig(acc=policy))
    raise TypeError(f"policy must be a Policy, an AccumConfig, an IntAccumConfig or a format spec, not {policy!r}")


def convert(model: nn.Module, policy: Policy | Config | str) -> nn.Module:
    """A copy of ``model`` with its Linear/Conv2d layers emulated as ``policy`` says.

    ``policy`` may also be a single config (every layer) or an accumulator spec
    (``"e4m7"``: that accumulator, bf16 inputs). The original model is not changed;
    forward hooks and the device of each swapped layer carry over. Raises ValueError
    naming the layer for a MAC layer the emulator does not support, and for policy
    entries that match no layer.
    """
    policy = _as_policy(policy)
    new = copy.deepcopy(model)
    used: set[str] = set()
    for name, module in list(new.named_modules()):
        if not name:
            continue
        pattern = policy.match(name)
        if pattern is not None:
            used.add(pattern)
        cfg = policy.config_for(name)
        if isinstance(module, UNSUPPORTED) and cfg is not None:
            raise ValueError(f"layer {name} ({type(module).__name__}) is not supported by the emulator; "
                             "keep it in float with a None policy entry")
        swap = SWAPS.get(type(module))
        if swap is None or cfg is None:
            continue
        emulated = swap.from_float(module, cfg, name=name)
        emulated._forward_pre_hooks.update(module._forward_pre_hooks)
        emulated._forward_hooks.update(module._forward_hooks)
        emulated.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent_name) if parent_name else new, child, emulated)
    unused = [p for p, _ in policy.layers if p not in used]
    if unused:
        raise ValueError(f"policy entries match no layer of the model: {', '.join(unused)}")
    return new


def emulated_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """``(name, layer)`` of every emulated layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (EmulatedLinear, EmulatedConv2d))]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Fix the activation scale of every integer layer from ``batches`` of inputs.

    Runs the model on each batch while the integer layers record the largest |input|
    they see; each layer's per-tensor scale becomes ``absmax / (2^(b-1) - 1)``. Layers
    are calibrated in the model's own forward order, each seeing the activations that
    the already-quantized earlier layers produce. Returns ``model``.
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
    batches = [batch.to(device) for batch in batches]
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
