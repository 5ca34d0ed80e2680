"""The storage path on a real S3 endpoint: moto's S3 server on 127.0.0.1 (tests/conftest.py `s3`), reached
through the standard AWS variables only, as MinIO or AWS would be; no mock object anywhere.

- runner/storage.py against the endpoint: plain s3:// URIs, the endpoint variables and their order;
- the failure modes (missing bucket, refused credentials, unreachable or silent endpoint), met through
  `runner run`: refused within seconds, naming the URI (credentials masked) and the fix, before Ray starts;
- a data set on s3:// read shard by shard;
- (marked ray/slow) `runner run --storage s3://...` end to end with `mlflow server --artifacts-destination s3://...`.

Run: .venv/bin/pytest tests/test_storage.py -m "not ray"    (the Ray test: under flock /tmp/ray-test.lock)
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import cli, storage

SPEC = """
name: on_s3
base:
  data: {path: "synthetic:200", val_fraction: 0.25}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 1, batch_size: 32}
  scaling: {workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.5}
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung proxy, a firewall that holds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------- endpoint resolution
def test_endpoint_variables_in_the_order_boto3_and_pyarrow_read_them() -> None:
    assert storage.endpoint({}) is None  # AWS itself
    assert storage.endpoint({"MLFLOW_S3_ENDPOINT_URL": "http://m"}) == "http://m"
    assert storage.endpoint({"AWS_ENDPOINT_URL": "http://a", "MLFLOW_S3_ENDPOINT_URL": "http://m"}) == "http://a"
    assert storage.endpoint({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s"}) == "http://s"
    env = {"MLFLOW_S3_ENDPOINT_URL": "http://m"}
    storage.share_endpoint(env)  # MLflow's variable alone: made every client's
    assert env["AWS_ENDPOINT_URL_S3"] == "http://m"
    env = {"MLFLOW_S3_ENDPOINT_URL": "http://m", "AWS_ENDPOINT_URL": "http://a"}
    storage.share_endpoint(env)  # the user chose an AWS endpoint: left alone
    assert "AWS_ENDPOINT_URL_S3" not in env
    assert not storage.is_remote("results") and not storage.is_remote("file:///tmp/x")
    assert storage.is_remote("s3://bucket/x")


def test_plain_s3_uris_reach_the_endpoint_named_in_the_environment(s3, tmp_path: Path) -> None:
    base = s3.uri("runs")
    storage.check(base, write=True)
    assert s3.keys() == []  # the write probe is deleted again
    storage.write_text(f"{base}/exp-1/results.csv", "trial\na\n")
    storage.write_text(f"{base}/exp-2/results.csv", "trial\nb\n")
    assert s3.keys() == ["runs/exp-1/results.csv", "runs/exp-2/results.csv"]  # seen by an independent client
    assert storage.read_text(f"{base}/exp-2/results.csv") == "trial\nb\n"
    assert storage.subfolders(base) == ["exp-1", "exp-2"] and storage.subfolders(s3.uri("nothing")) == []
    assert storage.exists(f"{base}/exp-1") and not storage.exists(f"{base}/exp-3")

    (tmp_path / "set").mkdir()
    for name, text in (("a.bin", "a"), ("meta.json", "{}"), ("z.bin", "z")):
        (tmp_path / "set" / name).write_text(text)
    storage.upload_folder(str(tmp_path / "set"), s3.uri("data/set"), last="meta.json")
    assert s3.keys("data") == ["data/set/a.bin", "data/set/meta.json", "data/set/z.bin"]


def test_mlflow_endpoint_variable_alone_is_shared_with_pyarrow(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `runner` does at start-up (cli.main): MLflow's variable is enough for every client."""
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "")  # recorded, so the shared value is undone after the test
    storage.share_endpoint(os.environ)
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3.server.uri
    storage.write_text(s3.uri("shared/x.txt"), "x")
    assert s3.keys() == ["shared/x.txt"]


# ---------------------------------------------------------------- failure modes, met through `runner run`
def _refused(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """`runner run` refused with exit status 2 before Ray started, leaving nothing behind; its message."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RUNNER_STORAGE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC))
    before = set(os.listdir(tmp_path))
    code = cli.main(["run", str(tmp_path / "spec.yaml"), "--no-register", "--num-cpus", "1", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("runner: error: ") and "Traceback" not in err, err
    assert set(os.listdir(tmp_path)) == before  # no results folder, no MLflow store
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    return err


def test_missing_bucket_is_refused_naming_it_and_how_to_create_it(s3, tmp_path, capsys, monkeypatch) -> None:
    err = _refused(tmp_path, capsys, monkeypatch, "--storage", "s3://no-such-bucket-here/runs")
    for fragment in ("--storage or RUNNER_STORAGE", "s3://no-such-bucket-here/runs", "bucket 'no-such-bucket-here'",
                     "does not exist", f"the S3 endpoint {s3.server.uri}",
                     f"aws --endpoint-url {s3.server.uri} s3 mb s3://no-such-bucket-here"):
        assert fragment in err, err
    # the data set's location is checked the same way, naming the spec's row and field
    err = _refused(tmp_path, capsys, monkeypatch, "--storage", s3.uri("runs"), "--data", "s3://no-such-bucket-here/d")
    assert "row 'base': field data.path: s3://no-such-bucket-here/d" in err and "does not exist" in err, err
    assert s3.keys() == []


def test_refused_credentials_are_named_and_masked(s3, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    err = _refused(tmp_path, capsys, monkeypatch, "--storage", s3.uri("runs"))
    for fragment in (s3.uri("runs"), "refused the credentials", "ACCESS_DENIED", "AWS_ACCESS_KEY_ID",
                     "instance profile"):
        assert fragment in err, err
    # keys written into the URI itself are accepted by pyarrow, and never shown
    uri = f"s3://AKIAEXAMPLEKEY:written-in-the-uri@{s3.name}/runs"
    err = _refused(tmp_path, capsys, monkeypatch, "--storage", uri)
    assert f"s3://***@{s3.name}/runs" in err and "written-in-the-uri" not in err, err


@pytest.mark.timeout(60)  # pyarrow's own defaults wait ~100 s on the silent endpoint
def test_unreachable_and_silent_endpoints_fail_within_seconds(s3, silent_endpoint, tmp_path, capsys,
                                                              monkeypatch) -> None:
    for where in (f"http://127.0.0.1:{closed_port()}", silent_endpoint):
        monkeypatch.setenv("AWS_ENDPOINT_URL", where)
        err = _refused(tmp_path, capsys, monkeypatch, "--storage", s3.uri("runs"))
        for fragment in (s3.uri("runs"), f"cannot reach the S3 endpoint {where}", "AWS_ENDPOINT_URL"):
            assert fragment in err, err


# ---------------------------------------------------------------- a data set on s3://
def test_each_worker_fetches_only_its_own_row_groups_from_s3(s3, tmp_path, monkeypatch) -> None:
    """tests/test_data.py checks the rows read through S3 equal the local ones; here: what each rank fetches."""
    import pyarrow.parquet as pq

    from runner import data

    monkeypatch.setattr(data.format, "ROW_GROUP_SIZE", 16)  # 19 row groups, so a shard can skip some
    data.prepare("synthetic:300", str(tmp_path / "ds"))
    storage.upload_folder(str(tmp_path / "ds"), s3.uri("data/ds"), last="meta.json")
    groups_read: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: groups_read.append(list(groups)) or real(self, groups, **kw))
    cfg = {"path": s3.uri("data/ds"), "val_fraction": 0.1, "num_classes": None}
    shards = []
    for rank in (0, 1):
        groups_read.clear()
        _, train, val = data.load_trial_data(cfg, 7, rank=rank, world=2)
        shards.append(set(train.ids) | set(val.ids))
        assert groups_read and all(0 < len(groups) < 19 for groups in groups_read), groups_read
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 300


def test_prepare_straight_to_s3_uploads_meta_json_last_and_refuses_to_clobber(s3, capsys) -> None:
    from runner import data

    uri = s3.uri("data/synth")
    assert cli.main(["data", "prepare", "synthetic:300", uri]) == 0
    assert s3.keys("data") == ["data/synth/meta.json", "data/synth/solution.csv", "data/synth/test.parquet",
                               "data/synth/train.parquet"]
    assert data.verify(uri).counts["train"]["total"] == 300  # footers and sha256 of what landed in the bucket
    capsys.readouterr()
    assert cli.main(["data", "prepare", "synthetic:100", uri]) == 2
    assert f"{uri} already exists; pass --overwrite" in capsys.readouterr().err
    assert data.verify(uri).counts["train"]["total"] == 300  # untouched
    assert cli.main(["data", "prepare", "synthetic:100", uri, "--overwrite"]) == 0
    assert data.verify(uri).counts["train"]["total"] == 100
    capsys.readouterr()
    assert cli.main(["data", "prepare", "synthetic:100", "s3://no-such-bucket-here/x"]) == 2  # before any work
    assert "bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end: runner run on the bucket
GRID = """
name: s3_grid
base:
  data: {{path: "{data}", val_fraction: 0.25}}
  model: {{name: wrn_std, depth: 10, width: 1}}
  train: {{epochs: 2, batch_size: 32}}
  scaling: {{workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.5}}
runs:
  - name: ddp
    scaling: {{workers: 2, cpus_per_worker: 0.5, trial_cpus: 0.5}}
  - name: single
"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_grid_keeps_everything_durable_in_the_buckets(s3, mlflow_s3_server, short_dir, tmp_path, monkeypatch,
                                                        capsys) -> None:
    """`runner run --storage s3://...` with the data set in the bucket and `mlflow server
    --artifacts-destination s3://...`: Tune state, checkpoints, results.csv, trial artifacts and the
    registered model land in the buckets, nothing a new node would need on local disk; then `runner submit`
    from the alias reads the model and the data set back through them."""
    import csv
    import subprocess

    from mlflow import MlflowClient

    from runner import data

    assert cli.main(["data", "prepare", "synthetic:400", s3.uri("data/synth")]) == 0  # workers read it from here
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(GRID.format(data=s3.uri("data/synth"))))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_s3_server.uri)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "RAY_TMPDIR": f"{short_dir}/t"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--storage", s3.uri("runs"),
                           "--num-cpus", "2", "--max-concurrent", "1", "--register", "s3_grid"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]  # no ./results, no ./mlruns: all of it is in the buckets

    keys = s3.keys("runs")
    experiment = keys[0].split("/")[1]
    assert f"results: {s3.uri('runs')}/{experiment}/results.csv" in out
    assert f"runs/{experiment}/tuner.pkl" in keys
    assert any(k.startswith(f"runs/{experiment}/experiment_state-") for k in keys), keys
    checkpoints = [k for k in keys if k.endswith("/state.pt")]
    assert len(checkpoints) >= 2, keys  # each trial's best checkpoint at least
    rows = list(csv.DictReader(storage.read_text(f"{s3.uri('runs')}/{experiment}/results.csv").splitlines()))
    assert {(r["trial"], r["status"], r["epochs"]) for r in rows} == {("ddp", "FINISHED", "2"),
                                                                      ("single", "FINISHED", "2")}

    client = MlflowClient(mlflow_s3_server.uri)
    artifacts = s3.server.keys(mlflow_s3_server.bucket, "mlflow")
    for run in client.search_runs([client.get_experiment_by_name("s3_grid").experiment_id],
                                  "tags.`runner.kind` = 'trial'"):
        assert any(k.endswith(f"/{run.info.run_id}/artifacts/checkpoint/state.pt") for k in artifacts), artifacts
    version = client.get_model_version_by_alias("s3_grid", "champion")
    model_id = version.source.removeprefix("models:/")
    assert any(k.endswith(f"/models/{model_id}/artifacts/MLmodel") for k in artifacts), (version.source, artifacts)

    capsys.readouterr()
    submission = tmp_path / "submission.csv"
    assert cli.main(["submit", "--model", "models:/s3_grid@champion", "--data", s3.uri("data/synth"),
                     "--out", str(submission)]) == 0
    with open(submission) as fh:
        ids = [row["id"] for row in csv.DictReader(fh)]
    assert ids == data.load_test(s3.uri("data/synth"))[1].ids  # every test image of the set in the bucket, in order
