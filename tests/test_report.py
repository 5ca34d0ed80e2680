"""runner/report.py: the report's figures beside the replayed ones, tables, and figure files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runner import files, report

ROWS = [
    {"trial": "wrn-16-4", "status": "FINISHED", "model": "wrn", "params": 2748890, "within_budget": True,
     "epochs": 10, "varied": {"model.depth": 16}, "train_acc": 0.9912, "val_acc": 0.9531, "val_loss": 0.18,
     "reported": {"train_acc": 99.0, "val_acc": 95.0, "kaggle": 0.9499}},
    {"trial": "b1|x", "status": "FAILED", "model": "efficientnet", "params": 6525994, "within_budget": False,
     "epochs": 3, "train_acc": 0.5, "val_acc": None, "kaggle": 0.5},
]


def test_compare_puts_replay_beside_report_in_report_units() -> None:
    first, second = report.compare({}, ROWS)
    assert first["val_acc (report)"] == 95.0 and first["val_acc (replay)"] == pytest.approx(95.31)
    assert first["val_acc diff"] == pytest.approx(0.31) and first["train_acc diff"] == pytest.approx(0.12)
    assert first["kaggle (report)"] == 0.9499 and first["kaggle (replay)"] is None and first["kaggle diff"] is None
    assert "val_acc (report)" not in second and second["kaggle (replay)"] == 0.5
    # figures given per trial name win over a row's own
    assert report.compare({"wrn-16-4": {"val_acc": 96}}, ROWS[:1])[0]["val_acc diff"] == pytest.approx(-0.69)


def test_results_table_markdown_and_csv(tmp_path: Path) -> None:
    table = report.results_table(ROWS)
    assert table[0]["params"] == "2,748,890" and table[1]["within_budget"] == "NO"
    assert table[0]["model.depth"] == "16" and table[1]["model.depth"] == ""
    assert table[0]["val_acc (replay)"] == "95.31" and table[0]["val_acc diff"] == "+0.31"
    assert table[0]["kaggle (report)"] == "0.9499" and table[1]["val_acc (report)"] == ""
    assert list(table[0]) == list(table[1])  # every row has every column
    md = report.to_markdown(table)
    assert md.splitlines()[0].startswith("| trial | model | model.depth | params |") and "b1\\|x" in md
    out = files.atomic_write_text(tmp_path / "results.csv", report.to_csv_text(table))
    assert out.read_text().splitlines()[0].startswith("trial,model,model.depth,params")
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_figures_are_png(tmp_path: Path) -> None:
    history = {1: {"train_loss": 2.0, "val_loss": 2.1, "train_acc": 0.3, "val_acc": 0.2},
               2: {"train_loss": 1.5, "val_loss": float("nan"), "train_acc": 0.5, "val_acc": 0.4}}
    for path in (report.plot_curves(history, tmp_path / "c.png"),
                 report.plot_confusion(torch.eye(3, dtype=torch.int64), ["a", "b", "c"], tmp_path / "m.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"
