"""Tune callbacks that run in the driver process: live progress lines and the bridge to MLflow.

Both see what `TuneReportCallback` forwards from rank 0 (one result per epoch). They keep no state
that cannot be rebuilt: after `--resume` the tracker finds its runs again by their tags.
"""

from __future__ import annotations

import sys
import time

import pyarrow.fs
import ray.train
import ray.tune

from runner.report import format_epoch


class Progress(ray.tune.Callback):
    """One line per trial epoch, readable in a terminal and in `ray job logs` (no redraws)."""

    def __init__(self, stream=sys.stdout) -> None:  # noqa: ANN001 - any text stream
        self.stream = stream
        self.started: dict[str, float] = {}
        self.first_result_s: dict[str, float] = {}
        self.resumed: dict[str, int] = {}  # trial id -> epoch of the checkpoint its workers last restarted from

    def on_trial_start(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        self.started[trial.trial_id] = time.monotonic()
        self._say(trial, "started")

    def on_trial_result(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, result: dict,
                        **info) -> None:
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
        epochs = trial.config["trial"]["config"]["train"]["epochs"]
        self._say(trial, format_epoch(result, epochs))

    def on_trial_complete(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        self._say(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        self._say(trial, f"FAILED: {trial.error_file or 'see the Ray logs'}")

    def _say(self, trial: ray.tune.experiment.Trial, text: str) -> None:
        print(f"[{trial.config['trial']['name']}] {text}", file=self.stream, flush=True)


class Tracking(ray.tune.Callback):
    """Forwards each trial's life to `runner.tracking.tracker.Tracker`; the driver is MLflow's only writer."""

    def __init__(self, tracker, reported: dict[str, dict], tags: dict[str, dict],  # noqa: ANN001
                 storage: str) -> None:
        self.tracker = tracker  # a runner.tracking.tracker.Tracker
        self.reported, self.tags, self.storage = reported, tags, storage
        self.runs: dict[str, str] = {}
        self.best: dict[str, tuple[float, str | None]] = {}
        self.rows: dict[str, dict] = {}  # trial id -> results row, as the tracker summarised it

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into tuner.pkl beside the results (possibly on s3://): leave the open
        # MLflow client, its URI and queued writes out. A restored Tuner is handed fresh callbacks.
        return {**self.__dict__, "tracker": None}

    def _run_id(self, trial: ray.tune.experiment.Trial) -> str:
        if trial.trial_id not in self.runs:
            name = trial.config["trial"]["name"]
            self.runs[trial.trial_id] = self.tracker.start_trial(
                trial.trial_id, name, trial.config["trial"]["config"], reported=self.reported.get(name),
                tags=self.tags.get(name))
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, result: dict,
                        **info) -> None:
        if "epoch" not in result:
            return
        self.tracker.log_epoch(self._run_id(trial), result, step=int(result["epoch"]))
        best_acc, _ = self.best.get(trial.trial_id, (-1.0, None))
        if result.get("val_acc", -1.0) >= best_acc and result.get("checkpoint_path"):
            self.best[trial.trial_id] = (result["val_acc"], result["checkpoint_path"])

    def on_trial_complete(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        self._finish(trial, "FAILED")

    def _finish(self, trial: ray.tune.experiment.Trial, status: str) -> None:
        _, path = self.best.get(trial.trial_id, (None, None))
        if path is None:
            self.rows[trial.trial_id] = self.tracker.finish_trial(self._run_id(trial), status, None)
            return
        # Tune reports the path inside the storage filesystem (no scheme for s3://): fetch it locally.
        filesystem, _ = pyarrow.fs.FileSystem.from_uri(self.storage if "://" in self.storage else "file:///")
        with ray.train.Checkpoint(path, filesystem=filesystem).as_directory() as local:
            self.rows[trial.trial_id] = self.tracker.finish_trial(self._run_id(trial), status, local)

    def best_checkpoints(self) -> dict[str, str | None]:
        return {trial_id: path for trial_id, (_, path) in self.best.items()}
