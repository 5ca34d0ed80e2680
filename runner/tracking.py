"""The MLflow layer: the one writer, run only in the Tune driver process.

One experiment per spec name; one parent run per `runner run` invocation; one child run per trial
(`mlflow.parentRunId`), named after its row, with the resolved config as dotted params (secrets masked),
per-epoch metrics at `step=epoch`, and artifacts `config/resolved.yaml`, `plots/{curves,confusion}.png`,
`checkpoint/state.pt`; the parent gets `results/results.{csv,md}`.
Every write goes through a FIFO queue: one that fails because the server is briefly down stays queued
and is retried with backoff on the next call and at `flush`/`close`, so a short outage loses nothing and
a long one raises at `close`. Runs are never left RUNNING: `close(status)`, `install_signal_handlers`,
and `reconcile` (`runner mlflow reconcile`) for runs whose driver was SIGKILLed.
URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlruns/mlflow.db` + `<root>/mlruns/artifacts`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner import report

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint/state.pt"
SECRET = re.compile(r"key|token|password|passwd|secret|credential", re.IGNORECASE)
# Tune's bookkeeping in a reported result; not training metrics.
NOT_METRICS = {"epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
               "time_since_restore", "iterations_since_restore", "timesteps_total", "done",
               "episodes_total", "timesteps_since_restore"}
SUMMARY = ("train_loss", "train_acc", "val_loss", "val_acc")  # logged as best_<key> at the best epoch
PACKAGES = ("torch", "torchvision", "ray", "mlflow", "timm")
# MLflow's error codes for a server that is down or overloaded: worth retrying. Anything else
# (e.g. INVALID_PARAMETER_VALUE) is a bug in what we send and is raised at once.
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


class TrackingError(ValueError):
    """MLflow unreachable at start, a refused write, or writes lost to a long outage. A ValueError, like
    every user-facing error here: the CLI prints `runner: error: <message>` instead of a traceback."""


def default_tracking_uri(root: str | os.PathLike = ".") -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlruns' / 'mlflow.db'}"  # 4 slashes: an absolute path


def redact(uri: str) -> str:
    """`https://user:secret@host/...` -> `https://***@host/...`: URIs are shown in messages and logs."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", uri)


def resolve_tracking_uri(uri: str | None = None, root: str | os.PathLike = ".") -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def connect(uri: str | None = None, root: str | os.PathLike = ".", probe_timeout_s: float = 3.0) -> MlflowClient:
    """A client for `uri` that fails fast: an http(s) server is probed at `/health` first, and MLflow's
    own HTTP retries (7, with backoff: minutes against a dead server) are turned off unless the user
    set them, because this layer retries itself and must not stall the Tune driver."""
    uri = resolve_tracking_uri(uri, root)
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            # without user:password@ (urllib would take it for part of the host; reachability needs no login)
            probe = re.sub(r"(?<=://)[^/@]+@", "", uri).rstrip("/") + "/health"
            with urllib.request.urlopen(probe, timeout=probe_timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # it answered (e.g. 401 behind auth): reachable
        except OSError as exc:
            raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable ({exc}). Start it "
                                "(`make ui`, or `mlflow server --host 127.0.0.1 --port ...`) or point "
                                "MLFLOW_TRACKING_URI at a running one.") from exc
    elif uri.startswith("sqlite:///"):
        _sqlite_file(uri).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _sqlite_file(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///")).resolve()  # "sqlite:////abs" -> /abs; "sqlite:///rel" -> rel


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if missing; on a fresh sqlite file this also creates the schema,
    which must happen in one process before trials start (concurrent migrations crash)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        # sqlite: artifacts beside the db file (MLflow's default would be ./mlartifacts under the cwd)
        uri = client.tracking_uri
        artifacts = (_sqlite_file(uri).parent / "artifacts").as_uri() if uri.startswith("sqlite:///") else None
        # The MLflow 3 UI opens GenAI pages unless an experiment says it holds model training.
        return client.create_experiment(name, artifact_location=artifacts,
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> strings; lists as JSON; values under secret-looking keys masked as '***'."""
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if SECRET.search(str(key)):  # the whole subtree: `credentials: {user: .., pass: ..}` too
            out[dotted] = "***"
        elif isinstance(value, Mapping) and value:
            out.update(flatten_params(value, dotted + "."))
        else:
            out[dotted] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def mask_secrets(config: Any) -> Any:
    """A copy of `config` with the values under secret-looking keys replaced by '***' (for artifacts)."""
    if isinstance(config, Mapping):
        return {k: "***" if SECRET.search(str(k)) else mask_secrets(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [mask_secrets(v) for v in config]
    return config


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3", "sqlalchemy"))


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k not in NOT_METRICS and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _git_commit(start: Path) -> str | None:
    """HEAD's commit read from .git files (no git binary needed; `ray job submit` may lack one)."""
    git = next((d / ".git" for d in (start, *start.parents) if (d / ".git").is_dir()), None)
    if git is None:
        return None
    head = (git / "HEAD").read_text().strip()
    ref = head.removeprefix("ref: ")
    if ref == head:
        return head  # detached
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = git / "packed-refs"
    lines = packed.read_text().splitlines() if packed.is_file() else []
    return next((line.split()[0] for line in lines if line.endswith(" " + ref)), None)


def _ray_job_id() -> str | None:
    """The submission id under `ray job submit` (Ray passes it to the driver in its job config)."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except ValueError:
        config = {}
    return (config.get("metadata") or {}).get("job_submission_id") or os.environ.get("RAY_JOB_ID")


def invocation_tags(spec_path: str | None) -> dict[str, str]:
    tags = {}
    if spec_path:
        tags["runner.spec_file"] = str(spec_path)
        tags["runner.spec_sha256"] = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    commit = os.environ.get("RUNNER_GIT_COMMIT") or _git_commit(Path(spec_path or ".").resolve().parent)
    if commit:
        tags["runner.git_commit"] = commit
    for package in PACKAGES:
        try:
            tags[f"runner.version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    if job := _ray_job_id():
        tags["runner.ray_job_id"] = job
    return tags


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


class Tracker:
    """MLflow writer for one `runner run` invocation. Use as a context manager (the exit status ends
    every open run) or call `close(status)`; several child runs may be open at once, so this uses
    MlflowClient with explicit run ids, never the fluent active-run stack."""

    def __init__(self, experiment_name: str, tracking_uri: str | None = None, *, root: str | os.PathLike = ".",
                 outage_timeout_s: float = 300.0, probe_timeout_s: float = 3.0,
                 staging_dir: str | os.PathLike | None = None) -> None:
        uri = resolve_tracking_uri(tracking_uri, root)
        self.client = connect(uri, root, probe_timeout_s)
        self.uri = redact(uri)  # for messages only; the client keeps the real one
        self.outage_timeout_s = outage_timeout_s
        try:
            self.experiment_id = ensure_experiment(self.client, experiment_name)
        except Exception as exc:
            raise TrackingError(f"MLflow at {self.uri}: cannot open experiment {experiment_name!r}: {exc}") from exc
        self.experiment_name = experiment_name
        self.parent_run_id: str | None = None
        self.invocation_id: str | None = None
        self._open: dict[str, str] = {}  # run id -> trial id, for runs not yet ended
        self._seen: set[tuple[str, str, int]] = set()  # (run, key, step): a re-reported epoch is skipped
        self._history: dict[str, dict[int, dict[str, float]]] = {}
        self._rows: dict[str, dict] = {}
        self._pending: deque[tuple[str, Callable[[], Any]]] = deque()
        self._backoff, self._retry_at = 0.5, 0.0
        self._failing_since: float | None = None
        self._last_error: BaseException | None = None
        # artifacts wait here until uploaded (a queued upload must survive its source being deleted)
        self._staging = Path(tempfile.mkdtemp(prefix="runner-mlflow-", dir=staging_dir))
        self._closed = False

    # ---- write queue -------------------------------------------------------------------------
    def _submit(self, what: str, fn: Callable[[], Any]) -> None:
        if self._closed:
            # after close (e.g. SIGTERM ended the runs KILLED) late Tune callbacks must not reopen them
            log.debug("MLflow tracker closed; dropped %s", what)
            return
        self._pending.append((what, fn))
        self._drain()

    def _drain(self, force: bool = False) -> bool:
        """Send queued writes in order; stop at the first transient failure and keep the rest."""
        if not force and time.monotonic() < self._retry_at:
            return False
        while self._pending:
            what, fn = self._pending[0]
            try:
                fn()
            except Exception as exc:
                if not _is_transient(exc):
                    self._pending.popleft()
                    raise TrackingError(f"MLflow at {self.uri} refused {what}: {exc}") from exc
                self._note_failure(exc)
                return False
            self._pending.popleft()
        if self._failing_since is not None:
            log.warning("MLflow at %s is back; buffered writes delivered", self.uri)
        self._failing_since, self._backoff, self._retry_at = None, 0.5, 0.0
        return True

    def _note_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("MLflow at %s unreachable (%s); buffering writes and retrying", self.uri, exc)
        self._last_error = exc
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, 15.0)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """A call whose answer is needed now (create a run, search): retried until the outage timeout."""
        deadline = time.monotonic() + self.outage_timeout_s
        while True:
            try:
                return fn()
            except Exception as exc:
                if not _is_transient(exc) or time.monotonic() > deadline:
                    raise TrackingError(f"MLflow at {self.uri}: {what} failed: {exc}") from exc
                self._note_failure(exc)
                time.sleep(max(0.0, self._retry_at - time.monotonic()))

    def flush(self, timeout_s: float | None = None) -> int:
        """Retry queued writes until all are delivered or `timeout_s` passes; returns how many are left."""
        deadline = time.monotonic() + (self.outage_timeout_s if timeout_s is None else timeout_s)
        while not self._drain(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(max(self._retry_at - time.monotonic(), 0.05), left))
        return len(self._pending)

    # ---- runs ----------------------------------------------------------------------------------
    def _find(self, filter_string: str) -> Any | None:
        runs = self._call("search runs", lambda: self.client.search_runs(
            [self.experiment_id], filter_string, max_results=1, order_by=["attributes.start_time DESC"]))
        return runs[0] if runs else None

    def start_parent(self, *, spec_path: str | None = None, run_name: str | None = None,
                     invocation_id: str | None = None, resume: bool = False,
                     tags: Mapping[str, str] | None = None) -> str:
        """The invocation's parent run. With `resume`, reuse the parent tagged `invocation_id` (or, with
        no id, the latest parent of this experiment) so `runner run --resume` continues its runs."""
        found = None
        if resume:
            where = "tags.`runner.kind` = 'parent'"
            if invocation_id:
                where += f" and tags.`runner.invocation_id` = {_quote(invocation_id)}"
            found = self._find(where)
        if found is not None:
            self.parent_run_id = found.info.run_id
            self.invocation_id = found.data.tags.get("runner.invocation_id", invocation_id)
            self._call("reopen parent", lambda: self.client.update_run(self.parent_run_id, "RUNNING"))
        else:
            self.invocation_id = invocation_id or uuid.uuid4().hex
            all_tags = {"runner.kind": "parent", "runner.invocation_id": self.invocation_id,
                        **invocation_tags(spec_path), **(tags or {})}
            run = self._call("create parent run", lambda: self.client.create_run(
                self.experiment_id, tags=all_tags, run_name=run_name or self.experiment_name))
            self.parent_run_id = run.info.run_id
        self._open[self.parent_run_id] = ""
        return self.parent_run_id

    def start_trial(self, trial_id: str, name: str, config: Mapping[str, Any], *,
                    tags: Mapping[str, Any] | None = None, reported: Mapping[str, Any] | None = None) -> str:
        """A child run for one trial; on a resumed parent the trial's earlier child is reused and its
        logged steps are remembered, so re-reported epochs are not logged twice."""
        if self.parent_run_id is None:
            raise TrackingError("start_parent() must be called before start_trial()")
        found = self._find(f"tags.`mlflow.parentRunId` = {_quote(self.parent_run_id)} and "
                           f"tags.`runner.trial_id` = {_quote(trial_id)}")
        extra = {k: str(v) for k, v in (tags or {}).items()}
        extra.update({f"reported.{k}": str(v) for k, v in (reported or {}).items()})
        if found is not None:
            run_id = found.info.run_id
            self._load_history(run_id, found.data.metrics)
            if found.info.status != "FINISHED":
                self._call("reopen trial run", lambda: self.client.update_run(run_id, "RUNNING"))
                extra["status"] = "RUNNING"
            self._submit(f"tags of {name}", lambda: self.client.log_batch(
                run_id, tags=[RunTag(k, v) for k, v in extra.items()], synchronous=True))
        else:
            run_tags = {"mlflow.parentRunId": self.parent_run_id, "runner.kind": "trial",
                        "runner.trial_id": trial_id, "runner.invocation_id": self.invocation_id or "",
                        "status": "RUNNING", **extra}
            run = self._call(f"create run for {name}", lambda: self.client.create_run(
                self.experiment_id, tags=run_tags, run_name=name))
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in flatten_params(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                chunk = params[i:i + 100]
                self._submit(f"params of {name}", lambda c=chunk: self.client.log_batch(
                    run_id, params=c, synchronous=True))
            self._log_config(run_id, config)
        self._open[run_id] = trial_id
        self._history.setdefault(run_id, {})
        self._rows[run_id] = {"trial": name, "trial_id": trial_id, "run_id": run_id, "status": "RUNNING",
                              "model": (config.get("model") or {}).get("name"), "reported": dict(reported or {})}
        return run_id

    def _load_history(self, run_id: str, latest: Mapping[str, float]) -> None:
        history = self._history.setdefault(run_id, {})
        for key in latest:
            for metric in self._call("read history", lambda k=key: self.client.get_metric_history(run_id, k)):
                self._seen.add((run_id, key, metric.step))
                history.setdefault(metric.step, {})[key] = metric.value

    def _log_config(self, run_id: str, config: Mapping[str, Any]) -> None:
        config = mask_secrets(config)  # resolved.yaml is read by anyone who can read the run, like params
        try:
            from runner.spec import dump_yaml  # only spec.py may import yaml
            text, filename = dump_yaml(dict(config)), "resolved.yaml"
        except ImportError:
            text, filename = json.dumps(config, indent=2, default=str), "resolved.json"
        self._log_file(run_id, filename, "config", text=text)

    def _log_file(self, run_id: str, filename: str, artifact_dir: str, *, text: str | None = None,
                  source: Path | None = None) -> Path:
        """Stage the file (so a queued upload survives the source being deleted), then queue the upload."""
        folder = self._staging / run_id / artifact_dir
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / filename
        if text is not None:
            staged.write_text(text)
        elif source is not None:
            shutil.copy2(source, staged)
        self._submit(f"artifact {artifact_dir}/{filename}",
                     lambda: self.client.log_artifact(run_id, str(staged), artifact_dir))
        return staged

    def log_epoch(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """One epoch's numeric metrics at `step` (default: `metrics["epoch"]`, 1-based as train.fit reports
        it, which is also the checkpoint's `epoch`); keys already logged at this step (a restarted trial
        re-reporting an epoch) are skipped, so the history stays one value per step."""
        step = int(metrics["epoch"]) if step is None else step
        now = int(time.time() * 1000)
        fresh = [Metric(k, v, now, int(step)) for k, v in _numeric(metrics).items()
                 if (run_id, k, int(step)) not in self._seen]
        if not fresh:
            self._drain()
            return
        self._seen.update((run_id, m.key, m.step) for m in fresh)
        self._history.setdefault(run_id, {}).setdefault(int(step), {}).update({m.key: m.value for m in fresh})
        self._submit(f"metrics at step {step}", lambda: self.client.log_batch(run_id, metrics=fresh, synchronous=True))

    def finish_trial(self, run_id: str, status: str = "FINISHED", checkpoint: str | os.PathLike | None = None,
                     history: Mapping[int, Mapping[str, float]] | None = None) -> dict:
        """End a trial's run: summary metrics at the best checkpoint, tags, plots, the checkpoint file.
        Returns the trial's results row."""
        history = dict(history or self._history.get(run_id, {}))
        row = self._rows.setdefault(run_id, {"trial": run_id, "run_id": run_id, "reported": {}})
        tags = {"status": status}
        try:
            state = _load_checkpoint(checkpoint) if checkpoint else None
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not take the grid's driver down
            log.warning("trial %s: checkpoint %s unreadable (%s); run ended without it", run_id, checkpoint, exc)
            state, tags["checkpoint_error"] = None, f"{checkpoint}: {exc}"[:500]
        (self._staging / run_id).mkdir(parents=True, exist_ok=True)
        best = _best_epoch(history)
        summary = dict(history.get(best, {})) if best is not None else {}
        if state is not None:
            summary.update(_numeric(state.get("metrics") or {}))
            best = int(state.get("epoch", best or 0))
            for key in ("params", "within_budget"):
                if key in state:
                    tags[key] = str(state[key]).lower() if key == "within_budget" else str(state[key])
                    row[key] = state[key]
            self._log_file(run_id, "state.pt", "checkpoint", source=_checkpoint_file(checkpoint))
            if state.get("val_confusion") is not None:
                png = self._staging / run_id / "confusion.png"
                report.plot_confusion(state["val_confusion"], state.get("classes") or [], png)
                self._log_file(run_id, "confusion.png", "plots", source=png)
        if history:
            png = self._staging / run_id / "curves.png"
            report.plot_curves(history, png, title=str(row.get("trial", "")))
            self._log_file(run_id, "curves.png", "plots", source=png)
        last = max(history) if history else (best or 0)
        now = int(time.time() * 1000)
        metrics = [Metric(f"best_{k}", summary[k], now, last) for k in SUMMARY if k in summary
                   and not math.isnan(summary[k]) and (run_id, f"best_{k}", last) not in self._seen]
        if best is not None:
            tags["best_epoch"] = str(best)
        if history:
            tags["epochs"] = str(last)
        self._submit("trial summary", lambda: self.client.log_batch(
            run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True))
        self._submit("end trial run", lambda: self.client.set_terminated(run_id, status))
        self._open.pop(run_id, None)
        row.update(status=status, epochs=last if history else None, best_epoch=best,
                   **{k: summary.get(k) for k in SUMMARY})
        return row

    def finish_parent(self, status: str = "FINISHED", rows: list[dict] | None = None) -> list[dict]:
        """Attach the results table (CSV + Markdown) to the parent and end it; returns the display rows."""
        table = report.results_table(rows if rows is not None else list(self._rows.values()))
        if self.parent_run_id:
            self._log_file(self.parent_run_id, "results.csv", "results", text=report.to_csv_text(table))
            self._log_file(self.parent_run_id, "results.md", "results", text=report.to_markdown(table))
            run_id = self.parent_run_id
            self._submit("end parent run", lambda: self.client.set_terminated(run_id, status))
            self._open.pop(run_id, None)
        return table

    def close(self, status: str = "FINISHED", timeout_s: float | None = None) -> None:
        """End every run still open with `status`, deliver queued writes, and raise `TrackingError` if
        an outage outlasted `timeout_s` (default `outage_timeout_s`). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        # trials first, then the parent; queued behind any writes still pending, delivered by flush
        for run_id in sorted(self._open, key=lambda r: not self._open[r]):
            self._pending.append(("end open run", lambda r=run_id: self.client.set_terminated(r, status)))
        self._open.clear()
        left = self.flush(timeout_s)
        shutil.rmtree(self._staging, ignore_errors=True)
        if left:
            raise TrackingError(
                f"{left} MLflow writes (params/metrics/artifacts/run ends) could not be delivered to "
                f"{self.uri} within {self.outage_timeout_s if timeout_s is None else timeout_s:.0f}s "
                f"(last error: {self._last_error}). The runs in experiment {self.experiment_name!r} are "
                "incomplete; once the server is back, `runner mlflow reconcile` ends runs left RUNNING.")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            self.close("FINISHED")
            return
        try:  # the error already on its way out matters more than undelivered writes
            self.close("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
        except TrackingError as err:
            log.error("%s", err)


def install_signal_handlers(tracker: Tracker, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
                            timeout_s: float = 10.0) -> Callable[[], None]:
    """On SIGTERM/SIGINT end every open run KILLED (waiting at most `timeout_s` for MLflow), then
    hand the signal to the previous handler. Main thread only. Returns a function that uninstalls."""
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(sig: int, frame: Any) -> None:
        try:
            tracker.close("KILLED", timeout_s=timeout_s)
        except TrackingError as exc:
            log.error("%s", exc)
        finally:
            restore()
        old = previous[sig]
        if callable(old):
            old(sig, frame)
        elif old == signal.SIG_DFL:
            signal.raise_signal(sig)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in signals:
        signal.signal(sig, handler)
    return restore


def _checkpoint_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "state.pt" if path.is_dir() else path


def _load_checkpoint(path: str | os.PathLike) -> dict:
    from runner.train import load_checkpoint  # lazy: `runner mlflow reconcile` need not import torch

    return load_checkpoint(str(_checkpoint_file(path)))


def _best_epoch(history: Mapping[int, Mapping[str, float]]) -> int | None:
    scored = [(v["val_acc"], step) for step, v in history.items() if "val_acc" in v]
    return max(scored)[1] if scored else (max(history) if history else None)


def _children(client: MlflowClient, experiment_id: str, parent_run_id: str, where: str = "") -> list:
    query = f"tags.`mlflow.parentRunId` = {_quote(parent_run_id)}" + (f" and {where}" if where else "")
    return list(client.search_runs([experiment_id], query, max_results=10000,
                                   order_by=["attributes.start_time ASC"]))


def latest_parent(client: MlflowClient, experiment_name: str) -> tuple[str, Any]:
    """(experiment id, latest parent run) of a spec's experiment, or TrackingError naming what's missing."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise TrackingError(f"no MLflow experiment {experiment_name!r} at {client.tracking_uri}; "
                            f"run `runner run` for that spec first")
    parents = client.search_runs([experiment.experiment_id], "tags.`runner.kind` = 'parent'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        raise TrackingError(f"experiment {experiment_name!r} has no `runner run` parent run")
    return experiment.experiment_id, parents[0]


def trial_runs(client: MlflowClient, experiment_name: str, parent_run_id: str | None = None) -> list:
    experiment_id, parent = latest_parent(client, experiment_name)
    return _children(client, experiment_id, parent_run_id or parent.info.run_id)


def run_row(run: Any) -> dict:
    """A results row (see runner.report) rebuilt from a child run's params, metrics and tags."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    return {
        "trial": run.info.run_name, "trial_id": tags.get("runner.trial_id"), "run_id": run.info.run_id,
        "status": run.info.status, "model": params.get("model.name"),
        "params": int(tags["params"]) if tags.get("params", "").isdigit() else None,
        "within_budget": {"true": True, "false": False}.get(tags.get("within_budget", "")),
        "epochs": int(tags["epochs"]) if tags.get("epochs", "").isdigit() else None,
        "best_epoch": int(tags["best_epoch"]) if tags.get("best_epoch", "").isdigit() else None,
        **{k: metrics.get(f"best_{k}", metrics.get(k)) for k in SUMMARY},
        "kaggle": metrics.get("kaggle"),
        "reported": {k.removeprefix("reported."): v for k, v in tags.items() if k.startswith("reported.")},
    }


def fetch_trial_rows(experiment_name: str, tracking_uri: str | None = None,
                     parent_run_id: str | None = None) -> list[dict]:
    """The latest invocation's (or `parent_run_id`'s) trials as results rows, for `runner report`;
    `varied` holds the params that differ between the trials (the grid's axes)."""
    runs = trial_runs(connect(tracking_uri), experiment_name, parent_run_id)
    keys = {k for run in runs for k in run.data.params}
    varied = sorted(k for k in keys if len({run.data.params.get(k) for run in runs}) > 1)
    return [{**run_row(run), "varied": {k: run.data.params.get(k) for k in varied}} for run in runs]


def reconcile(experiment_name: str | None, alive_trial_ids: set[str] | None = None,
              tracking_uri: str | None = None) -> list[str]:
    """Mark RUNNING runs KILLED whose trial is not in `alive_trial_ids` (None: nothing is alive, e.g.
    after the driver was SIGKILLed); a parent is ended when none of its trials is alive. No experiment
    name: every experiment. Returns the run ids it ended."""
    client = connect(tracking_uri)
    if experiment_name is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        ids = [experiment.experiment_id] if experiment else []
    if not ids:
        return []
    running = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=10000)
    alive = alive_trial_ids or set()
    alive_parents = {r.data.tags.get("mlflow.parentRunId") for r in running
                     if r.data.tags.get("runner.trial_id") in alive}
    ended = []
    for run in running:
        tags = run.data.tags
        gone = (run.info.run_id not in alive_parents if tags.get("runner.kind") == "parent"
                else tags.get("runner.trial_id") not in alive)
        if alive_trial_ids is None or gone:
            client.log_batch(run.info.run_id, tags=[RunTag("runner.reconciled", "trial gone"),
                                                    RunTag("status", RunStatus.to_string(RunStatus.KILLED))])
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended
