"""One report per MLflow outage, however many writers see it.

The tracker has two writers that meet the same server: the write queue (runs, params, artifacts) and the
metric batcher (per-epoch metrics). Each notices an outage on its own; the user should read one line when
the server goes away and one when everything buffered has been delivered, not one per writer.
"""

from __future__ import annotations

import logging
import threading

from runner.masking import redact

log = logging.getLogger(__name__)


class Outage:
    """`failed(writer, exc)` when a writer's request fails transiently; `delivered(writer)` when it has
    sent what it buffered. Reports 'unreachable' on the first failing writer, 'is back' when none is left."""

    def __init__(self, uri: str) -> None:
        self.uri = uri  # masked: for messages only
        self._failing: set[str] = set()
        self._lock = threading.Lock()

    def failed(self, writer: str, exc: BaseException) -> None:
        with self._lock:
            if not self._failing:
                log.warning("MLflow at %s unreachable (%s); buffering writes and retrying", self.uri,
                            redact(str(exc)))
            self._failing.add(writer)

    def delivered(self, writer: str) -> None:
        with self._lock:
            if writer not in self._failing:
                return
            self._failing.discard(writer)
            if not self._failing:
                log.warning("MLflow at %s is back; buffered writes delivered", self.uri)

    @property
    def ongoing(self) -> bool:
        with self._lock:
            return bool(self._failing)
