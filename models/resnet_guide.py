"""The guide's CIFAR ResNet-18, the M0 baseline: 3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2].

Reads and writes nothing. Build through `models.build("resnet_guide", num_classes, width=64)`.
`width` is the base channel count (stages of w, 2w, 4w, 8w); at the usual 64 it has 11,173,962
parameters at 10 classes, over the 5M cap, so `runner.core.budget` suggests a narrower base width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models._registry import ModelConfigError, register_model


class BasicBlock(nn.Module):
    """Post-activation conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv + BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3-BN-ReLU at stride 1, four stages (strides 1/2/2/2), global average pool, linear."""

    def __init__(self, blocks: tuple[int, ...], width: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out, stride = width * 2**i, 1 if i == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1)
                                          for j in range(n))))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _check_resnet_guide(width: int) -> None:
    if width < 1:
        raise ModelConfigError(f"width {width} must be an integer >= 1 (base channels; the guide uses 64)")


@register_model(check=_check_resnet_guide)
def resnet_guide(num_classes: int, *, width: int = 64) -> CifarResNet:
    """CIFAR ResNet-18 with base width `width` (PyTorch default init, as in the guide)."""
    return CifarResNet((2, 2, 2, 2), width, num_classes)
