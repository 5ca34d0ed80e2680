"""The resource arithmetic that refuses a grid Ray could never place.

Ray does not fail an unschedulable worker group: it retries its 60 s start timeout forever
(measured on 2 CPUs: a 1-CPU trial driver + 2 one-CPU workers). So before a Tuner starts, every
trial's bundles are checked against what the cluster has, and the concurrency is derived from it:

    concurrent trials x (trial CPU + workers x CPU per worker) <= cluster CPUs   (and likewise GPUs)

Pure arithmetic on dicts: no Ray import, so it is tested without a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ResourceError(ValueError):
    """A grid that cannot be placed; the message carries the arithmetic."""


@dataclass(frozen=True)
class TrialNeed:
    """What one trial holds while it runs: its driver's bundle plus its workers' bundles."""

    name: str
    trial_cpus: float
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def cpus(self) -> float:
        return self.trial_cpus + self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def formula(self) -> str:
        text = f"{_n(self.trial_cpus)} trial CPU + {self.workers} workers x {_n(self.cpus_per_worker)} CPU"
        text += f" = {_n(self.cpus)} CPU"
        if self.gpus:
            text += f", {self.workers} workers x {_n(self.gpus_per_worker)} GPU = {_n(self.gpus)} GPU"
        return text


def gpus(scaling: dict) -> float:
    """GPUs per worker as a number. "auto" counts as 0 until the engine resolves it from the cluster."""
    value = scaling["gpus_per_worker"]
    return 0.0 if value == "auto" else value


def need_of(name: str, scaling: dict) -> TrialNeed:
    return TrialNeed(name, scaling["trial_cpus"], scaling["workers"], scaling["cpus_per_worker"], gpus(scaling))


def plan_concurrency(needs: list[TrialNeed], cluster: dict[str, float], requested: int | None = None) -> int:
    """How many trials may run at once; raises ResourceError (with the arithmetic) when none or
    the requested number cannot be placed. `cluster` is `ray.cluster_resources()`-shaped."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    biggest = max(needs, key=lambda n: (n.gpus, n.cpus))
    for need in needs:
        if need.cpus > cpus + 1e-9 or need.gpus > gpus + 1e-9:
            raise ResourceError(
                f"trial {need.name!r} can never start: it needs {need.formula()}, but the cluster has "
                f"{_n(cpus)} CPU and {_n(gpus)} GPU. Ray would wait forever instead of failing. Lower "
                f"scaling.workers / scaling.cpus_per_worker / scaling.trial_cpus (fractions are allowed), "
                f"or add nodes.")
    fits = _fits(biggest, cpus, gpus)
    if requested is None:
        return max(1, min(fits, len(needs)))
    if requested > fits:
        raise ResourceError(
            f"--max-concurrent {requested} cannot be placed: {requested} x ({biggest.formula()}) exceeds the "
            f"cluster's {_n(cpus)} CPU and {_n(gpus)} GPU; at most {fits} trial(s) of {biggest.name!r} fit at once. "
            f"Ray would wait forever instead of failing: use --max-concurrent {fits} or fewer.")
    return requested


def autoscaling_capacity(launcher_config: dict) -> dict[str, float]:
    """What an autoscaling cluster can grow to: the head plus every worker node type at its
    `max_workers`, capped by the cluster-wide `max_workers`. `ray.cluster_resources()` counts only the
    nodes already up, so a fresh cluster (head only, min_workers 0) would refuse every GPU grid.
    Takes the Ray cluster launcher config (`ray up`'s cluster.yaml, ~/ray_bootstrap_config.yaml)."""
    types = launcher_config.get("available_node_types") or {}
    head = launcher_config.get("head_node_type")
    total: dict[str, float] = {}
    budget = launcher_config.get("max_workers")
    largest_first = sorted(types.items(), key=lambda kv: -sum((kv[1].get("resources") or {}).values()))
    for name, node_type in largest_first:
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        if name != head and budget is not None:
            count, budget = min(count, budget), budget - min(count, budget)
        for resource, amount in (node_type.get("resources") or {}).items():
            total[resource] = total.get(resource, 0.0) + amount * count
    return total


def larger_of(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: max(a.get(key, 0.0), b.get(key, 0.0)) for key in {*a, *b}}


def _fits(need: TrialNeed, cpus: float, gpus: float) -> int:
    by_cpu = math.floor(cpus / need.cpus + 1e-9)
    by_gpu = math.floor(gpus / need.gpus + 1e-9) if need.gpus else by_cpu
    return max(0, min(by_cpu, by_gpu))


def _n(x: float) -> str:
    return f"{x:g}"
