"""The Tune -> MLflow bridge (runner/tune/callbacks.Tracking) ending trial runs, driven as Tune drives it but
without a cluster: its writer thread, a real Tracker, MLflow on sqlite."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mlflow import MlflowClient

from runner import cost
from runner.tracking.tracker import Tracker
from runner.tune import callbacks

SCALING = {"workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "trial_cpus": 0.5}
CONFIG = {"model": {"name": "wrn_std", "depth": 10, "width": 1}, "scaling": SCALING}


def _delivered(bridge: callbacks.Tracking) -> None:
    assert bridge.writer.drain(60.0), "the bridge's writes did not finish"


def test_a_trial_run_carries_the_cost_the_driver_measured_for_results_csv(tracking_uri: str, tmp_path: Path) -> None:
    """One measurement per trial: the figures in the driver's rows (results.csv) are the run's cost metrics."""
    with Tracker("bridge_cost", tracking_uri, staging_dir=tmp_path) as tracker:
        tracker.start_parent()
        bridge = callbacks.Tracking(tracker, {}, {}, str(tmp_path))
        trial = SimpleNamespace(trial_id="t1", config={"trial": {"name": "ddp", "config": CONFIG}})
        bridge.on_trial_start(0, [], trial)
        _delivered(bridge)  # its MLflow run exists
        bridge.on_trial_error(0, [], trial)
        _delivered(bridge)
        tracker.finish_parent()
    row = next(r for r in bridge.rows() if r["trial"] == "ddp")
    logged = MlflowClient(tracking_uri).get_run(bridge.runs["t1"]).data.metrics
    assert row["status"] == "FAILED"
    assert logged[cost.WALL_S] == row[cost.WALL_S] and logged[cost.CPU_HOURS] == row[cost.CPU_HOURS]


def test_a_run_left_open_by_a_killed_driver_is_ended_with_its_best_checkpoint(
        tracking_uri: str, tmp_path: Path, tiny_checkpoint) -> None:  # noqa: ANN001 - conftest's writer
    """`--resume` after a killed driver: a trial that ended in the earlier attempt, its run still RUNNING."""
    import ray.tune

    with Tracker("bridge_settle", tracking_uri, staging_dir=tmp_path) as tracker:
        tracker.start_parent()
        left_open = tracker.start_trial("t9", "solo", CONFIG)  # the earlier driver's run, never ended
        best = ray.tune.Checkpoint.from_directory(str(tiny_checkpoint(tmp_path / "best", val_acc=0.7)))
        result = ray.tune.Result(metrics={"config": {"trial": {"name": "solo", "config": CONFIG}}, "trial_id": "t9"},
                                 checkpoint=best, error=None, path=str(tmp_path),
                                 best_checkpoints=[(best, {"val_acc": 0.7})])
        bridge = callbacks.Tracking(tracker, {}, {}, str(tmp_path))
        bridge.settle(result, "FINISHED")
        _delivered(bridge)
        tracker.finish_parent()
    client = MlflowClient(tracking_uri)
    run = client.get_run(left_open)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "FINISHED"
    assert [a.path for a in client.list_artifacts(left_open, "checkpoint")] == ["checkpoint/state.pt"]
