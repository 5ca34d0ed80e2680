"""The tracker's write queue: MLflow writes in order, buffered across outages; and `Background`, the
thread the Tune driver's MLflow bridge runs the tracker on.

A write that fails because the server is briefly down stays queued and is retried with backoff on the
next submit and at `flush`, so a short outage loses nothing; a write MLflow refuses outright (a bug in
what we send) raises at once. A call whose answer is needed now (create a run, search) is retried
until the outage timeout. An outage is reported once, when it starts, and once when it ends; URIs in
every message have their credentials masked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from runner.masking import redact
from runner.tracking.connection import TrackingError, is_transient
from runner.tracking.outage import Outage

log = logging.getLogger(__name__)


class WriteQueue:
    def __init__(self, uri: str, outage_timeout_s: float, outage: Outage | None = None) -> None:
        self.uri = uri  # masked: for messages only
        self.outage = outage or Outage(uri)
        self.outage_timeout_s = outage_timeout_s
        self.pending: deque[tuple[str, Callable[[], Any]]] = deque()
        self.closed = False
        self.last_error: BaseException | None = None
        self._backoff, self._retry_at = 0.5, 0.0
        self._failing_since: float | None = None

    def submit(self, what: str, fn: Callable[[], Any]) -> None:
        if self.closed:
            # after close (e.g. SIGTERM ended the runs KILLED) late Tune callbacks must not reopen them
            log.debug("MLflow tracker closed; dropped %s", what)
            return
        self.pending.append((what, fn))
        self.drain()

    def drain(self, force: bool = False) -> bool:
        """Send queued writes in order; stop at the first transient failure and keep the rest."""
        if not force and time.monotonic() < self._retry_at:
            return False
        while self.pending:
            what, fn = self.pending[0]
            try:
                fn()
            except Exception as exc:
                if not is_transient(exc):
                    self.pending.popleft()
                    raise TrackingError(f"MLflow at {self.uri} refused {what}: {redact(str(exc))}") from exc
                self._note_failure(exc)
                return False
            self.pending.popleft()
        if self._failing_since is not None:
            self.outage.delivered("writes")
        self._failing_since, self._backoff, self._retry_at = None, 0.5, 0.0
        return True

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """A call whose answer is needed now: retried until the outage timeout."""
        deadline = time.monotonic() + self.outage_timeout_s
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() > deadline:
                    raise TrackingError(f"MLflow at {self.uri}: {what} failed: {redact(str(exc))}") from exc
                self._note_failure(exc)
                time.sleep(max(0.0, self._retry_at - time.monotonic()))

    def flush(self, timeout_s: float | None = None) -> int:
        """Retry queued writes until all are delivered or `timeout_s` passes; returns how many are left."""
        deadline = time.monotonic() + (self.outage_timeout_s if timeout_s is None else timeout_s)
        while not self.drain(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(max(self._retry_at - time.monotonic(), 0.05), left))
        return len(self.pending)

    def _note_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self.outage.failed("writes", exc)
        self.last_error = exc
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, 15.0)


class Background:
    """Runs submitted calls in order on one daemon thread, so the caller (Tune's event loop, in the
    driver) never waits on MLflow: not for a run to be created, a search, or a server that accepts
    connections and never answers. A call that raises is recorded (`errors`; the first is logged) and the
    next one runs."""

    def __init__(self, name: str) -> None:
        self.errors: list[str] = []
        self._calls: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, fn: Callable[[], Any]) -> None:
        self._calls.put((what, fn))

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            what, fn = item
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - recorded and reported at the end; the grid goes on
                message = redact(str(exc))  # MLflow's messages carry the request URL, credentials included
                if not self.errors:  # once: the calls after a failed one (its run's writes) fail the same way
                    log.error("MLflow: %s failed: %s", what, message)
                self.errors.append(f"{what}: {message}")
            finally:
                self._calls.task_done()
        self._calls.task_done()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted call has run, at most `timeout_s`; True when they all have."""
        deadline = time.monotonic() + timeout_s
        with self._calls.all_tasks_done:
            while self._calls.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0 or not self._calls.all_tasks_done.wait(left):
                    return not self._calls.unfinished_tasks
        return True

    def stop(self) -> None:
        """End the thread after the calls already submitted (it is a daemon: a stuck call dies with the process)."""
        self._calls.put(None)
