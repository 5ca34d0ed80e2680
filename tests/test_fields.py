"""Trial config fields that no behaviour test elsewhere reaches: each one changes what the code builds.
(docs/claims.md names, for every field, the test that exercises it; these close its gaps.)"""

from __future__ import annotations

import math

import pytest
import torch
from test_train import lrs  # the lr of every step, stepped as the training core does

import models
from runner import spec
from runner.core import train
from runner.data import Split

TINY = {"model.name": "wrn_std", "model.depth": 10, "model.width": 1, "train.epochs": 1, "train.batch_size": 8}


def prepared(**overrides: object) -> train.Run:
    cfg = spec.trial_config({**TINY, **overrides})
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = Split(images, torch.arange(16) % 10, [f"i{k}" for k in range(16)])
    return train.prepare(cfg, split, None, [f"c{k}" for k in range(10)], device=torch.device("cpu"))


def test_model_dropout_sets_every_wrn_units_dropout() -> None:
    rates = {m.p for m in prepared(**{"model.dropout": 0.3}).net.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}


def test_model_drop_connect_sets_efficientnets_stochastic_depth() -> None:
    with torch.device("meta"):
        rates = {float(getattr(m, "drop_prob", 0.0)) for m in models.build("efficientnet", 10, drop_connect=0.4,
                                                                          width=0.25, depth=0.25).modules()}
        off = {float(getattr(m, "drop_prob", 0.0)) for m in models.build("efficientnet", 10, drop_connect=0.0,
                                                                        width=0.25, depth=0.25).modules()}
    assert 0 < max(rates) <= 0.4 and off == {0.0}  # timm ramps each block's rate up to drop_connect


@pytest.mark.parametrize("channels_last", [True, False])
def test_train_channels_last_sets_the_weights_memory_format(channels_last: bool) -> None:
    conv = next(m for m in prepared(**{"train.channels_last": channels_last}).net.modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert conv.weight.is_contiguous() is not channels_last


def test_train_compile_wraps_what_trains_and_evaluates_the_plain_weights() -> None:
    compiled, plain = prepared(**{"train.compile": True}), prepared()
    assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)  # compiled lazily, on first call
    assert not isinstance(plain.model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.eval_model is compiled.net  # evaluation needs no second compiled graph


def test_schedule_constant_keeps_the_base_lr_after_its_warmup() -> None:
    assert lrs({"name": "constant"}, 4) == pytest.approx([1, 1, 1, 1])
    assert lrs({"name": "constant", "warmup_epochs": 2}, 4) == pytest.approx([0.5, 1, 1, 1])


def test_schedule_min_lr_is_the_floor_of_cosine_and_plateau() -> None:
    last = 0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * 4 / 5))  # epoch 5 of 5: 4/5 of the way down
    assert lrs({"name": "cosine", "min_lr": 0.25}, 5)[-1] == pytest.approx(last)
    assert min(lrs({"name": "cosine", "min_lr": 0.25}, 9)) >= 0.25
    plateau = lrs({"name": "plateau", "patience": 0, "factor": 0.5, "min_lr": 0.3}, 6, accs=[0.5] * 6)
    assert plateau == pytest.approx([1, 1, 0.5, 0.3, 0.3, 0.3])  # halved once, then held at the floor


def test_train_seed_draws_the_initial_weights() -> None:
    first, again, other = (prepared(**{"train.seed": seed}).net.state_dict() for seed in (1, 1, 2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
