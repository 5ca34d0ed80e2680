"""Shared test fixtures: a real `mlflow server` on loopback, sqlite tracking stores, and an environment
that keeps every test away from the developer's ./mlruns and from Ray's usage-stats prompt."""

import os as _os
import shutil as _shutil
import signal as _signal
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import tempfile as _tempfile
import time as _time
import urllib.request as _urlrequest
from collections.abc import Iterator as _Iterator
from pathlib import Path as _Path

import pytest as _pytest

_SESSION_STORE = _tempfile.mkdtemp(prefix="runner-tests-")
# A test that forgets its own MLFLOW_TRACKING_URI writes here, never into the checkout's ./mlruns.
_os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_STORE}/mlflow.db"
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (one uvicorn worker, no job runner: starts in ~10 s as 2
    processes); `stop()`/`start()` keep the port and the sqlite backend, for outage tests."""

    def __init__(self, root: _Path) -> None:
        self.root = root
        with _socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: _subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        mlflow_bin = _Path(_sys.executable).with_name("mlflow")
        env = dict(_os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.root / "server.log", "ab") as server_log:  # the child keeps its own copy of the fd
            self.proc = _subprocess.Popen(
                [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
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
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = _os.getpgid(self.proc.pid)
        _os.killpg(pgid, _signal.SIGTERM)  # the whole group: uvicorn's worker too
        try:
            self.proc.wait(timeout=15)
        except _subprocess.TimeoutExpired:
            _os.killpg(pgid, _signal.SIGKILL)
            self.proc.wait(timeout=5)


@_pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: _pytest.TempPathFactory) -> _Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


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
