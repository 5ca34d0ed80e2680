"""Where durable files live: a local folder or an object-store URI, turned into a pyarrow filesystem here.

`--storage` / `RUNNER_STORAGE`, a spec's `data.path` and `runner data prepare`'s OUT may each be a local
path or a URI pyarrow reads (`s3://bucket/path`, `gs://bucket/path`, ...). Ray Tune and Train resolve the
same URIs with the same call (`pyarrow.fs.FileSystem.from_uri`), so the runner, Ray's checkpoints and the
workers' data reads agree on where `s3://bucket/x` is.

S3-compatible stores (MinIO, Ceph, ...) need no URI tricks, only the standard variables, read natively by
pyarrow 25 (hence Ray) and by boto3 (hence MLflow): `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.
MLflow's own `MLFLOW_S3_ENDPOINT_URL` reaches MLflow only; `share_endpoint` copies it to
`AWS_ENDPOINT_URL_S3` when neither is set, so Ray and pyarrow go where MLflow goes. Credentials come from
the usual AWS chain in each process (environment, ~/.aws, instance profile), never from this module, and
URIs are shown with `key:secret@` masked.

    fs, path = filesystem("s3://bucket/runs")     # a local path -> (LocalFileSystem, absolute path)
    check("s3://bucket/runs", write=True)         # within seconds, before anything is spent
    write_text(uri, text); read_text(uri); subfolders(uri); exists(uri); upload_folder(local, uri)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import MutableMapping
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from runner.files import atomic_write_text
from runner.masking import redact

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the order boto3 and pyarrow use
MLFLOW_ENDPOINT_VARIABLE = "MLFLOW_S3_ENDPOINT_URL"
# The reachability probe: pyarrow's defaults (3 attempts, no request timeout) waited 99 s on an endpoint
# that accepts connections but never answers, and 6 s on a refused connection; these: 6 s and < 1 s.
PROBE_CONNECT_S, PROBE_REQUEST_S, PROBE_ATTEMPTS = 2.0, 3.0, 2
_CREDENTIALS = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "INVALID_ACCESS_KEY_ID", "SignatureDoesNotMatch",
                "SIGNATURE_DOES_NOT_MATCH", "ExpiredToken", "EXPIRED_TOKEN", "Forbidden", "No credentials")
_NETWORK = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't resolve", "Timeout", "timed out")


class StorageError(ValueError):
    """A storage location the runner cannot use: missing bucket, refused credentials, unreachable endpoint."""


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def endpoint(environ: MutableMapping[str, str]) -> str | None:
    """The S3 endpoint every client in this process uses; None means AWS itself."""
    return next((environ[name] for name in (*ENDPOINT_VARIABLES, MLFLOW_ENDPOINT_VARIABLE) if environ.get(name)), None)


def share_endpoint(environ: MutableMapping[str, str]) -> None:
    """MLFLOW_S3_ENDPOINT_URL alone would send MLflow to the S3-compatible store and Ray to AWS: make it
    every client's. Called once by the command line, before Ray starts (its local workers inherit it)."""
    if environ.get(MLFLOW_ENDPOINT_VARIABLE) and not any(environ.get(name) for name in ENDPOINT_VARIABLES):
        environ["AWS_ENDPOINT_URL_S3"] = environ[MLFLOW_ENDPOINT_VARIABLE]


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI: the one resolver the runner uses."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), os.path.abspath(location.removeprefix("file://"))
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError) as err:  # unknown scheme, malformed URI, region lookup failed
        raise StorageError(f"{redact(location)}: {redact(str(err))}; use a local path or a URI such as "
                           "s3://BUCKET/PATH (S3-compatible stores: set AWS_ENDPOINT_URL)") from err


def check(location: str, *, write: bool) -> None:
    """Reach `location` before anything is spent: the bucket exists, the credentials are accepted and,
    with `write`, an object can be written there (a probe object, deleted again). Local paths pass."""
    if not is_remote(location):
        return
    fs, path = filesystem(location)
    fs = _impatient(fs)
    bucket = path.split("/", 1)[0]
    try:
        if _has_buckets(fs) and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(_missing_bucket(location, bucket))
        fs.get_file_info(path)
        if write:
            probe = f"{path.rstrip('/')}/.runner-write-probe"
            with fs.open_output_stream(probe) as out:
                out.write(b"ok")
            fs.delete_file(probe)
    except OSError as err:
        raise StorageError(explain(location, err)) from err


def explain(location: str, err: BaseException) -> str:
    """What went wrong reaching `location`, and the fix: refused credentials, an unreachable endpoint,
    a missing bucket, or (anything else) the store's own words."""
    bucket = urlsplit(location).hostname or ""
    text = redact(str(err))
    where, uri = _where(), redact(location)
    if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
        return _missing_bucket(location, bucket)
    if any(marker in text for marker in _CREDENTIALS):
        return (f"{uri}: {where} refused the credentials ({text}). Give keys that may list, read and write bucket "
                f"{bucket!r}: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (on a cluster, the node's "
                "instance profile)")
    if any(marker in text for marker in _NETWORK):
        return (f"{uri}: cannot reach {where} ({text}). Start the store, or fix AWS_ENDPOINT_URL "
                "(unset it to use AWS itself)")
    return f"{uri}: {text}"


def _where() -> str:
    custom = endpoint(os.environ)
    return f"the S3 endpoint {redact(custom)} (AWS_ENDPOINT_URL)" if custom else "AWS S3"


def _missing_bucket(location: str, bucket: str) -> str:
    custom = endpoint(os.environ)
    flag = f" --endpoint-url {redact(custom)}" if custom else ""
    return (f"{redact(location)}: bucket {bucket!r} does not exist at {_where()}. Create it "
            f"(`aws{flag} s3 mb s3://{bucket}`) or fix the URI")


def _has_buckets(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.S3FileSystem) or type(fs).__name__ == "GcsFileSystem"


def _impatient(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The same S3 filesystem (credentials, region, endpoint: pyarrow's own pickle state) with short
    timeouts and one retry, for the probe only; Ray keeps pyarrow's patient defaults for the real traffic."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    _, (options,) = fs.__reduce__()
    return pafs.S3FileSystem(**{**options, "connect_timeout": PROBE_CONNECT_S, "request_timeout": PROBE_REQUEST_S,
                                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=PROBE_ATTEMPTS)})


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def subfolders(location: str) -> list[str]:
    """Names of the folders directly under `location` (none if it does not exist), sorted."""
    fs, path = filesystem(location)
    entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(os.path.basename(e.path) for e in entries if e.type == pafs.FileType.Directory)


def write_text(location: str, text: str) -> None:
    """A reader sees the old file or the new one: an atomic rename locally, one PUT on an object store."""
    if not is_remote(location):
        atomic_write_text(location, text)
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def upload_folder(local: str, location: str, *, last: str) -> None:
    """Copy the files of folder `local` to `location`, `last` after all others: a reader that waits for
    `last` (a data set's meta.json) never sees a half-uploaded set. Whatever `location` held is removed
    first, `last` before the rest, so the old set stops being readable before it is replaced."""
    fs, path = filesystem(location)
    if fs.get_file_info(f"{path}/{last}").type != pafs.FileType.NotFound:
        fs.delete_file(f"{path}/{last}")
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir_contents(path)
    names = sorted(os.listdir(local), key=lambda name: name == last)
    for name in names:
        with open(os.path.join(local, name), "rb") as src, fs.open_output_stream(f"{path}/{name}") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
