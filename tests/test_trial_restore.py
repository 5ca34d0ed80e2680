"""A trial restored from its last epoch's checkpoint (it finished while a SIGKILLed driver was gone) has
nothing left to train: it must still report, or the resumed driver's table shows it with no epochs and the
epochs the dead driver never received stay missing from MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from runner import spec
from runner.core import checkpoint
from runner.tune import trial


def _history(epochs: int) -> list[dict]:
    return [{"epoch": e, "val_acc": e / 10, "train_loss": 1 / e, "worker_nodes": 1, "resumed_from": 0}
            for e in range(1, epochs + 1)]


def test_a_trial_restored_at_its_last_epoch_reports_that_epoch_with_its_whole_history() -> None:
    cfg = spec.trial_config({"train.epochs": 3})
    resume = {"epoch": 3, "model": {"w": 1}}
    history = _history(3)
    sent: list[tuple[dict, dict, list]] = []

    def send(metrics: dict, directory: str | None) -> None:
        sent.append((metrics, checkpoint.load(directory), json.loads((Path(directory) / trial.HISTORY).read_text())))

    report = trial._reporter(resume, history, nodes=1, rank=0, send=send)  # one list, as in both paths
    assert trial._reported_as_finished(cfg, resume, history, report)
    (metrics, state, written), = sent
    assert metrics["epoch"] == 3 and metrics["val_acc"] == 0.3 and metrics["resumed_from"] == 3
    assert [h["epoch"] for h in json.loads(metrics["history"])] == [1, 2, 3]  # the driver's backfill
    assert [h["epoch"] for h in written] == [1, 2, 3]  # history.json beside the checkpoint: no epoch twice
    assert state["epoch"] == 3


def test_a_trial_restored_before_its_last_epoch_trains_on() -> None:
    cfg = spec.trial_config({"train.epochs": 3})
    sent: list = []
    report = trial._reporter({"epoch": 2}, _history(2), nodes=1, rank=0, send=lambda m, d: sent.append(m))
    assert not trial._reported_as_finished(cfg, {"epoch": 2}, _history(2), report)
    assert not trial._reported_as_finished(cfg, None, [], report)
    assert not sent
