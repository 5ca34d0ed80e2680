"""EfficientNet-B0 family (width/depth scaled), built through timm's EfficientNet builder.

Reads and writes nothing. Build through `models.build("efficientnet", num_classes, width=1.0, depth=1.0)`.

`timm.create_model("efficientnet_b0", depth_multiplier=...)` raises TypeError (the registered variant
fixes its multipliers), so this mirrors timm's `_gen_efficientnet` recipe: decode the B0 block strings
with `decode_arch_def(arch_def, depth)` and round channels with `round_channels(multiplier=width)`.
Depth rounding is ceil per stage, so any depth in (1.0, 1.25] adds a block to every stage
(16 -> 23 blocks): 6,641,284 parameters at 100 classes against B0's 4,135,648.

`stem="cifar"` keeps every parameter (stride changes no weight shapes) but removes two of B0's five
stride-2 steps: the stem conv and the first stride-2 stage run at stride 1. B0's total stride of 32
leaves a 1x1 final map at 32x32; stride 8 leaves 4x4, the same final map as the CIFAR ResNet-18.
"""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from models._registry import ModelConfigError, register_model

# timm's `_gen_efficientnet` B0 block strings: repeats r, kernel k, stride s, expansion e, channels c.
_B0_ARCH = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s2_e6_c80_se0.25",),
    ("ir_r3_k5_s1_e6_c112_se0.25",),
    ("ir_r4_k5_s2_e6_c192_se0.25",),
    ("ir_r1_k3_s1_e6_c320_se0.25",),
)
STEMS = ("stock", "cifar")


def _arch_def(stem: str) -> list[list[str]]:
    arch = [list(stage) for stage in _B0_ARCH]
    if stem == "cifar":
        arch[1] = [arch[1][0].replace("_s2_", "_s1_")]  # first stride-2 stage; see module docstring
    return arch


def _check_efficientnet(width: float, depth: float, dropout: float, drop_connect: float, stem: str) -> None:
    if not 0 < width < math.inf:
        raise ModelConfigError(f"width {width} must be a finite number > 0 (channel multiplier; B0 is 1.0)")
    if not 0 < depth < math.inf:
        raise ModelConfigError(f"depth {depth} must be a finite number > 0 "
                               "(per-stage repeat multiplier, rounded up; B0 is 1.0)")
    if not 0.0 <= dropout < 1.0:
        raise ModelConfigError(f"dropout {dropout} must be in [0, 1)")
    if not 0.0 <= drop_connect < 1.0:
        raise ModelConfigError(f"drop_connect {drop_connect} must be in [0, 1)")
    if stem not in STEMS:
        raise ModelConfigError(f"stem {stem!r} is not one of {', '.join(STEMS)} "
                               "(cifar: stride 1 in the stem and the first stride-2 stage)")


@register_model(check=_check_efficientnet)
def efficientnet(num_classes: int, *, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2,
                 drop_connect: float = 0.2, stem: str = "stock") -> nn.Module:
    """EfficientNet-B0 scaled by `width` (channels) and `depth` (repeats); `drop_connect` is stochastic depth."""
    # timm is imported here, not at module level: importing it (torchvision, torch._dynamo) costs seconds
    # of CPU (docs/benchmarks.md) in every Ray process that imports `models`, and most trials never
    # build an EfficientNet.
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet

    round_chs_fn = partial(round_channels, multiplier=width, divisor=8)
    model = EfficientNet(
        block_args=decode_arch_def(_arch_def(stem), depth),
        num_classes=num_classes,
        num_features=round_chs_fn(1280),
        stem_size=32,
        round_chs_fn=round_chs_fn,
        act_layer=nn.SiLU,  # timm's "swish"
        norm_layer=nn.BatchNorm2d,
        drop_rate=dropout,
        drop_path_rate=drop_connect,
    )
    if stem == "cifar":
        # timm hard-codes the stem stride to 2. Its static padding for a 3x3 conv is 1 at stride 1 and
        # at stride 2, so changing the stride alone gives a correct stride-1 "same" conv.
        model.conv_stem.stride = (1, 1)
    return model
