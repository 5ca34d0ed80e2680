"""Results tables and figures: the report's numbers beside the replayed ones.

Pure formatting over *rows*, plain dicts with one trial each (built by `runner.tracking` from what it
logged, or from MLflow by `tracking.fetch_trial_rows`):

    trial, status, model, varied ({dotted key: value} the row changes), params, within_budget,
    epochs, best_epoch,
    train_acc, val_acc, val_loss      (fractions 0..1, at the best checkpoint)
    cost.cpu_hours, cost.gpu_hours    (resource-hours held: runner.cost)
    kaggle                            (optional fraction: a scored submission)
    reported: {train_acc: %, val_acc: %, kaggle: fraction}   (the spec's `reported:` figures)

The report writes accuracies in percent and the Kaggle score as a fraction, so the comparison does too.
Writes the learning-curve / confusion-matrix PNGs
(matplotlib's Agg canvas directly, so no pyplot global state and no display is needed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner import cost

# figure name -> (scale from a replayed fraction to the report's unit, decimals shown)
FIGURES: dict[str, tuple[float, int]] = {"train_acc": (100.0, 2), "val_acc": (100.0, 2), "kaggle": (1.0, 4)}


def _number(value: Any) -> float | None:
    """A figure as a float, or None for missing / notes ("n/a") / NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _fmt(value: float | None, decimals: int, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def compare(reported: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One numeric row per replayed trial: `<fig> (report)`, `<fig> (replay)`, `<fig> diff` for each
    figure the report gives (train/val acc in percent, kaggle as a fraction); diff = replay - report.
    `reported` maps trial name -> figures; a row's own `reported` dict is used when its name is absent."""
    out = []
    for row in rows:
        figures = reported.get(row["trial"]) or row.get("reported") or {}
        line: dict[str, Any] = {"trial": row["trial"]}
        for name, (scale, _) in FIGURES.items():
            theirs = _number(figures.get(name))
            ours = _number(row.get(name))
            ours = None if ours is None else ours * scale
            if theirs is None and ours is None:
                continue
            line[f"{name} (report)"] = theirs
            line[f"{name} (replay)"] = ours
            line[f"{name} diff"] = None if theirs is None or ours is None else ours - theirs
        out.append(line)
    return out


def results_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Display rows (strings) for the parent run's table and `runner report`: the trial's facts, then
    each reported figure beside the replayed one and the difference."""
    compared = compare({}, rows)
    table = []
    for row, cmp in zip(rows, compared, strict=True):
        line = {
            "trial": str(row["trial"]),
            "model": str(row.get("model") or ""),
            # the grid's axes (spec rows' dotted overrides), so each line says what it varied
            **{key: str(value) for key, value in (row.get("varied") or {}).items()},
            "params": f"{int(row['params']):,}" if _number(row.get("params")) is not None else "",
            "within_budget": {True: "yes", False: "NO"}.get(row.get("within_budget"), ""),
            "status": str(row.get("status") or ""),
            "epochs": "" if row.get("epochs") is None else str(int(row["epochs"])),
        }
        for key, value in cmp.items():
            if key == "trial":
                continue
            name = key.split(" ")[0]
            line[key] = _fmt(value, FIGURES[name][1], signed=key.endswith("diff"))
        line["val_loss"] = _fmt(_number(row.get("val_loss")), 4)
        line["time_s"] = _fmt(_number(row.get("time_s")), 0)
        # resource-hours held (runner.cost); GPU-hours blank for a trial that held no GPU
        line["cpu_h"] = _fmt(_number(row.get(cost.CPU_HOURS)), 3)
        line["gpu_h"] = _fmt(_number(row.get(cost.GPU_HOURS)) or None, 3)
        table.append(line)
    return _same_columns(table)


def _same_columns(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows may lack a figure another row has: give every row every column (in first-seen order), and
    drop the columns no row fills (a spec without `reported:` figures has no comparison columns)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    filled = [c for c in columns if any(row.get(c, "") != "" for row in rows)]
    return [{c: row.get(c, "") for c in filled} for row in rows]


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub Markdown table; `|` in cells is escaped so a trial name cannot break the layout."""
    if not rows:
        return "_no trials_\n"
    columns = list(rows[0])
    cell = lambda v: "" if v is None else str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, for a terminal (`runner models`, `runner check`)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines) + "\n"


def to_json(value: Any) -> str:
    """Rows (or `runner check`'s report) as JSON for scripts: NaN/inf become null, other types their str."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, default=str) + "\n"


def check_table(checked: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple]]:
    """`runner check`'s table of a spec's trials (from runner/spec/check.py's report)."""
    rows = []
    for t in checked["trials"]:
        s = t["scaling"]
        within = "yes" if t["within_budget"] else f"NO ({t['budget_mode']})"
        classes = f"{t['classes']}" + ("" if t["classes_source"] == "meta.json" else f" ({t['classes_source']})")
        gpus = s["gpus_per_worker"] if isinstance(s["gpus_per_worker"], str) else f"{s['gpus_per_worker']:g}"
        rows.append((t["name"], " ".join(f"{k}={v}" for k, v in t["model"].items()), f"{t['params']:,}", classes,
                     within, f"{s['workers']}x(cpu {s['cpus_per_worker']:g}, gpu {gpus})", str(t["epochs"])))
    return ("trial", "model", "params", "classes", "in budget", "workers", "epochs"), rows


def search_text(search: Mapping[str, Any]) -> str:
    """`runner check`'s view of a search: the space, then the first samples with their verdicts."""
    space = [(d["key"], f"{d['kind']}({', '.join(map(repr, d['args']))})") for d in search["space"]]
    first = [(s["name"], ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in s["values"].items()),
              "" if s["params"] is None else f"{s['params']:,}", s["status"]) for s in search["samples"]]
    source = "" if search["classes_source"] == "meta.json" else f" ({search['classes_source']})"
    return (f"search: {search['algorithm']}, {search['num_samples']} samples, seed {search['seed']}, scheduler "
            f"{search['scheduler']}, {search['metric']} ({search['mode']}); {search['classes']} classes{source}\n"
            + text_table(("key", "distribution"), space)
            + f"first {len(first)} samples (the random sampler's draws for seed {search['seed']}"
            + ("; optuna starts from its own random draws" if search["algorithm"] == "optuna" else "") + "):\n"
            + text_table(("sample", "values", "params", "status"), first))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_epoch(metrics: Mapping[str, Any], epochs: int) -> str:
    """One progress line per epoch, the same from `runner train` and from a Tune trial."""
    return (f"epoch {metrics['epoch']}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_acc']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_acc']:.4f}  lr {metrics['lr']:.4g}  "
            f"{metrics['images_per_s']:.0f} img/s  {metrics['epoch_s']:.1f} s")


def _canvas(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.subplots


def plot_curves(history: Mapping[int, Mapping[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Learning curves (loss left, accuracy right) from {epoch: metrics}; writes a PNG."""
    figure, subplots = _canvas(10, 4)
    loss_ax, acc_ax = subplots(1, 2)
    steps = sorted(history)
    for ax, keys in ((loss_ax, ("train_loss", "val_loss")), (acc_ax, ("train_acc", "val_acc"))):
        for key in keys:
            points = [(s, history[s][key]) for s in steps if _number(history[s].get(key)) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_confusion(matrix: Any, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Confusion matrix (rows = true class) with counts; class labels are dropped past 20 classes,
    where they would overprint each other."""
    import numpy as np

    counts = np.asarray(matrix.tolist() if hasattr(matrix, "tolist") else matrix, dtype=np.int64)
    size = min(4 + 0.35 * len(counts), 14)
    figure, subplots = _canvas(size, size)
    ax = subplots()
    image = ax.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046)
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), labels=list(classes), rotation=90)
        ax.set_yticks(range(len(classes)), labels=list(classes))
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > counts.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"validation accuracy {np.trace(counts) / max(counts.sum(), 1):.2%}")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
