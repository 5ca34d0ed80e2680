"""A real `mlflow server` on 127.0.0.1 for the tracking benchmarks, with its default database (sqlite
`mlflow.db` in its working folder) unless told otherwise. Not a benchmark itself.

    with Server(folder) as server:     # server.uri == "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class Server:
    def __init__(self, folder: Path, workers: int | None = None, backend: str | None = None) -> None:
        self.folder, self.workers, self.backend = Path(folder), workers, backend
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                   "--port", str(self.port), "--artifacts-destination", str(self.folder / "artifacts")]
        if self.workers:
            command += ["--workers", str(self.workers)]
        if self.backend:
            command += ["--backend-store-uri", self.backend]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner: a plain tracking server
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.folder / "server.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("mlflow server did not answer within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
