"""The MLflow connection: which store, reaching it fast, and the experiment a spec writes to.

URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlruns/mlflow.db` (artifacts beside it, in
`<root>/mlruns/artifacts`). An http(s) server is probed before anything else is spent, so an
unreachable one fails within seconds, naming the URI (credentials masked).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner.masking import redact, without_credentials

# MLflow's error codes for a server that is down or overloaded: worth retrying. Anything else
# (e.g. INVALID_PARAMETER_VALUE) is a bug in what we send and is raised at once.
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


class TrackingError(ValueError):
    """MLflow unreachable at start, a refused write, or writes lost to a long outage. A ValueError, like
    every user-facing error here: the CLI prints `runner: error: <message>` instead of a traceback."""


def default_tracking_uri(root: str | os.PathLike = ".") -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlruns' / 'mlflow.db'}"  # 4 slashes: an absolute path


def resolve_tracking_uri(uri: str | None = None, root: str | os.PathLike = ".") -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def connect(uri: str | None = None, root: str | os.PathLike = ".", probe_timeout_s: float = 3.0) -> MlflowClient:
    """A client for `uri` that fails fast (see `reach`). For sqlite this creates the file and its schema."""
    uri = reach(uri, root, probe_timeout_s)
    if uri.startswith("sqlite:///"):
        _sqlite_file(uri).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def reach(uri: str | None = None, root: str | os.PathLike = ".", probe_timeout_s: float = 3.0) -> str:
    """Check that `uri` can be reached, writing nothing; returns the resolved URI. An http(s) server is
    probed at `/health`, and MLflow's own HTTP retries (7, with backoff: minutes against a dead server)
    are turned off unless the user set them, because this layer retries itself and must not stall the
    Tune driver."""
    uri = resolve_tracking_uri(uri, root)
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # A server whose artifacts live in S3 (`--artifacts-destination s3://...`, as on the cluster) has MLflow
        # 3.17 clients fetch every artifact straight from the bucket through presigned URLs: this machine would
        # then need a route to the store (a MinIO inside the cluster: none) and, on a refused URL, retried for
        # minutes. Through the server instead, which holds the credentials and the route.
        os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
        # Ending a run would otherwise fetch it again and print "View run ... at: <server URL>" to stdout,
        # outside logging (so unredacted): one extra request and two lines of noise per trial.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        try:
            # without user:password@ (urllib would take it for part of the host; reachability needs no login)
            probe = without_credentials(uri).rstrip("/") + "/health"
            with urllib.request.urlopen(probe, timeout=probe_timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # it answered (e.g. 401 behind auth): reachable
        except OSError as exc:
            raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable ({redact(str(exc))}). Start it "
                                "(`make ui`, or `mlflow server --host 127.0.0.1 --port ...`) or point "
                                "MLFLOW_TRACKING_URI at a running one.") from exc
    return uri


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

def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3", "sqlalchemy"))


def quote(value: str) -> str:
    """A value inside an MLflow search filter string."""
    return "'" + value.replace("'", "\\'") + "'"
