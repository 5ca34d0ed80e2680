"""runner/masking.py and every place a credential could leak: messages, log lines, run params, tags, the
resolved-config artifact, the data set input; one test per place, each with a secret that must not show."""

from __future__ import annotations

import logging
import socket
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import cli, data, masking
from runner.masking import mask_secrets, redact
from runner.tracking.connection import TrackingError
from runner.tracking.tracker import Tracker

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEX"  # AWS secrets hold "/" and "+"
S3 = f"s3://AKIAEXAMPLE:{SECRET}@bucket/cifar100"


@pytest.mark.parametrize(("text", "masked"), [
    (S3, "s3://***@bucket/cifar100"),
    ("http://user:p@ss@127.0.0.1:5000", "http://***@127.0.0.1:5000"),  # an unencoded "@" leaves no tail
    ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    ("see https://host/a and s3://k:s@b/c", "see https://host/a and s3://***@b/c"),
    ("https://b.s3.amazonaws.com/x?X-Amz-Signature=abc123&X-Amz-Date=1", "https://b.s3.amazonaws.com/x?X-Amz-Signature=***&X-Amz-Date=1"),
    ("https://h/api?token=t0k&page=2", "https://h/api?token=***&page=2"),
    ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_redact(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_mask_secrets_keys_and_uris_at_any_depth() -> None:
    config = {"data": {"path": S3, "api_key": "k", "list": [S3, {"password": "p"}]}, "credentials": {"a": 1}}
    assert mask_secrets(config) == {"data": {"path": "s3://***@bucket/cifar100", "api_key": "***",
                                             "list": ["s3://***@bucket/cifar100", {"password": "***"}]},
                                    "credentials": "***"}


def test_every_log_record_is_redacted_once_the_command_line_installs_it(caplog: pytest.LogCaptureFixture) -> None:
    previous = logging.getLogRecordFactory()
    try:
        masking.redact_log_records()
        masking.redact_log_records()  # idempotent: one wrapper
        with caplog.at_level(logging.INFO):
            logging.getLogger("ray.tune").info("results at %s", S3)
            logging.getLogger("mlflow.store").warning("tracking https://u:%s@h", SECRET)
        assert [r.getMessage() for r in caplog.records] == ["results at s3://***@bucket/cifar100",
                                                             "tracking https://***@h"]
    finally:
        logging.setLogRecordFactory(previous)


def test_the_command_lines_error_line_is_redacted(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--data", f"https://user:{SECRET}@127.0.0.1:9/data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner: error: ") and "https://***@127.0.0.1:9/data" in err and SECRET not in err


def test_unreachable_tracking_server_message_is_redacted() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrackingError) as err:
        Tracker("m1", f"http://admin:{SECRET}@127.0.0.1:{port}", probe_timeout_s=1)
    assert f"http://***@127.0.0.1:{port}" in str(err.value) and SECRET not in str(err.value)


def test_params_tags_resolved_config_and_data_set_input_are_masked(tracking_uri: str, tmp_path: Path) -> None:
    meta = data.read_meta("synthetic:20")  # stands for the bucket's meta.json: no network in tests
    config = {"data": {"path": S3, "val_fraction": 0.1}, "model": {"name": "wrn"},
              "auth": {"api_key": "k"}}
    with Tracker("m1", tracking_uri, datasets={S3: meta}) as tracker:
        tracker.start_parent()
        run_id = tracker.start_trial("t0", "row-0", config, tags={"source": S3}, reported={"note": S3})
        tracker.finish_trial(run_id, "FINISHED")
        tracker.finish_parent()
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    everything = [*run.data.params.values(), *run.data.tags.values()]
    assert run.data.params["data.path"] == "s3://***@bucket/cifar100" and run.data.params["auth.api_key"] == "***"
    assert run.data.tags["source"] == "s3://***@bucket/cifar100" and run.data.tags["reported.note"] == "s3://***@bucket/cifar100"
    resolved = Path(client.download_artifacts(run_id, "config/resolved.yaml", str(tmp_path))).read_text()
    (data_input,) = run.inputs.dataset_inputs
    everything += [resolved, data_input.dataset.source, data_input.dataset.name]
    assert "s3://***@bucket/cifar100" in data_input.dataset.source
    assert not [text for text in everything if SECRET in text or "AKIAEXAMPLE" in text]


def test_outage_warning_names_the_server_without_its_password(mlflow_server, tmp_path: Path,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture,
                                                               capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    password = urllib.parse.quote(SECRET, safe="")  # HTTP clients want "/" and "+" percent-encoded
    uri = mlflow_server.uri.replace("http://", f"http://admin:{password}@")  # the server ignores the login
    tracker = Tracker("masked", uri, outage_timeout_s=60, staging_dir=tmp_path)
    tracker.start_parent()
    run_id = tracker.start_trial("t0", "row-0", {"model": {"name": "wrn"}})
    mlflow_server.stop()
    try:
        with caplog.at_level(logging.WARNING):
            tracker.log_epoch(run_id, {"epoch": 1, "val_acc": 0.5})
            tracker.flush(timeout_s=0.5)
    finally:
        mlflow_server.start()
    tracker.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in line and "http://***@127.0.0.1" in line for line in lines)
    assert not [line for line in lines if SECRET in line or password in line]
    assert "View run" not in capfd.readouterr().out  # MLflow's own unredacted stdout line on run end, off
