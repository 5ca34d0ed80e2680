"""Can the driver's one MLflow writer keep up with a cluster? N concurrent trials at one epoch per second each.

Feeds the driver-side tracking (`runner.tune.callbacks.Tracking` around `runner.tracking.tracker.Tracker`,
the objects `runner run` uses) with synthetic per-epoch results, from this thread as Tune's event loop
would call them, against a real `mlflow server` on 127.0.0.1 with its default database. The trials are
stand-ins holding what the callback reads (`trial_id`, `config`); everything after the callback is real.
Prints results/s delivered, the queue depth, and the lag from the moment a result was due to the moment
its metrics were written (the writer's `log_batch` returned); then checks MLflow: nothing dropped.

    python bench/tracking_load.py                        # 400 trials, 60 s of epochs
    python bench/tracking_load.py --trials 100 --seconds 30
    python bench/tracking_load.py --quick                # 20 trials, 8 s (a smoke run)
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

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import Server  # noqa: E402

from runner import spec  # noqa: E402
from runner.tracking.tracker import Tracker  # noqa: E402
from runner.tune.callbacks import Tracking  # noqa: E402


class StandInTrial:
    """What `callbacks.Tracking` reads of a Tune trial."""

    def __init__(self, index: int, config: dict) -> None:
        self.trial_id = f"t{index:05d}"
        self.config = {"trial": {"name": f"trial-{index}", "config": config}}


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


def depth(tracker: Tracker) -> int:
    """Writes waiting in the tracker's queue (whatever its shape: a deque of pending writes, a thread's queue)."""
    queue = tracker._queue
    pending = getattr(queue, "pending", ())
    inner = getattr(queue, "_calls", None) or getattr(queue, "calls", None)
    return len(pending) + (inner.qsize() if hasattr(inner, "qsize") else 0)


def run(trials: int, seconds: float, uri: str) -> dict:
    config = spec.trial_config({"data.path": "synthetic:200", "model.name": "wrn", "model.depth": 10,
                                "model.width": 1})
    tracker = Tracker("tracking-load", uri, outage_timeout_s=600)
    timed = Timed(tracker.client)
    tracker.start_parent()
    callback = Tracking(tracker, {}, {}, storage=tempfile.gettempdir())
    stand_ins = [StandInTrial(i, config) for i in range(trials)]
    started = time.monotonic()
    for trial in stand_ins:
        callback.on_trial_start(0, stand_ins, trial)
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
            due[(callback.runs[trial.trial_id], epoch)] = when
            callback.on_trial_result(epoch, stand_ins, trial, result)
        depths.append(depth(tracker))
    fed_s = time.monotonic() - begin
    left = tracker.flush(timeout_s=600)
    drained_s = time.monotonic() - begin
    lags = [timed.written[key] - when for key, when in due.items() if key in timed.written]
    ended = time.monotonic()
    for trial in stand_ins:
        callback.on_trial_complete(epoch, stand_ins, trial)
    tracker.finish_parent()
    tracker.close()
    finish_s = time.monotonic() - ended
    history = {run_id: {m.step for m in tracker.client.get_metric_history(run_id, "val_acc")}
               for run_id in callback.runs.values()}
    dropped = sum(1 for (run_id, step) in due if step not in history[run_id])
    return {"results": len(due), "fed_s": fed_s, "drained_s": drained_s, "lags": lags, "depths": depths,
            "dropped": dropped, "unsent": left, "start_s": start_s, "finish_s": finish_s, "epochs": epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of epochs fed (one per trial per s)")
    parser.add_argument("--workers", type=int, help="mlflow server --workers (default: the server's own)")
    parser.add_argument("--quick", action="store_true", help="20 trials, 8 s")
    args = parser.parse_args()
    trials, seconds = (20, 8.0) if args.quick else (args.trials, args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, Server(Path(tmp), workers=args.workers) as server:
        got = run(trials, seconds, server.uri)
    lags = sorted(got["lags"]) or [float("nan")]
    p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
    print(f"{trials} trials x {got['epochs']} epochs at 1 epoch/s each; {got['results']} results")
    print(f"trial starts (create run, params, config, data set): {got['start_s']:.1f} s; "
          f"trial ends (summary, plots, end): {got['finish_s']:.1f} s")
    print(f"fed in {got['fed_s']:.1f} s (due: {seconds:.0f} s); all written after {got['drained_s']:.1f} s")
    print(f"results/s written: {got['results'] / got['drained_s']:.0f} (offered {trials}/s)")
    print(f"lag due -> written: median {statistics.median(lags):.2f} s, p95 {p95:.2f} s, max {lags[-1]:.2f} s")
    print(f"queue depth (writes waiting, sampled each second): max {max(got['depths'], default=0)}, "
          f"last {got['depths'][-1] if got['depths'] else 0}")
    print(f"dropped: {got['dropped']} of {got['results']} (unsent at flush: {got['unsent']})")
    print(f"ratio results/s written / offered {got['results'] / got['drained_s'] / trials:.2f}")


if __name__ == "__main__":
    main()
