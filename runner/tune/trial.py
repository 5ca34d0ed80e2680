"""One Tune trial: a Ray Train `TorchTrainer` of DDP workers, as in Ray's Train/Tune interop example.

- `train_worker(loop_config)` runs in every Train worker: reads its shard once, calls `train.fit`,
  reports each epoch (rank 0 attaches the checkpoint);
- `trial_driver(config)` is the Tune trainable: builds the `TorchTrainer` from the trial's
  `scaling` group and calls `fit()`; `TuneReportCallback` forwards rank 0's metrics to Tune.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch.distributed
from ray.tune.integration.ray_train import TuneReportCallback

from runner import data, resources
from runner.core import checkpoint, train

METRIC, MODE = "val_acc", "max"
TRIAL_RESOURCE_ENV = "RUNNER_TRIAL_RESOURCE"  # e.g. "trial_driver": keeps drivers on on-demand nodes


def train_worker(loop_config: dict) -> None:
    """One DDP rank. Ray has initialised torch.distributed (gloo on CPU, nccl on GPU)."""
    cfg = loop_config["config"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    meta, train_split, val_split = data.load_trial_data(cfg["data"], cfg["train"]["seed"], rank, world)
    resume = None
    # After a node loss (Train restarts the group) or `--resume` (Train finds its run by name), this is
    # the last *committed* checkpoint: Train's own record, never a listing of checkpoint folders.
    if (committed := ray.train.get_checkpoint()) is not None:
        with committed.as_directory() as directory:
            resume = checkpoint.load(directory)
    resumed_from = resume["epoch"] if resume else 0  # epochs this worker group did not have to train

    nodes = _distinct_nodes(world)

    def report(metrics: dict, state: Callable[[], dict]) -> None:
        metrics = {**metrics, "worker_nodes": nodes, "resumed_from": resumed_from}
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:
                checkpoint.save(state(), directory)
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
    # shorter than 2 s was stretched to 2 s (bench/ray_overhead.py;
    # docs/benchmarks.md). It reads this from the process that calls fit(): this one.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    workers = {"CPU": scaling["cpus_per_worker"]}
    gpus = resources.gpus(scaling)
    if gpus:
        workers["GPU"] = gpus
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg},
        scaling_config=ray.train.ScalingConfig(num_workers=scaling["workers"],
                                               use_gpu=bool(gpus),
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
