"""runner/tracking (the MLflow ring) against real MLflow stores: sqlite in tmp_path, and one real `mlflow server`."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner import cli
from runner.tracking import liveness, queries
from runner.tracking.batching import MetricBatcher
from runner.tracking.connection import TrackingError, is_transient
from runner.tracking.outage import Outage
from runner.tracking.queue import WriteQueue
from runner.tracking.tracker import Tracker

CLASSES = [f"c{i}" for i in range(10)]


def config(lr: float) -> dict:
    return {"data": {"path": "synthetic:64", "api_key": "hunter2"}, "model": {"name": "wrn", "depth": 10},
            "optimizer": {"name": "sgd", "lr": lr, "betas": [0.9, 0.999], "sam": None}}


def epoch(e: int, acc: float) -> dict:
    return {"epoch": e, "train_loss": 2.0 / e, "train_acc": acc, "val_loss": 2.1 / e, "val_acc": acc - 0.05,
            "lr": 0.1, "images_per_s": 1000.0, "epoch_s": 0.5, "checkpoint_path": "/x", "training_iteration": e}


@pytest.fixture
def fast_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep MLflow's HTTP retry settings, which `connect` sets, local to the test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def test_parent_children_history_params_artifacts(tracking_uri: str, tmp_path: Path, tiny_checkpoint) -> None:  # noqa: ANN001
    spec = tmp_path / "m1.yaml"
    spec.write_text("name: m1\n")
    with Tracker("m1", tracking_uri) as tracker:
        parent = tracker.start_parent(spec_path=str(spec))
        runs = {}
        for i, lr in enumerate((0.1, 0.05)):
            run_id = tracker.start_trial(f"t{i}", f"row-{i}", config(lr), tags={"budget": "5M"},
                                         reported={"val_acc": 95.0 + i, "kaggle": 0.9})
            for e in (1, 2, 3):
                tracker.log_epoch(run_id, epoch(e, 0.3 + 0.1 * e + i * 0.01))
            tracker.log_epoch(run_id, epoch(2, 0.99), step=2)  # a restarted trial re-reports epoch 2
            runs[run_id] = tracker.finish_trial(run_id, "FINISHED", tiny_checkpoint(tmp_path / f"ck{i}"))
        table = tracker.finish_parent("FINISHED")
    assert [r["trial"] for r in table] == ["row-0", "row-1"] and table[1]["val_acc (report)"] == "96.00"

    client = MlflowClient(tracking_uri)
    assert client.get_run(parent).info.status == "FINISHED"
    tags = client.get_run(parent).data.tags
    assert tags["runner.spec_sha256"] and tags["runner.version.mlflow"] and tags["runner.kind"] == "parent"
    assert {a.path for a in client.list_artifacts(parent, "results")} == {"results/results.csv",
                                                                          "results/results.md"}
    for run_id in runs:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        history = client.get_metric_history(run_id, "val_acc")
        assert sorted(m.step for m in history) == [1, 2, 3]  # no duplicate step 2
        first_report = 0.3 + 0.2 + runs[run_id]["trial"].endswith("1") * 0.01 - 0.05
        assert {m.step: m.value for m in history}[2] == pytest.approx(first_report)  # the first report wins
        assert "training_iteration" not in run.data.metrics and "epoch" not in run.data.metrics
        params = run.data.params
        assert params["optimizer.lr"] in ("0.1", "0.05") and params["data.api_key"] == "***"
        assert params["optimizer.betas"] == "[0.9, 0.999]" and params["optimizer.sam"] == "None"
        assert run.data.tags["within_budget"] == "true" and int(run.data.tags["params"]) > 0
        assert run.data.tags["status"] == "FINISHED" and run.data.tags["reported.kaggle"] == "0.9"
        assert run.data.metrics["best_val_acc"] == 0.5  # from the checkpoint's own metrics
        files = {a.path for folder in ("config", "plots", "checkpoint") for a in client.list_artifacts(run_id, folder)}
        assert files == {"config/resolved.yaml", "plots/curves.png", "plots/confusion.png", "checkpoint/state.pt"}

    rows = queries.fetch_trial_rows("m1", tracking_uri)
    assert [r["trial"] for r in rows] == ["row-0", "row-1"]
    assert rows[1]["reported"] == {"val_acc": "96.0", "kaggle": "0.9"} and rows[0]["epochs"] == 3
    assert rows[0]["varied"] == {"optimizer.lr": "0.1"} and rows[1]["params"] > 0


def test_fail_fast_on_unreachable_server(fast_http: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingError, match=f"{uri}.*unreachable"):
        Tracker("m1", uri)


def test_a_server_that_hangs_up_is_probed_once_not_retried(fast_http: None) -> None:
    """Fast means one probe: MLflow's own retries (7, with backoff: minutes) never start."""
    accepted = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.2)

        def hang_up() -> None:
            while not done.is_set():
                try:
                    conn, _ = server.accept()
                except (TimeoutError, OSError):
                    continue
                accepted.append(1)
                conn.close()  # no HTTP answer at all
        done = threading.Event()
        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        try:
            with pytest.raises(TrackingError, match=f"{uri}.*unreachable"):
                Tracker("m1", uri)
        finally:
            done.set()
            thread.join()
    assert len(accepted) == 1


def test_buffered_writes_survive_a_failing_store_and_a_long_outage_raises(
        tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker("m1", tracking_uri, outage_timeout_s=30)
    tracker.start_parent()
    run_id = tracker.start_trial("t0", "row-0", config(0.1))
    real = tracker.client.log_batch
    down = {"on": True}

    def flaky(*args: object, **kwargs: object) -> object:
        if down["on"]:
            raise MlflowException("Connection refused", error_code="INTERNAL_ERROR")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", flaky)
    for e in (1, 2, 3):
        tracker.log_epoch(run_id, epoch(e, 0.5))  # never raises while the store is down
    assert tracker.flush(timeout_s=0.2) > 0
    down["on"] = False
    assert tracker.flush() == 0
    assert [m.step for m in tracker.client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]

    down["on"] = True
    tracker.log_epoch(run_id, epoch(4, 0.5))
    with pytest.raises(TrackingError, match=r"could not be delivered to sqlite.*last error: Connection refused"):
        tracker.close("FINISHED", timeout_s=0.5)


def test_refused_write_raises_at_once(tracking_uri: str) -> None:
    tracker = Tracker("m1", tracking_uri)
    tracker.start_parent()
    run_id = tracker.start_trial("t0", "row-0", config(0.1))
    with pytest.raises(TrackingError, match="refused"):  # a param may not change value: a bug, not an outage
        tracker._queue.submit("param", lambda: tracker.client.log_param(run_id, "optimizer.lr", "0.5"))
    tracker.finish_trial(run_id)
    assert tracker.flush(timeout_s=30) == 0
    tracker.client.delete_run(run_id)  # metrics for a deleted run are refused: sent by the batcher, named at close
    tracker.log_epoch(run_id, epoch(1, 0.5))
    with pytest.raises(TrackingError, match=r"refused 1 metric batch\(es\): .* metrics of run"):
        tracker.close()


def test_runs_never_left_running(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    with pytest.raises(ValueError), Tracker("m1", tracking_uri) as tracker:
        failed = [tracker.start_parent(), tracker.start_trial("t0", "row-0", config(0.1))]
        raise ValueError("trial blew up")
    assert {client.get_run(r).info.status for r in failed} == {"FAILED"}


DRIVER = """
import os, sys
from runner.tracking.tracker import Tracker
tracker = Tracker("m1", sys.argv[1])
runs = [tracker.start_parent(), tracker.start_trial("t1", "row-1", {}), tracker.start_trial("t2", "row-2", {})]
tracker.flush()
print(" ".join(runs), flush=True)
os._exit(0)  # as a SIGKILLed driver: no close, runs left RUNNING
"""


def test_reconcile_ends_only_the_runs_whose_driver_is_gone(tracking_uri: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    client = MlflowClient(tracking_uri)
    dead = subprocess.run([sys.executable, "-c", DRIVER, tracking_uri], capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()
    live = Tracker("m1", tracking_uri, staging_dir=tmp_path)  # this process: alive
    alive = [live.start_parent(), live.start_trial("t3", "row-3", config(0.1))]
    live.flush()

    outcome = queries.reconcile("m1", tracking_uri)
    assert sorted(outcome.ended) == sorted(dead)
    assert {run_id for run_id, _, _ in outcome.skipped} == set(alive)
    assert all(f"driver pid {os.getpid()}" in why and "running" in why for _, _, why in outcome.skipped)
    assert {client.get_run(r).info.status for r in dead} == {"KILLED"}
    assert {client.get_run(r).info.status for r in alive} == {"RUNNING"}
    assert "pid" in client.get_run(dead[0]).data.tags["runner.reconciled"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    assert cli.main(["mlflow", "reconcile", "m1"]) == 0
    out = capsys.readouterr().out
    assert "marked 0 run(s) KILLED" in out and f"skipped row-3 ({alive[1]}): still alive, driver pid" in out
    assert cli.main(["mlflow", "reconcile", "m11"]) == 2 and "did you mean m1?" in capsys.readouterr().err

    # a driver on another host is judged by its heartbeat: fresh -> skipped, stale -> ended
    client.set_tag(alive[0], liveness.HOST, "head-node-elsewhere")
    assert not queries.reconcile("m1", tracking_uri).ended
    later = time.time() + liveness.STALE_S + 5
    outcome = queries.reconcile("m1", tracking_uri, now=later)
    assert sorted(outcome.ended) == sorted(alive) and not outcome.skipped
    assert "last heartbeat" in client.get_run(alive[1]).data.tags["runner.reconciled"]
    live.close()

    with pytest.raises(TrackingError, match=r"no MLflow experiment 'm11'.*did you mean m1\?"):
        queries.reconcile("m11", tracking_uri)
    with pytest.raises(TrackingError, match=r"no MLflow experiment 'zzz'.*experiments there: Default, m1"):
        queries.reconcile("zzz", tracking_uri)


def test_the_heartbeat_keeps_the_parent_fresh(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("beat")).info.run_id
    beat = liveness.Heartbeat(client, run_id, interval_s=0.05)
    try:
        deadline = time.monotonic() + 30
        while liveness.HEARTBEAT not in client.get_run(run_id).data.tags and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        beat.stop()
    assert abs(int(client.get_run(run_id).data.tags[liveness.HEARTBEAT]) - time.time()) < 60


def test_resume_reuses_parent_and_child_without_duplicate_steps(tracking_uri: str, tmp_path: Path) -> None:
    first = Tracker("m1", tracking_uri, staging_dir=tmp_path)
    parent = first.start_parent(invocation_id="inv-1")
    child = first.start_trial("t0", "row-0", config(0.1))
    first.log_epoch(child, epoch(1, 0.4))
    first.log_epoch(child, epoch(2, 0.5))
    first.flush()  # then the driver dies

    with Tracker("m1", tracking_uri) as again:
        assert again.start_parent(invocation_id="inv-1", resume=True) == parent
        assert again.start_trial("t0", "row-0", config(0.1)) == child
        again.log_epoch(child, epoch(2, 0.9))  # Tune replays the last epoch after restore
        again.log_epoch(child, epoch(3, 0.6))
        again.finish_trial(child)
        again.finish_parent()
    client = MlflowClient(tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(child, "train_acc")] == [(1, 0.4), (2, 0.5), (3, 0.6)]
    assert client.get_run(parent).info.status == "FINISHED"


def test_real_server_outage_loses_no_metric(mlflow_server, fast_http: None, tmp_path: Path,  # noqa: ANN001
                                           tiny_checkpoint) -> None:  # noqa: ANN001 - conftest's
    tracker = Tracker("outage", mlflow_server.uri, outage_timeout_s=120)
    tracker.start_parent()
    run_id = tracker.start_trial("t0", "row-0", config(0.1))
    tracker.log_epoch(run_id, epoch(1, 0.4))
    mlflow_server.stop()
    try:
        for e in (2, 3, 4):
            tracker.log_epoch(run_id, epoch(e, 0.5))  # buffered, not raised
        assert tracker.flush(timeout_s=0.5) > 0  # still pending: nothing was lost or dropped
    finally:
        mlflow_server.start()
    tracker.log_epoch(run_id, epoch(5, 0.6))
    tracker.finish_trial(run_id, "FINISHED", tiny_checkpoint(tmp_path / "ck"))
    tracker.finish_parent()
    tracker.close()
    client = MlflowClient(mlflow_server.uri)
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3, 4, 5]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "checkpoint/state.pt" in {a.path for a in client.list_artifacts(run_id, "checkpoint")}


def test_metric_batcher_delivers_every_metric_in_order_in_fewer_requests(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("batched")
    runs = [client.create_run(experiment).info.run_id for _ in range(5)]
    sent: list[int] = []
    real = client.log_batch

    def counted(run_id: str, metrics: list = (), **kwargs: object) -> object:
        sent.append(len(metrics))
        return real(run_id, metrics=metrics, **kwargs)

    client.log_batch = counted
    batcher = MetricBatcher(client, is_transient, senders=2)
    now = int(time.time() * 1000)
    for step in range(1, 41):  # 5 runs x 40 epochs x 2 metrics, faster than one request per epoch
        for run_id in runs:
            batcher.add(run_id, [Metric("val_acc", step / 100, now, step), Metric("lr", 0.1, now, step)])
    assert batcher.close(timeout_s=120) == 0 and not batcher.errors
    for run_id in runs:
        assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == list(range(1, 41))
    assert sum(sent) == 5 * 40 * 2 and len(sent) < 5 * 40  # several epochs per request

    refused = MetricBatcher(client, is_transient, senders=1)
    refused.add("no-such-run", [Metric("val_acc", 0.1, now, 1)])
    assert refused.close(timeout_s=60) == 0 and "no-such-run" in refused.errors[0]  # recorded, not retried


def test_an_outage_seen_by_both_writers_is_reported_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    """The write queue and the metric batcher share one `Outage`: 'unreachable' when the first fails,
    'is back' only when the last one has delivered what it buffered."""
    down = MlflowException("connection refused", error_code="TEMPORARILY_UNAVAILABLE")
    state = {"up": False}

    def write() -> None:
        if not state["up"]:
            raise down

    class Client:
        def log_batch(self, run_id: str, metrics: list = (), **kwargs: object) -> None:
            write()

    outage = Outage("http://***@head:5000")
    queue = WriteQueue(outage.uri, outage_timeout_s=30, outage=outage)
    batcher = MetricBatcher(Client(), is_transient, senders=1, outage=outage)
    with caplog.at_level(logging.WARNING):
        queue.submit("log param", write)
        batcher.add("run", [Metric("val_acc", 0.5, 0, 1)])
        assert batcher.flush(timeout_s=1.5) == 1  # still buffered: the server is down
        state["up"] = True
        assert batcher.flush(timeout_s=30) == 0
        assert outage.ongoing  # the queue has not delivered yet
        assert queue.flush(timeout_s=30) == 0
        batcher.close(timeout_s=5)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in line for line in lines) == 1, lines
    assert sum("is back" in line for line in lines) == 1 and not outage.ongoing, lines
