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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LeNet5", "AlexNetCifar", "ResNet18", "MODELS", "ModelSpec", "build", "count_macs", "layer_macs"]


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
    """A fresh model ``name`` for ``dataset`` (default: the model's first dataset)."""
    from emulator.data import DATASETS

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    spec = MODELS[name]
    dataset = dataset or spec.datasets[0]
    if dataset not in spec.datasets:
        raise ValueError(f"model {name} is for {', '.join(spec.datasets)}, not {dataset!r}")
    return spec.make(DATASETS[dataset].num_classes), dataset


def layer_macs(model: nn.Module, image_size: int) -> dict[str, int]:
    """Multiply-accumulates per image of each Conv2d/Linear layer, in forward order."""
    macs: dict[str, int] = {}
    handles = [m.register_forward_hook(
        lambda mod, inputs, out, name=name: macs.__setitem__(name, out[0].numel() * mod.weight[0].numel()))
        for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return macs


def layer_table(model: nn.Module, image_size: int) -> list[dict]:
    """Every Conv2d/Linear layer of ``model`` in forward order, as the names ``--layer``
    and policies take: its kind, K (the length of each output's dot product, the
    accumulation the emulator rounds), its output shape per image, outputs and MACs
    per image (``outputs * K``)."""
    rows: list[dict] = []

    def record(mod, inputs, out, name):
        kind = type(mod).__name__
        if isinstance(mod, nn.Conv2d):
            kind += " " + "x".join(map(str, mod.kernel_size))
            if mod.stride != (1, 1):
                kind += f" stride {'x'.join(map(str, mod.stride))}"
            if mod.groups > 1:
                kind += " depthwise" if mod.groups == mod.in_channels == mod.out_channels else f" groups {mod.groups}"
        k = mod.weight[0].numel()
        rows.append({"name": name, "kind": kind, "k": k, "output": list(out.shape[1:]),
                     "outputs": out[0].numel(), "macs": out[0].numel() * k})

    handles = [m.register_forward_hook(lambda mod, i, o, name=name: record(mod, i, o, name))
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
    return rows


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image, in conv and linear layers."""
    return sum(layer_macs(model, image_size).values())
