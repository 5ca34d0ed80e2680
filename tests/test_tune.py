"""Real Ray: a Tune grid of Ray Train DDP trials (gloo on CPU), a simulated multi-node cluster, and
the refusal of grids that cannot be placed. Every test has a timeout: a resource mistake hangs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytestmark = [pytest.mark.ray]

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
       "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60"}


def write_spec(directory: str, text: str) -> str:
    path = os.path.join(directory, "spec.yaml")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text))
    return path


def runner(args: list[str], cwd: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV, **env})


GRID = """
name: tiny_grid
base:
  data: {path: "synthetic:400", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 2, batch_size: 32}
  scaling: {workers: 2, cpus_per_worker: 0.25, trial_cpus: 0.5}
grid:
  optimizer.lr: [0.05, 0.1]
"""


@pytest.mark.timeout(400)
def test_grid_of_two_trials_with_two_ddp_workers_each(short_dir):
    spec = write_spec(short_dir, GRID)
    uri = f"sqlite:///{short_dir}/mlflow.db"
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--no-register"],
                  cwd=short_dir, timeout=380, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "2 trial(s), 2 at a time" in out
    for lr in ("lr=0.05", "lr=0.1"):
        assert f"[{lr}] epoch 1/2" in out and f"[{lr}] epoch 2/2" in out
    experiment = next(d for d in os.listdir(f"{short_dir}/results") if d.startswith("tiny_grid-"))
    with open(f"{short_dir}/results/{experiment}/results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["trial"] for r in rows) == ["lr=0.05", "lr=0.1"]
    assert all(r["status"] == "FINISHED" and r["epochs"] == "2" for r in rows)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("tiny_grid").experiment_id
    runs = client.search_runs([experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and len(runs) == 3
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2]
        assert child.data.metrics["workers"] == 2 and child.data.metrics["batch_per_worker"] == 16
        assert child.info.status == "FINISHED"


@pytest.mark.timeout(300)
def test_unplaceable_grid_is_refused_with_the_arithmetic_not_hung(short_dir):
    spec = write_spec(short_dir, GRID.replace("cpus_per_worker: 0.25, trial_cpus: 0.5",
                                              "cpus_per_worker: 1, trial_cpus: 1"))
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--no-register"],
                  cwd=short_dir, timeout=240, MLFLOW_TRACKING_URI=f"sqlite:///{short_dir}/mlflow.db")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 trial CPU + 2 workers x 1 CPU = 3 CPU" in done.stderr and "2 CPU" in done.stderr


def _probe_worker(config: dict) -> None:
    """Runs the real training core on each rank, then compares weights across ranks."""
    import hashlib

    import ray.train
    import torch
    import torch.distributed as dist

    from runner import data, spec
    from runner.core import checkpoint, train

    cfg = spec.trial_config(config["overrides"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    meta, train_split, val_split = data.load_trial_data(cfg["data"], 0, rank, world)
    result = train.fit(cfg, train_split, val_split, meta.classes)
    weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    digest = hashlib.sha256(weights.numpy().tobytes()).hexdigest()
    digests, shards = [None] * world, [None] * world
    dist.all_gather_object(digests, digest)
    dist.all_gather_object(shards, sorted(train_split.ids))
    metrics = {"same_weights": len(set(digests)) == 1, "disjoint_shards": not set(shards[0]) & set(shards[1]),
               "batch_per_worker": result.metrics["batch_per_worker"],
               "images_seen": result.metrics["images_per_s"] * result.metrics["epoch_s"]}
    with tempfile.TemporaryDirectory() as directory:  # Train V2 keeps the metrics of checkpointed reports
        saved = None
        if rank == 0:
            checkpoint.save({"digest": digest}, directory)
            saved = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=saved)


@pytest.mark.timeout(300)
def test_ddp_ranks_end_with_identical_weights_and_split_the_batch(short_dir):
    import ray
    import ray.cloudpickle
    import ray.train
    import ray.train.torch

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    os.environ.update(ENV)
    ray.init(num_cpus=2, _temp_dir=short_dir, include_dashboard=False)
    try:
        overrides = {"data.path": "synthetic:300", "model.name": "wrn_std", "model.depth": 10,
                     "model.width": 1, "train.epochs": 1, "train.batch_size": 32, "model.dropout": 0.2}
        trainer = ray.train.torch.TorchTrainer(
            _probe_worker, train_loop_config={"overrides": overrides},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(storage_path=f"{short_dir}/store", name="probe"))
        metrics = trainer.fit().metrics
    finally:
        ray.shutdown()
    assert metrics["same_weights"] is True  # gradients were all-reduced: dropout and data differ per rank
    assert metrics["disjoint_shards"] is True
    assert metrics["batch_per_worker"] == 16  # the global batch of 32 split over 2 ranks
    train_images = 300 - 30  # val fraction 0.1
    steps = (train_images // 2) // 16
    assert metrics["images_seen"] == pytest.approx(steps * 32, rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_simulated_cluster_places_the_two_workers_on_different_nodes(short_dir):
    import ray
    from ray.cluster_utils import Cluster

    from runner import spec
    from runner.tune import tuner

    os.environ.update(ENV)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": short_dir,
                                                            "object_store_memory": 100 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    try:
        ray.init(address=cluster.address)
        path = write_spec(short_dir, GRID.replace("cpus_per_worker: 0.25, trial_cpus: 0.5",
                                                  "cpus_per_worker: 1, trial_cpus: 1")
                          .replace("optimizer.lr: [0.05, 0.1]", "optimizer.lr: [0.05]"))
        trials = spec.load_spec(path).trials
        grid = tuner.run_tuner(trials, experiment="multinode", storage=f"{short_dir}/results", max_concurrent=1,
                              scheduler=None, callbacks=[])
        result = grid[0]
        assert result.error is None, result.error
        # The head's only CPU holds the trial driver, so each 1-CPU worker needs its own node.
        assert result.metrics["worker_nodes"] == 2 and result.metrics["epoch"] == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
