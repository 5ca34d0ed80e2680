"""Secrets never reach a message, a log line, a run param or a tag.

Two kinds: values under secret-looking keys (`api_key`, `password`, a `credentials:` subtree) and
credentials inside URIs (`https://user:pw@host`, `s3://KEY:SECRET@bucket/path`). Pure functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from runner import keys

SECRET = re.compile(r"key|token|password|passwd|secret|credential", re.IGNORECASE)
_URI_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
MASK = "***"


def redact(text: str) -> str:
    """`https://user:secret@host/...` -> `https://***@host/...`, for every URI in `text`."""
    return _URI_CREDENTIALS.sub(MASK + "@", text)


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
