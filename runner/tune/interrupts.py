"""Ctrl-C (SIGINT) and SIGTERM (`ray job stop`, a scheduler, `kill`) during `runner run`.

An interrupt stops the grid the way Tune stops it for its own Ctrl-C handler (no new trial starts,
running trials are stopped, the experiment state is saved so `--resume` can continue it) and then
lets `runner run` end honestly: unfinished trials KILLED, the results table written, nothing
registered, exit status 128 + the signal (130, 143).

    interrupts = Interrupts()
    with interrupts.installed():        # after ray.init: it installs its own SIGTERM handler
        with interrupts.tuning():
            grid = tuner.fit()
    if interrupts.signal: ...

Outside `tuning()` (or on a second signal) the handler raises `Interrupted`, a KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """An interrupt outside the grid; `signal` says which (the exit status is 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signum


class Interrupts:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._tuning = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or 0)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signal is None
        self.signal = self.signal or signum
        stop_tune = signal.getsignal(signal.SIGUSR1)
        # Tune's `tune.run` installs this SIGUSR1 handler while it runs (its "stop the experiment"
        # handler; we keep its SIGINT one off, TUNE_DISABLE_SIGINT_HANDLER): calling it ends the grid
        # after the current step, saves the experiment state and stops the trials.
        if first and self._tuning and callable(stop_tune):
            stop_tune(signal.SIGUSR1, frame)
            return
        raise Interrupted(self.signal)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        # Tune's own SIGINT handler would stop the grid as if it had finished (the runner then saw no
        # interrupt: trials FINISHED, the best registered, exit 0). It reads this when tune.run starts.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def tuning(self) -> Iterator[None]:
        self._tuning = True
        try:
            yield
        finally:
            self._tuning = False
