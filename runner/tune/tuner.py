"""The Tune grid: one trial per resolved row, with the concurrency the resource check allows.

`run_tuner(...)` builds the `Tuner` (or, with `restore`, resumes one from its storage folder).
"""

from __future__ import annotations

import os
import re

import ray.tune
from ray.tune.schedulers import ASHAScheduler

from runner import resources
from runner.spec import Trial
from runner.tune.search import BudgetGate
from runner.tune.trial import METRIC, MODE, run_trial, trial_resources


class PerTrialSettings(ray.tune.Callback):
    """`max_failures` and `checkpoint.keep` are trial config fields, but Tune takes them once per Tuner.
    Set them on each trial as it starts. Only 1-worker trials use Tune's: a DDP trial's restarts and
    checkpoints are its TorchTrainer's (a lost trial process is a lost trial, docs/errors.md)."""

    def on_trial_start(self, iteration: int, trials: list, trial: ray.tune.experiment.Trial, **info) -> None:
        cfg = trial.config["trial"]["config"]
        trial.max_failures = cfg["max_failures"] if resources.trains_in_process(cfg["scaling"]["workers"]) else 0
        # No public setter in Ray 2.60; the manager reads this on every checkpoint it registers.
        trial.run_metadata.checkpoint_manager._checkpoint_config = _checkpoint_config(cfg["checkpoint"]["keep"])


def run_tuner(trials: list[Trial], *, experiment: str, storage: str, max_concurrent: int,
              scheduler: str | None, callbacks: list, restore: bool = False,
              driver_resource: str | None = None, search: BudgetGate | None = None) -> ray.tune.ResultGrid:
    """Run (or, with `restore`, resume) the grid; one trial per resolved row, or with `search` one per
    sample the budget gate lets through (runner/tune/search.py)."""
    # Tune warns each time retention forces a state snapshot, i.e. every few epochs of a short-epoch grid
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = ray.tune.with_resources(run_trial, trial_resources)
    callbacks = [PerTrialSettings(), *callbacks]
    path = storage_join(storage, experiment)
    if restore:
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # Tune brings back the callbacks pickled into tuner.pkl by the first attempt, not this invocation's
        # (Tuner.restore takes none): without this the MLflow bridge and progress lines see no result.
        # No public API for it in Ray 2.60 (ray-project/ray#41364 uses the same attribute).
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner.fit()
    param_space = {
        "train_storage": storage_join(storage, experiment, "train"),
        "driver_resource": driver_resource,
    }
    if search is None:
        param_space["trial"] = ray.tune.grid_search([{"name": t.name, "config": t.config} for t in trials])
        sampling = {"metric": METRIC, "mode": MODE}
    else:  # the gate suggests {"trial": ...}; it says FINISHED after num_samples draws
        sampling = {"metric": search.found.metric, "mode": search.found.mode, "search_alg": search,
                    "num_samples": -1}
        trials = [Trial(name="base", config=search.found.base())]  # the shape every sample shares
    in_process = [t for t in trials if resources.trains_in_process(t.config["scaling"]["workers"])]
    tuner = ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(**sampling, max_concurrent_trials=max_concurrent,
                                        scheduler=_scheduler(scheduler, trials),
                                        trial_name_creator=_trial_label,
                                        trial_dirname_creator=_trial_dirname,
                                        reuse_actors=_reuse_actors(scheduler, len(in_process) == len(trials))),
        run_config=ray.tune.RunConfig(
            name=experiment, storage_path=storage, callbacks=callbacks, verbose=0,
            # per-trial values are set by PerTrialSettings; these are what a trial starts with
            checkpoint_config=_checkpoint_config(max((t.config["checkpoint"]["keep"] for t in trials), default=1)),
            failure_config=ray.tune.FailureConfig(
                max_failures=max((t.config["max_failures"] for t in in_process), default=0))),
    )
    return tuner.fit()


def _checkpoint_config(keep: int) -> ray.tune.CheckpointConfig:
    return ray.tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=METRIC,
                                     checkpoint_score_order=MODE)


def _reuse_actors(scheduler: str | None, every_trial_in_process: bool) -> bool:
    """Reuse a finished or stopped trial's process for the next trial of the same shape: it skips a process
    start and the imports (seconds per trial, and a CUDA context on a GPU). Tune resets a reused process by
    waiting TUNE_FUNCTION_THREAD_TIMEOUT_S for the old trial's function to return, and a reset that fails
    fails the next trial. A trial that runs to its end has returned; one a scheduler stops is still in the
    epoch after the report it was stopped on: a 1-worker trial leaves it before its next step
    (`train.fit(should_stop=...)`, runner/tune/trial.py), a DDP trial is inside `TorchTrainer.fit()`, which
    nothing ends in time. So: always under FIFO, under ASHA only when every trial trains in process."""
    return scheduler in (None, "fifo") or every_trial_in_process


def _scheduler(name: str | None, trials: list[Trial]) -> ASHAScheduler | None:
    if name in (None, "fifo"):
        return None
    if name == "asha":
        longest = max(t.config["train"]["epochs"] for t in trials)
        return ASHAScheduler(time_attr="epoch", max_t=longest, grace_period=1, reduction_factor=2)
    raise ValueError(f"--scheduler {name!r}: use fifo or asha")


def _trial_label(trial: ray.tune.experiment.Trial) -> str:
    return trial.config["trial"]["name"]


def _trial_dirname(trial: ray.tune.experiment.Trial) -> str:
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", trial.config["trial"]["name"])[:60]
    return f"{trial.trial_id}-{label}"


def storage_join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])
