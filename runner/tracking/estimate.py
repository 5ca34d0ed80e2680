"""`runner check --cluster-gpus N`: a spec's grid wall time and GPU-hours on N GPUs, from earlier runs.

Reads MLflow only (nothing is written; a sqlite store that does not exist yet is not created): the
FINISHED trials of the same model family (`model.name`) on the same kind of device (GPU or CPU), their
throughput per worker (`runner.cost`) and their start-up (wall time less the epochs' own time). Each
planned trial then takes epochs x its training images / (throughput x workers) + start-up, and
`runner.cost.estimate_grid` places the trials on the cluster as Tune's FIFO scheduler would.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from runner import cost, data
from runner.resources import TrialNeed, need_of
from runner.tracking.connection import TrackingError, connect, quote, resolve_tracking_uri


@dataclass(frozen=True)
class History:
    """What earlier trials of one model family did on one kind of device."""

    runs: int
    images_per_s_per_worker: float  # median
    start_s: float  # median start-up: wall time less the epochs' own time


@dataclass
class Estimate:
    seconds: dict[str, float | None]  # trial name -> estimated wall time (None: no history to go on)
    wall_s: float | None = None
    gpu_hours: float | None = None
    notes: list[str] = field(default_factory=list)


def history(client: object, family: str, on_gpu: bool) -> History | None:
    """The family's finished trials on GPU (or on CPU only), across every experiment of the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    where = (f"params.`model.name` = {quote(family)} and attributes.status = 'FINISHED' "
             f"and metrics.`{cost.PER_WORKER}` > 0")
    rates, starts = [], []
    for run in client.search_runs(experiments, where, max_results=1000):
        metrics = run.data.metrics
        if (metrics.get(cost.GPU_HOURS, 0.0) > 0) != on_gpu:
            continue
        rates.append(metrics[cost.PER_WORKER])
        epochs = run.data.tags.get("epochs", "")
        if epochs.isdigit() and cost.WALL_S in metrics and "epoch_s" in metrics:
            starts.append(max(0.0, metrics[cost.WALL_S] - int(epochs) * metrics["epoch_s"]))
    if not rates:
        return None
    return History(len(rates), statistics.median(rates), statistics.median(starts) if starts else 0.0)


def estimate(trials: list, cluster_gpus: float, cluster_cpus: float = float("inf"),
             tracking_uri: str | None = None) -> Estimate:
    """`trials`: a spec's resolved trials (name, config). GPUs per worker "auto" count as one GPU each on
    a GPU cluster (what the engine resolves them to there)."""
    out = Estimate(seconds={t.name: None for t in trials})
    client = _reader(tracking_uri, out)
    if client is None:
        return out
    planned, found = [], {}
    for trial in trials:
        cfg = trial.config
        need = _need(trial.name, cfg["scaling"], cluster_gpus)
        key = (cfg["model"]["name"], need.gpus > 0)
        if key not in found:
            found[key] = history(client, *key)
            device = "GPU" if key[1] else "CPU"
            out.notes.append(f"{key[0]} on {device}: " + (
                f"{found[key].runs} earlier trial(s), median {found[key].images_per_s_per_worker:,.0f} images/s "
                f"per worker, start-up {found[key].start_s:.0f} s" if found[key] else "no earlier trial to go on"))
        images = _training_images(cfg["data"])
        if images is None:
            out.notes.append(f"{trial.name}: {cfg['data']['path']} is not prepared yet (no image count)")
        if found[key] is None or images is None:
            continue
        plan = cost.Planned(need, images * cfg["train"]["epochs"], found[key].images_per_s_per_worker,
                            found[key].start_s)
        out.seconds[trial.name] = plan.seconds
        planned.append(plan)
    if planned and len(planned) == len(trials):
        out.wall_s, out.gpu_hours = cost.estimate_grid(planned, cluster_gpus, cluster_cpus)
    elif planned:
        out.notes.append("no grid total: some trials have nothing to go on")
    return out


def _reader(tracking_uri: str | None, out: Estimate) -> object | None:
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        out.notes.append("no MLflow store yet: nothing has run to estimate from")
        return None
    try:
        return connect(uri)
    except TrackingError as exc:
        out.notes.append(f"no estimate: {exc}")
        return None


def _need(name: str, scaling: dict, cluster_gpus: float) -> TrialNeed:
    if scaling["gpus_per_worker"] == "auto":
        scaling = {**scaling, "gpus_per_worker": 1.0 if cluster_gpus > 0 else 0.0}
    return need_of(name, scaling)


def _training_images(data_cfg: dict) -> int | None:
    """Images a trial trains on per epoch (the train split less validation); None before `data prepare`."""
    try:
        total = data.read_meta(data_cfg["path"]).counts["train"]["total"]
    except (data.DataError, OSError, KeyError):
        return None
    return int(round(total * (1 - data_cfg["val_fraction"])))
