"""runner/tracking/registry.py + pyfunc.py: each trial a logged model; the best in-budget one registered
under the spec's name and aliased; the registered model takes raw images, is served by `mlflow models
serve`, and answers exactly as `runner submit` predicts.

One module-scoped sqlite store holds a finished grid of three trials: "good" (a really trained WRN-10-1),
"worse" and "huge" (over budget); the first registration happens once in the fixture.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from runner import cli, data
from runner import submission as submit
from runner.core import checkpoint
from runner.core.predict import InputError, Predictor
from runner.tracking import queries, registry
from runner.tracking.registry import RegistryError
from runner.tracking.tracker import Tracker

DATA = "synthetic:200"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint, trained_checkpoint: Path) -> dict:  # noqa: ANN001
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    trials = (("good", 0.6, trained_checkpoint), ("worse", 0.0, tiny_checkpoint(root / "worse", val_acc=0.0)),
              ("huge", 0.99, tiny_checkpoint(root / "huge", val_acc=0.99, within_budget=False)))
    with Tracker("m1", uri) as tracker:
        tracker.start_parent()
        for name, acc, folder in trials:
            config = {"model": {"name": "wrn"}, "data": {"path": DATA},
                      "scaling": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "trial_cpus": 1}}
            run_id = tracker.start_trial(name, name, config)
            tracker.log_epoch(run_id, {"epoch": 1, "val_acc": acc, "train_acc": acc, "images_per_s": 100.0})
            runs[name] = run_id
            tracker.finish_trial(run_id, "FINISHED", folder)
        tracker.finish_parent()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        first = registry.register_best("m1", metric="val_acc", alias="champion")  # name: the spec's
    return {"uri": uri, "root": root, "runs": runs, "first": first, "trained": trained_checkpoint}


@pytest.fixture
def env_uri(grid: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", grid["uri"])
    return grid["uri"]


def test_best_in_budget_trial_is_registered_under_the_spec_name(grid: dict, env_uri: str) -> None:
    first = grid["first"]
    assert first.name == "m1" and first.trial == "good" and first.run_id == grid["runs"]["good"]
    assert first.alias_moved and first.previous_version is None and "no previous holder" in first.message
    assert "huge has val_acc 0.9900 but is over the parameter budget" in first.message
    client = MlflowClient(env_uri)
    holder = client.get_model_version_by_alias("m1", "champion")
    good = client.get_run(grid["runs"]["good"])
    # the trial's own logged model is registered, not a second copy
    assert str(holder.version) == first.version and holder.source == f"models:/{registry.logged_model_id(good)}"


def test_over_budget_note_and_refusal(grid: dict, env_uri: str) -> None:
    best, note = registry.pick_best(
        [MlflowClient(env_uri).get_run(r) for r in grid["runs"].values()], "val_acc")
    assert best.info.run_name == "good" and "huge" in note and "over the parameter budget" in note
    with pytest.raises(RegistryError, match=r"huge.*over the parameter budget.*never registered"):
        registry.register_run(grid["runs"]["huge"])


def test_alias_does_not_move_to_a_worse_model(grid: dict, env_uri: str) -> None:
    result = registry.register_run(grid["runs"]["worse"], alias="champion")  # name: its experiment's
    assert result.name == "m1" and not result.alias_moved and result.previous_version == grid["first"].version
    assert result.previous_value == pytest.approx(grid["first"].value) and result.value == 0.0
    assert f"champion stays on v{grid['first'].version}" in result.message
    holder = MlflowClient(env_uri).get_model_version_by_alias("m1", "champion")
    assert str(holder.version) == grid["first"].version


def test_every_trial_is_a_logged_model_linked_to_its_run_metrics_and_data_set(grid: dict, env_uri: str,
                                                                             tmp_path: Path) -> None:
    client = MlflowClient(env_uri)
    meta = data.read_meta(DATA)
    for name, run_id in grid["runs"].items():
        run = client.get_run(run_id)
        model = client.get_logged_model(registry.logged_model_id(run))
        assert model.source_run_id == run_id and str(model.status).endswith("READY")
        assert model.params["model.name"] == "wrn" and model.tags["trial"] == name
        linked = {m.key: m for m in model.metrics}
        assert linked["best_val_acc"].dataset_name == DATA and linked["best_val_acc"].dataset_digest
        assert [m.model_id for m in run.outputs.model_outputs] == [model.model_id]
        (data_input,) = run.inputs.dataset_inputs
        assert data_input.dataset.name == DATA and data_input.dataset.digest == linked["best_val_acc"].dataset_digest
        assert json.loads(data_input.dataset.profile)["classes"] == len(meta.classes)
        assert run.data.metrics["cost.cpu_hours"] > 0 and run.data.metrics["cost.gpu_hours"] == 0
        assert run.data.metrics["throughput.images_per_s_per_worker"] == 100.0
    kept = checkpoint.load(MlflowClient(env_uri).download_artifacts(grid["runs"]["good"], "checkpoint/state.pt",
                                                                     str(tmp_path)))
    assert "model" in kept and "optimizer" not in kept  # training state stays in Ray's storage
    parent = queries.latest_parent(client, "m1")[1]
    trials = [client.get_run(r).data.metrics["cost.cpu_hours"] for r in grid["runs"].values()]
    assert parent.data.metrics["cost.cpu_hours"] == pytest.approx(sum(trials))


def test_registered_model_is_self_contained_and_says_what_it_takes(grid: dict, env_uri: str, tmp_path: Path) -> None:
    local = Path(mlflow.artifacts.download_artifacts("models:/m1@champion", dst_path=str(tmp_path)))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"MLmodel", "artifacts/state.pt", "code/runner/core/predict.py", "code/models/__init__.py",
            "input_example.json"} <= files
    assert not any(f.endswith((".pkl", ".pyc")) for f in files)  # nothing is unpickled at load
    state = checkpoint.load(local / "artifacts" / "state.pt")  # weights_only
    assert "optimizer" not in state and state["image_shape"] == [32, 32, 3]
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    (inputs,) = json.loads(mlmodel["signature"]["inputs"])
    assert inputs["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 32, 32, 3]}
    outputs = [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])]
    assert outputs == ["label"] + [f"prob_{c}" for c in data.read_meta(DATA).classes]
    params = {p["name"]: p["default"] for p in json.loads(mlmodel["signature"]["params"])}
    assert params == {"tta": "flips", "views": 2}  # the trial's own eval group
    example = np.asarray(json.loads((local / "input_example.json").read_text()))
    assert example.shape == (2, 32, 32, 3)


def test_submission_through_the_registry_equals_the_checkpoints_predictions(grid: dict, env_uri: str,
                                                                            tmp_path: Path) -> None:
    test = data.load_split(DATA, "test")
    loaded = submit.load_for_inference("models:/m1@champion")
    direct = Predictor.from_state(checkpoint.load(grid["trained"]))
    plain, flips = {"tta": "none", "views": 1}, {"tta": "flips", "views": 2}
    assert torch.allclose(loaded.probabilities(test.images), direct.probabilities(test.images, flips), atol=1e-6)
    assert not torch.allclose(loaded.probabilities(test.images), direct.probabilities(test.images, plain))
    for settings in (plain, {"tta": "flips", "views": 4}, {"tta": "train_transforms", "views": 3}):
        assert torch.allclose(loaded.probabilities(test.images, settings),
                              direct.probabilities(test.images, settings), atol=1e-6)
    by_run = submit.load_for_inference(f"runs:/{grid['runs']['good']}")
    assert torch.allclose(by_run.probabilities(test.images), direct.probabilities(test.images), atol=1e-6)

    out = submit.make_submission("models:/m1@champion", DATA, tmp_path / "submission.csv", eval=plain)
    with open(out, newline="") as fh:
        rows = {r["id"]: r["label"] for r in csv.DictReader(fh)}
    assert rows == dict(zip(test.ids, direct.labels(direct.probabilities(test.images, plain)), strict=True))
    files = MlflowClient(env_uri).list_artifacts(grid["runs"]["good"], "submissions")
    assert [f.path for f in files] == ["submissions/submission.csv"]


def test_runner_score_logs_the_kaggle_score_to_the_models_run(grid: dict, env_uri: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = submit.make_submission("models:/m1@champion", DATA, tmp_path / "sub.csv")
    test, meta = data.load_split(DATA, "test"), data.read_meta(DATA)
    solution = tmp_path / "solution.csv"
    solution.write_text("id,label\n" + "".join(f"{i},{meta.classes[k]}\n" for i, k in
                                               zip(test.ids, test.labels.tolist(), strict=True)))
    assert cli.main(["score", str(out), str(solution)]) == 0
    accuracy = submit.score(out, solution)
    assert f"logged as `kaggle` on the model's run {grid['runs']['good']}" in capsys.readouterr().out
    row = next(r for r in queries.fetch_trial_rows("m1", env_uri) if r["trial"] == "good")
    assert row["kaggle"] == pytest.approx(accuracy)

    unrelated = tmp_path / "other.csv"
    unrelated.write_text(solution.read_text())
    assert submit.score_and_log(unrelated, solution) == (1.0, None)  # made by no model: scored, not logged


def test_report_shows_cost_and_is_written_with_the_umask(grid: dict, env_uri: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    previous = os.umask(0o022)
    try:
        assert cli.main(["report", "m1", "--out", str(tmp_path / "report.md")]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert "cpu_h" in (tmp_path / "report.md").read_text().splitlines()[0]


def test_register_flags_pick_the_run_the_name_the_alias_and_the_metric(grid: dict, env_uri: str,
                                                                       capsys: pytest.CaptureFixture) -> None:
    worse = grid["runs"]["worse"]
    assert cli.main(["register", "--run-id", worse, "--name", "cli-model", "--alias", "first"]) == 0
    holder = MlflowClient(env_uri).get_model_version_by_alias("cli-model", "first")
    assert holder.run_id == worse  # that run, under that name and alias; the spec's own model is untouched
    assert str(MlflowClient(env_uri).get_model_version_by_alias("m1", "champion").version) == grid["first"].version
    assert cli.main(["register", "m1", "--metric", "no_such_metric", "--name", "cli-model"]) == 2
    assert "no FINISHED trial has metric 'no_such_metric'" in capsys.readouterr().err


def test_report_format_prints_markdown_csv_or_json(grid: dict, env_uri: str, capsys: pytest.CaptureFixture) -> None:
    printed = {}
    for fmt in ("md", "csv", "json"):
        assert cli.main(["report", "m1", "--format", fmt]) == 0
        printed[fmt] = capsys.readouterr().out
    assert printed["md"].startswith("| trial") and printed["md"].splitlines()[1].startswith("|---")
    assert sorted(row["trial"] for row in csv.DictReader(printed["csv"].splitlines())) == ["good", "huge", "worse"]
    rows = json.loads(printed["json"])
    assert rows["spec"] == "m1" and sorted(t["trial"] for t in rows["trials"]) == ["good", "huge", "worse"]


def test_wrong_images_get_a_clear_error_naming_what_the_model_takes(grid: dict, env_uri: str) -> None:
    loaded = submit.load_for_inference("models:/m1@champion")
    good = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=r"expected uint8 images of shape \(N, 32, 32, 3\).*got dtype float32"):
        loaded.probabilities(good.astype(np.float32))
    with pytest.raises(InputError, match=r"expected uint8 images of shape \(N, 32, 32, 3\).*got shape \(2, 28"):
        loaded.probabilities(good[:, :28])
    with pytest.raises(Exception, match=r"does not match expected dtype uint8"):  # MLflow's own check, same model
        loaded.model.predict(good.astype(np.float64))


def test_register_defaults_to_the_spec_name_so_the_readme_pair_works(grid: dict, env_uri: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["register", "m1"]) == 0
    assert cli.main(["submit", "--model", "models:/m1@champion", "--data", DATA, "--out",
                     str(tmp_path / "s.csv")]) == 0
    assert cli.main(["register"]) == 2
    assert "say what to register: a SPEC_NAME" in capsys.readouterr().err


@pytest.mark.timeout(240)
def test_mlflow_models_serve_answers_raw_images_as_runner_submit_predicts(grid: dict, env_uri: str,
                                                                         tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    venv_bin = str(Path(sys.executable).parent)  # the server execs `uvicorn` from PATH
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen([str(Path(venv_bin) / "mlflow"), "models", "serve", "-m", "models:/m1@champion",
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url + "/ping", server, tmp_path / "serve.log")
        test = data.load_split(DATA, "test")
        out = submit.make_submission("models:/m1@champion", DATA, tmp_path / "submission.csv")
        with open(out, newline="") as fh:
            submitted = {r["id"]: r["label"] for r in csv.DictReader(fh)}
        loaded = submit.load_for_inference("models:/m1@champion")

        status, answer = _post(url + "/invocations", {"inputs": test.images.tolist()})
        assert status == 200
        predictions = answer["predictions"]
        assert [p["label"] for p in predictions] == [submitted[i] for i in test.ids]
        served = torch.tensor([[p[f"prob_{c}"] for c in loaded.classes] for p in predictions], dtype=torch.float64)
        assert torch.allclose(served, loaded.probabilities(test.images).double(), atol=1e-6)

        other = {"tta": "flips", "views": 4}
        status, answer = _post(url + "/invocations", {"inputs": test.images[:3].tolist(), "params": other})
        served = torch.tensor([[p[f"prob_{c}"] for c in loaded.classes] for p in answer["predictions"]],
                              dtype=torch.float64)
        assert status == 200
        assert torch.allclose(served, loaded.probabilities(test.images[:3], other).double(), atol=1e-6)

        status, answer = _post(url + "/invocations", {"inputs": test.images[:2, :16].tolist()})
        assert status == 400 and "does not match expected shape (-1, 32, 32, 3)" in answer["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_for(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve not answering after {timeout_s}s: {log.read_text()[-2000:]}")


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
