"""The model registry: register the best in-budget trial, move an alias only on improvement.

Reads a spec's MLflow experiment (the latest `runner run` parent, or a given parent/run id); the chosen
trial's logged model (`runner.tracking.pyfunc`, logged by the tracker at the trial's best epoch; built
from its `checkpoint/state.pt` artifact for runs older than that) becomes a new version of the
registered model, named after the spec unless `--name` says otherwise, and the alias (`champion`) moves
to it when it beats the holder.

    runner register m1_wrn_grid --metric val_acc --alias champion      # -> models:/m1_wrn_grid@champion
    runner register --run-id <RUN_ID>

Over-budget trials are never registered. Also loads models back for `runner submit`, and ties a written
submission to its model's run so `runner score` can log the Kaggle score there.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner.core import checkpoint
from runner.masking import redact
from runner.tracking import pyfunc, queries
from runner.tracking.connection import connect, resolve_tracking_uri
from runner.tracking.tracker import CHECKPOINT_ARTIFACT

SUBMISSION_TAG = "runner.submission."  # + the CSV's digest; value: its file name
DIGEST_CHARS = 16


class RegistryError(ValueError):
    """Nothing registrable (no finished in-budget trial), or a run/model that cannot be used: a refused
    request, so a ValueError like every user-facing error (`runner: error: ...`, exit status 2)."""


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    trial: str
    metric: str
    value: float
    alias: str
    alias_moved: bool
    previous_version: str | None  # the alias holder before this call
    previous_value: float | None
    model_uri: str
    message: str


def _higher_is_better(metric: str) -> bool:
    return not metric.endswith("loss")


def run_value(run: Any, metric: str) -> float | None:
    """A trial's figure at its best checkpoint (`best_<metric>`, written by the tracker at the end),
    else the last logged value."""
    metrics = run.data.metrics
    value = metrics.get(f"best_{metric}", metrics.get(metric))
    return None if value is None or math.isnan(value) else float(value)


def _better(new: float, old: float | None, metric: str) -> bool:
    return old is None or (new > old if _higher_is_better(metric) else new < old)


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    uri = resolve_tracking_uri(tracking_uri)
    client = connect(uri)
    mlflow.set_tracking_uri(uri)  # log_model / register_model use the fluent API's URI
    return client, uri


def pick_best(runs: list, metric: str) -> tuple[Any, str]:
    """The best FINISHED, within-budget run with the metric; the note names any better over-budget trial."""
    finished = [r for r in runs if r.info.status == "FINISHED" and run_value(r, metric) is not None]
    if not finished:
        raise RegistryError(f"no FINISHED trial has metric {metric!r}, so nothing can be registered; finish a "
                            "trial first (`runner run SPEC`, or `runner run SPEC --resume` for an interrupted run)")
    sign = 1 if _higher_is_better(metric) else -1
    finished.sort(key=lambda r: sign * run_value(r, metric), reverse=True)
    within = [r for r in finished if r.data.tags.get("within_budget") == "true"]
    skipped = [r for r in finished if r.data.tags.get("within_budget") != "true"]
    if not within:
        names = ", ".join(f"{r.info.run_name} ({r.data.tags.get('params', '?')} params)" for r in skipped)
        raise RegistryError(f"every finished trial is over the parameter budget ({names}); over-budget "
                            "trials are never registered")
    best = within[0]
    note = ""
    over = [r for r in skipped if finished.index(r) < finished.index(best)]
    if over:
        note = "; ".join(f"{r.info.run_name} has {metric} {run_value(r, metric):.4f} but " + (
            f"is over the parameter budget ({r.data.tags.get('params', '?')} params)"
            if r.data.tags.get("within_budget") == "false" else "has no budget verdict (no checkpoint)")
            + ": not registered" for r in over)
    return best, note


def register_best(experiment_name: str, *, parent_run_id: str | None = None, metric: str = "val_acc",
                  name: str | None = None, alias: str = "champion", tracking_uri: str | None = None) -> Registration:
    """Register the best in-budget trial of the spec's latest invocation (or of `parent_run_id`) under
    `name` (default: the spec's name, as `runner run` does)."""
    client, _ = _client(tracking_uri)
    runs = queries.trial_runs(client, experiment_name, parent_run_id)
    missing: list[str] = []  # better trials without their checkpoint artifact (e.g. staging hit a full disk)
    while True:
        try:
            best, note = pick_best(runs, metric)
        except RegistryError as exc:
            raise RegistryError(f"{experiment_name}: {exc}{'; ' + '; '.join(missing) if missing else ''}") from exc
        if _has_checkpoint(client, best):
            break
        missing.append(f"{best.info.run_name} has the best {metric} but no {CHECKPOINT_ARTIFACT} artifact")
        runs = [r for r in runs if r.info.run_id != best.info.run_id]
    note = "; ".join([*[m + ": took the next best" for m in missing], *([note] if note else [])])
    return _register(client, best, metric, name or experiment_name, alias, note)


def _has_checkpoint(client: MlflowClient, run: Any) -> bool:
    """Whether the run holds its checkpoint artifact (submissions on a GPU and old runs build from it)."""
    folder = CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]
    return any(a.path == CHECKPOINT_ARTIFACT for a in client.list_artifacts(run.info.run_id, folder))


def register_run(run_id: str, *, metric: str = "val_acc", name: str | None = None,
                 alias: str = "champion", tracking_uri: str | None = None) -> Registration:
    """Register one trial's run (`runner register --run-id`) under `name` (default: its spec's name);
    refused when over budget or unfinished."""
    client, _ = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"run {run_id!r} not found at {redact(client.tracking_uri)}: {exc}") from exc
    if run.data.tags.get("within_budget") == "false":
        raise RegistryError(f"run {run_id} ({run.info.run_name}) is over the parameter budget "
                            f"({run.data.tags.get('params', '?')} params); over-budget trials are never registered")
    if run.info.status != "FINISHED":
        raise RegistryError(f"run {run_id} ({run.info.run_name}) is {run.info.status}, not FINISHED")
    if run_value(run, metric) is None:
        raise RegistryError(f"run {run_id} ({run.info.run_name}) has no metric {metric!r}")
    return _register(client, run, metric, name or client.get_experiment(run.info.experiment_id).name, alias)


def _download_state(client: MlflowClient, run: Any) -> dict:
    """The checkpoint dict of a trial's run (its `checkpoint/state.pt` artifact), loaded weights-only."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT, tmp)
        except Exception as exc:
            raise RegistryError(f"run {run.info.run_id} ({run.info.run_name}) has no {CHECKPOINT_ARTIFACT} "
                                f"artifact to build the model from: {exc}") from exc
        return checkpoint.load(path)


def logged_model_id(run: Any) -> str | None:
    """The run's own logged model (the tracker logs one per trial, at its best epoch); the latest if several."""
    outputs = getattr(run, "outputs", None)
    models = list(outputs.model_outputs) if outputs is not None and outputs.model_outputs else []
    return models[-1].model_id if models else None


def _model_of(client: MlflowClient, run: Any) -> str:
    """The trial's logged model id; runs tracked before logged models existed get one built from their
    checkpoint artifact now."""
    model_id = logged_model_id(run)
    if model_id is not None:
        return model_id
    state = _download_state(client, run)
    if state.get("within_budget") is False:
        raise RegistryError(f"run {run.info.run_id}: its checkpoint is over the parameter budget "
                            f"({state.get('params')} params); over-budget trials are never registered")
    return pyfunc.log(client, run.info.experiment_id, run.info.run_id, state, step=int(state.get("epoch", 0)),
                      params=run.data.params, tags={"trial": run.info.run_name})


def _register(client: MlflowClient, run: Any, metric: str, name: str, alias: str, note: str = "") -> Registration:
    run_id, value = run.info.run_id, run_value(run, metric)
    model_id = _model_of(client, run)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                          tags={"run_id": run_id, "trial": run.info.run_name, metric: str(value)})
    previous_version, previous_value = _alias_holder(client, name, alias, metric)
    moved = _better(value, previous_value, metric)
    if moved:
        client.set_registered_model_alias(name, alias, str(version.version))
    verdict = (f"moved {alias} to v{version.version}" if moved else f"{alias} stays on v{previous_version}")
    against = ("no previous holder" if previous_version is None
               else f"v{previous_version} has {metric} " + ("?" if previous_value is None else f"{previous_value:.4f}"))
    message = (f"registered {name} v{version.version} from trial {run.info.run_name} ({metric} {value:.4f}); "
               f"{against}; {verdict}" + (f" ({note})" if note else ""))
    print(message)
    return Registration(name=name, version=str(version.version), run_id=run_id, trial=run.info.run_name,
                        metric=metric, value=value, alias=alias, alias_moved=moved,
                        previous_version=previous_version, previous_value=previous_value,
                        model_uri=f"models:/{name}/{version.version}", message=message)


def _alias_holder(client: MlflowClient, name: str, alias: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric value) of the current alias holder; versions compared as strings because sqlite
    returns ints and the HTTP store strings."""
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value = holder.tags.get(metric)
    if value is None and holder.run_id:
        value = run_value(client.get_run(holder.run_id), metric)
    return str(holder.version), None if value is None else float(value)


def load_model(uri: str, device: str | torch.device | None = None) -> pyfunc.LoadedModel:
    """The classifier behind `models:/NAME@alias`, `models:/NAME/3`, `models:/<model id>`, `runs:/ID/model`
    or `runs:/ID` (that trial's logged model)."""
    client, _ = _client(None)
    if uri.startswith("runs:/") and uri.removeprefix("runs:/").strip("/").count("/") == 0:
        run_id = uri.removeprefix("runs:/").strip("/")
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise RegistryError(f"run {run_id!r} not found at {redact(client.tracking_uri)}: {exc}") from exc
        model_id = logged_model_id(run)
        if model_id is None:
            raise RegistryError(f"run {run_id} ({run.info.run_name}) has no logged model; "
                                f"`runner register --run-id {run_id}` builds one from its checkpoint")
        uri = f"models:/{model_id}"
    try:
        return pyfunc.LoadedModel(uri, device)
    except MlflowException as exc:
        raise RegistryError(f"cannot load model {uri!r} from {redact(client.tracking_uri)}: {exc}") from exc


def record_submission(run_id: str, path: str | Path) -> None:
    """Attach a written submission CSV to the model's source run, tagged with the file's digest so that
    `runner score` finds the run again from the file alone."""
    client, _ = _client(None)
    client.log_artifact(run_id, str(path), "submissions")
    client.set_tag(run_id, SUBMISSION_TAG + file_digest(path), Path(path).name)


def log_score(path: str | Path, score: float, tracking_uri: str | None = None) -> str | None:
    """Log `kaggle` = score on the run whose model wrote this submission (found by the file's digest);
    returns the run id, or None when no run made it."""
    client, _ = _client(tracking_uri)
    tag = SUBMISSION_TAG + file_digest(path)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{tag}` != ''", max_results=1) if experiments else []
    if not runs:
        return None
    client.log_metric(runs[0].info.run_id, "kaggle", score)
    return runs[0].info.run_id


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:DIGEST_CHARS]
