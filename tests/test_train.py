"""The plain-PyTorch training core: learns, resumes exactly, refuses over-cap models, schedules."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from runner import data, spec
from runner.core import budget, checkpoint, train
from runner.core.optim import SAM, build_optimizer
from runner.core.schedule import Schedule
from runner.data import Split

TINY = {"model.name": "wrn_std", "model.depth": 10, "model.width": 1, "data.path": "synthetic:600",
        "optimizer.name": "adam", "optimizer.lr": 0.003, "optimizer.weight_decay": 0.0,
        "train.batch_size": 32, "augment.crop_padding": 2}


def tiny(**overrides) -> dict:
    return spec.trial_config({**TINY, **overrides})


def splits(cfg: dict):
    meta, train_split, val_split = data.load_trial_data(cfg["data"], seed=0)
    return train_split, val_split, meta.classes


def easy_split(n: int, seed: int) -> Split:
    """n 32x32 images whose class (0..9) is a hue, under random brightness and pixel noise: a tiny model
    reaches ~1.0 on it in 3 epochs, so a bar of 0.6 (chance 0.1) holds whatever the CPU's float rounding."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    hues = np.array([colorsys.hsv_to_rgb(h, 1.0, 1.0) for h in np.arange(10) / 10], np.float32)
    bright = rng.uniform(0.6, 1.0, (n, 1, 1, 1)).astype(np.float32)
    noise = rng.uniform(-0.15, 0.15, (n, 32, 32, 3)).astype(np.float32)
    images = (np.clip(hues[labels][:, None, None, :] * bright + noise, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), [f"e{i}" for i in range(n)])


def test_tiny_model_learns_an_easy_signal_well_above_chance():
    cfg = tiny(**{"train.epochs": 3})
    seen = []
    result = train.fit(cfg, easy_split(800, seed=1), easy_split(200, seed=2), [f"hue{i}" for i in range(10)],
                       lambda m, state: seen.append(m))
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "epoch_s"} <= set(seen[0])
    assert seen[-1]["train_loss"] < 0.7 * seen[0]["train_loss"], seen  # ~0.8 -> ~0.15 where written
    assert result.best_val_acc >= 0.6, seen  # ~1.0 where written; chance is 0.1
    assert result.params == 77_850 and result.within_budget


def test_resume_from_a_mid_run_checkpoint_gives_the_same_weights(tmp_path):
    cfg = tiny(**{"train.epochs": 3, "schedule.name": "step_fraction", "optimizer.name": "sgd",
                  "optimizer.lr": 0.05, "model.dropout": 0.1})
    train_split, val_split, classes = splits(cfg)
    unbroken = train.fit(cfg, train_split, val_split, classes)

    def stop_after_first(metrics, state):
        if metrics["epoch"] == 1:
            checkpoint.save(state(), str(tmp_path))
            raise KeyboardInterrupt  # a crash right after the first checkpoint
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, train_split, val_split, classes, stop_after_first)
    state = checkpoint.load(str(tmp_path))
    assert state["epoch"] == 1 and state["val_confusion"].shape == (10, 10)
    assert int(state["val_confusion"].sum()) == len(val_split.ids)
    resumed = train.fit(cfg, train_split, val_split, classes, resume=state)
    for key, value in unbroken.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.metrics["epoch"] == 3
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert resumed.metrics[key] == unbroken.metrics[key], key


def test_enforce_refuses_before_training_and_flag_trains_over_budget():
    cfg = tiny(**{"budget.max_params": 50_000})
    train_split, val_split, classes = splits(cfg)
    with pytest.raises(budget.BudgetError, match="77,850"):
        train.fit(cfg, train_split, val_split, classes)
    flagged = tiny(**{"budget.max_params": 50_000, "budget.mode": "flag", "train.epochs": 1})
    result = train.fit(flagged, train_split, val_split, classes)
    assert not result.within_budget and result.params == 77_850


def test_sam_and_label_smoothing_take_two_passes_and_update_weights():
    cfg = tiny(**{"optimizer.name": "sgd", "optimizer.sam_rho": 0.05, "train.label_smoothing": 0.1,
                  "train.epochs": 1})
    train_split, val_split, classes = splits(cfg)
    result = train.fit(cfg, train_split, val_split, classes)
    assert result.metrics["train_loss"] > 0
    net = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"])
    assert isinstance(optimizer, SAM)
    with pytest.raises(RuntimeError, match="closure"):
        optimizer.step()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "nadam", "rmsprop"])
def test_every_optimizer_builds_and_steps(name):
    cfg = spec.trial_config({"optimizer.name": name, "optimizer.lr": 0.01})
    net = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"])
    before = net.weight.detach().clone()
    net(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, net.weight)


def lrs(schedule_overrides: dict, epochs: int, base_lr: float = 1.0, accs=None, steps: int = 1) -> list[float]:
    """The lr of every optimizer step (`steps` per epoch), stepping the schedule as the training core does."""
    cfg = spec.trial_config({**{f"schedule.{k}": v for k, v in schedule_overrides.items()},
                             "optimizer.lr": base_lr, "train.epochs": epochs})
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    schedule = Schedule(optimizer, cfg["schedule"], epochs, steps)
    out = []
    for epoch in range(epochs):
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            parameter.grad = torch.zeros(1)
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(accs[epoch] if accs else 0.5)
    return out


def test_the_reports_fractional_step_schedule():
    # WRN5: base for epoch < 0.3E, x0.2 until 0.5E, x0.2^2 until 0.7E, x0.2^3 until 0.9E, x0.2^4 after.
    got = lrs({"name": "step_fraction"}, 10)
    assert got == pytest.approx([1, 1, 1, .2, .2, .04, .04, .008, .008, .0016])


def test_epoch_milestones_cosine_warmup_plateau_cyclic():
    assert lrs({"name": "milestones", "milestones": [3, 4], "gamma": 0.1}, 5) == pytest.approx([1, 1, 1, .1, .01])
    cosine = lrs({"name": "cosine", "warmup_epochs": 2}, 6)
    assert cosine[0] == pytest.approx(0.5) and cosine[1] == pytest.approx(1.0) and cosine[-1] < 0.2
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:], strict=False))
    plateau = lrs({"name": "plateau", "patience": 1, "factor": 0.5}, 6, accs=[0.5] * 6)
    assert plateau[0] == 1 and plateau[-1] < 1
    cyclic = lrs({"name": "cyclic", "cycle_epochs": 4, "max_lr": 2.0}, 5)
    assert cyclic[0] == 1 and cyclic[2] == pytest.approx(2.0) and cyclic[4] == pytest.approx(1.0)


def test_eval_views_change_the_scoring_and_never_the_training_draws():
    cfg = {"train.epochs": 1, "data.path": "synthetic:300"}
    modes = {"none": {}, "flips": {"eval.tta": "flips", "eval.views": 2},
             "train_transforms": {"eval.tta": "train_transforms", "eval.views": 2}}
    seen: dict[str, list] = {name: [] for name in modes}
    for name, scoring in modes.items():
        trial = tiny(**cfg, **scoring)
        train.fit(trial, *splits(trial), lambda m, state, out=seen[name]: out.append(m))
    for name in ("flips", "train_transforms"):
        assert [m["train_loss"] for m in seen[name]] == [m["train_loss"] for m in seen["none"]]
        assert seen[name][-1]["val_loss"] != seen["none"][-1]["val_loss"]
        assert 0.0 <= seen[name][-1]["val_acc"] <= 1.0


def test_per_step_schedules_move_the_lr_every_batch():
    # Linear warmup over 2 epochs of 5 steps: ten increments of 0.1, then a cosine that falls every step.
    warm = lrs({"name": "cosine", "warmup_epochs": 2, "interval": "step"}, 6, steps=5)
    assert warm[:10] == pytest.approx([(t + 1) / 10 for t in range(10)])
    assert all(a > b for a, b in zip(warm[10:], warm[11:], strict=False)) and warm[-1] < 0.02
    # At whole epochs past the warmup the per-step cosine is the per-epoch one.
    per_epoch = lrs({"name": "cosine", "warmup_epochs": 2}, 6)
    assert [warm[5 * e] for e in range(2, 6)] == pytest.approx(per_epoch[2:])
    # Step schedules change at the exact batch where the fraction of the run is crossed.
    steps = lrs({"name": "step_fraction", "fractions": [0.5], "interval": "step"}, 2, steps=3)
    assert steps == pytest.approx([1, 1, 1, .2, .2, .2])


def test_onecycle_rises_over_the_warmup_then_anneals_per_step():
    got = lrs({"name": "onecycle", "warmup_epochs": 1, "interval": "step"}, 4, base_lr=0.4, steps=10)
    peak = max(range(len(got)), key=got.__getitem__)
    assert got[0] == pytest.approx(0.4 / 25) and 9 <= peak <= 10 and got[peak] == pytest.approx(0.4, rel=1e-3)
    assert all(a < b for a, b in zip(got[:peak], got[1:peak + 1], strict=False))
    assert all(a > b for a, b in zip(got[peak:], got[peak + 1:], strict=False)) and got[-1] < 0.4 / 100
    assert lrs({"name": "onecycle", "max_lr": 2.0}, 10)[3] == pytest.approx(2.0, rel=0.05)  # per epoch: 30 % rise


def test_fit_steps_a_per_step_schedule_inside_the_epoch():
    cfg = tiny(**{"train.epochs": 2, "schedule.name": "cosine", "schedule.warmup_epochs": 1,
                  "schedule.interval": "step", "optimizer.lr": 0.01})
    train_split, val_split, classes = splits(cfg)
    seen = []
    train.fit(cfg, train_split, val_split, classes, lambda m, state: seen.append((m, state())))
    steps = len(train_split) // cfg["train"]["batch_size"]
    assert seen[0][0]["lr"] == pytest.approx(0.01 / steps)  # the first step's lr: 1/steps of the warmup
    assert seen[1][0]["lr"] == pytest.approx(0.01)  # warmup done after one epoch of steps
    assert seen[1][1]["scheduler"]["last_epoch"] == 2 * steps  # stepped per batch, not per epoch


def test_sam_with_a_schedule_raises_no_scheduler_order_warning(recwarn):
    """torch warns "lr_scheduler.step() before optimizer.step()" when the optimizer it watches never
    steps; SAM's step must be the one that runs (pyproject turns that warning into an error everywhere)."""
    for interval in ("epoch", "step"):
        cfg = tiny(**{"optimizer.name": "sgd", "optimizer.sam_rho": 0.05, "train.epochs": 2,
                      "schedule.name": "cosine", "schedule.interval": interval, "data.path": "synthetic:200"})
        train_split, val_split, classes = splits(cfg)
        result = train.fit(cfg, train_split, val_split, classes)
        assert result.metrics["epoch"] == 2
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
