"""The study's networks and their registry.

| name | input | structure |
|---|---|---|
| ``lenet5`` | 32x32x3 | LeNet-5 (LeCun et al., 1998): conv5x5(6) - ReLU - maxpool2 - conv5x5(16) - ReLU - maxpool2 - FC 400-120-84-classes with ReLU (ReLU/max-pool instead of scaled tanh/subsampling, as in modern re-implementations) |
| ``alexnet-cifar`` | 32x32x3 | AlexNet's 5 conv + 3 FC at half width for 32x32 inputs (below) |
| ``resnet18-cifar`` | 32x32x3 | ResNet-18 (He et al., 2016) with a 3x3 stride-1 stem and no max-pool, BasicBlocks [2, 2, 2, 2], widths 64-128-256-512 |
| ``resnet18-imagenet`` | 224x224x3 | the torchvision ResNet-18, same module names, so torchvision checkpoints load |

**AlexNet for CIFAR.** AlexNet (Krizhevsky et al., 2012) is five convolutions (the first
two and the last followed by overlapping 3x3/2 max-pooling) and three fully connected
layers with dropout. For 32x32 inputs the 11x11/4 stem would leave almost no spatial
extent, so the stem is a 5x5/1 convolution (as in the cuda-convnet CIFAR variant), the
second convolution keeps 5x5, the last three 3x3; pooling brings 32 -> 15 -> 7 -> 3.
Widths are half of AlexNet's (32-96-192-128-128 instead of 64-192-384-256-256) and the
FC layers 1152-512-256-classes instead of 9216-4096-4096-1000, which keeps the
characteristic structure (kernel sizes, pooling, two large dropout FC layers, K up to
1728 in the convolutions and 1152 in fc1) at 1.35 M parameters, so a trained checkpoint
is a few MB and trains on a CPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["LeNet5", "AlexNetCifar", "ResNet18", "MODELS", "ModelSpec", "build", "count_macs", "layer_macs",
           "visit_layers",
           "is_entry_point", "entry_point", "architecture_digest", "label", "is_model_file", "preprocessing",
           "has_integer_reading",
           "MODEL_FILES"]


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),  # (6, 14, 14)
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # (16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (32, 15, 15)
            nn.Conv2d(32, 96, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (96, 7, 7)
            nn.Conv2d(96, 192, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(192, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),  # (128, 3, 3)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5), nn.Linear(128 * 3 * 3, 512), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(512, 256), nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs with batch norm, identity or 1x1 shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's module names. ``stem="imagenet"``: 7x7/2 conv and
    3x3/2 max-pool (torchvision); ``stem="cifar"``: 3x3/1 conv, no max-pool."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', not {stem!r}")
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, inplanes = (64, 128, 256, 512), 64
        for index, planes in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            setattr(self, f"layer{index}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: its constructor and the datasets it is trained on."""

    name: str
    datasets: tuple[str, ...]  # the first is the default
    make: Callable[[int], nn.Module]  # num_classes -> model
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (
        ModelSpec("lenet5", ("cifar10",), LeNet5, "LeNet-5 for 32x32x3"),
        ModelSpec("alexnet-cifar", ("cifar10", "cifar100"), AlexNetCifar,
                  "AlexNet, 5 conv + 3 FC, half width, 32x32x3"),
        ModelSpec("resnet18-cifar", ("cifar100", "cifar10"),
                  lambda n: ResNet18(n, stem="cifar"), "ResNet-18, 3x3 stem, no max-pool"),
        ModelSpec("resnet18-imagenet", ("imagenet",), lambda n: ResNet18(n, stem="imagenet"),
                  "ResNet-18 (torchvision architecture)"),
    )
}


def build(name: str, dataset: str | None = None) -> tuple[nn.Module, str]:
    """A fresh model and its dataset: ``name`` a registered network (:data:`MODELS`) or
    an entry point of one's own (:func:`entry_point`); ``dataset`` a name of
    :data:`emulator.data.DATASETS` or a folder dataset id (default: a registered
    network's first dataset; a network of one's own needs it). The model is built for
    the dataset's number of classes; one of one's own must give that many outputs for
    one image of the dataset's size."""
    from emulator.data import dataset_spec, is_folder_dataset

    if name in MODELS:
        spec = MODELS[name]
        dataset = dataset or spec.datasets[0]
        if dataset not in spec.datasets and not is_folder_dataset(dataset):
            raise ValueError(f"model {name} is for {', '.join(spec.datasets)}, not {dataset!r} (or for a folder "
                             "dataset of your own)")
        return spec.make(dataset_spec(dataset).num_classes), dataset
    if not is_entry_point(name) and not is_model_file(name):
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}, or name a network of your own "
                         "as FILE.py:NAME, package.module:NAME or a FILE.tflite")
    if dataset is None:
        raise ValueError(f"{name} is a network of your own: give its dataset (a folder with train/ and test/, "
                         "or cifar10, cifar100, imagenet)")
    data = dataset_spec(dataset)
    model = _import_file(name) if is_model_file(name) else _call_factory(name, entry_point(name), data.num_classes)
    _check_outputs(name, model, data.image_size, data.num_classes)
    return model, dataset


# -- networks of one's own ------------------------------------------------------------------

#: Model files psum imports, by suffix: they carry their weights (no checkpoint) and
#: the input preprocessing their network expects.
MODEL_FILES = (".tflite", ".onnx")


def is_model_file(ref) -> bool:
    """A path to a model file psum imports (:data:`MODEL_FILES`: TensorFlow Lite, ONNX)."""
    return isinstance(ref, str) and ref.lower().endswith(MODEL_FILES)


def has_integer_reading(ref) -> bool:
    """A model file that holds a quantized integer network psum reads as published
    (TensorFlow Lite: :class:`emulator.tflite_import.TFLiteIntNet`); its INT points
    take the file's scales instead of calibrating."""
    return isinstance(ref, str) and ref.lower().endswith(".tflite")


def _import_file(ref: str) -> nn.Module:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"model file {ref} does not exist" if not path.exists() else f"model file {ref} is not a file")
    if path.suffix.lower() == ".onnx":
        from emulator.onnx_import import OnnxNet

        return OnnxNet.from_file(path).eval()
    from emulator.tflite_import import TFLiteNet

    return TFLiteNet.from_file(path).eval()


def preprocessing(ref: str) -> dict | None:
    """The input preprocessing an imported model file records (image size, crop, mean,
    std; :class:`emulator.data.DatasetSpec`), or None for networks defined in Python."""
    if not has_integer_reading(ref):  # ONNX files do not record it; Python networks neither
        return None
    from emulator.tflite_import import input_preprocessing, read_tflite

    path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"model file {ref} does not exist" if not path.exists() else f"model file {ref} is not a file")
    return input_preprocessing(read_tflite(path))  # the graph alone: no weights dequantized


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def is_entry_point(ref) -> bool:
    """``FILE.py:NAME`` or ``package.module:NAME`` (NAME possibly dotted)."""
    import re

    if not isinstance(ref, str):
        return False
    where, sep, attr = ref.rpartition(":")
    if not sep or not re.fullmatch(rf"{_IDENT}(\.{_IDENT})*", attr):
        return False
    return where.endswith(".py") or re.fullmatch(rf"{_IDENT}(\.{_IDENT})*", where) is not None


def _source_path(ref: str) -> Path | None:
    """The Python file an entry point's module comes from (None: not found)."""
    import importlib.util

    where = ref.rpartition(":")[0]
    if where.endswith(".py"):
        return Path(where).expanduser().resolve()
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and found.origin.endswith(".py") else None


def entry_point(ref: str):
    """The object an entry point names, importing its module: ``FILE.py:NAME`` runs the
    file as a module (as ``python FILE.py`` would run it, its folder on ``sys.path``),
    ``package.module:NAME`` imports the module. Only code the user names is run;
    nothing is evaluated from a string. Errors are one-line :class:`ValueError`."""
    import importlib
    import importlib.util
    import sys

    if not is_entry_point(ref):
        raise ValueError(f"{ref!r} is not an entry point: FILE.py:NAME or package.module:NAME")
    where, _, attr = ref.rpartition(":")
    if where.endswith(".py"):
        path = _source_path(ref)
        if not path.is_file():
            raise ValueError(f"{ref}: {where} does not exist" if not path.exists() else f"{ref}: {where} is not a file")
        module_name = "psum_user_" + hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
        module = sys.modules.get(module_name)
        if module is None:
            if str(path.parent) not in sys.path:
                sys.path.append(str(path.parent))
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 (any failure of the user's file is one line)
                del sys.modules[module_name]
                raise ValueError(f"{ref}: running {where} failed: {_one_line(exc)}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # noqa: BLE001 (any failure of the user's module is one line)
            raise ValueError(f"{ref}: cannot import {where}: {_one_line(exc)}") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{ref}: {where} has no {attr}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{ref}: {attr} is not callable (a model class or a function returning an nn.Module)")
    return target


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _call_factory(ref: str, factory, num_classes: int) -> nn.Module:
    """``factory(num_classes=N)`` where it takes that keyword, else ``factory()``."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
        takes = any(p.name == "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                    or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # no signature (a builtin): call it bare
        takes = False
    try:
        model = factory(num_classes=num_classes) if takes else factory()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{ref}: building the network failed: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{ref} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_outputs(ref: str, model: nn.Module, image_size: int, num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{ref} cannot run on one 3x{image_size}x{image_size} image: {_one_line(exc)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{ref} gives outputs of shape {shape} for one image; the dataset has {num_classes} "
                         f"classes, so (1, {num_classes}) is needed")


def architecture_digest(ref: str) -> str | None:
    """Digest of the source file an entry point's module comes from (part of study keys,
    so that editing the network invalidates its points); None for registered networks."""
    if ref in MODELS:
        return None
    if is_model_file(ref):  # the file is the whole network, weights included
        return hashlib.blake2b(Path(ref).expanduser().read_bytes(), digest_size=12).hexdigest()
    path = _source_path(ref)
    if path is None or not path.is_file():
        raise ValueError(f"{ref}: cannot find the source file of its module")
    return hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()


def label(ref: str) -> str:
    """A short name for a network in tables and file names: the registered name, or an
    entry point's NAME (its last part)."""
    if is_model_file(ref):
        return Path(ref).stem
    return ref if ref in MODELS else ref.rpartition(":")[2].rpartition(".")[2]


def layer_macs(model: nn.Module, image_size: int) -> dict[str, int]:
    """Multiply-accumulates per image of each Conv2d/Linear layer, in forward order."""
    macs: dict[str, int] = {}
    visit_layers(model, image_size, lambda name, mod, x, out: macs.__setitem__(name, out[0].numel()
                                                                             * mod.weight[0].numel()))
    return macs


def visit_layers(model: nn.Module, image_size: int, record) -> None:
    """Call ``record(name, module, input, output)`` for each Conv2d/Linear of ``model``,
    in forward order, on one zero image (eval mode, no gradients; the model's mode and
    hooks restored afterwards)."""
    handles = [m.register_forward_hook(lambda mod, inputs, out, name=name: record(name, mod, inputs[0], out))
               for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def layer_table(model: nn.Module, image_size: int) -> list[dict]:
    """Every Conv2d/Linear layer of ``model`` in forward order, as the names ``--layer``
    and policies take: its kind, K (the length of each output's dot product, the
    accumulation the emulator rounds), its output shape per image, outputs and MACs
    per image (``outputs * K``)."""
    rows: list[dict] = []

    def record(name, mod, x, out):
        kind = type(mod).__name__
        if isinstance(mod, nn.Conv2d):
            kind += " " + "x".join(map(str, mod.kernel_size))
            if mod.stride != (1, 1):
                kind += f" stride {'x'.join(map(str, mod.stride))}"
            if mod.groups > 1:
                if mod.groups == mod.in_channels:  # one filter group per input channel
                    multiplier = mod.out_channels // mod.in_channels
                    kind += " depthwise" + (f" x{multiplier}" if multiplier > 1 else "")
                else:
                    kind += f" groups {mod.groups}"
        k = mod.weight[0].numel()
        rows.append({"name": name, "kind": kind, "k": k, "output": list(out.shape[1:]),
                     "outputs": out[0].numel(), "macs": out[0].numel() * k})

    visit_layers(model, image_size, record)
    return rows


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image, in conv and linear layers."""
    return sum(layer_macs(model, image_size).values())
