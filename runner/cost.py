"""What a trial costs, and what a grid will cost: pure arithmetic over resources held and wall time.

A trial holds `resources.TrialNeed` (its driver's CPUs plus its workers' CPUs and GPUs) from start to
end, so its resource-hours are wall time x what it holds. Throughput is the trial's reported
`images_per_s` (all workers together) averaged over its epochs, per worker and per GPU.

    trial_cost(need, wall_s=600, images_per_s=[5000, 5200])   # {"cost.cpu_hours": ..., ...}
    estimate_grid(trials, cluster_gpus=8)                      # (wall s, GPU-hours) from earlier throughput

The tracker logs these as each trial's metrics and sums them on the parent; `runner report` shows them;
`runner check --cluster-gpus N` estimates a spec's grid from an earlier run of the same model family.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from runner.resources import TrialNeed

WALL_S, CPU_HOURS, GPU_HOURS = "cost.wall_s", "cost.cpu_hours", "cost.gpu_hours"
PER_WORKER, PER_GPU = "throughput.images_per_s_per_worker", "throughput.images_per_s_per_gpu"
SUMMED = (WALL_S, CPU_HOURS, GPU_HOURS)  # what the parent run adds up over its trials


def trial_cost(need: TrialNeed, wall_s: float, images_per_s: Iterable[float]) -> dict[str, float]:
    """A finished trial's cost metrics; throughput only when it reported any epoch."""
    cost = {WALL_S: wall_s, CPU_HOURS: wall_s * need.cpus / 3600, GPU_HOURS: wall_s * need.gpus / 3600}
    rates = [r for r in images_per_s if r == r and r > 0]  # drops NaN
    if rates:
        mean = sum(rates) / len(rates)
        cost[PER_WORKER] = mean / need.workers
        if need.gpus:
            cost[PER_GPU] = mean / need.gpus
    return cost


def total(rows: Iterable[Mapping[str, float | None]]) -> dict[str, float]:
    """The parent run's sums over its trials' cost metrics (missing ones count as 0)."""
    sums = dict.fromkeys(SUMMED, 0.0)
    for row in rows:
        for key in SUMMED:
            sums[key] += float(row.get(key) or 0.0)
    return sums


@dataclass(frozen=True)
class Planned:
    """One trial of a grid to estimate: what it holds and how many images it will push through."""

    need: TrialNeed
    images: int  # epochs x training images
    images_per_s_per_worker: float  # measured on an earlier run of the same model family
    start_s: float = 0.0  # start-up before the first epoch (workers, data), also measured

    @property
    def seconds(self) -> float:
        return self.start_s + self.images / (self.images_per_s_per_worker * self.need.workers)


def estimate_grid(trials: Sequence[Planned], cluster_gpus: float,
                  cluster_cpus: float = float("inf")) -> tuple[float, float]:
    """(wall seconds, GPU-hours) of running `trials` in order on a cluster of `cluster_gpus` GPUs: each
    trial starts as soon as enough GPUs (and CPUs) are free, as Tune's FIFO scheduler starts them."""
    free_gpus, free_cpus, now, wall = cluster_gpus, cluster_cpus, 0.0, 0.0
    running: list[tuple[float, int]] = []  # (end time, index) of trials holding resources
    gpu_hours = 0.0
    for index, trial in enumerate(trials):
        need = trial.need
        if need.gpus > cluster_gpus + 1e-9 or need.cpus > cluster_cpus + 1e-9:
            raise ValueError(f"trial {need.name!r} needs {need.formula()}; a cluster of {cluster_gpus:g} GPU "
                             "can never start it")
        while running and (free_gpus + 1e-9 < need.gpus or free_cpus + 1e-9 < need.cpus):
            now, done = heapq.heappop(running)
            free_gpus += trials[done].need.gpus
            free_cpus += trials[done].need.cpus
        seconds = trial.seconds
        heapq.heappush(running, (now + seconds, index))
        free_gpus -= need.gpus
        free_cpus -= need.cpus
        wall = max(wall, now + seconds)
        gpu_hours += seconds * need.gpus / 3600
    return wall, gpu_hours
