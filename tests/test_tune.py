"""Real Ray: a Tune grid of Ray Train DDP trials (gloo on CPU), a simulated multi-node cluster, and
the refusal of grids that cannot be placed. Every test has a timeout: a resource mistake hangs."""

from __future__ import annotations

import csv
import json
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

BOTH_PATHS = """
name: both_paths
base:
  data: {path: "synthetic:400", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 3, batch_size: 32}
  scaling: {workers: 1, cpus_per_worker: 0.25, trial_cpus: 0.5}
  checkpoint: {keep: 1}
runs:
  - name: solo
  - name: ddp
    scaling.workers: 2
  - name: solo-lr
    optimizer.lr: 0.2
"""


def results_csv(root: str, prefix: str) -> list[dict]:
    experiment = next(d for d in os.listdir(root) if d.startswith(prefix))
    with open(f"{root}/{experiment}/results.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(400)
def test_both_trial_paths_give_the_same_metrics_checkpoints_and_runs(short_dir):
    """A 1-worker trial trains in its Tune trial process, a 2-worker one is a TorchTrainer of DDP workers:
    the same progress lines, results rows, MLflow runs, artifacts and checkpoint retention."""
    spec = write_spec(short_dir, BOTH_PATHS)
    uri = f"sqlite:///{short_dir}/mlflow.db"
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--no-register"],
                  cwd=short_dir, timeout=380, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for name in ("solo", "ddp", "solo-lr"):
        assert all(f"[{name}] epoch {e}/3" in out for e in (1, 2, 3)) and f"[{name}] finished" in out, out[-3000:]
    noise = done.stdout + done.stderr
    assert "Reporting training result" not in noise and "Checkpoint successfully created" not in noise
    rows = {r["trial"]: r for r in results_csv(f"{short_dir}/results", "both_paths-")}
    assert {n: (r["status"], r["epochs"]) for n, r in rows.items()} == {n: ("FINISHED", "3") for n in rows}
    # the varied columns are filled on every row, also where a row keeps the base value
    assert [(rows[n]["optimizer.lr"], rows[n]["scaling.workers"]) for n in ("solo", "ddp", "solo-lr")] == [
        ("0.1", "1"), ("0.1", "2"), ("0.2", "1")]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("both_paths").experiment_id
    children = {r.info.run_name: r for r in client.search_runs([experiment_id]) if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["ddp", "solo", "solo-lr"]
    for name, child in children.items():
        run_id = child.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]
        assert child.data.metrics["workers"] == (2 if name == "ddp" else 1)
        assert child.data.metrics["best_val_acc"] == max(m.value for m in client.get_metric_history(run_id, "val_acc"))
        files = {a.path for folder in ("config", "plots", "checkpoint") for a in client.list_artifacts(run_id, folder)}
        assert files == {"config/resolved.yaml", "plots/curves.png", "plots/confusion.png", "checkpoint/state.pt"}
    # checkpoint.keep 1: the best one (plus the latest, which Tune and Train always keep), on both paths
    experiment = next(d for d in os.listdir(f"{short_dir}/results") if d.startswith("both_paths-"))
    holders = 0
    for folder, subfolders, _ in os.walk(f"{short_dir}/results/{experiment}"):
        kept = [n for n in subfolders if n.startswith("checkpoint_")]
        if kept:
            holders += 1
            assert len(kept) <= 2, (folder, kept)
            assert all({"state.pt", "history.json"} <= set(os.listdir(f"{folder}/{k}")) for k in kept)
    assert holders == 3  # two in-process trials' folders, one Train run


@pytest.mark.timeout(300)
def test_unplaceable_grid_is_refused_with_the_arithmetic_not_hung(short_dir):
    spec = write_spec(short_dir, GRID.replace("cpus_per_worker: 0.25, trial_cpus: 0.5",
                                              "cpus_per_worker: 1, trial_cpus: 1"))
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--no-register"],
                  cwd=short_dir, timeout=240, MLFLOW_TRACKING_URI=f"sqlite:///{short_dir}/mlflow.db")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 trial CPU + 2 workers x 1 CPU = 3 CPU" in done.stderr and "2 CPU" in done.stderr
    # refused before MLflow is written: no store, no experiment, no run; and no results folder
    assert not os.path.exists(f"{short_dir}/mlflow.db") and not os.path.exists(f"{short_dir}/results")


@pytest.mark.timeout(300)
def test_a_concurrency_the_cluster_cannot_place_is_refused_leaving_no_mlflow_run(short_dir):
    spec = write_spec(short_dir, GRID)
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--max-concurrent", "5"],
                  cwd=short_dir, timeout=240, MLFLOW_TRACKING_URI=f"sqlite:///{short_dir}/mlflow.db")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "runner: error: --max-concurrent 5 cannot be placed" in done.stderr and "at most 2" in done.stderr
    assert not os.path.exists(f"{short_dir}/mlflow.db") and not os.path.exists(f"{short_dir}/results")


ASHA = """
name: asha
base:
  data: {path: "synthetic:600", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  train: {epochs: 3, batch_size: 32}
  scaling: {workers: 1, cpus_per_worker: 0.25, trial_cpus: 0.5}
runs:
  # The two that learn run first (2 at a time), so ASHA has their first epoch when the two that cannot
  # learn (lr 1e-7: chance level) reach it: those are stopped after one epoch, on both trial paths.
  - name: good-solo
  - name: good-ddp
    scaling.workers: 2
  - name: stuck-solo
    optimizer.lr: 0.0000001
  - name: stuck-ddp
    optimizer.lr: 0.0000001
    scaling.workers: 2
"""


@pytest.mark.timeout(500)
def test_asha_stops_weak_trials_on_both_paths_and_every_trial_runs(short_dir):
    spec = write_spec(short_dir, ASHA)
    uri = f"sqlite:///{short_dir}/mlflow.db"
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--max-concurrent", "2",
                   "--scheduler", "asha", "--no-register"], cwd=short_dir, timeout=480, MLFLOW_TRACKING_URI=uri)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    rows = {r["trial"]: r for r in results_csv(f"{short_dir}/results", "asha-")}
    assert sorted(rows) == ["good-ddp", "good-solo", "stuck-ddp", "stuck-solo"]  # every trial ran
    assert {rows[n]["status"] for n in ("good-solo", "good-ddp")} == {"FINISHED"}
    stopped = [n for n, r in rows.items() if r["status"] == "STOPPED"]
    assert stopped and all(int(rows[n]["epochs"]) < 3 for n in stopped), rows
    assert "FAILED" not in {r["status"] for r in rows.values()}
    for name in stopped:
        assert f"[{name}] stopped early by the scheduler after epoch" in done.stdout

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == sorted(rows)
    assert {r.info.status for r in runs} == {"FINISHED"}  # the parent too: an early stop is not a failure
    assert {children[n].data.tags["status"] for n in stopped} == {"STOPPED"}


ASHA_IN_PROCESS = ASHA.split("runs:")[0] + """runs:
  - name: good-a
  - name: good-b
  - name: stuck-a
    optimizer.lr: 0.0000001
  - name: stuck-b
    optimizer.lr: 0.0000001
  - name: later
"""


@pytest.mark.timeout(400)
def test_asha_over_in_process_trials_reuses_a_stopped_trials_process_and_every_trial_runs(short_dir):
    """Five 1-worker trials, two at a time, some stopped by ASHA while their next epoch trains: Tune reuses
    the stopped trials' processes (two processes train all five) and no reset fails a trial. That a stopped
    trial leaves its epoch before its next step, so the reset need not wait for the epoch, is
    tests/test_trial_stop.py."""
    spec = write_spec(short_dir, ASHA_IN_PROCESS.replace("name: asha", "name: asha_solo"))
    done = runner(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--max-concurrent", "2",
                   "--scheduler", "asha", "--no-register"], cwd=short_dir, timeout=380,
                  MLFLOW_TRACKING_URI=f"sqlite:///{short_dir}/mlflow.db")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    rows = {r["trial"]: r for r in results_csv(f"{short_dir}/results", "asha_solo-")}
    assert sorted(rows) == ["good-a", "good-b", "later", "stuck-a", "stuck-b"]
    assert {r["status"] for r in rows.values()} == {"FINISHED", "STOPPED"}, rows  # a stop happened, no failure
    assert int(rows["later"]["epochs"]) >= 1, rows  # it trained after the stops
    pids = trial_pids(f"{short_dir}/results", "asha_solo-")
    assert len(pids) == 5 and len(set(pids.values())) <= 2, (pids, out[-4000:])


def trial_pids(root: str, prefix: str) -> dict[str, int]:
    """{trial folder: the pid of the process that trained it}, from each trial's first Tune result."""
    experiment = next(d for d in os.listdir(root) if d.startswith(prefix))
    pids = {}
    for folder in os.listdir(f"{root}/{experiment}"):
        result = f"{root}/{experiment}/{folder}/result.json"
        if os.path.exists(result):
            with open(result) as fh:
                pids[folder] = json.loads(fh.readline())["pid"]
    return pids


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
def test_ddp_ranks_end_with_identical_weights_and_split_the_batch(short_dir, monkeypatch):
    import ray
    import ray.cloudpickle
    import ray.train
    import ray.train.torch

    from runner.tune import cluster as ray_cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    ray_cluster.start_local_ray(2, _temp_dir=short_dir)
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
def test_simulated_cluster_places_the_two_workers_on_different_nodes(short_dir, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from runner import spec
    from runner.tune import cluster as ray_cluster
    from runner.tune import tuner

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": short_dir,
                                                            "object_store_memory": 100 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20)
    try:
        ray_cluster.connect_ray(cluster.address)
        path = write_spec(short_dir, GRID.replace("cpus_per_worker: 0.25, trial_cpus: 0.5",
                                                  "cpus_per_worker: 1, trial_cpus: 1, placement: SPREAD")
                          .replace("optimizer.lr: [0.05, 0.1]", "optimizer.lr: [0.05]"))
        trials = spec.load_spec(path).trials
        grid = tuner.run_tuner(trials, experiment="multinode", storage=f"{short_dir}/results", max_concurrent=1,
                              scheduler=None, callbacks=[])
        result = grid[0]
        assert result.error is None, result.error
        # The head's only CPU holds the trial driver; either worker node could hold both 1-CPU workers (PACK,
        # the default, puts them together): scaling.placement SPREAD puts them on two nodes.
        assert result.metrics["worker_nodes"] == 2 and result.metrics["epoch"] == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
