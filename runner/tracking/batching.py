"""Per-epoch metrics at cluster scale: buffered per run, sent in batches by a few sender threads.

One `log_batch` request per reported epoch caps the driver at what one connection can do: 95 results/s
against the cluster's `mlflow server` (bench/tracking_load.py), while 400 trials at one epoch per second
offer 400. Here `add` only appends to the run's buffer (no I/O: the caller, Tune's event loop or the
bridge thread, never waits); `senders` threads each take a run with pending metrics and send everything
it has gathered (up to MLflow's 1000 metrics per request) in one request. The busier the server, the
more epochs each request carries, so requests per second stay bounded while every metric arrives, in
order per run (one sender per run at a time). A transient failure (server down) keeps the batch and
retries with backoff; a refused one (a bug in what we send) is recorded in `errors` and dropped.

    batcher = MetricBatcher(client, is_transient, uri="http://***@head:5000")
    batcher.add(run_id, [Metric("val_acc", 0.5, now_ms, step)])
    batcher.flush(run_id, timeout_s=60)   # before the run's summary and end
    batcher.close(timeout_s=300)          # returns how many metrics could not be delivered
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from runner.masking import redact
from runner.tracking.outage import Outage

log = logging.getLogger(__name__)

MAX_METRICS = 1000  # MLflow's limit per log_batch request
# A few, so one slow request (a big batch, a stalled connection) does not hold every run back; against one
# server process 2, 4 and 8 measured alike (bench/tracking_load.py), the server being the limit.
SENDERS = 4


class MetricBatcher:
    def __init__(self, client: Any, is_transient: Callable[[BaseException], bool], *, uri: str = "",
                 senders: int = SENDERS, outage: Outage | None = None) -> None:
        self.client, self.uri, self._transient = client, uri, is_transient
        self.outage = outage or Outage(uri)
        self.errors: list[str] = []
        self.last_error: BaseException | None = None
        self._pending: dict[str, list[Any]] = {}  # run id -> metrics not yet sent, in order
        self._ready: deque[str] = deque()  # runs with pending metrics that no sender holds
        self._sending: set[str] = set()
        self._changed = threading.Condition()
        self._closed = False
        self._retry_at, self._backoff = 0.0, 0.5
        self._threads = [threading.Thread(target=self._send_loop, name=f"mlflow-metrics-{i}", daemon=True)
                         for i in range(senders)]
        for thread in self._threads:
            thread.start()

    def add(self, run_id: str, metrics: Sequence[Any]) -> None:
        if not metrics:
            return
        with self._changed:
            self._pending.setdefault(run_id, []).extend(metrics)
            if run_id not in self._sending and run_id not in self._ready:
                self._ready.append(run_id)
            self._changed.notify_all()

    def depth(self) -> int:
        """Metrics waiting to be sent (a sign of a server slower than the grid)."""
        with self._changed:
            return sum(len(m) for m in self._pending.values())

    def flush(self, run_id: str | None = None, timeout_s: float = 300.0) -> int:
        """Wait until `run_id`'s (default: every run's) metrics are sent or `timeout_s` passes; returns how
        many are still waiting."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while (left := self._left(run_id)) and (wait := deadline - time.monotonic()) > 0:
                self._changed.wait(min(wait, 0.5))
            return left

    def close(self, timeout_s: float = 300.0) -> int:
        """Deliver what is buffered (at most `timeout_s`), then stop the senders; returns what is left."""
        left = self.flush(None, timeout_s)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        return left

    def _left(self, run_id: str | None) -> int:
        runs = self._pending if run_id is None else {run_id: self._pending.get(run_id, [])}
        return sum(len(m) for m in runs.values()) + (
            len(self._sending) if run_id is None else int(run_id in self._sending))

    def _send_loop(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (not self._ready or time.monotonic() < self._retry_at):
                    self._changed.wait(max(0.05, min(1.0, self._retry_at - time.monotonic())))
                if self._closed:
                    return
                run_id = self._ready.popleft()
                batch = self._pending[run_id][:MAX_METRICS]
                del self._pending[run_id][:MAX_METRICS]
                self._sending.add(run_id)
            ok = self._send(run_id, batch)
            with self._changed:
                self._sending.discard(run_id)
                if not ok:  # back in front, in order, for the next round
                    self._pending[run_id][:0] = batch
                if self._pending.get(run_id):
                    self._ready.append(run_id)
                else:
                    self._pending.pop(run_id, None)
                self._changed.notify_all()

    def _send(self, run_id: str, batch: list[Any]) -> bool:
        """True when the batch is done with (written, or refused and recorded); False to retry it."""
        try:
            self.client.log_batch(run_id, metrics=batch, synchronous=True)
        except Exception as exc:  # noqa: BLE001 - sorted into transient (retry) and refused (record)
            if not self._transient(exc):
                self.errors.append(f"{len(batch)} metrics of run {run_id}: {redact(str(exc))}")
                log.error("MLflow at %s refused %d metrics of run %s: %s", self.uri, len(batch), run_id,
                          redact(str(exc)))
                return True
            with self._changed:
                self.last_error = exc
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 15.0)
            self.outage.failed("metrics", exc)
            return False
        with self._changed:
            self._backoff = 0.5
        self.outage.delivered("metrics")
        return True
