"""`ray job submit` works as docs/cluster.md writes it: a real local head, the smoke spec, MLflow runs.

A head is started with `ray start --head` from the project's venv (its bin first on PATH, so the
job's `runner` and `python` are the venv's), on free ports, with a short temp dir, token auth from a
temp token file (RAY_AUTH_TOKEN_PATH), and the dashboard on 127.0.0.1. The smoke spec is submitted
with `--working-dir .` and the documented excludes; the job must end SUCCEEDED, upload far less than
Ray's 100 MiB cap, and leave a FINISHED MLflow parent run with one child run per trial in a sqlite
store passed through the runtime env. Only the processes this test started are ended: the head's
process group and anything whose command line names its temp dir (`ray stop` would end every Ray
on the machine).

    flock /tmp/ray-test.lock pytest -m slow tests/test_job_submit.py      # ~2-3 min on 2 cores
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXCLUDES = ["/.git", "/.venv", "/mlruns", "/data", "/results"]  # as in docs/cluster.md
UPLOAD_LIMIT_MIB = 10  # Ray's cap is 100 MiB; the project is a few hundred KiB


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayHead:
    """`ray start --head` in its own process group, on free ports, in a short temp dir (unix socket
    paths must stay under ~107 bytes: never pytest's tmp_path). `stop()` ends that process group and
    any process whose command line names the temp dir, and nothing else."""

    def __init__(
        self,
        *,
        num_cpus: int,
        num_gpus: int = 0,
        resources: dict | None = None,
        autoscaling_config: Path | None = None,
        env: dict | None = None,
        prefix: str = "rj-",
    ) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.token_path = self.temp_dir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.args = [
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--temp-dir={self.temp_dir}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        if resources:
            self.args.append(f"--resources={json.dumps(resources)}")
        if autoscaling_config:
            self.args.append(f"--autoscaling-config={autoscaling_config}")
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            **(env or {}),
        }
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "RUNNER_STORAGE"):
            if name not in (env or {}):
                self.env.pop(name, None)
        self.pgid: int | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def logs(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"

    def start(self, timeout_s: float = 120) -> None:
        log = self.temp_dir / "ray-start.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", "--head", *self.args],
                env=self.env,
                cwd=self.temp_dir,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pgid = proc.pid
        if proc.wait(timeout=timeout_s) != 0:
            raise RuntimeError(f"ray start --head failed:\n{log.read_text()[-3000:]}")

    def client_env(self, **extra: str) -> dict:
        """Environment of a client of this head: explicit address, so RAY_AUTH_MODE=token is needed."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address, **extra}

    def pids(self) -> list[int]:
        """Processes this head started: its process group, plus anything naming its temp dir."""
        found = []
        marker = str(self.temp_dir).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                in_group = self.pgid is not None and os.getpgid(int(entry)) == self.pgid
            except (OSError, ProcessLookupError):
                continue
            if in_group or marker in cmdline:
                found.append(int(entry))
        return found

    def stop(self, grace_s: float = 5) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.5)
            if not self.pids():
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ray_cli(head: RayHead, *args: str, timeout_s: float = 60, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args],
        env=head.client_env(**extra_env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def head() -> RayHead:
    """One `ray start --head` for this module's jobs (its start-up is ~12 s)."""
    with RayHead(num_cpus=2) as started:
        yield started


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_job_submit_runs_smoke_spec_and_tracks_it(head, tmp_path):
    import mlflow  # only the result check needs it, after the job

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"  # outlives the head's temp dir, which stop() removes
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}}
    submission_id = f"smoke-{secrets.token_hex(4)}"

    # Without RAY_AUTH_MODE=token an explicit-address client is refused (the trap the docs warn of).
    refused = ray_cli(head, "job", "list", "--address", head.dashboard_url, RAY_AUTH_MODE="disabled")
    assert refused.returncode != 0, refused.stdout

    started = time.monotonic()
    submitted = ray_cli(
        head,
        "job",
        "submit",
        "--address",
        head.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "runner",
        "run",
        "experiments/smoke.yaml",
        "--storage",
        str(tmp_path / "results"),
        "--no-register",
        timeout_s=480,
    )
    elapsed = time.monotonic() - started
    output = submitted.stdout + submitted.stderr
    status = ray_cli(head, "job", "status", "--address", head.dashboard_url, submission_id)
    assert submitted.returncode == 0, f"job failed after {elapsed:.0f} s:\n{output[-6000:]}"
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr

    # What the cluster received: the unpacked working_dir package in the head's session dir.
    package = re.search(r"Uploading package gcs://(_ray_pkg_\w+)\.zip", output)
    assert package, output[-3000:]
    unpacked = head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files" / package.group(1)
    files = [f for f in unpacked.rglob("*") if f.is_file()]
    size_mib = sum(f.stat().st_size for f in files) / 2**20
    assert files and size_mib < UPLOAD_LIMIT_MIB, f"{unpacked}: {len(files)} files, {size_mib:.1f} MiB"
    assert not {".git", ".venv", "mlruns", "data", "results"} & {p.name for p in unpacked.iterdir()}
    print(f"job {submission_id}: SUCCEEDED in {elapsed:.0f} s; uploaded {len(files)} files, {size_mib:.2f} MiB")

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None, "the job created no MLflow experiment 'smoke'"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    assert parents[0].data.tags.get("runner.ray_job_id") == submission_id, parents[0].data.tags
    assert sorted(r.info.run_name for r in children) == ["wrn10-1", "wrn10-1-adam", "wrn10-1-ddp2"]
    for child in children:
        assert child.info.status == "FINISHED", (child.info.run_name, child.info.status)
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert len({m.step for m in history}) == 3, (child.info.run_name, history)  # smoke: 3 epochs


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_job_stop_ends_the_runs_killed(head, tmp_path):
    """`ray job stop` sends SIGTERM: the runner ends the grid KILLED, writes results.csv, registers nothing.
    Ray SIGKILLs RAY_JOB_STOP_WAIT_TIME_S (default 3 s) after the SIGTERM; docs/cluster.md has users pass a
    longer wait in the runtime env, as here."""
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri,
                                                      "RAY_JOB_STOP_WAIT_TIME_S": "30"}}
    submission_id = f"stop-{secrets.token_hex(4)}"
    submitted = ray_cli(head, "job", "submit", "--address", head.dashboard_url, "--submission-id", submission_id,
                        "--no-wait", "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
                        "runner", "run", "experiments/smoke.yaml", "--epochs", "30", "--storage",
                        str(tmp_path / "results"), timeout_s=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline = time.monotonic() + 300
    while "epoch 2/30" not in (logs := ray_cli(head, "job", "logs", "--address", head.dashboard_url,
                                               submission_id).stdout):
        assert time.monotonic() < deadline, logs[-4000:]
        time.sleep(2)
    sent = time.monotonic()
    stopped = ray_cli(head, "job", "stop", "--address", head.dashboard_url, submission_id, timeout_s=120)
    print(f"\nray job stop returned {time.monotonic() - sent:.1f} s after it was run")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = ray_cli(head, "job", "status", "--address", head.dashboard_url, submission_id)
    logs = ray_cli(head, "job", "logs", "--address", head.dashboard_url, submission_id).stdout
    assert "was stopped" in status.stdout + status.stderr, status.stdout + status.stderr  # STOPPED
    assert "runner: interrupted by SIGTERM" in logs and "--resume smoke-" in logs, logs[-4000:]

    experiment = next((tmp_path / "results").glob("smoke-*"))
    assert (experiment / "results.csv").read_text().count("\n") == 4  # the header and every trial
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in runs} and "KILLED" in {
        r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert client.search_registered_models() == []
