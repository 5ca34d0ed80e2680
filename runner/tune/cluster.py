"""Reaching Ray: a local instance, or the cluster RAY_ADDRESS names; and what the grid may plan on.

    start_ray(num_cpus)        # connect (RAY_ADDRESS) or start a local Ray
    connect_ray(address)       # join a running cluster
    start_local_ray(num_cpus)  # a Ray of this process's own, whatever else runs on the machine
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
    host_port = _host_port(address.removeprefix("ray://"))
    if host_port is None:
        return  # "auto", "local", or a form Ray itself will explain
    host, port = host_port
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout_s).close()
    except OSError as err:
        raise resources.ResourceError(
            f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({err}); start the cluster "
            "(`ray up cluster.yaml` / `ray start --head`), fix the address, or unset RAY_ADDRESS to run "
            "on a local Ray") from err


def start_ray(num_cpus: float | None) -> None:
    """Connect to the cluster RAY_ADDRESS names, or start a local Ray; nothing if Ray is up already."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        connect_ray(os.environ["RAY_ADDRESS"])
        return
    # A local Ray has no spot nodes to watch and nobody scraping Train's metrics: both cost a process
    # and start-up time per trial (bench/tune_overhead.py). Clusters keep Ray's defaults.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
    start_local_ray(num_cpus, configure_logging=True, logging_level="warning")


def connect_ray(address: str) -> None:
    """Join the running cluster at `address`, its processes told which cluster is theirs (`knows_its_cluster`)."""
    import ray

    own = knows_its_cluster(address) if _host_port(address) else None  # not "auto" or a ray:// client
    try:
        ray.init(address=address, log_to_driver=True, runtime_env=own)
    except Exception as err:  # noqa: BLE001 - Ray raises several unrelated types here
        raise resources.ResourceError(
            f"RAY_ADDRESS={address} is unreachable ({type(err).__name__}: {err}); start the cluster "
            "(`ray up cluster.yaml` / `ray start --head`) or unset RAY_ADDRESS for a local Ray") from err


def start_local_ray(num_cpus: float | None, **options: object) -> str:
    """Start a Ray of this process's own (never one some `ray start` left recorded in /tmp/ray) whose
    every process knows its address; `options` go to `ray.init`. Returns the GCS address.

    Always with its dashboard (on 127.0.0.1): the state API behind it is how Ray Train's placement-group
    cleaner sees the run's controller alive. Without one, the state API asks 127.0.0.1:8265, which on a
    machine running another Ray is that Ray's dashboard: it knows no such actor, and the cleaner removes
    the live run's placement group (see `knows_its_cluster`)."""
    import ray

    if options.get("include_dashboard") is False:
        raise ValueError("start_local_ray: include_dashboard=False would let Ray Train's placement-group cleaner "
                         "ask another Ray's dashboard and end live runs; the dashboard is always on")
    options = {"include_dashboard": True, "dashboard_host": "127.0.0.1", **options}
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    previous = os.environ.get(GCS_PORT_ENV)
    os.environ[GCS_PORT_ENV] = str(port)  # read once, when the head starts: the address is known beforehand
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), runtime_env=knows_its_cluster(address),
                 **options)
    finally:
        if previous is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = previous
    return address


def knows_its_cluster(address: str) -> dict:
    """A job's runtime env that names its own cluster to every process of the job.

    Ray Train's placement-group cleaner (Ray 2.60) asks the state API whether the run's controller is
    alive, with no address; the state API then takes the cluster last recorded in
    /tmp/ray/ray_current_cluster (by `ray start` or ray.cluster_utils), which on a machine running a
    second Ray is the other one. It finds no such actor there and removes the live run's placement
    group: the trial dies with "A worker health check failed ... its placement group was removed"."""
    return {"env_vars": {"RAY_ADDRESS": address}}


GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"


def _host_port(address: str) -> tuple[str, int] | None:
    """("host", port) of a plain host:port address; None for "auto", "local" or a URL."""
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and "://" not in host and port.isdigit() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
