"""Reaching Ray: a local instance, or the cluster RAY_ADDRESS names; and what the grid may plan on.

    start_ray(num_cpus)        # connect (RAY_ADDRESS) or start a local Ray
    capacity()                 # resources up now, or what the autoscaler may add
"""

from __future__ import annotations

import os
import socket

from runner import resources
from runner.spec import load_yaml_file

AUTOSCALING_CONFIG_ENV = "RUNNER_AUTOSCALING_CONFIG"
TRIAL_RESOURCE_ENV = "RUNNER_TRIAL_RESOURCE"  # e.g. "trial_driver": keeps trial processes on on-demand nodes


def driver_resource() -> str | None:
    """The custom resource trial processes ask a token of (docs/cluster.md), or None."""
    return os.environ.get(TRIAL_RESOURCE_ENV) or None


def capacity() -> dict[str, float]:
    """Resources the grid may plan on: what is up now, or what the autoscaler may add when
    RUNNER_AUTOSCALING_CONFIG names the cluster launcher config (cluster.yaml sets it on the head)."""
    import ray

    return resources.larger_of(ray.cluster_resources(), autoscaler_capacity())


def autoscaler_capacity() -> dict[str, float]:
    """What the autoscaler of RUNNER_AUTOSCALING_CONFIG's launcher config may grow to ({} when unset)."""
    path = os.environ.get(AUTOSCALING_CONFIG_ENV)
    if not path:
        return {}
    try:
        launcher_config = load_yaml_file(os.path.expanduser(path))
    except OSError as err:
        raise resources.ResourceError(f"{AUTOSCALING_CONFIG_ENV}={path}: cannot read it ({err.strerror}); point it "
                                      "to the cluster launcher config (~/ray_bootstrap_config.yaml on a head)") from err
    return resources.autoscaling_capacity(launcher_config)


def describe() -> str:
    """Where `capacity()` comes from, for messages."""
    if os.environ.get(AUTOSCALING_CONFIG_ENV):
        return "the cluster, with the nodes its autoscaler may add,"
    address = os.environ.get("RAY_ADDRESS")
    return f"the cluster at RAY_ADDRESS={address}" if address else "this machine's local Ray"


def probe_ray_address(timeout_s: float = 5.0) -> None:
    """RAY_ADDRESS names a cluster: reach its port before anything is spent. Ray's own connect retries
    for minutes against a dead address (no answer after 200 s, Ray 2.60), which looks like a hang."""
    address = os.environ.get("RAY_ADDRESS", "")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or "://" in host or not port.isdigit():
        return  # "auto", "local", or a form Ray itself will explain
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise resources.ResourceError(
            f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({err}); start the cluster "
            "(`ray up cluster.yaml` / `ray start --head`), fix the address, or unset RAY_ADDRESS to run "
            "on a local Ray") from err


def start_ray(num_cpus: float | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        except Exception as err:  # noqa: BLE001 - Ray raises several unrelated types here
            raise resources.ResourceError(
                f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} is unreachable ({type(err).__name__}: {err}); start the "
                "cluster (`ray up cluster.yaml` / `ray start --head`) or unset RAY_ADDRESS for a local Ray") from err
        return
    # A local Ray has no spot nodes to watch and nobody scraping Train's metrics: both cost a process
    # and start-up time per trial (bench/tune_overhead.py). Clusters keep Ray's defaults.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
    # address="local": never attach to a cluster some `ray start` left recorded in /tmp/ray.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             configure_logging=True, logging_level="warning")


