"""Learning-rate schedules by name, stepped once per epoch.

Reads the `schedule` group of a resolved trial config and the epoch count. The report's schedules:
`step_fraction` (WRN5: x gamma at 30/50/70/90 % of the epochs), `milestones` (E9: epochs 43/45/47),
plus `cosine` with linear warmup, `plateau` (ReduceLROnPlateau on val accuracy) and `cyclic`
(triangular CyclicLR over epochs). `constant` keeps the base lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("constant", "step_fraction", "milestones", "cosine", "plateau", "cyclic")


class EpochSchedule:
    """One interface over torch's schedulers: `step(val_acc)` after every epoch, state for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: dict, epochs: int) -> None:
        self.name = cfg["name"]
        self._scheduler = _build(optimizer, cfg, epochs)

    def step(self, val_acc: float | None) -> None:
        if self.name == "plateau":
            # Without a validation split the training accuracy stands in; None never reaches here.
            self._scheduler.step(val_acc)
        else:
            self._scheduler.step()

    def state_dict(self) -> dict:
        return self._scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._scheduler.load_state_dict(state)


def _build(optimizer: torch.optim.Optimizer, cfg: dict, epochs: int):  # noqa: ANN202 - torch scheduler types vary
    name = cfg["name"]
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg["factor"], patience=cfg["patience"], min_lr=cfg["min_lr"])
    if name == "cyclic":
        base_lr = optimizer.param_groups[0]["lr"]
        max_lr = cfg["max_lr"] if cfg["max_lr"] is not None else base_lr * 10
        half = max(1, cfg["cycle_epochs"] // 2)
        # cycle_momentum would fight Adam-family optimizers that have no momentum key.
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=base_lr, max_lr=max_lr, step_size_up=half, cycle_momentum=False)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, epochs, optimizer.param_groups[0]["lr"]))


def lr_factor(cfg: dict, epochs: int, base_lr: float) -> Callable[[int], float]:
    """Multiplier of the base lr for a 0-based epoch index (the LambdaLR-driven schedules)."""
    name, gamma, warmup = cfg["name"], cfg["gamma"], cfg["warmup_epochs"]

    def warmed(epoch: int, factor: float) -> float:
        return factor * min(1.0, (epoch + 1) / warmup) if warmup > 0 else factor

    if name == "constant":
        return lambda epoch: warmed(epoch, 1.0)
    if name == "step_fraction":
        bounds = [f * epochs for f in cfg["fractions"]]
        return lambda epoch: warmed(epoch, gamma ** sum(epoch >= b for b in bounds))
    if name == "milestones":
        milestones = cfg["milestones"]
        return lambda epoch: warmed(epoch, gamma ** sum(epoch >= m for m in milestones))
    if name == "cosine":
        floor = min(1.0, cfg["min_lr"] / base_lr)

        def cosine(epoch: int) -> float:
            span = max(1, epochs - warmup)
            progress = min(1.0, max(0, epoch - warmup) / span)
            return warmed(epoch, floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

        return cosine
    raise ValueError(f"schedule.name {name!r} is not one of {', '.join(SCHEDULES)}")
