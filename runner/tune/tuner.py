"""The Tune grid: one trial per resolved row, with the concurrency the resource check allows.

`run_tuner(...)` builds the `Tuner` (or, with `restore`, resumes one from its storage folder).
"""

from __future__ import annotations

import re

import ray.tune

from runner.spec import Trial
from runner.tune.trial import METRIC, MODE, trial_driver, trial_resources


def run_tuner(trials: list[Trial], *, experiment: str, storage: str, max_concurrent: int,
              scheduler: str | None, callbacks: list, restore: bool = False) -> ray.tune.ResultGrid:
    """Run (or, with `restore`, resume) the grid; one trial per resolved row."""
    trainable = ray.tune.with_resources(trial_driver, trial_resources)
    path = storage_join(storage, experiment)
    if restore:
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # Tune brings back the callbacks pickled into tuner.pkl by the first attempt, not this invocation's
        # (Tuner.restore takes none): without this the MLflow bridge and progress lines see no result.
        # No public API for it in Ray 2.60 (ray-project/ray#41364 uses the same attribute).
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner.fit()
    param_space = {
        "trial": ray.tune.grid_search([{"name": t.name, "config": t.config} for t in trials]),
        "train_storage": storage_join(storage, experiment, "train"),
    }
    tuner = ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=max_concurrent,
                                        scheduler=_scheduler(scheduler, trials),
                                        trial_name_creator=_trial_label,
                                        trial_dirname_creator=_trial_dirname,
                                        reuse_actors=True),  # trial drivers are plain functions: reusable
        run_config=ray.tune.RunConfig(name=experiment, storage_path=storage, callbacks=callbacks, verbose=0),
    )
    return tuner.fit()


def _scheduler(name: str | None, trials: list[Trial]):  # noqa: ANN202 - Tune scheduler classes vary
    if name in (None, "fifo"):
        return None
    if name == "asha":
        longest = max(t.config["train"]["epochs"] for t in trials)
        return ray.tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=longest, grace_period=1,
                                                 reduction_factor=2)
    raise ValueError(f"--scheduler {name!r}: use fifo or asha")


def _trial_label(trial: ray.tune.experiment.Trial) -> str:
    return trial.config["trial"]["name"]


def _trial_dirname(trial: ray.tune.experiment.Trial) -> str:
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", trial.config["trial"]["name"])[:60]
    return f"{trial.trial_id}-{label}"


def storage_join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])
