"""The runner's Ray knows which cluster is its own, whatever other Ray the machine runs.

Ray Train's placement-group cleaner (Ray 2.60), a detached actor the run's controller starts, asks the
state API every second whether that controller is alive, without an address. Without one the state API
takes the cluster last recorded in /tmp/ray/ray_current_cluster (`ray start`, ray.cluster_utils): on a
machine running a second Ray that is the other cluster, which has no such actor, so the cleaner removed
the live run's placement group and the trial died ("A worker health check failed ... placement group was
removed"). It failed CI's bench/ray_overhead.py while another pytest worker ran a simulated cluster.
"""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.ray]

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _what_a_cleaner_sees() -> dict:
    """Train's cleaner as Ray 2.60 starts it: detached, from an actor that has env vars of its own, asking
    the state API, with no address, for the actor that started it."""
    import ray

    @ray.remote(num_cpus=0)
    class Cleaner:
        def look_up(self, actor_id: str) -> dict:
            from ray.util.state import get_actor

            found = get_actor(actor_id, timeout=30)
            return {"state": None if found is None else found.state, "RAY_ADDRESS": os.environ.get("RAY_ADDRESS")}

    @ray.remote(num_cpus=0)
    class Controller:
        def ask_a_cleaner(self) -> dict:
            cleaner = Cleaner.options(lifetime="detached").remote()
            try:
                return ray.get(cleaner.look_up.remote(ray.get_runtime_context().get_actor_id()))
            finally:
                ray.kill(cleaner)

    controller = Controller.options(runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}).remote()
    return ray.get(controller.ask_a_cleaner.remote(), timeout=120)


@pytest.mark.timeout(240)
def test_a_ray_process_finds_its_own_cluster_while_another_is_recorded(short_dir, monkeypatch, free_port):
    import ray
    from ray.cluster_utils import Cluster

    from runner.tune import cluster

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    os.makedirs(f"{short_dir}/other")
    # ray.cluster_utils records its head in /tmp/ray/ray_current_cluster, as `ray start` does.
    other = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": f"{short_dir}/other", "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(), "object_store_memory": 80 * 2**20})
    try:
        own = cluster.start_local_ray(1, logging_level="warning", object_store_memory=80 * 2**20)  # its own dashboard
        try:
            assert own == ray.get_runtime_context().gcs_address != other.address  # the address told is right
            seen = _what_a_cleaner_sees()
        finally:
            ray.shutdown()
        assert seen == {"state": "ALIVE", "RAY_ADDRESS": own}  # was {"state": None, "RAY_ADDRESS": None}

        cluster.connect_ray(other.address)  # joining a cluster: its processes are told the same
        try:
            joined = _what_a_cleaner_sees()
        finally:
            ray.shutdown()
        assert joined == {"state": "ALIVE", "RAY_ADDRESS": other.address}
    finally:
        other.shutdown()


def test_every_local_ray_has_its_dashboard_and_none_can_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its own dashboard, a Ray's state API asks 127.0.0.1:8265: on a machine running another Ray
    that Ray's dashboard, which answers None for this run's controller, so Train's cleaner removed the live
    run's placement group (bench/ray_overhead.py --quick failed so, beside another worker's Ray)."""
    import ray

    from runner.tune import cluster

    started: dict = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    cluster.start_local_ray(1, logging_level="warning")
    assert started["include_dashboard"] is True and started["dashboard_host"] == "127.0.0.1"
    with pytest.raises(ValueError, match="include_dashboard=False"):
        cluster.start_local_ray(1, include_dashboard=False)
