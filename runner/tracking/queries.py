"""Reading back what the tracker wrote: a spec's latest invocation, its trials as results rows,
and `runner mlflow reconcile` (runs whose driver is gone, e.g. SIGKILLed, are ended KILLED; runs of a
live driver are left alone and named)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient

from runner import cost
from runner.masking import redact
from runner.tracking import liveness
from runner.tracking.connection import TrackingError, connect, quote
from runner.tracking.summary import SUMMARY


def _children(client: MlflowClient, experiment_id: str, parent_run_id: str, where: str = "") -> list:
    query = f"tags.`mlflow.parentRunId` = {quote(parent_run_id)}" + (f" and {where}" if where else "")
    return list(client.search_runs([experiment_id], query, max_results=10000,
                                   order_by=["attributes.start_time ASC"]))


def latest_parent(client: MlflowClient, experiment_name: str) -> tuple[str, Any]:
    """(experiment id, latest parent run) of a spec's experiment, or TrackingError naming what's missing."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise TrackingError(f"no MLflow experiment {experiment_name!r} at {client.tracking_uri}; "
                            f"run `runner run` for that spec first")
    parents = client.search_runs([experiment.experiment_id], "tags.`runner.kind` = 'parent'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        raise TrackingError(f"experiment {experiment_name!r} has no `runner run` parent run")
    return experiment.experiment_id, parents[0]


def trial_runs(client: MlflowClient, experiment_name: str, parent_run_id: str | None = None) -> list:
    experiment_id, parent = latest_parent(client, experiment_name)
    return _children(client, experiment_id, parent_run_id or parent.info.run_id)


def run_row(run: Any) -> dict:
    """A results row (see runner.report) rebuilt from a child run's params, metrics and tags."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    return {
        "trial": run.info.run_name, "trial_id": tags.get("runner.trial_id"), "run_id": run.info.run_id,
        "status": run.info.status, "model": params.get("model.name"),
        "params": int(tags["params"]) if tags.get("params", "").isdigit() else None,
        "within_budget": {"true": True, "false": False}.get(tags.get("within_budget", "")),
        "epochs": int(tags["epochs"]) if tags.get("epochs", "").isdigit() else None,
        "best_epoch": int(tags["best_epoch"]) if tags.get("best_epoch", "").isdigit() else None,
        **{k: metrics.get(f"best_{k}", metrics.get(k)) for k in SUMMARY},
        "kaggle": metrics.get("kaggle"),
        **{key: metrics.get(key) for key in (*cost.SUMMED, cost.PER_WORKER, cost.PER_GPU)},
        "reported": {k.removeprefix("reported."): v for k, v in tags.items() if k.startswith("reported.")},
    }


def fetch_trial_rows(experiment_name: str, tracking_uri: str | None = None,
                     parent_run_id: str | None = None) -> list[dict]:
    """The latest invocation's (or `parent_run_id`'s) trials as results rows, for `runner report`;
    `varied` holds the params that differ between the trials (the grid's axes)."""
    runs = trial_runs(connect(tracking_uri), experiment_name, parent_run_id)
    keys = {k for run in runs for k in run.data.params}
    varied = sorted(k for k in keys if len({run.data.params.get(k) for run in runs}) > 1)
    return [{**run_row(run), "varied": {k: run.data.params.get(k) for k in varied}} for run in runs]


@dataclass
class Reconciled:
    ended: list[str]  # run ids marked KILLED
    skipped: list[tuple[str, str, str]]  # (run id, run name, why it was left RUNNING)


def reconcile(experiment_name: str | None, tracking_uri: str | None = None, now: float | None = None) -> Reconciled:
    """Mark KILLED the RUNNING runs whose driver is gone (`runner.tracking.liveness`: its process on this
    host, else its heartbeat); a trial follows its parent's driver. Runs of a live driver are skipped,
    with the reason. No experiment name: every experiment; an unknown one is an error naming those there."""
    client = connect(tracking_uri)
    if experiment_name is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            names = [e.name for e in client.search_experiments()]
            close = difflib.get_close_matches(experiment_name, names, n=3)
            raise TrackingError(f"no MLflow experiment {experiment_name!r} at {redact(client.tracking_uri)}"
                                + (f"; did you mean {', '.join(close)}?" if close else
                                   f"; experiments there: {', '.join(sorted(names)) or 'none'}"))
        ids = [experiment.experiment_id]
    running = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=10000) if ids else []
    verdicts: dict[str, tuple[bool, str]] = {}

    def driver(parent_id: str) -> tuple[bool, str]:
        if parent_id not in verdicts:
            parent = client.get_run(parent_id)
            verdicts[parent_id] = ((False, f"its parent run is {parent.info.status}")
                                   if parent.info.status != "RUNNING" else liveness.verdict(parent.data.tags, now))
        return verdicts[parent_id]

    outcome = Reconciled([], [])
    for run in running:
        tags = run.data.tags
        alive, why = (liveness.verdict(tags, now) if tags.get("runner.kind") == "parent" or
                      "mlflow.parentRunId" not in tags else driver(tags["mlflow.parentRunId"]))
        if alive:
            outcome.skipped.append((run.info.run_id, run.info.run_name, why))
            continue
        client.log_batch(run.info.run_id, tags=[RunTag("runner.reconciled", why),
                                                RunTag("status", RunStatus.to_string(RunStatus.KILLED))])
        client.set_terminated(run.info.run_id, "KILLED")
        outcome.ended.append(run.info.run_id)
    return outcome
