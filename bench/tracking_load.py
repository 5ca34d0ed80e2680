"""Can the driver's one MLflow writer keep up with a cluster? N concurrent trials at one epoch per second each.

Feeds the driver-side tracking (`runner.tune.callbacks.Tracking` around `runner.tracking.tracker.Tracker`,
the objects `runner run` uses) with synthetic per-epoch results, from this thread as Tune's event loop
would call them, against a real `mlflow server` on 127.0.0.1 with its default database. The trials are
stand-ins holding what the callback reads (`trial_id`, `config`); everything after the callback is real.
Prints results/s delivered, the backlog, and the lag from the moment a result was due to the moment its
metrics were written (the writer's `log_batch` returned); then checks MLflow: nothing dropped. Runs
both writers, each against a fresh server: before (one request per result, in the caller's thread) and
after (the tracker's `MetricBatcher`: per-run batches, sender threads).

    python bench/tracking_load.py                        # 400 trials, 30 s of epochs, both writers
    python bench/tracking_load.py --trials 200 --writer after
    python bench/tracking_load.py --quick                # 10 trials, 3 s (a smoke run)
Goal (issue 12): 400 trials with lag < 5 s and nothing dropped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import Server  # noqa: E402

from runner import spec  # noqa: E402
from runner.tracking.batching import MetricBatcher  # noqa: E402
from runner.tracking.connection import is_transient  # noqa: E402
from runner.tracking.tracker import Tracker  # noqa: E402
from runner.tune.callbacks import Tracking  # noqa: E402


class StandInTrial:
    """What `callbacks.Tracking` reads of a Tune trial: its id, config, last result, kept checkpoints (none)."""

    def __init__(self, index: int, config: dict) -> None:
        self.trial_id = f"t{index:05d}"
        self.config = {"trial": {"name": f"trial-{index}", "config": config}}
        self.last_result: dict = {}
        self.run_metadata = SimpleNamespace(checkpoint_manager=SimpleNamespace(best_checkpoint_results=[]))


class Timed:
    """Wraps the tracker's client's `log_batch`: when did each (run, step) of metrics reach the server."""

    def __init__(self, client: object) -> None:
        self._log_batch = client.log_batch
        self.written: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        client.log_batch = self

    def __call__(self, run_id: str, metrics: list | tuple = (), *args: object, **kwargs: object) -> object:
        out = self._log_batch(run_id, metrics, *args, **kwargs)
        now = time.monotonic()
        with self._lock:
            for metric in metrics or ():
                self.written.setdefault((run_id, metric.step), now)
        return out


class Inline:
    """The writer before batching: each result's metrics sent at once, one request, in the caller's thread
    (what `Tracker.log_epoch` did through its write queue). Stands in for the tracker's `MetricBatcher`."""

    last_error = None

    def __init__(self, client: object) -> None:
        self.client, self.errors = client, []

    def add(self, run_id: str, metrics: list) -> None:
        self.client.log_batch(run_id, metrics=metrics, synchronous=True)

    def depth(self) -> int:
        return 0

    def flush(self, run_id: str | None = None, timeout_s: float = 0.0) -> int:
        return 0

    close = flush


def depth(tracker: Tracker, callback: Tracking) -> int:
    """Calls, writes and metrics waiting: in the bridge's thread (if it has one) and in the tracker."""
    bridge = getattr(callback, "writer", None)
    waiting = bridge._calls.qsize() if bridge is not None else 0
    backlog = getattr(tracker, "backlog", None)
    return waiting + (backlog() if backlog else len(tracker._queue.pending))


def settle(tracker: Tracker, callback: Tracking, timeout_s: float = 900.0) -> int:
    """Wait until the bridge's thread (if any) and the tracker have delivered everything; what is left."""
    deadline = time.monotonic() + timeout_s
    bridge = getattr(callback, "writer", None)
    if bridge is not None:
        bridge.drain(timeout_s)
    return tracker.flush(timeout_s=max(0.0, deadline - time.monotonic()))


def run(trials: int, seconds: float, uri: str, writer: str, senders: int | None = None) -> dict:
    config = spec.trial_config({"data.path": "synthetic:200", "model.name": "wrn", "model.depth": 10,
                                "model.width": 1})
    tracker = Tracker("tracking-load", uri, outage_timeout_s=600)
    timed = Timed(tracker.client)
    if writer == "before":
        tracker._metrics = Inline(tracker.client)
    elif senders is not None:  # the batcher the tracker would make, with another number of sender threads
        tracker._metrics = MetricBatcher(tracker.client, is_transient, uri=tracker.uri, senders=senders)
    tracker.start_parent()
    callback = Tracking(tracker, {}, {}, storage=tempfile.gettempdir())
    stand_ins = [StandInTrial(i, config) for i in range(trials)]
    started = time.monotonic()
    for trial in stand_ins:
        callback.on_trial_start(0, stand_ins, trial)
    settle(tracker, callback)
    start_s = time.monotonic() - started
    due: dict[tuple[str, int], float] = {}
    depths, epoch = [], 0
    begin = time.monotonic()
    while time.monotonic() - begin < seconds:
        epoch += 1
        tick = begin + (epoch - 1)  # every trial reports epoch e at second e-1, spread over that second
        for i, trial in enumerate(stand_ins):
            when = tick + i / trials
            if (wait := when - time.monotonic()) > 0:
                time.sleep(wait)
            result = {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": 0.5, "val_loss": 1.1 / epoch,
                      "val_acc": 0.4 + epoch * 1e-4, "lr": 0.1, "epoch_s": 1.0, "images_per_s": 50_000.0,
                      "training_iteration": epoch}
            due[(trial.trial_id, epoch)] = when
            trial.last_result = result
            callback.on_trial_result(epoch, stand_ins, trial, result)
        depths.append(depth(tracker, callback))
    fed_s = time.monotonic() - begin
    left = settle(tracker, callback)
    drained_s = time.monotonic() - begin
    runs = dict(callback.runs)  # trial id -> run id (filled in on the bridge's thread, if it has one)
    lags = [timed.written[(runs[tid], step)] - when for (tid, step), when in due.items()
            if (runs.get(tid), step) in timed.written]
    ended = time.monotonic()
    for trial in stand_ins:
        callback.on_trial_complete(epoch, stand_ins, trial)
    settle(tracker, callback)
    tracker.finish_parent()
    tracker.close()
    finish_s = time.monotonic() - ended
    history = {run_id: {m.step for m in tracker.client.get_metric_history(run_id, "val_acc")}
               for run_id in runs.values()}
    dropped = sum(1 for (tid, step) in due if tid not in runs or step not in history[runs[tid]])
    return {"results": len(due), "fed_s": fed_s, "drained_s": drained_s, "lags": lags, "depths": depths,
            "dropped": dropped, "unsent": left, "start_s": start_s, "finish_s": finish_s, "epochs": epoch}


def report(name: str, trials: int, seconds: float, got: dict) -> float:
    """Prints one side's figures; returns its results/s written."""
    lags = sorted(got["lags"]) or [float("nan")]
    p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
    rate = got["results"] / got["drained_s"]
    print(f"[{name}] {trials} trials x {got['epochs']} epochs at 1 epoch/s each; {got['results']} results")
    print(f"[{name}] trial starts (create run, params, config, data set): {got['start_s']:.1f} s; "
          f"trial ends (summary, plots, end): {got['finish_s']:.1f} s")
    print(f"[{name}] fed in {got['fed_s']:.1f} s (due: {seconds:.0f} s); all written after {got['drained_s']:.1f} s")
    print(f"[{name}] results/s written: {rate:.0f} (offered {trials}/s)")
    print(f"[{name}] lag due -> written: median {statistics.median(lags):.2f} s, p95 {p95:.2f} s, "
          f"max {lags[-1]:.2f} s")
    print(f"[{name}] backlog (metrics and writes waiting, sampled each second): max {max(got['depths'], default=0)}, "
          f"at the end of feeding {got['depths'][-1] if got['depths'] else 0}")
    print(f"[{name}] dropped: {got['dropped']} of {got['results']} (unsent at flush: {got['unsent']})")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of epochs fed (one per trial per s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="mlflow server --workers (1, as the cluster runs it; the server's own default is 4)")
    parser.add_argument("--senders", type=int, help="metric sender threads (default: the tracker's)")
    parser.add_argument("--writer", choices=["both", "before", "after"], default="both",
                        help="before: one request per result in the caller's thread; after: the tracker's batcher")
    parser.add_argument("--quick", action="store_true", help="10 trials, 3 s")
    args = parser.parse_args()
    trials, seconds = (10, 3.0) if args.quick else (args.trials, args.seconds)
    rates = {}
    for writer in (["before", "after"] if args.writer == "both" else [args.writer]):
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, Server(Path(tmp), args.workers) as server:
            rates[writer] = report(writer, trials, seconds, run(trials, seconds, server.uri, writer, args.senders))
    if len(rates) == 2:
        print(f"ratio results/s written after / before {rates['after'] / rates['before']:.2f}")
    else:
        (writer, rate), = rates.items()
        print(f"ratio results/s written / offered ({writer}) {rate / trials:.2f}")


if __name__ == "__main__":
    main()
