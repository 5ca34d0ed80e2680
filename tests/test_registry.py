"""runner/registry.py: best in-budget trial -> registered version -> alias; the round trip to a submission.

One module-scoped sqlite store holds a finished grid of three trials (good, worse, over budget); the
first registration happens once in the fixture because `log_model` costs seconds (torch.export).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import models
from runner import submission as submit
from runner.data import Split
from runner.tracking import registry
from runner.tracking.registry import RegistryError
from runner.tracking.tracker import Tracker

CLASSES = [f"c{i}" for i in range(10)]


def tiny_checkpoint(folder: Path, *, seed: int, val_acc: float, within_budget: bool = True) -> Path:
    """A checkpoint dict as the training core writes it, for a very small real network."""
    torch.manual_seed(seed)
    kwargs = {"depth": 10, "width": 1, "dropout": 0.0}
    net = models.build("wrn", len(CLASSES), **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({
        "model": net.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 2,
        "config": {"model": {"name": "wrn", **kwargs}}, "classes": CLASSES,
        "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25],
        "val_confusion": torch.eye(len(CLASSES), dtype=torch.int64),
        "metrics": {"epoch": 2, "train_acc": 0.8, "val_acc": val_acc, "val_loss": 1.0, "train_loss": 0.9},
        "params": models.count_params(net) if within_budget else 6_000_000, "within_budget": within_budget,
    }, folder / "state.pt")
    return folder


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    with Tracker("m1", uri) as tracker:
        tracker.start_parent()
        for seed, (name, acc, within) in enumerate((("good", 0.6, True), ("worse", 0.4, True), ("huge", 0.9, False))):
            run_id = tracker.start_trial(name, name, {"model": {"name": "wrn"}})
            tracker.log_epoch(run_id, {"epoch": 1, "val_acc": acc, "train_acc": acc})
            runs[name] = run_id
            tracker.finish_trial(run_id, "FINISHED", tiny_checkpoint(root / name, seed=seed, val_acc=acc,
                                                                     within_budget=within))
        tracker.finish_parent()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        first = registry.register_best("m1", metric="val_acc", name="cifar", alias="champion")
    return {"uri": uri, "root": root, "runs": runs, "first": first}


@pytest.fixture
def env_uri(grid: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", grid["uri"])
    return grid["uri"]


def test_best_in_budget_trial_is_registered_and_gets_the_alias(grid: dict, env_uri: str) -> None:
    first = grid["first"]
    assert first.trial == "good" and first.run_id == grid["runs"]["good"] and first.alias_moved
    assert first.previous_version is None and "no previous holder" in first.message
    assert "huge has val_acc 0.9000 but is over the parameter budget" in first.message
    holder = MlflowClient(env_uri).get_model_version_by_alias("cifar", "champion")
    assert str(holder.version) == first.version


def test_over_budget_note_and_refusal(grid: dict, env_uri: str, capsys: pytest.CaptureFixture) -> None:
    best, note = registry.pick_best(
        [MlflowClient(env_uri).get_run(r) for r in grid["runs"].values()], "val_acc")
    assert best.info.run_name == "good" and "huge" in note and "over the parameter budget" in note
    with pytest.raises(RegistryError, match=r"huge.*over the parameter budget.*never registered"):
        registry.register_run(grid["runs"]["huge"])


def test_alias_does_not_move_to_a_worse_model(grid: dict, env_uri: str) -> None:
    result = registry.register_run(grid["runs"]["worse"], name="cifar", alias="champion")
    assert not result.alias_moved and result.previous_version == grid["first"].version
    assert result.previous_value == pytest.approx(0.6) and result.value == pytest.approx(0.4)
    assert f"champion stays on v{grid['first'].version}" in result.message
    holder = MlflowClient(env_uri).get_model_version_by_alias("cifar", "champion")
    assert str(holder.version) == grid["first"].version


def test_round_trip_alias_to_submission_equals_direct_predictions(grid: dict, env_uri: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (9, 32, 32, 3), dtype=torch.uint8, generator=generator)
    split = Split(images, torch.full((9,), -1), [f"img{i}" for i in range(9)])

    model, classes, mean, std = submit.load_for_inference("models:/cifar@champion")
    probs, labels = submit.predict(model, split, mean, std, tta=2, batch_size=4)  # last batch holds 1 image
    out = submit.write_submission(tmp_path / "submission.csv", split.ids, labels, classes,
                                  order=list(reversed(split.ids)))
    assert submit.log_submission("models:/cifar@champion", out) == grid["runs"]["good"]

    direct, d_classes, d_mean, d_std = submit.load_for_inference(str(grid["root"] / "good"))
    direct_probs, direct_labels = submit.predict(direct, split, d_mean, d_std, tta=2, batch_size=9)
    assert torch.allclose(probs, direct_probs, atol=1e-5) and (d_classes, d_mean) == (classes, mean)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == list(reversed(split.ids))
    expected = {i: CLASSES[k] for i, k in zip(split.ids, direct_labels.tolist(), strict=True)}
    assert {r["id"]: r["label"] for r in rows} == expected
    files = MlflowClient(env_uri).list_artifacts(grid["runs"]["good"], "submissions")
    assert [f.path for f in files] == ["submissions/submission.csv"]


def test_non_cpu_device_loads_the_source_runs_checkpoint(grid: dict, env_uri: str) -> None:
    # a pt2 graph cannot move off the device it was exported on; other devices get the eager network
    # ("meta" stands in for cuda here: no GPU in CI)
    model, classes, _, _ = submit.load_for_inference("models:/cifar@champion", device="meta")
    assert isinstance(model, type(models.build("wrn", 10, depth=10, width=1)))
    assert next(model.parameters()).device.type == "meta" and classes == CLASSES
