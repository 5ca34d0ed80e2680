"""Ctrl-C and SIGTERM during `runner run`, sent for real to a real `runner run` on a local Ray: the run
ends KILLED (never FINISHED), the results table still lists every trial with what became of it, nothing
is registered, the exit status is 128 + the signal, the message says how to continue, and `--resume`
trains only what did not finish. Also: a trial whose process dies fails the run (exit status 1).

    flock /tmp/ray-test.lock .venv/bin/pytest tests/test_interrupts.py
"""

from __future__ import annotations

import csv
import os
import re
import signal
import time

import pytest
from test_faults import ENV, Driver, cmdline, write_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = """
name: interrupted
base:
  data: {path: "synthetic:600", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 1, batch_size: 32}
  scaling: {workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.5}
runs:
  - name: quick
  - name: long
    train.epochs: 8
    scaling: {workers: WORKERS, cpus_per_worker: 0.25}
  - name: later
    train.epochs: 2
"""


def environment(short_dir: str) -> dict:
    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{short_dir}/mlflow.db",
           "RAY_TMPDIR": f"{short_dir}/t"}  # this driver's local Ray keeps to its own folder
    env.pop("RAY_ADDRESS", None)
    return env


def rows(short_dir: str) -> dict[str, dict]:
    experiment = next(d for d in os.listdir(f"{short_dir}/results") if d.startswith("interrupted-"))
    with open(f"{short_dir}/results/{experiment}/results.csv") as fh:
        return {r["trial"]: r for r in csv.DictReader(fh)}


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGINT, 1), (signal.SIGTERM, 2)],
                         ids=["SIGINT-in-process-trial", "SIGTERM-DDP-trial"])
def test_an_interrupt_ends_the_run_killed_and_resume_trains_only_the_unfinished(short_dir, signum, workers):
    from mlflow import MlflowClient

    spec = write_spec(short_dir, SPEC.replace("WORKERS", str(workers)))
    submission = f"{short_dir}/submission.csv"
    args = ["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--max-concurrent", "1",
            "--submission", submission]
    env = environment(short_dir)
    first = Driver(args, short_dir, env)  # registers the best trial when it finishes: it must not
    try:
        first.wait_for("[long] epoch 2/8", 300)
        sent = time.monotonic()
        first.proc.send_signal(signum)
        code = first.finish(120)
    finally:
        first.kill()
    out = first.text
    print(f"\n{signal.Signals(signum).name}: runner exited {code} {time.monotonic() - sent:.1f} s after the signal")
    assert code == 128 + signum, out[-5000:]
    name = signal.Signals(signum).name
    assert f"runner: interrupted by {name}" in out and "nothing registered" in out, out[-3000:]
    experiment = re.search(r"--resume (interrupted-\S+)", out).group(1)
    assert "[later] started" not in out
    table = rows(short_dir)  # every trial, with what became of it
    assert {k: r["status"] for k, r in table.items()} == {"quick": "FINISHED", "long": "KILLED",
                                                          "later": "NOT STARTED"}
    assert table["quick"]["epochs"] == "1" and int(table["long"]["epochs"]) >= 2

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    status = {r.info.run_name: (r.info.status, r.data.tags.get("status")) for r in runs}
    assert status == {experiment: ("KILLED", None), "quick": ("FINISHED", "FINISHED"), "long": ("KILLED", "KILLED")}
    assert client.search_registered_models() == []  # nothing registered
    assert not os.path.exists(submission)  # and no submission written

    if signum != signal.SIGTERM:  # resuming is the same after either signal: checked once
        return
    again = Driver([*args[:2], "--resume", *args[2:]], short_dir, env)
    code = again.finish(400)
    out = again.text
    assert code == 0, out[-5000:]
    assert "[quick]" not in out and re.search(r"\[long\] resumed from its epoch-\d checkpoint", out), out[-4000:]
    assert "[later] finished" in out
    assert {k: (r["status"], r["epochs"]) for k, r in rows(short_dir).items()} == {
        "quick": ("FINISHED", "1"), "long": ("FINISHED", "8"), "later": ("FINISHED", "2")}
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 4  # the same runs, reopened
    long_run = next(r for r in runs if r.info.run_name == "long")
    assert sorted(m.step for m in client.get_metric_history(long_run.info.run_id, "val_acc")) == list(range(1, 9))
    assert [m.name for m in client.search_registered_models()] == ["interrupted"]
    assert os.path.getsize(submission) > 0  # the finished grid writes it from the registered model


@pytest.mark.timeout(400)
def test_a_trial_whose_process_dies_fails_the_run_with_status_1(short_dir):
    from mlflow import MlflowClient

    spec = write_spec(short_dir, SPEC.replace("WORKERS", "1"))  # max_failures 0: a lost trial process fails it
    env = environment(short_dir)
    driver = Driver(["run", spec, "--storage", f"{short_dir}/results", "--num-cpus", "2", "--max-concurrent", "1"],
                    short_dir, env)
    try:
        driver.wait_for("[long] epoch 1/8", 300)
        trial = [p for p in driver.session() if cmdline(p).startswith("ray::ImplicitFunc")]  # Tune's trial process
        assert trial, [cmdline(p) for p in driver.session()]
        for pid in trial:
            os.kill(pid, signal.SIGKILL)  # the trial's own process: its node, as far as it knows, is gone
        code = driver.finish(300)
    finally:
        driver.kill()
    out = driver.text
    assert code == 1, out[-5000:]
    assert "runner: 1 trial(s) failed: long" in out and "[later] finished" in out  # the grid went on
    assert {k: r["status"] for k, r in rows(short_dir).items()} == {"quick": "FINISHED", "long": "FAILED",
                                                                    "later": "FINISHED"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert {r.info.run_name: r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags} == {
        "quick": "FINISHED", "long": "FAILED", "later": "FINISHED"}
    assert client.search_registered_models() == []  # a failed grid registers nothing

