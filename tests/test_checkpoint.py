"""runner/core/checkpoint.py: checkpoints hold only tensors and plain values, and every load is weights-only,
so a pickle planted in shared storage (or in a registered model) is refused without running.

The payload writes a marker file when unpickled; each way the runner loads a checkpoint or a model is
fed the payload, must fail with a message, and must leave no marker.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from runner import cli, data, spec
from runner.core import checkpoint, train
from runner.core.checkpoint import CheckpointError


class Payload:
    """Unpickling this runs `open(marker, "w")`: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def plant(folder: Path, marker: Path) -> Path:
    """A state.pt that looks like a checkpoint but carries the payload."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "classes": ["a"], "mean": [0.5] * 3, "std": [0.2] * 3, "epoch": 1,
                "config": {"model": {"name": "wrn"}}, "extra": Payload(marker)}, folder / checkpoint.FILE)
    return folder


def test_a_planted_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = plant(tmp_path / "ck", marker)
    with pytest.raises(CheckpointError, match=r"holds more than tensors and plain values, so it was not loaded"):
        checkpoint.load(folder)
    assert not marker.exists()
    torch.load(folder / checkpoint.FILE, weights_only=False)  # the control: an unsafe load does run it
    assert marker.read_text() == "pwned"


def test_every_command_that_loads_a_checkpoint_refuses_the_payload(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    folder = plant(tmp_path / "ck", marker)
    commands = (["submit", "--model", str(folder), "--data", "synthetic:20", "--out", str(tmp_path / "s.csv")],
                ["train", "--data", "synthetic:20", "--model", "wrn", "--depth", "10", "--width", "1",
                 "--epochs", "1", "--resume", str(folder)])
    for argv in commands:
        assert cli.main(argv) == 2
        assert "holds more than tensors and plain values" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "s.csv").exists()


def test_the_tracker_and_a_served_model_refuse_the_payload(tmp_path: Path, tracking_uri: str,
                                                           tiny_checkpoint, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from runner.tracking import pyfunc
    from runner.tracking.tracker import Tracker

    marker = tmp_path / "pwned"
    with Tracker("m1", tracking_uri) as tracker, caplog.at_level(logging.WARNING):
        tracker.start_parent()
        run_id = tracker.start_trial("t0", "row-0", {"model": {"name": "wrn"}})
        tracker.finish_trial(run_id, "FINISHED", plant(tmp_path / "ck", marker))  # the grid goes on
        tracker.finish_parent()
    assert "checkpoint" in MlflowClient(tracking_uri).get_run(run_id).data.tags["checkpoint_error"]

    model = pyfunc.save(checkpoint.load(tiny_checkpoint(tmp_path / "good")), tmp_path / "model")
    shutil.copy(tmp_path / "ck" / checkpoint.FILE, model / "artifacts" / checkpoint.FILE)  # swapped weights
    import mlflow.pyfunc

    with pytest.raises((MlflowException, CheckpointError), match="more than tensors and plain values"):
        mlflow.pyfunc.load_model(str(model))
    assert not marker.exists()


@pytest.mark.parametrize("overrides", [
    {"schedule.name": "step_fraction"}, {"schedule.name": "milestones", "schedule.milestones": [1]},
    {"schedule.name": "cosine", "schedule.warmup_epochs": 1, "train.epochs": 2}, {"schedule.name": "plateau"},
    {"schedule.name": "cyclic", "schedule.max_lr": 0.2}, {"optimizer.name": "adam"},
    {"optimizer.sam_rho": 0.05}])
def test_real_checkpoints_hold_only_tensors_and_plain_values(tmp_path: Path, overrides: dict) -> None:
    cfg = spec.trial_config({"data.path": "synthetic:20", "model.name": "wrn", "model.depth": 10,
                             "model.width": 1, "train.epochs": 1, "train.batch_size": 8, **overrides})
    meta, split, val = data.load_trial_data(cfg["data"], seed=0)
    train.fit(cfg, split, val, meta.classes,
              lambda metrics, state: checkpoint.save(state(), tmp_path))
    state = checkpoint.load(tmp_path)  # weights_only: raises on anything but tensors and plain values
    assert state["epoch"] == cfg["train"]["epochs"] and state["image_shape"] == [32, 32, 3]
