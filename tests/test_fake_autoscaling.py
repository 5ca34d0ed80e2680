"""Autoscaling, simulated: cluster.yaml's node types on Ray's `fake_multinode` provider, no cloud.

`fake_cluster_config` keeps every node type of cluster.yaml with the same `resources` (GPUs become
fake GPUs: a worker gets CUDA_VISIBLE_DEVICES but no device) and caps `max_workers` so a 2-core
machine can hold them; each fake node is a real raylet. The head is started the one way that works
for this provider (not `ray up`): `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=fake.yaml`
with `provider.gcs_address` set (without it the launcher waits on port 6379 for 5 minutes).

- `test_gpu_trials_of_both_shapes_scale_gpu_nodes_from_zero`: `scaling.gpus_per_worker: auto` resolves
  to 1 GPU per worker on this cluster (`runner check` says so, and why), and trials with the runner's own
  resource requests (`runner.tune.trial.trial_resources`, `TrialNeed.worker_bundle`) start with the head
  alone, make the autoscaler launch GPU node types, and land where they must: a 1-worker trial's process
  on a GPU node, a DDP trial's process on a `trial_driver` node and its workers on GPU nodes. Trivial
  work stands in for training, because torch on a fake GPU would try CUDA.
- `test_runner_grid_on_a_cpu_only_autoscaling_cluster`: the same cluster without its GPU node types:
  `runner run experiments/smoke.yaml` resolves auto to 0 GPUs (its start line says so, and why), plans
  on what the autoscaler may add (RUNNER_AUTOSCALING_CONFIG), not only on the head, and its trials,
  sized to overfill the head, finish on nodes the autoscaler adds.

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


def fake_cluster_config(cluster: dict, gcs_address: str, max_per_type: int = MAX_PER_TYPE, gpus: bool = True) -> dict:
    """cluster.yaml's node types, same resources, on the fake_multinode provider (without the GPU types
    when `gpus` is False)."""
    types = {}
    for name, node_type in cluster["available_node_types"].items():
        if not gpus and node_type["resources"].get("GPU", 0) > 0:
            continue
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


def start_fake_cluster(tmp_path: Path, gpus: bool = True) -> tuple[RayHead, dict]:
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    head_resources = dict(cluster["available_node_types"][cluster["head_node_type"]]["resources"])
    config_path = tmp_path / "fake.yaml"
    head = RayHead(num_cpus=int(head_resources.pop("CPU")), num_gpus=int(head_resources.pop("GPU", 0)),
                   resources=head_resources, autoscaling_config=config_path, env={"RAY_FAKE_CLUSTER": "1"},
                   prefix="rfa-")  # fmt: skip
    config = fake_cluster_config(cluster, head.gcs_address, gpus=gpus)
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

from runner import resources, spec
from runner.tune import gpus, trial as runner_trial

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
"""
    + NODES
    + """
before = node_table()
loaded = spec.load_spec("experiments/smoke.yaml")
trials = gpus.resolve(loaded.trials, gpus.Choice(1.0, "as runner check said"))  # what auto resolves to here

@ray.remote
def worker():
    return ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES")

def stand_in(config):
    # Train on a fake GPU would try CUDA: the trial process reports where it is, and a DDP trial starts
    # its workers the way Train does, in a placement group of the need's worker bundles.
    need = resources.need_of(config["trial"]["name"], config["trial"]["config"]["scaling"])
    me = (ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    placed = []
    if not need.in_process:
        group = ray.util.placement_group([need.worker_bundle()] * need.workers, strategy="PACK")
        ray.get(group.ready())
        placed = ray.get([worker.options(num_cpus=need.worker_bundle()["CPU"], num_gpus=need.gpus_per_worker,
                                         scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote()
                          for i in range(need.workers)])
        ray.util.remove_placement_group(group)
    tune.report({"trial": json.dumps({"process": me, "workers": placed, "in_process": need.in_process})})

space = {"trial": tune.grid_search([{"name": t.name, "config": t.config} for t in trials]),
         "driver_resource": "trial_driver"}
trainable = tune.with_resources(stand_in, runner_trial.trial_resources)  # the runner's own requests
grid = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(max_concurrent_trials=3),
                  run_config=tune.RunConfig(storage_path=os.environ["STORAGE"], verbose=0)).fit()
print("RESULT " + json.dumps({"before": before, "after": node_table(),
                              "trials": [json.loads(r.metrics["trial"]) for r in grid if not r.error],
                              "errors": [str(r.error) for r in grid if r.error]}))
"""
)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(480)
def test_gpu_trials_of_both_shapes_scale_gpu_nodes_from_zero(tmp_path):
    head, config = start_fake_cluster(tmp_path)
    try:
        env = head.client_env(RUNNER_AUTOSCALING_CONFIG=str(tmp_path / "fake.yaml"))
        check = subprocess.run([str(VENV_BIN / "runner"), "check", "experiments/smoke.yaml"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        result = run_driver(head, GPU_GRID, timeout_s=360, STORAGE=str(tmp_path / "results"))
        launched = launched_types(head)
    finally:
        head.stop()

    assert check.returncode == 0, check.stdout + check.stderr
    assert "scaling.gpus_per_worker auto -> 1 (the cluster, with the nodes its autoscaler may add, has" in check.stdout
    assert "1x(cpu 0.25, gpu 1)" in check.stdout and "2x(cpu 0.25, gpu 1)" in check.stdout
    assert not result["errors"], result["errors"]
    assert len([n for n in result["before"].values() if n["alive"]]) == 1, "the grid did not start from the head alone"
    nodes = result["after"]
    gpu_nodes = {node_id for node_id, n in nodes.items() if n["resources"].get("GPU", 0) > 0}
    driver_nodes = {node_id for node_id, n in nodes.items() if n["resources"].get(TRIAL_RESOURCE, 0) > 0}
    gpu_types = {name for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_nodes and set(launched) & gpu_types, (launched, nodes)
    shapes = result["trials"]
    assert sorted(t["in_process"] for t in shapes) == [False, True, True]
    for shape in shapes:
        node, visible = shape["process"]
        if shape["in_process"]:  # it trains in its own process: that process holds the GPU
            assert node in gpu_nodes and visible not in (None, ""), shape
        else:  # a DDP trial's process drives (pinned to trial_driver nodes); its workers hold the GPUs
            assert node in driver_nodes and len(shape["workers"]) == 2, shape
            assert all(n in gpu_nodes and v not in (None, "") for n, v in shape["workers"]), shape
    print(f"launched {sorted(launched)}; {len(gpu_nodes)} GPU node(s)")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_runner_grid_on_a_cpu_only_autoscaling_cluster(tmp_path):
    head, config = start_fake_cluster(tmp_path, gpus=False)
    try:
        head_cpus = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]["CPU"]
        # Half the head's CPUs per trial process: two trials at a time overfill the head, so the grid runs
        # only if the runner planned on (and the autoscaler adds) more nodes.
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
        launched = launched_types(head)
    finally:
        head.stop()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "gpus_per_worker auto -> 0 (the cluster, with the nodes its autoscaler may add, has no GPU)" in output
    assert launched, "the autoscaler launched no node"
    experiment = next((tmp_path / "results").glob("smoke-*"))
    assert (experiment / "results.csv").read_text().count("FINISHED") == 3
    print(f"launched {sorted(launched)}")


if __name__ == "__main__":  # print the derived config, e.g. to eyeball it
    yaml.safe_dump(fake_cluster_config(yaml.safe_load(CLUSTER_YAML.read_text()), "127.0.0.1:6379"), sys.stdout)
