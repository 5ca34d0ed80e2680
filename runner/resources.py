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


def trains_in_process(workers: int) -> bool:
    """Which trial path: one worker trains inside its Tune trial process, N >= 2 are a TorchTrainer's DDP ranks."""
    return workers == 1


@dataclass(frozen=True)
class TrialNeed:
    """What one trial holds while it runs, as the bundles Ray is asked for: the arithmetic below and the
    requests `runner.tune` makes (Tune's placement group, Train's ScalingConfig) are both built from
    `trial_bundle()` / `worker_bundle()`, so they cannot disagree.

    Each path's real processes: with one worker the trial trains inside its own Tune trial process,
    which therefore holds the worker's share too (one bundle); with N >= 2 workers the trial process
    drives a TorchTrainer (its controller takes 0 CPU) and each DDP worker holds its own bundle."""

    name: str
    trial_cpus: float
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def in_process(self) -> bool:
        return trains_in_process(self.workers)

    def trial_bundle(self, driver_resource: str | None = None) -> dict[str, float]:
        """The Tune trial process's bundle. `driver_resource` (a custom resource some nodes advertise, e.g.
        on-demand CPU nodes) pins a DDP trial's process to those nodes with a token amount: losing it loses
        the trial. A 1-worker trial trains in its process, needs the worker's node kind (GPUs, spot), and
        is restarted elsewhere from its checkpoint when that node goes (`max_failures`)."""
        bundle = {"CPU": self.trial_cpus + (self.cpus_per_worker if self.in_process else 0.0)}
        if self.in_process and self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        if driver_resource and not self.in_process:
            bundle[driver_resource] = 0.001
        return bundle

    def worker_bundle(self) -> dict[str, float]:
        """One Train worker's bundle (`ScalingConfig.resources_per_worker`); only the DDP path has them."""
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        return bundle

    def bundles(self) -> list[dict[str, float]]:
        return [self.trial_bundle()] + ([] if self.in_process else [self.worker_bundle()] * self.workers)

    @property
    def cpus(self) -> float:
        return sum(b.get("CPU", 0.0) for b in self.bundles())

    @property
    def gpus(self) -> float:
        return sum(b.get("GPU", 0.0) for b in self.bundles())

    def formula(self) -> str:
        if self.in_process:
            text = (f"1 process: {_n(self.trial_cpus)} trial CPU + {_n(self.cpus_per_worker)} worker CPU = "
                    f"{_n(self.cpus)} CPU")
            return text + (f", {_n(self.gpus)} GPU" if self.gpus else "")
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
    if requested is not None and requested < 1:
        raise ResourceError(f"--max-concurrent {requested}: must be at least 1 (or leave it out: the runner derives "
                            "it from the cluster)")
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
