"""The Ray ring: a Tune grid of trial drivers, each a Ray Train `TorchTrainer` of DDP workers.

Three plain functions, as in Ray's Train/Tune interop example:
- `train_worker(loop_config)` runs in every Train worker: reads its shard once, calls `train.fit`,
  reports each epoch (rank 0 attaches the checkpoint);
- `trial_driver(config)` is the Tune trainable: builds the `TorchTrainer` from the trial's
  `scaling` group and calls `fit()`; `TuneReportCallback` forwards rank 0's metrics to Tune;
- `run_tuner(...)` builds the `Tuner` (or restores one) with the concurrency the resource check allows.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch.distributed
from ray.tune.integration.ray_train import TuneReportCallback

from runner import data, train
from runner.spec import Trial

METRIC, MODE = "val_acc", "max"
TRIAL_RESOURCE_ENV = "RUNNER_TRIAL_RESOURCE"  # e.g. "trial_driver": keeps drivers on on-demand nodes


def train_worker(loop_config: dict) -> None:
    """One DDP rank. Ray has initialised torch.distributed (gloo on CPU, nccl on GPU)."""
    cfg = loop_config["config"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    meta = data.read_meta(cfg["data"]["path"])
    train_split, val_split = data.load_train_shard(
        cfg["data"]["path"], rank=rank, world=world, val_fraction=cfg["data"]["val_fraction"],
        seed=cfg["train"]["seed"])
    resume = None
    # After a node loss (Train restarts the group) or `--resume` (Train finds its run by name), this is
    # the last *committed* checkpoint: Train's own record, never a listing of checkpoint folders.
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            resume = train.load_checkpoint(directory)
    resumed_from = resume["epoch"] if resume else 0  # epochs this worker group did not have to train

    nodes = _distinct_nodes(world)

    def report(metrics: dict, state: Callable[[], dict]) -> None:
        metrics = {**metrics, "worker_nodes": nodes, "resumed_from": resumed_from}
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:
                train.save_checkpoint(state(), directory)
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=saved)  # every rank reports, or the group stalls

    train.fit(cfg, train_split, val_split, meta.classes, report, device=ray.train.torch.get_device(),
              resume=resume)


def _distinct_nodes(world: int) -> int:
    """How many nodes this worker group spans (shown with the metrics; DDP across nodes costs more)."""
    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return 1
    everyone = [None] * world
    torch.distributed.all_gather_object(everyone, node)
    return len(set(everyone))


def trial_driver(config: dict) -> None:
    """A Tune trial: one `TorchTrainer.fit()`. The Train run name is the trial id, which is unique per
    invocation (a reused name silently resumes an old run) and stable across `Tuner.restore`."""
    cfg = config["trial"]["config"]
    scaling = cfg["scaling"]
    trial_id = ray.tune.get_context().get_trial_id()
    # Train's controller polls its workers every 2 s and takes one report per poll, so any epoch
    # shorter than 2 s was stretched to 2 s (measured 5.1x slower for 0.36 s epochs; 1.05x at 0.2 s,
    # and teardown 5.0 s -> 0.6 s). It reads this from the process that calls fit(): this one.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    workers = {"CPU": scaling["cpus_per_worker"]}
    if scaling["gpus_per_worker"]:
        workers["GPU"] = scaling["gpus_per_worker"]
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg},
        scaling_config=ray.train.ScalingConfig(num_workers=scaling["workers"],
                                               use_gpu=bool(scaling["gpus_per_worker"]),
                                               resources_per_worker=workers,
                                               placement_strategy=scaling["placement"]),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=config["train_storage"],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg["checkpoint"]["keep"],
                                                         checkpoint_score_attribute=METRIC,
                                                         checkpoint_score_order=MODE),
            failure_config=ray.train.FailureConfig(max_failures=cfg["max_failures"]),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown progress
        ),
    )
    trainer.fit()


def trial_resources(config: dict) -> dict:
    resources = {"cpu": config["trial"]["config"]["scaling"]["trial_cpus"]}
    if custom := os.environ.get(TRIAL_RESOURCE_ENV):
        resources[custom] = 0.001  # a token amount: it only pins drivers to nodes that advertise it
    return resources


def run_tuner(trials: list[Trial], *, experiment: str, storage: str, max_concurrent: int,
              scheduler: str | None, callbacks: list, restore: bool = False) -> ray.tune.ResultGrid:
    """Run (or, with `restore`, resume) the grid; one trial per resolved row."""
    trainable = ray.tune.with_resources(trial_driver, trial_resources)
    path = storage_join(storage, experiment)
    if restore:
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # Tune brings back the callbacks pickled into tuner.pkl by the first attempt, not this invocation's
        # (Tuner.restore takes none): without this the MLflow bridge and progress lines see no result.
        # No public API for it in Ray 2.60 (ray-project/ray#41364 uses the same attribute).
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner.fit()
    param_space = {
        "trial": ray.tune.grid_search([{"name": t.name, "config": t.config} for t in trials]),
        "train_storage": storage_join(storage, experiment, "train"),
    }
    tuner = ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=max_concurrent,
                                        scheduler=_scheduler(scheduler, trials),
                                        trial_name_creator=_trial_label,
                                        trial_dirname_creator=_trial_dirname,
                                        reuse_actors=True),  # trial drivers are plain functions: reusable
        run_config=ray.tune.RunConfig(name=experiment, storage_path=storage, callbacks=callbacks, verbose=0),
    )
    return tuner.fit()


def _scheduler(name: str | None, trials: list[Trial]):  # noqa: ANN202 - Tune scheduler classes vary
    if name in (None, "fifo"):
        return None
    if name == "asha":
        longest = max(t.config["train"]["epochs"] for t in trials)
        return ray.tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=longest, grace_period=1,
                                                 reduction_factor=2)
    raise ValueError(f"--scheduler {name!r}: use fifo or asha")


def _trial_label(trial: ray.tune.experiment.Trial) -> str:
    return trial.config["trial"]["name"]


def _trial_dirname(trial: ray.tune.experiment.Trial) -> str:
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", trial.config["trial"]["name"])[:60]
    return f"{trial.trial_id}-{label}"


def storage_join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])
