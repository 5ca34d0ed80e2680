"""Secrets never reach a message, a log line, a run param or a tag.

Two kinds: values under secret-looking keys (`api_key`, `password`, a `credentials:` subtree) and
credentials inside URIs (`https://user:pw@host`, `s3://KEY:SECRET@bucket/path`, `?token=...`). Pure
functions, plus `redact_log_records()`, which the command line installs once so that every log record
of the process (the runner's, MLflow's, pyarrow's, Ray's driver-side loggers) is redacted as it is made.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from runner import keys

SECRET = re.compile(r"key|token|password|passwd|secret|credential|signature", re.IGNORECASE)
# user:password@ after a scheme, up to the token's last "@": AWS secrets hold "/" and "+", and an
# unencoded "@" in a password must not leave its tail behind (over-masking an e-mail in a path is fine).
_URI_CREDENTIALS = re.compile(r"(?<=://)(?:(?!://)[^\s'\"<>])*@")
_QUERY_SECRET = re.compile(r"([?&][^=&\s]*(?:key|token|password|secret|signature|credential)[^=&\s]*=)[^&\s'\"]+",
                           re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """`https://user:secret@host/...` -> `https://***@host/...` and `?X-Amz-Signature=abc` ->
    `?X-Amz-Signature=***`, for every URI in `text`."""
    return _QUERY_SECRET.sub(r"\1" + MASK, _URI_CREDENTIALS.sub(MASK + "@", text))


def without_credentials(uri: str) -> str:
    """The URI with its user:password@ removed (for a probe that needs no login)."""
    return _URI_CREDENTIALS.sub("", uri)


def redact_log_records() -> None:
    """Redact every log record of this process when it is created, whatever logger or handler it goes
    to. Called once by the command line (the front door owns process-wide settings, as it does signals)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact(message), None
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def mask_secrets(config: Any) -> Any:
    """A copy of `config` with values under secret-looking keys replaced by '***' and URI credentials
    redacted in every string (for params, tags and the resolved-config artifact)."""
    if isinstance(config, Mapping):
        return {k: MASK if SECRET.search(str(k)) else mask_secrets(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [mask_secrets(v) for v in config]
    return redact(config) if isinstance(config, str) else config


def flatten_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Dotted keys -> strings for MLflow params; lists as JSON; secrets masked."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
            for key, value in keys.flatten(mask_secrets(config)).items()}
