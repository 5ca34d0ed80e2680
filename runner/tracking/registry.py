"""The model registry: register the best in-budget trial, move an alias only on improvement.

Reads a spec's MLflow experiment (the latest `runner run` parent, or a given parent/run id) and the
chosen trial's `checkpoint/state.pt` artifact; writes a logged model (`mlflow.pytorch.log_model`,
pt2 format with a batch-2 input example, class names and normalisation stats in its metadata), a
new registered model version, and the alias (`champion`) when the new version beats the holder.

    runner register m1_wrn_grid --metric val_acc --name cifar-submission --alias champion
    runner register --run-id <RUN_ID>

Over-budget trials are never registered. Also loads registered/logged models back for `runner submit`.
"""

from __future__ import annotations

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
from runner.tracking import queries
from runner.tracking.connection import connect, resolve_tracking_uri
from runner.tracking.tracker import CHECKPOINT_ARTIFACT

PIP_REQUIREMENTS = ["torch", "torchvision", "timm"]  # given, so MLflow skips its slow inference (6-16 s)
IMAGE_SIZE = 32  # the project's inputs; checkpoints do not record the image shape


class RegistryError(RuntimeError):
    """Nothing registrable (no finished in-budget trial), or a run/model that cannot be used."""


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
        raise RegistryError(f"no FINISHED trial has metric {metric!r}; nothing to register")
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
                  name: str = "cifar-submission", alias: str = "champion",
                  tracking_uri: str | None = None) -> Registration:
    """Register the best in-budget trial of the spec's latest invocation (or of `parent_run_id`)."""
    client, _ = _client(tracking_uri)
    runs = queries.trial_runs(client, experiment_name, parent_run_id)
    best, note = pick_best(runs, metric)
    return _register(client, best, metric, name, alias, note)


def register_run(run_id: str, *, metric: str = "val_acc", name: str = "cifar-submission",
                 alias: str = "champion", tracking_uri: str | None = None) -> Registration:
    """Register one trial's run (`runner register --run-id`); refused when over budget or unfinished."""
    client, _ = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"run {run_id!r} not found at {client.tracking_uri}: {exc}") from exc
    if run.data.tags.get("within_budget") == "false":
        raise RegistryError(f"run {run_id} ({run.info.run_name}) is over the parameter budget "
                            f"({run.data.tags.get('params', '?')} params); over-budget trials are never registered")
    if run.info.status != "FINISHED":
        raise RegistryError(f"run {run_id} ({run.info.run_name}) is {run.info.status}, not FINISHED")
    if run_value(run, metric) is None:
        raise RegistryError(f"run {run_id} ({run.info.run_name}) has no metric {metric!r}")
    return _register(client, run, metric, name, alias)


def _download_state(client: MlflowClient, run: Any) -> dict:
    """The checkpoint dict of a trial's run (its `checkpoint/state.pt` artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT, tmp)
        except Exception as exc:
            raise RegistryError(f"run {run.info.run_id} ({run.info.run_name}) has no {CHECKPOINT_ARTIFACT} "
                                f"artifact to build the model from: {exc}") from exc
        return checkpoint.load(path)


def _register(client: MlflowClient, run: Any, metric: str, name: str, alias: str, note: str = "") -> Registration:
    run_id, value = run.info.run_id, run_value(run, metric)
    state = _download_state(client, run)
    if state.get("within_budget") is False:
        raise RegistryError(f"run {run_id}: its checkpoint is over the parameter budget "
                            f"({state.get('params')} params); over-budget trials are never registered")
    net = checkpoint.build_model(state)
    # pt2 (torch.export) needs an example; batch 2, because batch 1 would pin the batch size to 1.
    example = torch.randn(2, len(state["mean"]), IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    metadata = {"classes": list(state["classes"]), "mean": list(state["mean"]), "std": list(state["std"]),
                "trial": run.info.run_name, "metric": metric, "value": value}
    info = mlflow.pytorch.log_model(net, name="model", input_example=example.numpy(), run_id=run_id,
                                    pip_requirements=PIP_REQUIREMENTS, metadata=metadata)
    version = mlflow.register_model(info.model_uri, name, tags={"run_id": run_id, "trial": run.info.run_name,
                                                                metric: str(value)})
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


def load_model(uri: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, list[str], list[float],
                                                                     list[float], str | None]:
    """(model, classes, mean, std, run id) for `models:/NAME@alias`, `models:/NAME/3`, `runs:/ID/model`,
    or `runs:/ID` (that run's checkpoint artifact)."""
    client, _ = _client(None)
    if uri.startswith("runs:/") and uri.removeprefix("runs:/").strip("/").count("/") == 0:
        return _from_run_checkpoint(client, uri.removeprefix("runs:/").strip("/"), device)
    try:
        info = mlflow.models.get_model_info(uri)
        if torch.device(device).type != "cpu" and info.run_id:
            # A pt2 graph keeps the device it was exported on (CPU, in `runner register`) and MLflow
            # refuses to move it; the source run's checkpoint holds the same weights, built eagerly.
            return _from_run_checkpoint(client, info.run_id, device)
        net = mlflow.pytorch.load_model(uri)
    except MlflowException as exc:
        raise RegistryError(f"cannot load model {uri!r} from {client.tracking_uri}: {exc}") from exc
    meta = info.metadata or {}
    if "classes" not in meta:
        raise RegistryError(f"model {uri!r} carries no class names (not logged by `runner register`)")
    return net, list(meta["classes"]), list(meta["mean"]), list(meta["std"]), info.run_id


def _from_run_checkpoint(client: MlflowClient, run_id: str, device: str | torch.device
                         ) -> tuple[torch.nn.Module, list[str], list[float], list[float], str]:
    state = _download_state(client, client.get_run(run_id))
    net = checkpoint.build_model(state).to(device)
    return net, list(state["classes"]), list(state["mean"]), list(state["std"]), run_id


def log_submission(run_id: str, path: str | Path) -> None:
    """Attach a written submission CSV to the model's source run."""
    client, _ = _client(None)
    client.log_artifact(run_id, str(path), "submissions")


def source_run_id(uri: str) -> str | None:
    """The MLflow run a model URI came from (its trial's child run)."""
    if uri.startswith("runs:/"):
        return uri.removeprefix("runs:/").strip("/").split("/")[0]
    _client(None)
    return mlflow.models.get_model_info(uri).run_id
