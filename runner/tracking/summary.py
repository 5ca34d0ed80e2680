"""What a trial's run is summed up by when it ends: which reported values are metrics, its best epoch,
and the `best_*` metrics, linked (MLflow 3) to the trial's logged model and its data set so the UI's
model view shows them together, beside its cost (`runner.cost`). Pure: builds entities, writes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import DatasetInput, Metric

# Tune's bookkeeping in a reported result; not training metrics.
NOT_METRICS = {"epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
               "time_since_restore", "iterations_since_restore", "timesteps_total", "done",
               "episodes_total", "timesteps_since_restore"}
SUMMARY = ("train_loss", "train_acc", "val_loss", "val_acc")  # logged as best_<key> at the best epoch


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k not in NOT_METRICS and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def best_epoch(history: Mapping[int, Mapping[str, float]]) -> int | None:
    """The epoch with the highest val_acc (the latest of equals), else the last epoch."""
    scored = [(v["val_acc"], step) for step, v in history.items() if "val_acc" in v]
    return max(scored)[1] if scored else (max(history) if history else None)


def best_values(summary: Mapping[str, float]) -> dict[str, float]:
    """`best_<key>` for the SUMMARY keys the best epoch has (NaN left out)."""
    return {f"best_{k}": summary[k] for k in SUMMARY if k in summary and not math.isnan(summary[k])}


def metrics(best: Mapping[str, float], costs: Mapping[str, float], step: int, model_id: str | None,
            data: DatasetInput | None) -> list[Metric]:
    """The run's closing metrics at `step`: `best_*` linked to the logged model and the data set, then cost."""
    link: dict[str, Any] = {"model_id": model_id}
    if data is not None:
        link.update(dataset_name=data.dataset.name, dataset_digest=data.dataset.digest)
    now = int(time.time() * 1000)
    return [Metric(k, v, now, step, **link) for k, v in best.items()] + [Metric(k, v, now, step)
                                                                         for k, v in costs.items()]
