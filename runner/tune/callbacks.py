"""Tune callbacks that run in the driver process: live progress lines and the bridge to MLflow.

Both see one result per trial epoch, from either trial path (`runner.tune.trial`). A trial ends
FINISHED, STOPPED (a scheduler such as ASHA ended it early: by design, never a failure), FAILED, or
KILLED (the run was interrupted: `Tracking.end`). The bridge never makes Tune wait on MLflow: every
tracker call runs, in order, on its own thread (`runner.tracking.queue.Background`), so an outage
at any moment, a refused connection or a server that never answers, delays no trial.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import pyarrow.fs
import ray.train
import ray.tune

from runner import cost, resources
from runner.report import format_epoch
from runner.tracking.queue import Background
from runner.tracking.summary import SUMMARY, best_epoch

Trial = ray.tune.experiment.Trial


def epochs_of(trial: Trial) -> int:
    return trial.config["trial"]["config"]["train"]["epochs"]


def status_after(epoch: int, epochs: int) -> str:
    """An ended trial's status: FINISHED, or STOPPED when Tune ended it (a scheduler's decision) before its
    last epoch."""
    return "FINISHED" if epoch >= epochs else "STOPPED"


def ended_status(trial: Trial) -> str:
    return status_after((trial.last_result or {}).get("epoch") or 0, epochs_of(trial))


def backfilled(result: dict) -> list[dict]:
    """The epochs a restarted trial read from its checkpoint's history.json (see runner.tune.trial)."""
    return json.loads(result["history"]) if result.get("history") else []


class Progress(ray.tune.Callback):
    """One line per trial epoch, readable in a terminal and in `ray job logs` (no redraws)."""

    def __init__(self, stream=sys.stdout) -> None:  # noqa: ANN001 - any text stream
        self.stream = stream
        self.started: dict[str, float] = {}
        self.first_result_s: dict[str, float] = {}
        self.resumed: dict[str, int] = {}  # trial id -> epoch of the checkpoint it last restarted from
        self.shown: set[tuple[str, int]] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self.started[trial.trial_id] = time.monotonic()
        self._say(trial, "started")

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info) -> None:
        if "epoch" not in result:
            return
        if trial.trial_id not in self.first_result_s and trial.trial_id in self.started:
            # start latency = trial start -> end of the first epoch, less that epoch's own compute
            elapsed = time.monotonic() - self.started[trial.trial_id]
            self.first_result_s[trial.trial_id] = max(0.0, elapsed - result.get("epoch_s", 0.0))
        resumed = int(result.get("resumed_from") or 0)
        if resumed and self.resumed.get(trial.trial_id) != resumed:  # a node loss or `--resume` restarted it
            self.resumed[trial.trial_id] = resumed
            self._say(trial, f"resumed from its epoch-{resumed} checkpoint")
        for earlier in backfilled(result):  # epochs this driver never saw (it was killed meanwhile)
            self._epoch(trial, earlier, " (from its checkpoint's history)")
        self._epoch(trial, result)

    def _epoch(self, trial: Trial, metrics: dict, note: str = "") -> None:
        key = (trial.trial_id, int(metrics["epoch"]))
        if key not in self.shown or not note:
            self.shown.add(key)
            self._say(trial, format_epoch(metrics, epochs_of(trial)) + note)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        if ended_status(trial) == "FINISHED":
            self._say(trial, "finished")
        else:
            last = (trial.last_result or {}).get("epoch") or 0
            self._say(trial, f"stopped early by the scheduler after epoch {last}/{epochs_of(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._say(trial, f"FAILED: {trial.error_file or 'see the Ray logs'}")

    def _say(self, trial: Trial, text: str) -> None:
        print(f"[{trial.config['trial']['name']}] {text}", file=self.stream, flush=True)


class Tracking(ray.tune.Callback):
    """Forwards each trial's life to `runner.tracking.tracker.Tracker` (the driver is MLflow's only
    writer) through one background thread, and keeps the driver's own record of every trial (its
    epochs and status) for the results table, which therefore never depends on MLflow."""

    def __init__(self, tracker, reported: dict[str, dict], budgets: dict[str, dict],  # noqa: ANN001
                 storage: str) -> None:
        self.tracker = tracker  # a runner.tracking.tracker.Tracker, used only on the writer thread
        self.reported, self.budgets, self.storage = reported, budgets, storage
        self.writer = Background("mlflow-bridge")
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id (filled in by the writer thread)
        self.records: dict[str, dict] = {}  # trial id -> {name, config, history, status, trial}
        self.best: dict[str, tuple[float, str]] = {}  # DDP trials: (val_acc, checkpoint_path) so far

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into tuner.pkl beside the results (possibly on s3://): leave the
        # MLflow client, its URI, the thread and queued writes out. A restored Tuner gets fresh callbacks.
        return {"reported": self.reported, "budgets": self.budgets, "storage": self.storage, "tracker": None,
                "writer": None, "runs": {}, "records": {}, "best": {}}

    def _record(self, trial: Trial) -> dict:
        if trial.trial_id not in self.records:
            name, config = trial.config["trial"]["name"], trial.config["trial"]["config"]
            self.records[trial.trial_id] = {"name": name, "config": config, "history": {}, "status": "RUNNING",
                                            "started": time.monotonic(), "cost": {}}
            tags = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in self.budgets.get(name, {}).items()}

            def start(tid: str = trial.trial_id) -> None:
                self.runs[tid] = self.tracker.start_trial(tid, name, config, reported=self.reported.get(name),
                                                          tags=tags)
            self.writer.submit(f"start the run of {name}", start)
        self.records[trial.trial_id]["trial"] = trial
        return self.records[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._record(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info) -> None:
        if "epoch" not in result:
            return
        record = self._record(trial)
        for earlier in backfilled(result):  # --resume after a killed driver: fill in what MLflow lacks
            self._log_epoch(trial.trial_id, record, earlier)
        self._log_epoch(trial.trial_id, record, result)
        best_acc, _ = self.best.get(trial.trial_id, (-1.0, ""))
        if result.get("val_acc", -1.0) >= best_acc and result.get("checkpoint_path"):
            self.best[trial.trial_id] = (result["val_acc"], result["checkpoint_path"])

    def _log_epoch(self, trial_id: str, record: dict, metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        record["history"].setdefault(epoch, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self.writer.submit(f"metrics of {record['name']} at epoch {epoch}", lambda: self._with_run(
            trial_id, lambda run: self.tracker.log_epoch(run, metrics, step=epoch)))

    def _with_run(self, trial_id: str, fn: Callable[[str], object]) -> None:
        if trial_id in self.runs:  # else its run was never created (reported already): nothing to add to
            fn(self.runs[trial_id])

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._finish(trial.trial_id, ended_status(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._finish(trial.trial_id, "FAILED")

    def _finish(self, trial_id: str, status: str) -> None:
        record = self.records.get(trial_id)
        if record is None or record["status"] != "RUNNING":
            return
        record["status"] = status
        need = resources.need_of(record["name"], record["config"]["scaling"])
        record["cost"] = cost.trial_cost(need, time.monotonic() - record["started"],
                                         [m.get("images_per_s", float("nan")) for m in record["history"].values()])
        # An interrupted trial's run ends with its metrics only: the interrupt must end fast (`ray job stop`
        # SIGKILLs seconds later), and `--resume` finishes the trial and logs its checkpoint then.
        locate = (lambda: None) if status == "KILLED" else self._best_checkpoint(record["trial"])
        self.writer.submit(f"end the run of {record['name']}", lambda: self._with_run(
            trial_id, lambda run: self._finish_run(run, status, locate, record["cost"])))

    def _finish_run(self, run: str, status: str, locate: Callable[[], ray.train.Checkpoint | None],
                    costs: dict | None = None) -> None:
        """`costs`: what this driver measured of the trial; None for a trial it never saw run (`settle`)."""
        found = locate()
        if found is None:
            self.tracker.finish_trial(run, status, None, costs=costs)
            return
        # a local path, or a download from s3:// (on this thread, so Tune does not wait for it)
        with found.as_directory() as local:
            self.tracker.finish_trial(run, status, local, costs=costs)

    def _best_checkpoint(self, trial: Trial) -> Callable[[], ray.train.Checkpoint | None]:
        """The trial's best checkpoint by val accuracy: Tune's own record for a 1-worker trial; for a DDP
        trial the best `checkpoint_path` its results carried (a path in the storage filesystem)."""
        if resources.trains_in_process(trial.config["trial"]["config"]["scaling"]["workers"]):
            kept = trial.run_metadata.checkpoint_manager.best_checkpoint_results  # ascending by score
            best = kept[-1].checkpoint if kept else None
            return lambda: best
        _, path = self.best.get(trial.trial_id, (None, None))
        best = self._stored(path)
        return lambda: best

    def _stored(self, path: str | None) -> ray.train.Checkpoint | None:
        """A `checkpoint_path` from a DDP trial's results: a path inside the storage filesystem (no scheme
        for s3://)."""
        if path is None:
            return None
        filesystem, _ = pyarrow.fs.FileSystem.from_uri(self.storage if "://" in self.storage else "file:///")
        return ray.train.Checkpoint(path, filesystem=filesystem)

    def settle(self, result: ray.tune.Result, status: str) -> None:
        """A trial that ended in an earlier attempt of a resumed run whose driver was killed before it had
        ended the trial's MLflow run (the bridge writes in the background): end it now, with its best
        checkpoint, unless it is already ended."""
        name, config = result.config["trial"]["name"], result.config["trial"]["config"]
        trial_id = result.metrics.get("trial_id")
        kept = sorted(result.best_checkpoints or [], key=lambda pair: pair[1].get("val_acc", -1.0))
        best = kept[-1][0] if kept else self._stored(result.metrics.get("checkpoint_path"))

        def settle() -> None:
            found = self.tracker.trial_run(trial_id)
            if found is None or found[1] != "RUNNING":
                return
            run = self.tracker.start_trial(trial_id, name, config, reported=self.reported.get(name))
            self._finish_run(run, status, lambda: best)
        if trial_id:
            self.writer.submit(f"end the run of {name} (from an earlier attempt)", settle)

    def end(self, status: str) -> None:
        """End every trial still running with `status` (KILLED: the run was interrupted)."""
        for trial_id, record in self.records.items():
            if record["status"] == "RUNNING":
                self._finish(trial_id, status)

    def rows(self) -> list[dict]:
        """The driver's own results rows (see runner.report), one per trial it saw."""
        rows = []
        for trial_id, record in self.records.items():
            history = record["history"]
            best = best_epoch(history)
            summary = history.get(best, {}) if best is not None else {}
            budget = self.budgets.get(record["name"], {})
            rows.append({"trial": record["name"], "trial_id": trial_id, "run_id": self.runs.get(trial_id),
                         "status": record["status"], "model": record["config"]["model"]["name"],
                         "params": budget.get("params"), "within_budget": budget.get("within_budget"),
                         "epochs": max(history) if history else None, "best_epoch": best,
                         **{k: summary.get(k) for k in SUMMARY}, **record["cost"],
                         "reported": dict(self.reported.get(record["name"]) or {})})
        return rows
