"""`runner run` on a search spec, with real Ray, real MLflow and real training: over-budget samples are
rejected with zero spend (no Tune trial, no MLflow run, no process), listed in the results, and the best
in-budget trial is registered."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from runner import spec
from runner.spec import search

pytestmark = [pytest.mark.ray]

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
SEARCH = """
name: tiny_search
base:
  data: {path: "synthetic:300", val_fraction: 0.2}
  model: {name: wrn_std, depth: 10, width: 1}
  optimizer: {name: adam, lr: 0.003, weight_decay: 0.0}
  train: {epochs: 2, batch_size: 32}
  budget: {max_params: 500000}
  scaling: {workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.5, gpus_per_worker: 0}
search:
  algorithm: random
  num_samples: 4
  seed: 3
  scheduler: asha
  space:
    model.width: {choice: [1, 2, 8]}
    train.label_smoothing: {uniform: [0.0, 0.2]}
"""


def runner(args: list[str], cwd: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV, **env})


@pytest.mark.timeout(420)
def test_a_search_trains_only_in_budget_samples_and_registers_the_best(short_dir):
    path = os.path.join(short_dir, "search.yaml")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(SEARCH))
    found = spec.load_spec(path).search
    judged = [search.judge(found, s, search.sample_name(i + 1), 10) for i, s in enumerate(found.samples(4))]
    over = [j.name for j in judged if not j.trains]
    trained = [j.name for j in judged if j.trains]
    assert over and trained, [j.status for j in judged]  # the seed draws both kinds (width 8: 4.8M > 0.5M)

    uri = f"sqlite:///{short_dir}/mlflow.db"
    done = runner(["run", path, "--storage", f"{short_dir}/results", "--num-cpus", "2"], cwd=short_dir,
                  timeout=400, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "a random search of 4 samples" in out
    for name in over:
        assert f"[{name}] over budget (" in out and f"[{name}] started" not in out and f"[{name}] epoch" not in out
    for name in trained:
        assert f"[{name}] epoch 1/2" in out

    experiment = next(d for d in os.listdir(f"{short_dir}/results") if d.startswith("tiny_search-"))
    with open(f"{short_dir}/results/{experiment}/results.csv") as fh:
        rows = {r["trial"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(over + trained)  # every draw accounted for
    for name in over:
        assert rows[name]["status"].startswith("over budget (") and rows[name]["status"].endswith(" params)")
    trial_dirs = [d for d in os.listdir(f"{short_dir}/results/{experiment}") if d.startswith("run_trial")
                  or any(d.endswith(f"-{n}") for n in over + trained)]
    assert not [d for d in trial_dirs if any(d.endswith(f"-{n}") for n in over)]  # Tune never made them trials

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("tiny_search").experiment_id
    children = [r for r in client.search_runs([experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == sorted(trained)  # no run, no worker for rejected ones
    best = max(children, key=lambda r: r.data.metrics["val_acc"])
    version = client.get_model_version_by_alias("tiny_search", "champion")
    assert version.run_id == best.info.run_id

    done = runner(["report", "tiny_search", "--format", "json"], cwd=short_dir, timeout=120, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["spec"] == "tiny_search" and sorted(t["trial"] for t in report["trials"]) == sorted(trained)
