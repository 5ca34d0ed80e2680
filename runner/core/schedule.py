"""Learning-rate schedules by name, stepped once per epoch or once per optimizer step.

Reads the `schedule` group of a resolved trial config, the epoch count and the steps per epoch. The
report's schedules: `step_fraction` (WRN5: x gamma at 30/50/70/90 % of the epochs), `milestones` (E9:
epochs 43/45/47), plus `cosine` with linear warmup, `onecycle` (torch's OneCycleLR), `plateau`
(ReduceLROnPlateau on val accuracy) and `cyclic` (triangular CyclicLR). `constant` keeps the base lr.

`schedule.interval` says when the lr moves: `epoch` (the report's way) or `step` (timm's way: warmup
and decay move every batch, so a 2-epoch warmup is 2 x steps-per-epoch small increments instead of
two jumps). Every position is measured in epochs either way (fractional between steps), so the same
config describes the same curve at either interval.

    schedule = Schedule(optimizer, cfg["schedule"], epochs, steps_per_epoch)
    ... optimizer.step(); schedule.after_step()      # every batch
    schedule.after_epoch(val_acc)                     # every epoch
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("constant", "step_fraction", "milestones", "cosine", "onecycle", "plateau", "cyclic")
INTERVALS = ("epoch", "step")
ONECYCLE_RISE = 0.3  # torch's default pct_start, used when schedule.warmup_epochs is 0


class Schedule:
    """One interface over torch's schedulers: `after_step()` after every optimizer step, `after_epoch(acc)`
    after every epoch (only the one matching `interval` moves the lr), and state for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: dict, epochs: int, steps_per_epoch: int = 1) -> None:
        self.name = cfg["name"]
        self.per_step = cfg["interval"] == "step"
        ticks = max(1, steps_per_epoch) if self.per_step else 1
        self._scheduler = _build(optimizer, cfg, epochs, ticks)

    def after_step(self) -> None:
        if self.per_step:
            self._scheduler.step()

    def after_epoch(self, val_acc: float | None) -> None:
        if self.per_step:
            return
        if self.name == "plateau":
            # Without a validation split the training accuracy stands in; None never reaches here.
            self._scheduler.step(val_acc)
        else:
            self._scheduler.step()

    def state_dict(self) -> dict:
        return self._scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._scheduler.load_state_dict(state)


def _build(optimizer: torch.optim.Optimizer, cfg: dict, epochs: int, ticks: int):  # noqa: ANN202 - types vary
    """The torch scheduler, counting `ticks` per epoch (1, or the steps per epoch)."""
    name = cfg["name"]
    base_lr = optimizer.param_groups[0]["lr"]
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg["factor"], patience=cfg["patience"], min_lr=cfg["min_lr"])
    if name == "cyclic":
        max_lr = cfg["max_lr"] if cfg["max_lr"] is not None else base_lr * 10
        half = max(1, cfg["cycle_epochs"] * ticks // 2)
        # cycle_momentum would fight Adam-family optimizers that have no momentum key.
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=base_lr, max_lr=max_lr, step_size_up=half, cycle_momentum=False)
    if name == "onecycle":
        rise = cfg["warmup_epochs"] / epochs if cfg["warmup_epochs"] else ONECYCLE_RISE
        # The peak is the optimizer's lr unless max_lr says otherwise, so an lr search moves the peak.
        # cycle_momentum off for the same reason as cyclic.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg["max_lr"] or base_lr, total_steps=epochs * ticks, pct_start=rise,
            cycle_momentum=False)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, epochs, base_lr, ticks))


def lr_factor(cfg: dict, epochs: int, base_lr: float, ticks: int = 1) -> Callable[[int], float]:
    """Multiplier of the base lr at tick t (0-based; `ticks` per epoch) for the LambdaLR-driven schedules.

    With one tick per epoch this is exactly the per-epoch schedule: warmup (t + 1) / warmup_epochs, the
    step schedules change at whole epochs, cosine starts its decay after the warmup."""
    name, gamma, warmup = cfg["name"], cfg["gamma"], cfg["warmup_epochs"]

    def warmed(t: int, factor: float) -> float:
        return factor * min(1.0, (t + 1) / (warmup * ticks)) if warmup > 0 else factor

    if name == "constant":
        return lambda t: warmed(t, 1.0)
    if name == "step_fraction":
        bounds = [f * epochs for f in cfg["fractions"]]
        return lambda t: warmed(t, gamma ** sum(t / ticks >= b for b in bounds))
    if name == "milestones":
        milestones = cfg["milestones"]
        return lambda t: warmed(t, gamma ** sum(t / ticks >= m for m in milestones))
    if name == "cosine":
        floor = min(1.0, cfg["min_lr"] / base_lr)
        span = max(1, epochs - warmup)

        def cosine(t: int) -> float:
            progress = min(1.0, max(0.0, t / ticks - warmup) / span)
            return warmed(t, floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

        return cosine
    raise ValueError(f"schedule.name {name!r} is not one of {', '.join(SCHEDULES)}")
