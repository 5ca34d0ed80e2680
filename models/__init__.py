"""Image classifiers for 32x32 inputs, by name: `models.build(name, num_classes, **kwargs)`.

Reads and writes nothing; depends only on torch and timm, never on a run config. Importing this
package imports every family module, which fills the registry (timm style):

    wrn, wrn_std     models/wide_resnet.py   depth=16, width=4, dropout=0.0
    efficientnet     models/efficientnet.py  width=1.0, depth=1.0, dropout=0.2, drop_connect=0.2, stem=stock
    resnet_guide     models/resnet_guide.py  width=64

`validate(name, kwargs)` is the one check of a model config (the spec schema calls it); a bad name,
keyword or value raises `ModelConfigError` saying what is allowed. `build` trusts its input.
"""

from __future__ import annotations

from typing import Any

from models import efficientnet, resnet_guide, wide_resnet  # noqa: F401  (imported to register)
from models._registry import (
    ModelConfigError,
    build,
    count_params,
    list_models,
    model_params,
    register_model,
    validate,
)

__all__ = ["ModelConfigError", "build", "count_params", "list_models", "model_params", "presets",
           "register_model", "validate"]

# (depth, width) of the WRNs the seed report and the WRN paper tabulate.
_WRN_SIZES = ((16, 4), (28, 3), (40, 2), (10, 5), (16, 8), (28, 10))


def presets() -> list[tuple[str, dict[str, Any]]]:
    """Named configurations for the `runner models` listing: (label, {"name": ..., **kwargs})."""
    out: list[tuple[str, dict[str, Any]]] = []
    for depth, width in _WRN_SIZES:
        out.append((f"wrn-{depth}-{width} (davda54, n+1 units/group)", {"name": "wrn", "depth": depth, "width": width}))
        out.append((f"wrn_std-{depth}-{width} (standard)", {"name": "wrn_std", "depth": depth, "width": width}))
    out += [
        ("efficientnet-b0 (stock stem)", {"name": "efficientnet", "width": 1.0, "depth": 1.0, "stem": "stock"}),
        ("efficientnet-b0 (cifar stem)", {"name": "efficientnet", "width": 1.0, "depth": 1.0, "stem": "cifar"}),
        ("efficientnet depth 1.06 (23 blocks)", {"name": "efficientnet", "width": 1.0, "depth": 1.06}),
        ("resnet_guide (CIFAR ResNet-18)", {"name": "resnet_guide", "width": 64}),
    ]
    return out
