"""The model registry and its families (models/), on CPU with real torch and timm.

Every registered name and every preset gets a 32x32 forward pass, so a new builder is tested by
registering it. Parameter counts are checked exactly against figures counted independently
(shared/docs/design.md, "Facts to build on").

Run: .venv/bin/pytest tests/test_models.py
"""

import pytest
import torch

import models
from models import ModelConfigError

# (name, kwargs, num_classes) -> trainable parameters.
PARAM_TABLE = [
    ("wrn", {"depth": 16, "width": 4}, 10, 4_298_970),
    ("wrn_std", {"depth": 16, "width": 4}, 10, 2_748_890),
    ("wrn", {"depth": 40, "width": 2}, 100, 2_643_124),
    ("wrn_std", {"depth": 28, "width": 3}, 100, 3_311_412),
    ("efficientnet", {"width": 1.0, "depth": 1.0}, 10, 4_020_358),
    ("efficientnet", {"width": 1.0, "depth": 1.0}, 100, 4_135_648),
    ("efficientnet", {"width": 1.0, "depth": 1.0, "stem": "cifar"}, 100, 4_135_648),
    ("efficientnet", {"depth": 1.06}, 100, 6_641_284),
    ("efficientnet", {"depth": 1.06}, 10, 6_525_994),
]


def batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_registry_holds_every_family() -> None:
    assert models.list_models() == ["efficientnet", "resnet_guide", "wrn", "wrn_std"]


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_model_runs_at_32x32_and_counts_the_same_on_meta(name: str) -> None:
    net = models.build(name, 7).eval()
    with torch.no_grad():
        assert net(batch()).shape == (2, 7)
    with torch.device("meta"):  # runner.core.budget counts on meta: it must see the same parameters
        assert models.count_params(models.build(name, 7)) == models.count_params(net)


@pytest.mark.parametrize("label,cfg", models.presets(), ids=[label for label, _ in models.presets()])
def test_every_preset_builds_and_maps_32x32_to_logits(label: str, cfg: dict) -> None:
    # On the meta device: shapes propagate with no arithmetic, so WRN-28-10 costs nothing on 2 cores.
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    with torch.device("meta"):
        net = models.build(cfg["name"], 10, **kwargs).eval()
        assert net(torch.empty(2, 3, 32, 32)).shape == (2, 10)


def test_presets_cover_the_report_sizes() -> None:
    configs = [cfg for _, cfg in models.presets()]
    for depth, width in [(16, 4), (28, 3), (40, 2), (10, 5), (16, 8), (28, 10)]:
        for name in ("wrn", "wrn_std"):
            assert {"name": name, "depth": depth, "width": width} in configs
    effnets = [c for c in configs if c["name"] == "efficientnet"]
    assert {c.get("stem", "stock") for c in effnets} == {"stock", "cifar"}
    assert any(c.get("depth") == 1.06 for c in effnets)
    assert any(c["name"] == "resnet_guide" for c in configs)


@pytest.mark.parametrize("name,kwargs,num_classes,expected", PARAM_TABLE)
def test_parameter_counts_are_exact(name: str, kwargs: dict, num_classes: int, expected: int) -> None:
    assert models.count_params(models.build(name, num_classes, **kwargs)) == expected


def test_count_params_counts_only_trainable() -> None:
    net = models.build("wrn", 10, depth=10, width=1)
    total = models.count_params(net)
    net.fc.requires_grad_(False)
    assert models.count_params(net) == total - net.fc.weight.numel() - net.fc.bias.numel()


def test_model_params_come_from_the_builder_signature() -> None:
    assert models.model_params("wrn") == {"depth": 16, "width": 4, "dropout": 0.0}
    assert models.model_params("wrn_std") == {"depth": 16, "width": 4, "dropout": 0.0}
    assert models.model_params("efficientnet") == {"width": 1.0, "depth": 1.0, "dropout": 0.2,
                                                   "drop_connect": 0.2, "stem": "stock"}
    assert models.model_params("resnet_guide") == {"width": 64}


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(ModelConfigError) as err:
        models.build("resnet50", 10)
    assert "resnet50" in str(err.value)
    for name in models.list_models():
        assert name in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_kwarg_is_named_with_allowed_defaults() -> None:
    with pytest.raises(ModelConfigError, match="depht") as err:
        models.validate("wrn", {"depht": 16})
    assert "did you mean 'depth'" in str(err.value)
    assert "depth=16, width=4, dropout=0.0" in str(err.value)


@pytest.mark.parametrize("name,kwargs,allowed", [
    ("wrn", {"depth": 18}, "6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...); nearest: 16 or 22"),
    ("wrn_std", {"depth": 8}, "nearest: 10"),
    ("wrn", {"width": 0}, "integer >= 1"),
    ("wrn", {"dropout": 1.0}, "[0, 1)"),
    ("wrn", {"depth": 16.0}, "depth must be int"),
    ("wrn", {"width": True}, "width must be int"),
    ("efficientnet", {"stem": "imagenet"}, "not one of stock, cifar"),
    ("efficientnet", {"width": 0.0}, "must be a finite number > 0"),
    ("efficientnet", {"depth": -1.0}, "must be a finite number > 0"),
    ("efficientnet", {"width": float("inf")}, "must be a finite number > 0"),
    ("efficientnet", {"drop_connect": 1.5}, "[0, 1)"),
    ("resnet_guide", {"width": 0}, "integer >= 1"),
])
def test_bad_values_say_what_is_allowed(name: str, kwargs: dict, allowed: str) -> None:
    with pytest.raises(ModelConfigError) as validated:  # the one check; `build` trusts what passed it
        models.validate(name, kwargs)
    assert allowed in str(validated.value)
    assert f"model {name!r}" in str(validated.value)


def test_registering_a_builder_with_hidden_parameters_fails() -> None:
    def sloppy(num_classes: int, depth: int = 16) -> torch.nn.Module:  # positional: invisible to validation
        return torch.nn.Linear(1, num_classes)

    with pytest.raises(TypeError, match="keyword-only"):
        models.register_model(sloppy)
    assert "sloppy" not in models.list_models()


def test_validate_accepts_good_configs_and_ints_for_floats() -> None:
    assert models.validate("wrn", {"depth": 28, "width": 10}) is None
    assert models.validate("efficientnet", {"width": 1, "depth": 1}) is None


@pytest.mark.parametrize("depth", [10, 16, 28])
def test_davda54_layout_has_one_more_unit_per_group(depth: int) -> None:
    n = (depth - 4) // 6
    davda = models.build("wrn", 10, depth=depth, width=1)
    std = models.build("wrn_std", 10, depth=depth, width=1)
    assert [len(g) for g in davda.groups] == [n + 1] * 3
    assert [len(g) for g in std.groups] == [n] * 3


def test_davda54_projects_every_group_even_without_a_channel_change() -> None:
    # At width 1 the first group stays at 16 channels: davda54 still has its 1x1 conv, standard does not.
    davda = models.build("wrn", 10, depth=10, width=1)
    std = models.build("wrn_std", 10, depth=10, width=1)
    assert isinstance(davda.groups[0][0].shortcut, torch.nn.Conv2d)
    assert isinstance(std.groups[0][0].shortcut, torch.nn.Identity)


def test_wrn_classifier_starts_at_zero_and_std_does_not() -> None:
    davda = models.build("wrn", 10, depth=10, width=1)
    assert torch.count_nonzero(davda.fc.weight) == 0 and torch.count_nonzero(davda.fc.bias) == 0
    with torch.no_grad():
        assert torch.count_nonzero(davda.eval()(batch())) == 0
    assert torch.count_nonzero(models.build("wrn_std", 10, depth=10, width=1).fc.weight) > 0


def test_efficientnet_cifar_stem_keeps_a_spatial_map_at_32x32() -> None:
    with torch.device("meta"):  # only shapes matter here
        stock = models.build("efficientnet", 10, stem="stock").eval()
        cifar = models.build("efficientnet", 10, stem="cifar").eval()
        x = torch.empty(2, 3, 32, 32)
        assert stock.forward_features(x).shape[-2:] == (1, 1)
        assert cifar.forward_features(x).shape[-2:] == (4, 4)


def test_efficientnet_depth_rounds_up_per_stage() -> None:
    # timm's ceil rounding: 1.06 adds a block to each of the 7 stages (16 -> 23 blocks).
    def blocks(depth: float) -> int:
        with torch.device("meta"):
            return sum(len(stage) for stage in models.build("efficientnet", 10, depth=depth).blocks)
    assert blocks(1.0) == 16
    assert blocks(1.06) == blocks(1.25) == 23
