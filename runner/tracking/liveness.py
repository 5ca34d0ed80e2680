"""Is a `runner run` driver still alive? What `runner mlflow reconcile` asks before it ends a run.

The driver tags its parent run with where it runs (`runner.driver.host`, `.pid`, `.start`: the process's
start time in clock ticks, so a pid reused by another process does not count) and keeps
`runner.heartbeat` (unix seconds) fresh every HEARTBEAT_S from a daemon thread. A run is alive when
its driver's process is (same host), or when its heartbeat is younger than STALE_S (any host: the
driver may run on a cluster's head). Runs tracked before these tags existed have no verdict but "gone".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

HOST, PID, START, HEARTBEAT = "runner.driver.host", "runner.driver.pid", "runner.driver.start", "runner.heartbeat"
HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S  # three missed beats: a server outage of a minute does not kill a live run


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time since boot); None where there is no /proc or no process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def driver_tags() -> dict[str, str]:
    """Where this process runs, for the parent run it drives."""
    tags = {HOST: socket.gethostname(), PID: str(os.getpid()), HEARTBEAT: str(int(time.time()))}
    if (start := _start_ticks(os.getpid())) is not None:
        tags[START] = start
    return tags


def verdict(tags: Mapping[str, str], now: float | None = None, host: str | None = None) -> tuple[bool, str]:
    """(alive, why) for a parent run's tags."""
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    if tags.get(HOST) == host and tags.get(PID, "").isdigit():
        pid = int(tags[PID])
        start = _start_ticks(pid)
        alive = _exists(pid) and (start is None or tags.get(START) in (None, start))
        return alive, f"driver pid {pid} on {host} is {'running' if alive else 'gone'}"
    beat = tags.get(HEARTBEAT, "")
    if beat.isdigit():
        age = now - int(beat)
        alive = age < STALE_S
        return alive, f"driver on {tags.get(HOST, '?')}: last heartbeat {age:.0f} s ago" + (
            "" if alive else f" (gone after {STALE_S:.0f} s)")
    return False, "no driver tags (tracked before liveness was recorded)"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


class Heartbeat:
    """Refreshes `runner.heartbeat` on `run_id` every `interval_s` until `stop()`; a failed write is only
    logged (an outage must not stop the grid; three missed beats and reconcile may end the run)."""

    def __init__(self, client: Any, run_id: str, interval_s: float = HEARTBEAT_S) -> None:
        self._client, self._run_id, self._interval_s = client, run_id, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="runner-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._client.set_tag(self._run_id, HEARTBEAT, str(int(time.time())))
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                log.debug("heartbeat of run %s not written: %s", self._run_id, exc)

    def stop(self) -> None:
        self._stopped.set()
