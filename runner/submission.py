"""Predictions -> a Kaggle submission CSV; and scoring one.

Reads a model (`models:/NAME@alias`, `models:/NAME/VERSION`, `runs:/ID[/model]`, or a checkpoint:
`state.pt` or the folder holding it) and a prepared data set's test split; writes `id,label` rows in
`sample_submission.csv` order (label names as the training data had them), atomically. An MLflow model
predicts through its loaded pyfunc (the call `mlflow models serve` makes); a checkpoint through
`runner.core.predict` directly, which the pyfunc wraps: one predict path either way.

    runner submit --model models:/m1_wrn_grid@champion --data data/cifar10-mini --out submission.csv --tta flips:4
    runner score submission.csv solution.csv       # also logs `kaggle` on the model's run

MLflow is reached only through `runner.tracking.registry`, imported when needed.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from runner import data
from runner.core import checkpoint
from runner.core.predict import Predictor
from runner.files import atomic_write_text

log = logging.getLogger(__name__)

SHOWN_OFFENDERS = 5


class SubmissionError(ValueError):
    """A submission that cannot be written or scored (ids that do not match, unknown columns)."""


def _is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/"))


class Classifier(Protocol):
    """What `runner submit` predicts with: a model loaded through MLflow (runner.tracking.pyfunc, the
    same predict call `mlflow models serve` makes) or a checkpoint's `runner.core.predict.Predictor`."""

    classes: list[str]

    def probabilities(self, images: torch.Tensor, eval: Mapping[str, Any] | None = None) -> torch.Tensor: ...


def load_for_inference(uri: str, device: str | torch.device | None = None) -> Classifier:
    """The classifier behind a registry/run URI or a checkpoint path (`state.pt` or its folder)."""
    if _is_mlflow_uri(uri):
        from runner.tracking import registry

        return registry.load_model(uri, device)
    if not checkpoint.checkpoint_file(uri).is_file():
        raise SubmissionError(f"--model {uri}: no such checkpoint (want state.pt or its folder, "
                              "models:/NAME@alias, or runs:/RUN_ID)")
    return Predictor.from_state(checkpoint.load(uri), device or "cpu")


def _label(name: str, ints: bool) -> str:
    return str(int(name)) if ints else name


def write_submission(path: str | os.PathLike, ids: Sequence[str], labels: Sequence[int] | torch.Tensor,
                     classes: Sequence[str], label_names_are_ints: bool = False,
                     order: Sequence[str] | None = None) -> Path:
    """Write `id,label` (atomic: temp name, then rename). `ids`/`labels` are the predictions in split
    order; `order` is sample_submission's id order (meta.test_ids) and must hold exactly the same ids."""
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(ids) != len(labels):
        raise SubmissionError(f"{len(ids)} ids but {len(labels)} predictions")
    predicted = dict(zip(ids, labels, strict=True))
    order = list(order) if order is not None else list(ids)
    _check_same_ids(order, list(predicted), "sample_submission order", "test split")
    lines = ["id,label"] + [f"{_csv_cell(i)},{_csv_cell(_label(classes[predicted[i]], label_names_are_ints))}"
                            for i in order]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_cell(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n') else value


def _check_same_ids(expected: Sequence[str], got: Sequence[str], expected_name: str, got_name: str) -> None:
    """Refuse duplicates, missing and extra ids, naming the first offenders of each."""
    problems = []
    for name, values in ((expected_name, expected), (got_name, got)):
        seen, dupes = set(), []
        for v in values:
            if v in seen:
                dupes.append(v)
            seen.add(v)
        if dupes:
            problems.append(f"{name} repeats ids {dupes[:SHOWN_OFFENDERS]}")
    expected_set, got_set = set(expected), set(got)
    missing = [i for i in expected if i not in got_set]
    extra = [i for i in got if i not in expected_set]
    if missing:
        problems.append(f"{len(missing)} ids of {expected_name} missing from {got_name}, "
                        f"first {missing[:SHOWN_OFFENDERS]}")
    if extra:
        problems.append(f"{len(extra)} ids in {got_name} not in {expected_name}, first {extra[:SHOWN_OFFENDERS]}")
    if problems:
        raise SubmissionError("ids do not match: " + "; ".join(problems))


def read_labels(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids, labels) from an `id,label` CSV; the label column is `label` (Kaggle's solution files may
    add columns such as `Usage`) or else the second one."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise SubmissionError(f"{path}: want a header `id,label`, got {header}")
        column = header.index("label") if "label" in header else 1
        rows = [r for r in reader if r]
    return [r[0] for r in rows], [r[column] for r in rows]


def _same_label(a: str, b: str) -> bool:
    try:
        return int(a) == int(b)  # "07" and "7" are the same integer label
    except ValueError:
        return a.strip() == b.strip()


def score(submission_csv: str | os.PathLike, solution_csv: str | os.PathLike) -> float:
    """Accuracy of a submission against a solution file; mismatched ids are refused, not skipped."""
    sub_ids, sub_labels = read_labels(submission_csv)
    sol_ids, sol_labels = read_labels(solution_csv)
    try:
        _check_same_ids(sol_ids, sub_ids, f"solution {solution_csv}", f"submission {submission_csv}")
    except SubmissionError as exc:
        raise SubmissionError(f"{exc}. Write the submission from the same data set's test split.") from None
    truth = dict(zip(sol_ids, sol_labels, strict=True))
    hits = sum(_same_label(label, truth[i]) for i, label in zip(sub_ids, sub_labels, strict=True))
    return hits / len(sol_ids) if sol_ids else 0.0


def log_submission(run_id: str | None, path: str | os.PathLike) -> None:
    """Attach the written CSV to the model's MLflow run (nothing for a bare checkpoint)."""
    if run_id:
        from runner.tracking import registry

        registry.record_submission(run_id, path)


def score_and_log(submission_csv: str | os.PathLike, solution_csv: str | os.PathLike) -> tuple[float, str | None]:
    """`runner score`: the accuracy, also logged as `kaggle` on the run whose model wrote the submission
    (the report's "kaggle (replay)" column); (accuracy, that run id or None)."""
    accuracy = score(submission_csv, solution_csv)
    from runner.tracking import registry

    try:
        return accuracy, registry.log_score(submission_csv, accuracy)
    except Exception as exc:  # noqa: BLE001 - the score stands without MLflow
        log.warning("scored, but not logged to MLflow: %s", exc)
        return accuracy, None


def make_submission(model_uri: str, data_path: str, out: str | os.PathLike, *,
                    eval: Mapping[str, Any] | None = None, device: str | torch.device | None = None) -> Path:
    """`runner submit`: predict a prepared data set's test split and write the CSV in sample_submission
    order; `eval` ({"tta", "views"}, checked by the caller: `runner.spec.eval_override`) overrides the
    model's own evaluation setting. The file is also attached to the model's MLflow run (a failure
    there only warns: the CSV is already written)."""
    model = load_for_inference(model_uri, device)
    meta, split = data.load_test(data_path)  # an empty test split is an error, never a header-only CSV
    if list(meta.classes) != list(model.classes):
        raise SubmissionError(f"--model {model_uri} was trained on classes {model.classes[:5]}... but --data "
                              f"{data_path} has {meta.classes[:5]}...; submit with the data set the model was "
                              "trained on")
    labels = model.probabilities(split.images, eval).argmax(1)
    path = write_submission(out, split.ids, labels, model.classes, meta.label_names_are_ints, order=meta.test_ids)
    try:
        log_submission(getattr(model, "run_id", None), path)  # a bare checkpoint belongs to no run
    except Exception as exc:  # noqa: BLE001 - MLflow down must not lose a written submission
        log.warning("submission written to %s but not attached to the model's MLflow run: %s", path, exc)
    return path
