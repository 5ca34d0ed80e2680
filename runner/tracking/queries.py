"""Reading back what the tracker wrote: a spec's latest invocation, its trials as results rows,
and `runner mlflow reconcile` (runs a SIGKILLed driver left RUNNING are ended KILLED)."""

from __future__ import annotations

from typing import Any

from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient

from runner import cost
from runner.tracking.connection import TrackingError, connect, quote
from runner.tracking.tracker import SUMMARY


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


def reconcile(experiment_name: str | None, alive_trial_ids: set[str] | None = None,
              tracking_uri: str | None = None) -> list[str]:
    """Mark RUNNING runs KILLED whose trial is not in `alive_trial_ids` (None: nothing is alive, e.g.
    after the driver was SIGKILLed); a parent is ended when none of its trials is alive. No experiment
    name: every experiment. Returns the run ids it ended."""
    client = connect(tracking_uri)
    if experiment_name is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        ids = [experiment.experiment_id] if experiment else []
    if not ids:
        return []
    running = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=10000)
    alive = alive_trial_ids or set()
    alive_parents = {r.data.tags.get("mlflow.parentRunId") for r in running
                     if r.data.tags.get("runner.trial_id") in alive}
    ended = []
    for run in running:
        tags = run.data.tags
        gone = (run.info.run_id not in alive_parents if tags.get("runner.kind") == "parent"
                else tags.get("runner.trial_id") not in alive)
        if alive_trial_ids is None or gone:
            client.log_batch(run.info.run_id, tags=[RunTag("runner.reconciled", "trial gone"),
                                                    RunTag("status", RunStatus.to_string(RunStatus.KILLED))])
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended
