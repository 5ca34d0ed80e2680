"""Every `optimizer` field reaches the torch optimizer it configures (runner/core/optim.py), and
SAM's `sam_adaptive` perturbs each weight in proportion to its size (ASAM) where plain SAM does not."""

from __future__ import annotations

import pytest
import torch

from runner import spec
from runner.core.optim import SAM, build_optimizer


def built(**fields: object) -> torch.optim.Optimizer:
    cfg = spec.trial_config({f"optimizer.{k}": v for k, v in fields.items()})
    return build_optimizer([torch.nn.Parameter(torch.ones(2))], cfg["optimizer"])


def test_sgd_takes_lr_momentum_nesterov_and_weight_decay() -> None:
    optimizer = built(name="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.05, 0.8, True, 0.001)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("nadam", torch.optim.NAdam)])
def test_the_adam_family_takes_lr_betas_and_weight_decay(name: str, cls: type) -> None:
    optimizer = built(name=name, lr=0.002, betas=[0.8, 0.99], weight_decay=0.01)
    group = optimizer.param_groups[0]
    assert type(optimizer) is cls and (group["lr"], group["betas"], group["weight_decay"]) == (0.002, (0.8, 0.99), 0.01)


def test_rmsprop_takes_lr_momentum_and_weight_decay() -> None:
    optimizer = built(name="rmsprop", lr=0.01, momentum=0.5, weight_decay=0.002)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.RMSprop and (group["lr"], group["momentum"], group["weight_decay"]) == (
        0.01, 0.5, 0.002)


@pytest.mark.parametrize("adaptive, ratio", [(False, 1.0), (True, 4.0)])
def test_sam_rho_wraps_the_optimizer_and_sam_adaptive_scales_the_climb_by_each_weight(adaptive: bool,
                                                                                     ratio: float) -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    cfg = spec.trial_config({"optimizer.name": "sgd", "optimizer.sam_rho": 0.1, "optimizer.sam_adaptive": adaptive})
    optimizer = build_optimizer([weight], cfg["optimizer"])
    assert isinstance(optimizer, SAM) and optimizer.param_groups[0]["rho"] == 0.1
    weight.grad = torch.tensor([1.0, 1.0])
    optimizer.first_step()
    climb = weight.detach() - torch.tensor([1.0, 2.0])
    # plain SAM climbs along the gradient; ASAM scales each coordinate by w^2 (1 and 4 here)
    assert climb[1] / climb[0] == pytest.approx(ratio)
    assert not isinstance(built(name="sgd", sam_rho=0.0), SAM)
