"""A 1-worker trial that Tune stops (ASHA) is told so one report late, while its next epoch trains. It must
leave that epoch before its next step: Tune then reuses its process for the next trial after waiting only
for that (tuner._reuse_actors); a trial that trained the epoch out would fail the reset, and the next trial
with it. Driven without a cluster: Tune's report is replaced by one that stops the trial as Tune does."""

from __future__ import annotations

import threading

import pytest
import ray.tune

from runner import spec
from runner.core import step as steps
from runner.core import train
from runner.tune import trial

STEPS_PER_EPOCH = 3000 // 4  # synthetic:4000 at val_fraction 0.25, batch 4: ~1-3 s an epoch


def test_a_stop_during_an_epoch_ends_the_trial_before_its_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = spec.trial_config({"data.path": "synthetic:4000", "data.val_fraction": 0.25, "model.name": "wrn_std",
                             "model.depth": 10, "model.width": 1, "train.epochs": 20, "train.batch_size": 4,
                             "scaling.cpus_per_worker": 1})
    reported: list[int] = []
    stepped = {"total": 0, "at_stop": None}
    stop_told = threading.Event()
    real_step = steps.step

    def counting_step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        stepped["total"] += 1
        return real_step(*args, **kwargs)

    def report(metrics: dict, checkpoint: ray.tune.Checkpoint) -> None:
        reported.append(metrics["epoch"])
        stepped["at_stop"] = stepped["total"]
        stop_told.set()
        raise SystemExit(0)  # what Tune's report raises in a trial it has stopped

    monkeypatch.setattr(steps, "step", counting_step)
    monkeypatch.setattr(ray.tune, "report", report)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    with pytest.raises(SystemExit):
        trial._train_in_process(cfg)
    assert stop_told.is_set() and reported == [1]
    after_stop = stepped["total"] - stepped["at_stop"]
    # Without the check before each step, epoch 2 trains to its end (750 steps) and the trial ends at its
    # report; with it, none or a few (the report runs on another thread). Half an epoch leaves a loaded
    # machine ~1 s to schedule that thread.
    assert stepped["at_stop"] >= STEPS_PER_EPOCH and after_stop < STEPS_PER_EPOCH // 2, stepped


def test_fit_raises_stopped_before_the_step_after_should_stop_turns_true() -> None:
    from runner import data

    cfg = spec.trial_config({"data.path": "synthetic:400", "data.val_fraction": 0.25, "model.name": "wrn_std",
                             "model.depth": 10, "model.width": 1, "train.epochs": 3, "train.batch_size": 32})
    meta, train_split, val_split = data.load_trial_data(cfg["data"], 0, 0, 1)
    asked = {"n": 0}

    def should_stop() -> bool:
        asked["n"] += 1
        return asked["n"] > 5

    with pytest.raises(train.Stopped):
        train.fit(cfg, train_split, val_split, meta.classes, should_stop=should_stop)
    assert asked["n"] == 6  # asked before each step; the sixth answer stops it
