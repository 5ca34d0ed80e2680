"""Autoscaling, simulated: cluster.yaml's node types on Ray's `fake_multinode` provider, no cloud.

`fake_cluster_config` keeps every node type of cluster.yaml with the same `resources` (GPUs become
fake GPUs: a worker gets CUDA_VISIBLE_DEVICES but no device) and caps `max_workers` so a 2-core
machine can hold them; each fake node is a real raylet. The head is started the one way that works
for this provider (not `ray up`): `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=fake.yaml`
with `provider.gcs_address` set (without it the launcher waits on port 6379 for 5 minutes).

- `test_gpu_shaped_grid_scales_gpu_nodes_from_zero`: a Tune grid whose trials have the shape the
  runner gives GPU trials on the cluster (driver bundle on `trial_driver`, worker bundles with a
  fractional GPU) starts with the head alone, makes the autoscaler launch GPU node types, and runs
  every worker there and every driver on a `trial_driver` node. Trivial work stands in for training,
  because Train on a fake GPU would try CUDA.
- `test_runner_grid_runs_on_autoscaled_nodes`: `runner run experiments/smoke.yaml` against the same
  fake cluster, with drivers sized to fill the head, so Train's DDP workers can only run on nodes the
  autoscaler adds. The runner plans on what the autoscaler may add (RUNNER_AUTOSCALING_CONFIG), not
  only on the nodes already up, or it would refuse the grid on the head alone.

    flock /tmp/ray-test.lock pytest -m slow tests/test_fake_autoscaling.py     # ~3-4 min on 2 cores
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_job_submit import ROOT, VENV_BIN, RayHead

CLUSTER_YAML = ROOT / "cluster.yaml"
FAKE_HEAD_TYPE = "ray.head.default"  # the name fake_multinode gives its head node
MAX_PER_TYPE = 2
TRIAL_RESOURCE = "trial_driver"
EMPTY_KEYS = {  # the autoscaler reads these even when nothing is synced or run
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}  # fmt: skip


def fake_cluster_config(cluster: dict, gcs_address: str, max_per_type: int = MAX_PER_TYPE) -> dict:
    """cluster.yaml's node types, same resources, on the fake_multinode provider."""
    types = {}
    for name, node_type in cluster["available_node_types"].items():
        fake = {"resources": copy.deepcopy(node_type["resources"]), "node_config": {}}
        if name == cluster["head_node_type"]:
            types[FAKE_HEAD_TYPE] = {**fake, "max_workers": 0}
        else:
            types[name] = {**fake, "min_workers": node_type.get("min_workers", 0),
                           "max_workers": min(node_type["max_workers"], max_per_type)}  # fmt: skip
    return {
        "cluster_name": "fake-" + cluster["cluster_name"],
        "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": 0.5,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },  # fmt: skip
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        **EMPTY_KEYS,
    }


def start_fake_cluster(tmp_path: Path) -> tuple[RayHead, dict]:
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    head_resources = dict(cluster["available_node_types"][cluster["head_node_type"]]["resources"])
    config_path = tmp_path / "fake.yaml"
    head = RayHead(num_cpus=int(head_resources.pop("CPU")), num_gpus=int(head_resources.pop("GPU", 0)),
                   resources=head_resources, autoscaling_config=config_path, env={"RAY_FAKE_CLUSTER": "1"},
                   prefix="rfa-")  # fmt: skip
    config = fake_cluster_config(cluster, head.gcs_address)
    config_path.write_text(yaml.safe_dump(config))
    try:
        head.start()
    except BaseException:
        head.stop()
        raise
    return head, config


def run_driver(head: RayHead, code: str, timeout_s: float, **env: str) -> dict:
    """Run `code` as a separate driver process against the head; it prints `RESULT <json>`."""
    proc = subprocess.run([str(VENV_BIN / "python"), "-c", code], env=head.client_env(**env), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    found = re.findall(r"^RESULT (.*)$", proc.stdout, flags=re.M)
    assert proc.returncode == 0 and found, (proc.stdout + proc.stderr)[-6000:]
    return json.loads(found[-1])


def launched_types(head: RayHead) -> set[str]:
    """Node types the autoscaler launched, from its own log ("Adding 2 node(s) of type gpu1")."""
    launched = set()
    for log in head.logs.glob("monitor*"):
        launched |= set(re.findall(r"Adding \d+ node\(s\) of type (\S+?)\.", log.read_text(errors="replace")))
    return launched


NODES = """
def node_table():
    return {n["NodeID"]: {"alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()}
"""

GPU_GRID = (
    """
import json, os
import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
"""
    + NODES
    + """
before = node_table()
WORKERS, GPU = 2, 0.5     # two DDP-like workers at half a GPU each, as `scaling.gpus_per_worker: 0.5`

@ray.remote
def worker():
    return ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES")

def shaped_trial(config):
    pg = ray.util.get_current_placement_group()
    refs = [worker.options(num_cpus=1, num_gpus=GPU, scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=i + 1)).remote() for i in range(WORKERS)]
    tune.report({"driver_node": ray.get_runtime_context().get_node_id(), "workers": json.dumps(ray.get(refs))})

# The runner's trial shape: the driver's bundle (trial_cpus + a token of the custom resource that
# RUNNER_TRIAL_RESOURCE names), then one bundle per Train worker.
bundles = [{"CPU": 0.5, "trial_driver": 0.001}] + [{"CPU": 1, "GPU": GPU}] * WORKERS
trainable = tune.with_resources(shaped_trial, tune.PlacementGroupFactory(bundles, strategy="PACK"))
grid = tune.Tuner(trainable, param_space={"i": tune.grid_search([0, 1, 2])},
                  tune_config=tune.TuneConfig(max_concurrent_trials=3),
                  run_config=tune.RunConfig(storage_path=os.environ["STORAGE"], verbose=0)).fit()
trials = [{"driver": r.metrics["driver_node"], "workers": json.loads(r.metrics["workers"])}
          for r in grid if not r.error]
print("RESULT " + json.dumps({"before": before, "after": node_table(), "trials": trials,
                              "errors": [str(r.error) for r in grid if r.error]}))
"""
)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(420)
def test_gpu_shaped_grid_scales_gpu_nodes_from_zero(tmp_path):
    head, config = start_fake_cluster(tmp_path)
    try:
        result = run_driver(head, GPU_GRID, timeout_s=360, STORAGE=str(tmp_path / "results"))
        launched = launched_types(head)
    finally:
        head.stop()

    assert not result["errors"], result["errors"]
    assert len([n for n in result["before"].values() if n["alive"]]) == 1, "the grid did not start from the head alone"
    nodes = result["after"]
    gpu_nodes = {node_id for node_id, n in nodes.items() if n["resources"].get("GPU", 0) > 0}
    driver_nodes = {node_id for node_id, n in nodes.items() if n["resources"].get(TRIAL_RESOURCE, 0) > 0}
    gpu_types = {name for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_nodes and set(launched) & gpu_types, (launched, nodes)
    assert len(result["trials"]) == 3
    for trial in result["trials"]:
        assert trial["driver"] in driver_nodes, "a trial driver ran on a node without trial_driver"
        for node_id, visible in trial["workers"]:
            assert node_id in gpu_nodes and visible not in (None, ""), (node_id, visible)
    workers = sum(len(t["workers"]) for t in result["trials"])
    print(f"launched {sorted(launched)}; {len(gpu_nodes)} GPU node(s) ran {workers} workers")


TRAIN_WORKERS = (
    """
import json, os
import ray
from ray.util.state import list_actors

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
"""
    + NODES
    + """
actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000,
                     raise_on_missing_output=False)
print("RESULT " + json.dumps({"nodes": node_table(), "workers": [a.node_id for a in actors]}))
"""
)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_runner_grid_runs_on_autoscaled_nodes(tmp_path):
    head, config = start_fake_cluster(tmp_path)
    try:
        head_cpus = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]["CPU"]
        # Two trial drivers at half the head's CPUs each fill the head: their Train workers must go
        # to worker nodes the autoscaler adds.
        env = head.client_env(
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
            RUNNER_TRIAL_RESOURCE=TRIAL_RESOURCE,
            RUNNER_AUTOSCALING_CONFIG=str(tmp_path / "fake.yaml"),  # what the autoscaler may add
        )
        run = subprocess.run(
            [str(VENV_BIN / "runner"), "run", "experiments/smoke.yaml", "--set", f"scaling.trial_cpus={head_cpus / 2}",
             "--max-concurrent", "2", "--storage", str(tmp_path / "results"), "--no-register"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-6000:]
        placed = run_driver(head, TRAIN_WORKERS, timeout_s=120)
        launched = launched_types(head)
    finally:
        head.stop()

    head_ids = {i for i, n in placed["nodes"].items() if "node:__internal_head__" in n["resources"]}
    assert launched, "the autoscaler launched no node"
    assert placed["workers"], "no Train worker actors found"
    assert not set(placed["workers"]) & head_ids, "Train workers ran on the head"
    print(f"launched {sorted(launched)}; Train workers on {len(set(placed['workers']))} autoscaled node(s)")


if __name__ == "__main__":  # print the derived config, e.g. to eyeball it
    yaml.safe_dump(fake_cluster_config(yaml.safe_load(CLUSTER_YAML.read_text()), "127.0.0.1:6379"), sys.stdout)
