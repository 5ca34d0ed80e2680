"""Faults a long grid meets, each driven through the runner's own code path: a node lost mid-trial
(simulated cluster), the driver SIGKILLed and resumed, the MLflow server down at start or for a while,
and writers killed mid-write (a kill leaves the old file or the new one, never half of one).

Ray tests run one at a time on the shared machine: `flock /tmp/ray-test.lock .venv/bin/pytest tests/test_faults.py`.
Every Ray test has a timeout: a resource mistake hangs instead of failing.
"""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
       "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60"}
MB = 2**20
ROOT = Path(__file__).resolve().parents[1]




def write_spec(directory: str, text: str, name: str = "spec.yaml") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text))
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: nothing listens there


# ---------------------------------------------------------------- 1. node loss mid-trial
NODE_LOSS = """
name: node_loss
base:
  data: {path: "synthetic:1200", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 4, batch_size: 32}
  scaling: {workers: WORKERS, cpus_per_worker: CPUS, trial_cpus: TRIAL_CPUS}
  max_failures: 1
"""


def watch_callback():  # noqa: ANN201 - a ray.tune.Callback, built here so importing this module skips ray
    """A Tune callback that records what the driver received (epoch, when, restart point) and tells the
    main thread when the first checkpoint is committed (Train commits before forwarding to Tune; Tune
    registers a 1-worker trial's checkpoint right after its result)."""
    import ray.tune

    class Watch(ray.tune.Callback):
        def __init__(self) -> None:
            self.results: list[dict] = []
            self.first_checkpoint = threading.Event()

        def __getstate__(self) -> dict:  # Tune pickles callbacks into tuner.pkl; an Event cannot be
            return {"results": []}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
            if "epoch" not in result:
                return
            self.results.append({"at": time.monotonic(), "epoch": int(result["epoch"]),
                                 "resumed_from": int(result["resumed_from"]),
                                 "worker_nodes": int(result["worker_nodes"])})
            if result.get("checkpoint_path"):
                self.first_checkpoint.set()

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:  # noqa: ANN001
            self.first_checkpoint.set()

    return Watch()


def start_cluster(short_dir: str, workers: int):  # noqa: ANN201 - a ray.cluster_utils.Cluster
    """DDP: the head's one CPU holds the trial process, pinned there as on the real cluster (a lost
    trial process is a lost trial), and each 1-CPU worker node holds one rank. One worker: the trial
    process trains, so it runs on the one worker node (the head has no CPU for it)."""
    from ray.cluster_utils import Cluster

    head_cpus = 1 if workers > 1 else 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "temp_dir": short_dir,
                                                            "resources": {"trial_driver": 1},
                                                            "object_store_memory": 100 * MB})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=100 * MB) for _ in range(workers)]
    return cluster, nodes


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("workers", [1, 2])
def test_node_loss_resumes_from_the_last_committed_checkpoint(s3, short_dir, monkeypatch, workers):
    """Checkpoints in a bucket (the S3 server of tests/conftest.py), as on the cluster: the restarted
    training finds its last committed checkpoint there, not on any node's disk."""
    import ray
    from mlflow import MlflowClient

    from runner import spec
    from runner.tracking import tracker as tracking
    from runner.tune import callbacks, tuner
    from runner.tune import cluster as ray_cluster

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    cluster, nodes = start_cluster(short_dir, workers)
    uri = f"sqlite:///{short_dir}/mlflow.db"
    text = NODE_LOSS.replace("WORKERS", str(workers)).replace("TRIAL_CPUS", "1" if workers > 1 else "0.5")
    try:
        ray_cluster.connect_ray(cluster.address)
        trials = spec.load_spec(write_spec(short_dir, text.replace("CPUS", str(1 if workers > 1 else 0.5)))).trials
        watch = watch_callback()
        tracker = tracking.Tracker("node_loss", uri, staging_dir=short_dir)
        parent = tracker.start_parent(run_name="node-loss")
        bridge = callbacks.Tracking(tracker, {}, {}, s3.uri("runs"))
        outcome: dict = {}

        def grid() -> None:  # cluster.add_node/remove_node need the main thread: the grid runs here
            try:
                outcome["grid"] = tuner.run_tuner(trials, experiment="node-loss", storage=s3.uri("runs"),
                                                 max_concurrent=1, scheduler=None, callbacks=[watch, bridge],
                                                 driver_resource="trial_driver" if workers > 1 else None)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                outcome["error"] = exc

        thread = threading.Thread(target=grid, daemon=True)
        thread.start()
        assert watch.first_checkpoint.wait(240), "no committed checkpoint within 240 s"
        killed_at = time.monotonic()
        seen_before_kill = [r["epoch"] for r in watch.results]
        # The node dies first, then the replacement comes (what the autoscaler does): adding a node takes
        # seconds, longer than the remaining epochs once uploads no longer hold the training loop.
        cluster.remove_node(nodes[0], allow_graceful=False)  # a node holding the training dies mid-epoch
        cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
        thread.join(300)
        assert not thread.is_alive(), "the grid did not finish within 300 s of the node loss"
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["grid"][0]
        assert result.error is None, result.error
        assert bridge.writer.drain(60)
        tracker.finish_parent("FINISHED", bridge.rows())
        tracker.close()
    finally:
        ray.shutdown()
        cluster.shutdown()

    epochs = [r["epoch"] for r in watch.results]
    assert max(seen_before_kill) < 4, f"training ended before the node was killed: {epochs}"
    restarted = [r for r in watch.results if r["resumed_from"] > 0]
    assert restarted, f"the training did not restart from a checkpoint: {watch.results}"
    first = restarted[0]
    before = [r for r in watch.results if r["at"] < first["at"]]
    # It restarted from the last checkpoint committed (every committed one reached Tune) ...
    assert first["resumed_from"] == before[-1]["epoch"]
    # ... which lay in the bucket: no node's disk holds one
    assert any(k.endswith("/state.pt") for k in s3.keys("runs/node-loss"))
    assert not os.path.exists(f"{short_dir}/results")
    assert first["epoch"] == first["resumed_from"] + 1
    # ... so the epoch in flight at the kill is the only work done twice, and it finished every epoch.
    assert epochs == [1, 2, 3, 4], epochs
    assert result.metrics["epoch"] == 4 and first["worker_nodes"] == workers
    recovery_s = first["at"] - killed_at
    print(f"\nnode loss ({workers} worker(s)): killed after epoch {seen_before_kill[-1]}, restarted from epoch "
          f"{first['resumed_from']}, first epoch after restart {recovery_s:.1f} s after the kill")

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("node_loss").experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED"
    for key in ("val_acc", "train_loss"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- 2. the driver SIGKILLed, then --resume
KILLED = """
name: killed_driver
base:
  data: {path: "synthetic:1200", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 2, batch_size: 32}
  scaling: {workers: 1, cpus_per_worker: 0.25, trial_cpus: 0.5}
runs:
  - name: first
  - name: solo
    train.epochs: 6
  - name: ddp
    train.epochs: 6
    scaling.workers: 2
"""


class Driver:
    """`runner run` in its own session (its local Ray's processes join it), read line by line."""

    def __init__(self, args: list[str], cwd: str, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, fragment: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while fragment not in self.text:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never printed {fragment!r}:\n{self.text[-4000:]}")
            time.sleep(0.1)

    def finish(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout_s)
        finally:
            self.kill()
        self._reader.join(10)
        return code

    def session(self) -> list[int]:
        """Every live process of this driver's session: itself, its Ray (GCS, raylet, workers, dashboard)."""
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):  # gone meanwhile
                continue
            if fields[3] == str(self.proc.pid) and fields[0] != "Z":  # field 6 of stat: session id
                pids.append(int(entry))
        return pids

    def kill(self) -> None:
        """SIGKILL the driver and whatever of its session outlives it (Ray usually goes with it)."""
        deadline = time.monotonic() + 30
        while (pids := self.session()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        self.proc.poll()
        assert not self.session(), f"processes of the killed driver still alive: {self.session()}"


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_killed_driver_resumes_the_grid_and_loses_no_epoch(s3, short_dir):
    """SIGKILL the driver at a random epoch of the DDP trial (the 1-worker `solo` trains beside it), then
    `--resume`: finished trials are not run again, unfinished ones continue from their last committed
    checkpoint, and every trial's MLflow history is exactly epochs 1..E: the epochs whose results the
    killed driver never received come back from the history the trial wrote beside its checkpoints."""
    from mlflow import MlflowClient

    from runner import storage

    spec = write_spec(short_dir, KILLED)
    uri = f"sqlite:///{short_dir}/mlflow.db"
    # RAY_TMPDIR: this driver's local Ray keeps to its own folder and never finds another cluster's address
    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": uri, "RAY_TMPDIR": f"{short_dir}/t"}
    env.pop("RAY_ADDRESS", None)
    # Tune's state and the checkpoints in a bucket, as on the cluster: the second driver finds them there
    args = ["run", spec, "--storage", s3.uri("runs"), "--num-cpus", "2", "--max-concurrent", "2", "--no-register"]
    kill_at = random.randint(1, 4)
    first = Driver(args, short_dir, env)
    try:
        first.wait_for("[first] started", 120)
        dashboards = [cmdline(p) for p in first.session() if "dashboard/dashboard.py" in cmdline(p)]
        assert dashboards and all("--host=127.0.0.1" in c for c in dashboards), dashboards  # loopback only
        first.wait_for("[first] finished", 180)
        first.wait_for(f"[ddp] epoch {kill_at}/6", 240)
    finally:
        first.kill()  # SIGKILL: no handler runs, MLflow runs stay RUNNING, Tune's state is what it saved
    print(f"\nkilled the driver after epoch {kill_at} of the DDP trial")

    again = Driver([*args[:2], "--resume", *args[2:]], short_dir, env)
    code = again.finish(300)
    out = again.text
    assert code == 0, out[-5000:]
    assert "[first]" not in out  # finished before the kill: not run again
    assert re.search(r"\[ddp\] resumed from its epoch-(\d) checkpoint", out), out[-5000:]
    experiment = next(d for d in storage.subfolders(s3.uri("runs")) if d.startswith("killed_driver-"))
    rows = {r["trial"]: r for r in csv.DictReader(storage.read_text(
        f"{s3.uri('runs')}/{experiment}/results.csv").splitlines())}
    assert {k: (r["status"], r["epochs"]) for k, r in rows.items()} == {
        "first": ("FINISHED", "2"), "solo": ("FINISHED", "6"), "ddp": ("FINISHED", "6")}
    assert not os.path.exists(f"{short_dir}/results")  # nothing a new driver would need is on this disk

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("killed_driver").experiment_id
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if r.data.tags.get("runner.kind") == "parent"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("runner.kind") == "trial"}
    assert len(parents) == 1 and len(runs) == 4  # the first attempt's runs were reused, not duplicated
    assert {r.info.status for r in runs} == {"FINISHED"}
    for name, epochs in (("first", 2), ("solo", 6), ("ddp", 6)):
        for key in ("val_acc", "train_loss"):
            history = client.get_metric_history(children[name].info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (name, key, history)


# ---------------------------------------------------------------- 3. the tracking server down
ONE_TRIAL = """
name: {name}
base:
  data: {{path: "synthetic:1200", val_fraction: 0.25}}
  model: {{name: wrn_std, depth: 10, width: 1}}
  train: {{epochs: 6, batch_size: 32}}
  scaling: {{workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.5}}
runs:
  - name: only
"""


def test_unreachable_mlflow_fails_fast_before_anything_starts(short_dir, monkeypatch, capsys):
    from runner import cli

    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # `connect` sets these: keep them to this test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_spec(short_dir, ONE_TRIAL.format(name="unreachable"))
    code = cli.main(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "1", "--no-register"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"runner: error: MLflow tracking server {uri} is unreachable" in err and "MLFLOW_TRACKING_URI" in err
    assert not os.path.exists(f"{short_dir}/results")  # no trial started, nothing written
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


OUTAGE = """
name: outage_grid
base:
  data: {path: "synthetic:1200", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 6, batch_size: 32}
  scaling: {workers: 1, cpus_per_worker: 0.25, trial_cpus: 0.5}
runs:
  - name: solo
    train.epochs: 3
  - name: ddp
    scaling.workers: 2
"""


class BlackHole:
    """A listener on `port` that accepts connections and never answers (a hung server, a firewall that
    drops replies). `close()` ends it and every connection it accepted (the client sees a reset)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_mlflow_outage_of_either_kind_stalls_no_trial_and_loses_no_write(mlflow_server, short_dir):  # noqa: ANN001
    """Refused connections, then a listener that accepts and never answers (each request would wait 600 s).
    One trial at a time, so the outage spans every moment of a trial's life: the 1-worker trial trains and
    finishes in it, the DDP trial starts and trains in it. Neither waits, the outage is reported once with
    the URI's credentials masked, and every buffered write lands when the server is back."""
    from mlflow import MlflowClient

    spec = write_spec(short_dir, OUTAGE)
    uri = mlflow_server.uri.replace("http://", "http://ann:s3cret@")
    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": uri, "RAY_TMPDIR": f"{short_dir}/t",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "600"}
    env.pop("RAY_ADDRESS", None)
    driver = Driver(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--no-register",
                     "--max-concurrent", "1"], short_dir, env)
    try:
        driver.wait_for("[solo] epoch 1/3", 180)
        mlflow_server.stop()
        try:
            driver.wait_for("[solo] epoch 2/3", 60)  # refused meanwhile
            hole = BlackHole(mlflow_server.port)
            try:  # a request to it waits 600 s: had Tune waited on MLflow, no trial would finish or start now
                driver.wait_for("[solo] finished", 120)
                driver.wait_for("[ddp] epoch 2/6", 120)
            finally:
                hole.close()
        finally:
            mlflow_server.start()
        code = driver.finish(240)
    finally:
        driver.kill()
    out = driver.text
    assert code == 0, out[-5000:]
    assert out.count("unreachable") == 1 and out.count("is back; buffered writes delivered") == 1, out[-5000:]
    assert f"MLflow at {mlflow_server.uri.replace('http://', 'http://***@')} unreachable" in out
    assert "s3cret" not in out

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("outage_grid").experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    for child in (r for r in runs if r.data.tags.get("runner.kind") == "trial"):
        epochs = {"solo": 3, "ddp": 6}[child.info.run_name]
        for key in ("val_acc", "train_loss", "lr"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == list(range(1, epochs + 1))
        assert {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")} == {"checkpoint/state.pt"}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_that_never_comes_back_still_ends_the_grid_with_its_results(mlflow_server, short_dir):  # noqa: ANN001
    spec = write_spec(short_dir, ONE_TRIAL.format(name="never_back").replace("epochs: 6", "epochs: 3"))
    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": mlflow_server.uri, "RAY_TMPDIR": f"{short_dir}/t"}
    env.pop("RAY_ADDRESS", None)
    driver = Driver(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--tracking-wait", "5"],
                    short_dir, env)
    try:
        driver.wait_for("[only] epoch 1/3", 180)
        mlflow_server.stop()
        try:
            code = driver.finish(180)
        finally:
            mlflow_server.start()
    finally:
        driver.kill()
    out = driver.text
    assert code == 1, out[-5000:]  # the grid finished; its record in MLflow did not
    assert "runner: error: tracking incomplete" in out and "nothing was registered" in out, out[-3000:]
    assert "[only] finished" in out
    experiment = next(d for d in os.listdir(f"{short_dir}/results") if d.startswith("never_back-"))
    with open(f"{short_dir}/results/{experiment}/results.csv") as fh:
        assert [(r["trial"], r["status"], r["epochs"]) for r in csv.DictReader(fh)] == [("only", "FINISHED", "3")]


def test_a_full_disk_while_staging_one_trials_artifacts_marks_its_run_and_the_next_best_is_registered(
        tmp_path, monkeypatch):
    """The driver stages a trial's checkpoint before uploading it; ENOSPC there ends that trial's run with
    an `artifact_error` tag, the others are unaffected, and registration takes the next best, saying so."""
    from mlflow import MlflowClient

    from runner import spec as specs
    from runner.core import checkpoint, train
    from runner.data import load_trial_data
    from runner.tracking import registry
    from runner.tracking.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    real_save = checkpoint.save

    def disk_full(state: dict, directory: object) -> object:  # the staging folder's file system is full
        raise OSError(28, "No space left on device")

    cfg = specs.trial_config({"data.path": "synthetic:300", "model.name": "wrn_std", "model.depth": 10,
                              "model.width": 1, "train.epochs": 1, "train.batch_size": 32})
    meta, train_split, val_split = load_trial_data(cfg["data"], seed=0)
    trained = []
    train.fit(cfg, train_split, val_split, meta.classes, lambda m, state: trained.append(state()))
    with Tracker("disk_full", uri, staging_dir=tmp_path) as tracker:
        tracker.start_parent()
        for name, acc in (("best", 0.9), ("next", 0.5)):  # a real checkpoint; the grid's verdict on it, given
            state = {**trained[-1], "metrics": {**trained[-1]["metrics"], "val_acc": acc, "best_val_acc": acc}}
            checkpoint.save(state, tmp_path / name)
            run = tracker.start_trial(name, name, cfg)
            tracker.log_epoch(run, state["metrics"])
            monkeypatch.setattr(checkpoint, "save", disk_full if name == "best" else real_save)
            tracker.finish_trial(run, "FINISHED", tmp_path / name)  # stages the checkpoint to upload it
            monkeypatch.setattr(checkpoint, "save", real_save)
        tracker.finish_parent()
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("disk_full").experiment_id])}
    assert runs["best"].info.status == "FINISHED" and "No space left" in runs["best"].data.tags["artifact_error"]
    assert client.list_artifacts(runs["best"].info.run_id, "checkpoint") == []
    assert runs["best"].data.metrics["best_val_acc"] > runs["next"].data.metrics["best_val_acc"]
    outcome = registry.register_best("disk_full", name="disk_full")
    assert outcome.trial == "next"
    assert "best has the best val_acc but no checkpoint/state.pt artifact" in outcome.message
    assert "took the next best" in outcome.message


# ---------------------------------------------------------------- 5. writers killed mid-write
def _tmp_entries(parent: Path, out: str) -> list[str]:
    return [n for n in os.listdir(parent) if n.startswith(f".{out}.")]


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed:\n{proc.communicate()[0][-2000:]}"
        assert time.monotonic() < deadline, "never reached the moment to kill it"
        time.sleep(0.005)
    proc.kill()
    proc.wait(10)


def _prepare(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", "data", "prepare", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **ENV})


def _writing(parent: Path, out: str) -> Callable[[], bool]:
    """True once the temp folder of `out` holds a (partial) train.parquet."""
    return lambda: any(os.path.exists(parent / n / "train.parquet") for n in _tmp_entries(parent, out))


@pytest.mark.timeout(120)
def test_prepare_killed_mid_write_leaves_no_out_or_the_old_data(tmp_path):
    from runner import data

    # A first prepare, SIGKILLed while writing its Parquet: no OUT at all, never a half-written one.
    first = _prepare("synthetic:20000", "new", cwd=tmp_path)
    _kill_when(first, _writing(tmp_path, "new"), 90)
    assert not (tmp_path / "new").exists() and _tmp_entries(tmp_path, "new")  # only the hidden temp folder
    data.prepare("synthetic:20", str(tmp_path / "new"))  # the next prepare sweeps the killed one's temp
    assert _tmp_entries(tmp_path, "new") == [] and len(data.load_split(str(tmp_path / "new"), "train")) == 20

    # --overwrite over an existing OUT, SIGKILLed mid-write: the old data set, intact and readable.
    old_meta = (tmp_path / "new" / "meta.json").read_bytes()
    again = _prepare("synthetic:20000", "new", "--overwrite", cwd=tmp_path)
    _kill_when(again, _writing(tmp_path, "new"), 90)
    assert (tmp_path / "new" / "meta.json").read_bytes() == old_meta
    assert len(data.load_split(str(tmp_path / "new"), "train")) == 20  # sha256 in meta.json still matches
    data.verify(str(tmp_path / "new"))  # every file's footer and sha256 against meta.json


WRITER = """
import sys, torch
from runner import files, report
from runner.core import checkpoint, train
folder = sys.argv[1]
for i in range(1, 10**6):
    checkpoint.save({"epoch": i, "w": torch.full((500_000,), float(i))}, folder)
    files.atomic_write_text(folder + "/report.md", f"{i}\\n" + "x" * 1_000_000 + f"\\n{i}\\n")
    print(i, flush=True)
"""


@pytest.mark.timeout(120)
def test_checkpoint_and_report_writers_killed_at_any_moment_leave_old_or_new(tmp_path):
    import torch

    from runner.core import checkpoint

    for delay in (0.05, 0.3):  # two moments inside the write cycle
        folder = tmp_path / f"k{delay}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert proc.stdout.readline().strip() == "1", proc.communicate()[0][-2000:]
            proc.stdout.readline()  # a second full cycle, then kill mid-way through another
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait(10)
        state = checkpoint.load(str(folder))  # never a truncated file
        assert torch.equal(state["w"], torch.full((500_000,), float(state["epoch"])))
        lines = (folder / "report.md").read_text().split("\n")
        assert lines[0] == lines[2] and len(lines[1]) == 1_000_000


def test_submission_and_report_writes_leave_no_temp_file_on_failure(tmp_path, monkeypatch):
    from runner import files, report
    from runner import submission as submit

    target = tmp_path / "submission.csv"
    submit.write_submission(target, ["a", "b"], [0, 1], ["cat", "dog"])
    old = target.read_text()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        submit.write_submission(target, ["a", "b"], [1, 1], ["cat", "dog"])
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_text(tmp_path / "results.csv", report.to_csv_text([{"trial": "a", "val_acc": 0.5}]))
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_text(tmp_path / "report.md", "# new\n")
    assert target.read_text() == old  # the old file, untouched
    assert sorted(os.listdir(tmp_path)) == ["submission.csv"]  # and no temp file beside it
    monkeypatch.undo()
    # ids that do not match refuse before anything is opened
    with pytest.raises(submit.SubmissionError, match="ids do not match"):
        submit.write_submission(tmp_path / "other.csv", ["a", "b"], [0, 1], ["cat", "dog"], order=["a", "c"])
    assert sorted(os.listdir(tmp_path)) == ["submission.csv"]
