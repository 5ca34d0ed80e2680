"""Shared test fixtures: a real `mlflow server` on loopback, a real S3-compatible server on loopback (moto's
standalone server, IAM authentication on), sqlite tracking stores, and an environment that keeps every test
away from the developer's ./mlruns, from real AWS and from Ray's usage-stats prompt."""

import json as _json
import os as _os
import shutil as _shutil
import signal as _signal
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import tempfile as _tempfile
import time as _time
import urllib.request as _urlrequest
import uuid as _uuid
from collections.abc import Callable as _Callable
from collections.abc import Iterator as _Iterator
from pathlib import Path as _Path

import pytest as _pytest

_SESSION_STORE = _tempfile.mkdtemp(prefix="runner-tests-")
# A test that forgets its own MLFLOW_TRACKING_URI writes here, never into the checkout's ./mlruns.
_os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_STORE}/mlflow.db"
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# No AWS SDK in a test ever asks the EC2 metadata address (169.254.169.254) for credentials: only loopback.
_os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (one uvicorn worker, no job runner: starts in ~10 s as 2
    processes); `stop()`/`start()` keep the port and the sqlite backend, for outage tests."""

    def __init__(self, root: _Path, artifacts: str | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts or str(root / "artifacts")  # --artifacts-destination: a folder or s3://...
        self.env = env or {}
        self.proc: _subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        mlflow_bin = _Path(_sys.executable).with_name("mlflow")
        env = dict(_os.environ, **self.env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.root / "server.log", "ab") as server_log:  # the child keeps its own copy of the fd
            self.proc = _subprocess.Popen(
                [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", self.artifacts],
                env=env, start_new_session=True, stdout=server_log, stderr=_subprocess.STDOUT)
        deadline = _time.monotonic() + timeout_s
        while _time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with _urlrequest.urlopen(self.uri + "/health", timeout=1):
                    return
            except OSError:
                _time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout_s}s")

    def stop(self) -> None:
        _stop_group(self.proc)


def _free_port() -> int:
    with _socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@_pytest.fixture
def free_port() -> _Callable[[], int]:
    """A port nothing listens on now (for a server a test starts)."""
    return _free_port


def _stop_group(proc: _subprocess.Popen | None) -> None:
    """SIGTERM a server started with start_new_session, and its whole group (uvicorn's worker too)."""
    if proc is None or proc.poll() is not None:
        return
    pgid = _os.getpgid(proc.pid)
    _os.killpg(pgid, _signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except _subprocess.TimeoutExpired:
        _os.killpg(pgid, _signal.SIGKILL)
        proc.wait(timeout=5)


class S3Server:
    """moto's standalone S3 server on 127.0.0.1: clients talk HTTP to it as to AWS, through the standard
    variables in `env` (endpoint, region, the throwaway keys of an IAM user). IAM authentication is turned
    on once that user exists, so wrong keys are refused the way AWS refuses them (403)."""

    def __init__(self, root: _Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env: dict[str, str] = {}
        self.proc: _subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        server_bin = _Path(_sys.executable).with_name("moto_server")
        with open(self.root / "moto.log", "ab") as log:
            self.proc = _subprocess.Popen([str(server_bin), "-H", "127.0.0.1", "-p", str(self.port)],
                                          start_new_session=True, stdout=log, stderr=_subprocess.STDOUT)
        deadline = _time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {(self.root / 'moto.log').read_text()[-2000:]}")
            try:
                with _urlrequest.urlopen(self.uri + "/moto-api/", timeout=1):
                    break
            except OSError:
                if _time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server not answering after {timeout_s}s") from None
                _time.sleep(0.2)
        self.env = {"AWS_ENDPOINT_URL": self.uri, "AWS_DEFAULT_REGION": "us-east-1", **self._iam_user()}
        request = _urlrequest.Request(self.uri + "/moto-api/reset-auth", data=b"0", method="POST",
                                      headers={"Content-Type": "text/plain"})
        with _urlrequest.urlopen(request, timeout=10):  # from now on every request is signed and checked
            pass

    def _iam_user(self) -> dict[str, str]:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.uri, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="runner-tests")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="runner-tests", PolicyName="s3", PolicyDocument=_json.dumps(policy))
        key = iam.create_access_key(UserName="runner-tests")["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def make_bucket(self, prefix: str = "t") -> str:
        bucket = f"{prefix}-{_uuid.uuid4().hex[:12]}"
        self.filesystem(allow_bucket_creation=True).create_dir(bucket)
        return bucket

    def filesystem(self, **options):  # noqa: ANN003, ANN201 - a pyarrow S3FileSystem for the tests' own checks
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_override=self.uri, region="us-east-1", **options)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object under s3://bucket/prefix, as paths relative to the bucket."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{bucket}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(i.path.removeprefix(f"{bucket}/") for i in infos if i.type == pafs.FileType.File)

    def stop(self) -> None:
        _stop_group(self.proc)


@_pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: _pytest.TempPathFactory) -> _Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@_pytest.fixture(scope="session")
def s3_server(tmp_path_factory: _pytest.TempPathFactory) -> _Iterator[S3Server]:
    """One S3 server per test session (~3 s to start); each test takes its own bucket (`s3`)."""
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    server.start()
    yield server
    server.stop()


class S3Bucket:
    def __init__(self, server: S3Server, name: str) -> None:
        self.server, self.name = server, name

    def uri(self, path: str = "") -> str:
        return f"s3://{self.name}/{path}".rstrip("/")

    def keys(self, prefix: str = "") -> list[str]:
        return self.server.keys(self.name, prefix)


@_pytest.fixture
def s3(s3_server: S3Server, monkeypatch: _pytest.MonkeyPatch) -> S3Bucket:
    """A fresh bucket on the session's S3 server, and this test's environment pointed at the server (the
    standard AWS variables only: the code under test finds the endpoint as it would find MinIO's)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return S3Bucket(s3_server, s3_server.make_bucket())


@_pytest.fixture(scope="session")
def mlflow_s3_server(s3_server: S3Server, tmp_path_factory: _pytest.TempPathFactory) -> _Iterator[MlflowServer]:
    """`mlflow server --artifacts-destination s3://BUCKET/mlflow`, as cluster.yaml starts it on the head."""
    bucket = s3_server.make_bucket("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-s3-server"), artifacts=f"s3://{bucket}/mlflow",
                          env=s3_server.env)
    server.bucket = bucket
    server.start()
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[_pytest.Item]) -> None:
    """Files with `slow` tests first, then files with `ray` tests, then the rest; each file's own order kept.
    `make test` hands whole files to two workers in this order (`--dist loadfile --no-loadscope-reorder`):
    the long files start at once and the many short ones fill in at the end, instead of one long file
    running alone while the other worker has nothing left."""
    rank: dict[str, int] = {}
    for item in items:
        weight = 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("ray") else 2
        rank[item.path.name] = min(weight, rank.get(item.path.name, 2))
    items.sort(key=lambda item: rank[item.path.name])  # a stable sort: a file's tests stay together, in order


@_pytest.fixture(autouse=True)
def _environment_restored() -> _Iterator[None]:
    """Each test ends with the environment it began with. An in-process `runner.cli.main` sets process-wide
    variables as the command should (e.g. `storage.share_endpoint` sets AWS_ENDPOINT_URL_S3, `connect` the
    MLflow HTTP retries); without this they leaked into later tests (a bench's boto3 then went to another
    test's S3 server)."""
    saved = dict(_os.environ)
    yield
    if dict(_os.environ) != saved:
        _os.environ.clear()
        _os.environ.update(saved)


@_pytest.fixture
def tracking_uri(tmp_path: _Path) -> str:
    """A fresh sqlite tracking store (artifacts land beside it, in tmp_path/artifacts)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@_pytest.fixture
def short_dir() -> _Iterator[str]:
    """Ray's unix sockets need short paths (~107 bytes): a folder under /tmp, not pytest's tmp_path."""
    # ray.cluster_utils records the head's address in /tmp/ray even when given another temp dir.
    _os.makedirs("/tmp/ray", exist_ok=True)
    directory = _tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    yield directory
    for _ in range(20):  # Ray processes on their way out may still write logs into it
        _shutil.rmtree(directory, ignore_errors=True)
        if not _os.path.exists(directory):
            break
        _time.sleep(0.5)


TINY_CLASSES = [f"c{i}" for i in range(10)]


def _tiny_checkpoint(folder: _Path, *, seed: int = 0, val_acc: float = 0.5, within_budget: bool = True) -> _Path:
    """A checkpoint as the training core writes it (the same keys), for a very small untrained network."""
    import torch

    import models
    from runner.core import checkpoint

    torch.manual_seed(seed)
    kwargs = {"depth": 10, "width": 1, "dropout": 0.0}
    net = models.build("wrn", len(TINY_CLASSES), **kwargs)
    checkpoint.save({
        "model": net.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 3, "best_val_acc": val_acc,
        "config": {"model": {"name": "wrn", **kwargs}, "train": {"epochs": 3}},
        "classes": TINY_CLASSES, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "image_shape": [32, 32, 3],
        "val_confusion": torch.eye(len(TINY_CLASSES), dtype=torch.int64) * 3,
        "metrics": {"epoch": 3, "train_acc": 0.7, "val_acc": val_acc, "val_loss": 1.0, "train_loss": 0.9},
        "params": models.count_params(net) if within_budget else 6_000_000, "within_budget": within_budget,
    }, folder)
    return folder


@_pytest.fixture(scope="session")
def tiny_checkpoint() -> object:
    """`tiny_checkpoint(folder, seed=0, val_acc=0.5, within_budget=True)` writes `folder/state.pt`."""
    return _tiny_checkpoint


@_pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: _pytest.TempPathFactory) -> _Path:
    """A real checkpoint of `runner.core.train.fit`: WRN-10-1, 2 epochs on `synthetic:200` (its predictions
    differ per image and class, unlike an untrained network's uniform ones), scored with 2 flip views."""
    from runner import data, spec
    from runner.core import checkpoint, train

    folder = tmp_path_factory.mktemp("trained")
    cfg = spec.trial_config({"data.path": "synthetic:200", "model.name": "wrn", "model.depth": 10,
                             "model.width": 1, "train.epochs": 2, "train.batch_size": 32, "optimizer.lr": 0.05,
                             "eval.tta": "flips", "eval.views": 2})
    meta, split, val = data.load_trial_data({"path": "synthetic:200", "val_fraction": 0.2}, seed=0)
    train.fit(cfg, split, val, meta.classes,
              lambda metrics, state: checkpoint.save(state(), folder))
    return folder
