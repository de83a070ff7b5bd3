"""Network families of the built-in tasks: one width knob, so a student is a narrower teacher."""

from __future__ import annotations

from torch import nn


def scaled_width(width: int, ratio: float) -> int:
    """The student width for a compression ratio: ``round(width * ratio)``, at least 1."""
    return max(1, round(width * ratio))


class ConvNet1d(nn.Module):
    """Three strided 1-D convolutions and a linear head, after the MNIST-1D paper's CNN."""

    def __init__(self, channels: int, num_classes: int, length: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        out_length = length
        for _ in range(3):
            out_length = (out_length + 1) // 2
        self.head = nn.Linear(channels * out_length, num_classes)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1) if x.dim() == 2 else x))


class MLP(nn.Module):
    """Two hidden layers of equal width."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)
