"""`scaling.gpus_per_worker: auto` (the default), resolved from the cluster when a grid is planned: one
GPU per worker where the cluster has GPUs or its autoscaler can add GPU nodes, none otherwise. An
explicit number in the spec or `--set` always wins. `runner run`'s start line and `runner check` say
what was chosen and why.

    choice = gpus.choose(capacity, where)           # GPUs per worker for "auto", with the reason
    trials = gpus.resolve(trials, choice)           # the configs the trials run with (no "auto" left)
    loaded, note = gpus.for_check(loaded)           # `runner check`: the same, found without starting Ray
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass

from runner.spec import Spec, Trial

AUTO = "auto"


@dataclass(frozen=True)
class Choice:
    gpus: float  # per worker, for trials that said "auto"
    reason: str

    def describe(self) -> str:
        return f"scaling.gpus_per_worker auto -> {self.gpus:g} ({self.reason})"


def choose(capacity: dict[str, float], where: str) -> Choice:
    found = capacity.get("GPU", 0.0)
    if found > 0:
        return Choice(1.0, f"{where} has {found:g} GPU")
    return Choice(0.0, f"{where} has no GPU")


def says_auto(trial: Trial) -> bool:
    return trial.config["scaling"]["gpus_per_worker"] == AUTO


def resolve(trials: list[Trial], choice: Choice) -> list[Trial]:
    """The trials with "auto" replaced by the choice; trials with an explicit number are left as they are."""
    out = []
    for trial in trials:
        if says_auto(trial):
            config = copy.deepcopy(trial.config)
            config["scaling"]["gpus_per_worker"] = choice.gpus
            trial = dataclasses.replace(trial, config=config)
        out.append(trial)
    return out


def planned_capacity() -> tuple[dict[str, float], str]:
    """What `runner run` would plan on, found without starting a Ray (for `runner check`): the autoscaler's
    node types (RUNNER_AUTOSCALING_CONFIG), else the running cluster RAY_ADDRESS names, else this
    machine's GPUs as a local Ray would count them."""
    from runner.tune import cluster

    if os.environ.get(cluster.AUTOSCALING_CONFIG_ENV):
        return cluster.autoscaler_capacity(), cluster.describe()
    if os.environ.get("RAY_ADDRESS"):
        cluster.probe_ray_address()
        cluster.start_ray(None)  # connects to the running cluster; starts nothing
        return cluster.capacity(), cluster.describe()
    import torch

    return {"GPU": float(torch.cuda.device_count())}, cluster.describe()


def for_check(loaded: Spec) -> tuple[Spec, str | None]:
    """`runner check`: the spec with "auto" resolved as `runner run` would here, and the line saying what
    and why (None when no trial says auto)."""
    if not any(says_auto(t) for t in loaded.trials):
        return loaded, None
    choice = choose(*planned_capacity())
    return dataclasses.replace(loaded, trials=resolve(loaded.trials, choice)), choice.describe()
