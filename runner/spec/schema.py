"""The trial config schema: every field of a resolved trial, its type, default and allowed range.

`validate(cfg, file, row)` fills defaults and refuses bad values with the file, row and dotted field
named; `runner/spec.py` feeds it the rows it resolves from YAML, `runner train` the command line's
values. Defaults live here and nowhere else (docs/architecture.md shows them all).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import models
from runner.core.optim import OPTIMIZERS
from runner.core.schedule import SCHEDULES


class SpecError(ValueError):
    """A spec problem, located: `file: row 'E3': field optimizer.lr: must be > 0 (got -1)`."""

    def __init__(self, file: str, message: str, *, row: str | None = None, field: str | None = None) -> None:
        where = [file]
        if row is not None:
            where.append(f"row {row!r}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(": ".join(where) + ": " + message)
        self.file, self.row, self.field = file, row, field


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None
    nullable: bool = False


def _between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable:
    def check(v: float) -> str | None:
        lo_ok = v > low if low_open else v >= low
        hi_ok = v < high if high_open else v <= high
        if lo_ok and hi_ok:
            return None
        return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return check


def _at_least(low: float, *, strict: bool = False) -> Callable:
    return lambda v: None if (v > low if strict else v >= low) else f"must be {'>' if strict else '>='} {low}"


def _one_of(*choices: str) -> Callable:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _increasing_fractions(v: list) -> str | None:
    if not all(isinstance(f, (int, float)) and 0 < f < 1 for f in v) or sorted(v) != list(v):
        return "must be increasing fractions in (0, 1), e.g. [0.3, 0.5, 0.7, 0.9]"
    return None


def _increasing_epochs(v: list) -> str | None:
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in v) or sorted(v) != list(v):
        return "must be increasing epoch numbers >= 1, e.g. [43, 45, 47]"
    return None


def _betas(v: list) -> str | None:
    ok = len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1), e.g. [0.9, 0.999]"


FLOAT, INT, BOOL, STR, LIST = (int, float), int, bool, str, list
SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "path": Field(STR, "synthetic"),
        "val_fraction": Field(FLOAT, 0.1, _between(0, 1, low_open=True, high_open=True)),
        "num_classes": Field(INT, None, _at_least(2), nullable=True),  # only when meta.json can't be read
    },
    "optimizer": {
        "name": Field(STR, "sgd", _one_of(*OPTIMIZERS)),
        "lr": Field(FLOAT, 0.1, _at_least(0, strict=True)),
        "momentum": Field(FLOAT, 0.9, _between(0, 1, high_open=True)),
        "nesterov": Field(BOOL, False),
        "weight_decay": Field(FLOAT, 5e-4, _at_least(0)),
        "betas": Field(LIST, [0.9, 0.999], _betas),
        "sam_rho": Field(FLOAT, 0.0, _at_least(0)),  # 0 = plain optimizer, > 0 = SAM around it
        "sam_adaptive": Field(BOOL, False),
    },
    "schedule": {
        "name": Field(STR, "constant", _one_of(*SCHEDULES)),
        "gamma": Field(FLOAT, 0.2, _between(0, 1, low_open=True)),
        "fractions": Field(LIST, [0.3, 0.5, 0.7, 0.9], _increasing_fractions),
        "milestones": Field(LIST, [], _increasing_epochs),
        "warmup_epochs": Field(INT, 0, _at_least(0)),
        "min_lr": Field(FLOAT, 0.0, _at_least(0)),
        "patience": Field(INT, 3, _at_least(0)),
        "factor": Field(FLOAT, 0.2, _between(0, 1, low_open=True, high_open=True)),
        "cycle_epochs": Field(INT, 4, _at_least(2)),
        "max_lr": Field(FLOAT, None, _at_least(0, strict=True), nullable=True),
    },
    "augment": {
        "crop_padding": Field(INT, 4, _between(0, 16)),
        "hflip": Field(BOOL, True),
        "vflip": Field(BOOL, False),
        "rotate_deg": Field(FLOAT, 0.0, _between(0, 180)),
        "brightness": Field(FLOAT, 0.0, _between(0, 1)),
        "contrast": Field(FLOAT, 0.0, _between(0, 1)),
        "saturation": Field(FLOAT, 0.0, _between(0, 1)),
        "cutout": Field(INT, 0, _between(0, 32)),  # side of the square, pixels; 0 = off
    },
    "train": {
        "epochs": Field(INT, 10, _at_least(1)),
        "batch_size": Field(INT, 64, _at_least(1)),  # global: split over the DDP workers
        "seed": Field(INT, 0, _at_least(0)),
        "label_smoothing": Field(FLOAT, 0.0, _between(0, 1, high_open=True)),
        "compile": Field(BOOL, False),
        "channels_last": Field(BOOL, True),
        "precision": Field(STR, "auto", _one_of("auto", "fp32", "bf16")),
    },
    "budget": {
        "max_params": Field(INT, 5_000_000, _at_least(1)),
        "mode": Field(STR, "enforce", _one_of("enforce", "flag")),
    },
    "scaling": {
        "workers": Field(INT, 1, _at_least(1)),
        "cpus_per_worker": Field(FLOAT, 1.0, _at_least(0, strict=True)),
        "gpus_per_worker": Field(FLOAT, 0.0, _at_least(0)),  # fractional packs trials onto one GPU
        "trial_cpus": Field(FLOAT, 1.0, _at_least(0, strict=True)),  # the trial driver's own bundle
        "placement": Field(STR, "PACK", _one_of("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")),
    },
    "checkpoint": {
        "keep": Field(INT, 2, _at_least(1)),  # best N by val accuracy
    },
}
TOP_LEVEL = {"max_failures": Field(INT, 0, _at_least(-1))}  # -1 = retry forever
MODEL_DEFAULT = {"name": "wrn"}


def default_config() -> dict:
    cfg = {group: {k: copy.deepcopy(f.default) for k, f in fields.items()} for group, fields in SCHEMA.items()}
    cfg["model"] = dict(MODEL_DEFAULT)
    cfg.update({k: f.default for k, f in TOP_LEVEL.items()})
    return cfg


def validate(cfg: dict, file: str, row: str | None = None) -> dict:
    """Fill defaults and check every field; returns a new, complete config."""
    out = default_config()
    for group, value in cfg.items():
        if group in TOP_LEVEL:
            out[group] = _check(TOP_LEVEL[group], value, file, row, group)
        elif group == "model":
            out["model"] = _check_model(value, file, row)
        elif group in SCHEMA:
            if not isinstance(value, dict):
                raise SpecError(file, f"must be a mapping, got {type(value).__name__}", row=row, field=group)
            for key, v in value.items():
                if key not in SCHEMA[group]:
                    raise SpecError(file, f"unknown key; allowed: {', '.join(SCHEMA[group])}", row=row,
                                    field=f"{group}.{key}")
                out[group][key] = _check(SCHEMA[group][key], v, file, row, f"{group}.{key}")
        else:
            allowed = sorted([*SCHEMA, "model", *TOP_LEVEL])
            raise SpecError(file, f"unknown config group; allowed: {', '.join(allowed)}", row=row, field=group)
    _check_cross_fields(out, file, row)
    return out


def _check(spec: Field, value: Any, file: str, row: str | None, where: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise SpecError(file, "must not be empty", row=row, field=where)
    # bool is an int in Python: refuse it where a number is meant, and refuse floats for ints.
    wrong = isinstance(value, bool) and spec.kind is not bool
    if not wrong and not isinstance(value, spec.kind):
        wrong = True
    if spec.kind is INT and isinstance(value, float):
        wrong = True
    if wrong:
        expected = {FLOAT: "a number", INT: "an integer", BOOL: "true or false", STR: "a string",
                    LIST: "a list"}[spec.kind]
        raise SpecError(file, f"must be {expected}, got {value!r} ({type(value).__name__})", row=row, field=where)
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(file, f"must be finite, got {value}", row=row, field=where)
    complaint = spec.check(value) if spec.check else None
    if complaint:
        raise SpecError(file, f"{complaint} (got {value!r})", row=row, field=where)
    return float(value) if spec.kind is FLOAT else copy.deepcopy(value)


def _check_model(value: Any, file: str, row: str | None) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise SpecError(file, f"must be a mapping with `name:` (one of {', '.join(models.list_models())}) "
                              "and that model's arguments", row=row, field="model")
    name = value["name"]
    kwargs = {k: v for k, v in value.items() if k != "name"}
    try:
        models.validate(name, kwargs)
    except ValueError as err:
        bad = getattr(err, "field", None)
        raise SpecError(file, str(err), row=row, field=f"model.{bad}" if bad else "model") from err
    defaults = models.model_params(name)
    return {"name": name, **{k: kwargs.get(k, d) for k, d in defaults.items()}}


def _check_cross_fields(cfg: dict, file: str, row: str | None) -> None:
    epochs = cfg["train"]["epochs"]
    if cfg["schedule"]["warmup_epochs"] >= epochs and cfg["schedule"]["warmup_epochs"] > 0:
        raise SpecError(file, f"warmup ({cfg['schedule']['warmup_epochs']}) must be shorter than train.epochs "
                              f"({epochs})", row=row, field="schedule.warmup_epochs")
    if cfg["schedule"]["name"] == "milestones" and not cfg["schedule"]["milestones"]:
        raise SpecError(file, "schedule `milestones` needs a list, e.g. [43, 45, 47]", row=row,
                        field="schedule.milestones")
    if cfg["scaling"]["gpus_per_worker"] > 1 and cfg["scaling"]["gpus_per_worker"] % 1:
        raise SpecError(file, "above 1, GPUs per worker must be whole", row=row, field="scaling.gpus_per_worker")
