"""The study's networks.

``lenet5``: LeNet-5 (LeCun et al., 1998) adapted to 32x32x3 inputs: conv 5x5 (6) -
ReLU - max-pool 2 - conv 5x5 (16) - ReLU - max-pool 2 - FC 400-120 - ReLU - FC 120-84 -
ReLU - FC 84-classes. (ReLU and max-pooling instead of the original's scaled tanh and
subsampling, as in most modern re-implementations.)
"""

from __future__ import annotations

from torch import nn

__all__ = ["LeNet5"]


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
