"""Wide ResNets for 32x32 inputs, in the two layouts the seed report mixes up: `wrn` and `wrn_std`.

Reads and writes nothing. Build through `models.build("wrn", num_classes, depth=16, width=4)`.

- `wrn` is the davda54/sam example layout (`example/model/wide_res_net.py`): every group has n+1
  pre-activation units, n = (depth - 4) / 6, because its first unit (a 1x1-projected "downsample" unit,
  even where the channel count does not change) comes on top of n plain units. So its "16-4" has the
  parameters of a standard WRN-22-4 (4,298,970 at 10 classes, not 2,748,890). Conv init is Kaiming
  fan-in and the classifier starts at zero, as there.
- `wrn_std` is the layout of Zagoruyko & Komodakis as written in xternalz/WideResNet-pytorch: n units
  per group, a 1x1 projection only where the channel count changes, Kaiming fan-out conv init.

Both: 3x3 stem to 16 channels, groups of 16w/32w/64w channels at strides 1/2/2, dropout between a
unit's two convolutions, BN + ReLU before global average pooling, one linear classifier.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from models._registry import ModelConfigError, register_model

Layout = Literal["davda54", "standard"]


class PreActUnit(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus a shortcut.

    With `project` the shortcut is a 1x1 conv fed by the pre-activated input (both source layouts do
    this in a group's first unit); without it the shortcut is the raw input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float, project: bool):
        super().__init__()
        self.project = project
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                         if project else nn.Identity())
        self.relu = nn.ReLU(inplace=True)  # in place is safe: it only ever rewrites a fresh BN output

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        if self.project:
            x = out
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(out)))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """Stem, three groups of `PreActUnit`s, BN-ReLU, global average pool, linear classifier."""

    def __init__(self, depth: int, width: int, dropout: float, num_classes: int, layout: Layout):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for i, stride in enumerate((1, 2, 2)):
            c_in, c_out = channels[i], channels[i + 1]
            if layout == "davda54":
                # The extra projected unit is what makes davda54's depth-d net as big as a standard d+6.
                units = [PreActUnit(c_in, c_out, stride, dropout, project=True)]
                units += [PreActUnit(c_out, c_out, 1, dropout, project=False) for _ in range(n)]
            else:
                units = [PreActUnit(c_in, c_out, stride, dropout, project=c_in != c_out)]
                units += [PreActUnit(c_out, c_out, 1, dropout, project=False) for _ in range(n - 1)]
            groups.append(nn.Sequential(*units))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        # Adaptive pooling has the same (zero) parameters as davda54's AvgPool2d(8) and also takes
        # inputs other than 32x32.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self._initialise(layout)

    def _initialise(self, layout: Layout) -> None:
        if self.fc.weight.is_meta:
            return  # built on the meta device to be counted: no values to draw, and drawing them there is slow
        fan_mode = "fan_in" if layout == "davda54" else "fan_out"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=fan_mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if layout == "davda54":
                    nn.init.zeros_(m.weight)  # every class starts at logit 0: loss starts at log(C)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.groups(self.stem(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _check_wrn(depth: int, width: int, dropout: float) -> None:
    if depth < 10 or (depth - 4) % 6:
        below = 6 * ((depth - 4) // 6) + 4
        nearest = f"{below} or {below + 6}" if below >= 10 else "10"
        raise ModelConfigError(f"depth {depth} is not of the form 6n+4 with n >= 1 "
                               f"(10, 16, 22, 28, 34, 40, ...); nearest: {nearest}")
    if width < 1:
        raise ModelConfigError(f"width {width} must be an integer >= 1 (channels are 16w, 32w, 64w)")
    if not 0.0 <= dropout < 1.0:
        raise ModelConfigError(f"dropout {dropout} must be in [0, 1)")


@register_model(check=_check_wrn)
def wrn(num_classes: int, *, depth: int = 16, width: int = 4, dropout: float = 0.0) -> WideResNet:
    """davda54/sam layout: n+1 units per group, n = (depth - 4) / 6; zero-initialised classifier."""
    return WideResNet(depth, width, dropout, num_classes, layout="davda54")


@register_model(check=_check_wrn)
def wrn_std(num_classes: int, *, depth: int = 16, width: int = 4, dropout: float = 0.0) -> WideResNet:
    """Standard (Zagoruyko & Komodakis / xternalz) layout: n units per group."""
    return WideResNet(depth, width, dropout, num_classes, layout="standard")
