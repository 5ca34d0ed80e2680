"""`runner train` (one trial, no Ray) and `runner submit` on what a user's data looks like: a folder:DIR
source with per-class test folders, resuming from a checkpoint's own config, and the refusals
(a conflicting flag, a missing or damaged checkpoint, an empty test split). Real torch, real files,
through `runner.cli.main`.

Run: .venv/bin/pytest tests/test_train_command.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import models
from runner import cli, data
from runner.core import checkpoint

CLASSES = ("a", "b", "c")
MODEL = ["--model", "wrn_std", "--depth", "10", "--width", "1"]


def _image(cls: int, seed: int) -> np.ndarray:
    """Class = the dominant colour channel: learnable in one epoch, different pixels per seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
    pixels[..., cls] += 150
    return pixels


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """folder:DIR with train/<class>/ and test/<class>/, prepared, and one epoch trained with --out."""
    root = tmp_path_factory.mktemp("train-command")
    for k, cls in enumerate(CLASSES):
        for split, n in (("train", 20), ("test", 4)):
            (root / "src" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(k, 1000 * k + i + (500 if split == "test" else 0))).save(
                    root / "src" / split / cls / f"{i}.png")
    assert cli.main(["data", "prepare", f"folder:{root / 'src'}", str(root / "ds")]) == 0
    argv = ["train", "--data", str(root / "ds"), *MODEL, "--epochs", "1", "--batch-size", "16",
            "--out", str(root / "ckpt")]
    assert cli.main(argv) == 0
    return {"root": root, "ds": root / "ds", "ckpt": root / "ckpt"}


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner: error: ") and "Traceback" not in err, err
    return err


def test_per_class_test_folders_are_submitted_and_scored(trained: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "submission.csv"
    assert cli.main(["submit", "--model", str(trained["ckpt"]), "--data", str(trained["ds"]), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 1 + 12  # every test image, never a header-only file
    assert {line.split(",")[0] for line in lines[1:]} == {f"{c}/{i}" for c in CLASSES for i in range(4)}
    assert cli.main(["score", str(out), str(trained["ds"] / "solution.csv")]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_submit_refuses_an_empty_test_split_and_writes_nothing(trained: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A data set prepared before empty splits were refused (0-row test.parquet): no header-only CSV, exit 2."""
    ds = tmp_path / "ds"
    shutil.copytree(trained["ds"], ds)
    empty = pq.read_table(ds / "test.parquet").slice(0, 0)
    pq.write_table(empty, ds / "test.parquet")
    meta = json.loads((ds / "meta.json").read_text())
    meta["counts"]["test"] = {"total": 0, "labeled": 0, "per_class": {}}
    (ds / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "submission.csv"
    err = _error(["submit", "--model", str(trained["ckpt"]), "--data", str(ds), "--out", str(out)], capsys)
    assert "empty test split" in err and str(ds) in err
    assert not out.exists()


def test_resume_continues_from_the_checkpoints_own_config(trained: dict, tmp_path: Path, monkeypatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    parsed = []
    real = data.loader.parse_meta
    monkeypatch.setattr(data.loader, "parse_meta", lambda *a: parsed.append(a[1]) or real(*a))
    # No --data/--model/--depth/--width: all come from the checkpoint; --epochs extends it.
    assert cli.main(["train", "--resume", str(trained["ckpt"]), "--epochs", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "from epoch 1" in out and "2/2" in out and "1/2" not in out, out
    assert len(parsed) == 1  # meta.json read once per invocation
    first, resumed = checkpoint.load(trained["ckpt"]), checkpoint.load(tmp_path)
    assert resumed["epoch"] == 2 and resumed["config"]["model"] == first["config"]["model"]
    assert resumed["config"]["data"]["path"] == str(trained["ds"])


@pytest.mark.parametrize("flags, named", [
    (["--depth", "16"], ["--depth 16", "model.depth=10"]),
    (["--model", "wrn", "--depth", "16"], ["--model wrn", "model.name='wrn_std'"]),
    (["--lr", "0.5"], ["--lr 0.5", "optimizer.lr="]),
    (["--set", "augment.hflip=false"], ["--set augment.hflip=false", "augment.hflip=True"]),
])
def test_resume_refuses_a_conflicting_flag_by_name(trained: dict, capsys: pytest.CaptureFixture, flags: list[str],
                                                   named: list[str]) -> None:
    err = _error(["train", "--resume", str(trained["ckpt"]), "--epochs", "2", *flags], capsys)
    for fragment in (*named, str(trained["ckpt"]), "to resume with its config"):
        assert fragment in err, err


def test_resume_refusals(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(["train", "--resume", str(tmp_path / "nope" / "state.pt")], capsys)
    assert f"no checkpoint at {tmp_path / 'nope' / 'state.pt'}" in err
    err = _error(["train", "--resume", str(trained["ckpt"])], capsys)
    assert "already trained 1 of 1 epochs" in err and "--epochs N" in err
    # Another architecture's weights under this checkpoint's config: refused before an epoch starts.
    state = checkpoint.load(trained["ckpt"])
    state["model"] = models.build("wrn_std", len(CLASSES), depth=16, width=1).state_dict()
    checkpoint.save(state, tmp_path / "damaged")
    err = _error(["train", "--resume", str(tmp_path / "damaged"), "--epochs", "2"], capsys)
    assert "weights do not fit" in err and "wrn_std" in err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    err = _error(["train", "--resume", str(tmp_path / "foreign.pt"), "--epochs", "2"], capsys)
    assert "not a checkpoint written by runner" in err


def test_train_refuses_a_corrupt_data_set_before_training(trained: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(trained["ds"], ds)
    table = pq.read_table(ds / "train.parquet")
    labels = table.column("label").to_numpy().copy()
    labels[0] = (labels[0] + 1) % len(CLASSES)  # one relabelled row: a valid Parquet file, another content
    pq.write_table(table.set_column(2, "label", pa.array(labels, table.schema.field("label").type)),
                   ds / "train.parquet")
    assert cli.main(["train", "--data", str(ds), *MODEL, "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert f"{ds}/train.parquet does not match the sha256" in captured.err
    assert "training" not in captured.out  # refused before the data was loaded or an epoch started
