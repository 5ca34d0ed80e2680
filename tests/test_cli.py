"""Command-line flags that no other test types: each changes what the command does (through
`runner.cli.main`, in process). docs/claims.md names the test of every other command and flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner import cli


def test_models_takes_the_class_count_and_the_cap(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["models", "--classes", "10"]) == 0
    default = capsys.readouterr().out
    assert "parameter counts at 10 classes, cap 5,000,000" in default and "4,298,970" in default  # davda54 WRN-16-4
    assert cli.main(["models", "--classes", "100", "--max-params", "3000000"]) == 0
    capped = capsys.readouterr().out
    assert "cap 3,000,000" in capped and "4,298,970" not in capped  # 100 classes: another count
    assert capped.count("OVER cap") > default.count("OVER cap")


def test_train_flags_set_the_trials_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--data", "synthetic:100", "--model", "wrn_std", "--depth", "10", "--width", "1",
            "--epochs", "1", "--batch-size", "16", "--lr", "0.02", "--optimizer", "adam",
            "--set", "augment.cutout=4", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    config = torch.load(tmp_path / "state.pt", weights_only=True)["config"]
    assert config["train"]["batch_size"] == 16 and config["optimizer"]["lr"] == 0.02
    assert config["optimizer"]["name"] == "adam" and config["augment"]["cutout"] == 4
    assert (config["model"]["name"], config["model"]["depth"], config["model"]["width"]) == ("wrn_std", 10, 1)


def test_check_applies_set_data_and_epochs_as_run_would(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nbase:\n  model: {name: wrn_std, depth: 10, width: 1}\nruns:\n  - name: a\n")
    assert cli.main(["check", str(spec), "--json", "--data", "synthetic:50", "--epochs", "3",
                     "--set", "optimizer.lr=0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    trial = printed[0]["trials"][0]
    assert trial["config"]["data"]["path"] == "synthetic:50" and trial["config"]["train"]["epochs"] == 3
    assert trial["config"]["optimizer"]["lr"] == 0.5


def test_an_unexpected_exception_prints_its_traceback_and_exits_1() -> None:
    """Expected errors are one `runner: error:` line and exit 2; a bug is not dressed up as one."""
    bug = "import sys, runner.cli as c; c._models = lambda args: 1 / 0; sys.exit(c.main(['models']))"
    done = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "ZeroDivisionError" in done.stderr
    assert "runner: error" not in done.stderr
