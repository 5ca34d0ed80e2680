"""Experiment specs: YAML -> validated spec -> resolved trial configs.

The only module that reads YAML. A spec file holds `name`, a `base` trial config, and a matrix:
`grid:` (cartesian axes over dotted keys) and/or `runs:` (named rows overriding `base`), plus
`reported:` figures copied from the original report. Every resolved trial is a complete nested
dict of plain values (see docs/architecture.md); defaults live here and nowhere else.

    spec = load_spec("experiments/m1_wrn_grid.yaml", overrides=["train.epochs=2"])
    for trial in spec.trials: trial.name, trial.config, trial.reported
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

import models
from runner.optim import OPTIMIZERS
from runner.schedule import SCHEDULES


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
SPEC_KEYS = {"name", "description", "base", "grid", "runs", "reported"}
ROW_KEYS = {"name", "reported"}


@dataclass(frozen=True)
class Trial:
    name: str
    config: dict
    reported: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)  # the dotted keys this row varies (for result tables)


@dataclass(frozen=True)
class Spec:
    name: str
    path: str
    sha256: str
    description: str
    trials: list[Trial]


def default_config() -> dict:
    cfg = {group: {k: copy.deepcopy(f.default) for k, f in fields.items()} for group, fields in SCHEMA.items()}
    cfg["model"] = dict(MODEL_DEFAULT)
    cfg.update({k: f.default for k, f in TOP_LEVEL.items()})
    return cfg


def load_spec(path: str, overrides: Iterable[str] = ()) -> Spec:
    """Read, validate and resolve a spec file; `overrides` are `dotted.key=value` strings (CLI `--set`)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as err:
        raise SpecError(path, f"cannot read the spec ({err.strerror}); check the path") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(path, f"YAML syntax error: {err}") from err
    if not isinstance(raw, dict):
        raise SpecError(path, "a spec is a mapping with at least `name:` and `base:`")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(path, f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}",
                        field=sorted(unknown)[0])
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(path, "`name:` (a non-empty string) is required; it names the MLflow experiment",
                        field="name")
    cli = {}
    for item in overrides:
        key, value = parse_override(item, path)
        cli[key] = value
    trials = resolve(raw, path, cli)
    return Spec(name=name, path=path, sha256=hashlib.sha256(text).hexdigest(),
                description=str(raw.get("description", "")), trials=trials)


def parse_override(item: str, file: str = "--set") -> tuple[str, Any]:
    """`train.epochs=2` -> ("train.epochs", 2); the value is parsed as YAML so types survive."""
    if "=" not in item:
        raise SpecError(file, f"--set {item!r} must look like dotted.key=value, e.g. train.epochs=2")
    key, text = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(file, f"--set {item!r}: value is not valid YAML ({err})", field=key.strip()) from err


def resolve(raw: dict, file: str, cli: dict | None = None) -> list[Trial]:
    """The cartesian product of `runs` x `grid`, each applied over `base`, then CLI overrides."""
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise SpecError(file, "`base:` must be a mapping of config groups", field="base")
    base_flat = flatten(base, file, row="base")
    rows = _rows(raw.get("runs"), file)
    axes = _axes(raw.get("grid"), file)
    reported_table = _reported_table(raw.get("reported"), file)
    trials, seen = [], set()
    for row_name, row_flat, row_reported in rows:
        for combo in itertools.product(*[[(k, v) for v in values] for k, values in axes]):
            grid_part = dict(combo)
            name = _trial_name(row_name, grid_part)
            if name in seen:
                raise SpecError(file, "two trials resolve to the same name; give runs distinct names", row=name)
            seen.add(name)
            flat = {**_base_for(base_flat, {**row_flat, **grid_part, **(cli or {})}),
                    **row_flat, **grid_part, **(cli or {})}
            config = validate(unflatten(flat, file, name), file, row=name)
            varied = {**row_flat, **grid_part}
            reported = row_reported or _match_reported(reported_table, config)
            trials.append(Trial(name=name, config=config, reported=reported, overrides=varied))
    return trials


def _base_for(base_flat: dict, changes: dict) -> dict:
    """A row that switches model family must not inherit the base family's arguments."""
    new_model = changes.get("model.name")
    if new_model is None or new_model == base_flat.get("model.name"):
        return base_flat
    return {k: v for k, v in base_flat.items() if not k.startswith("model.")}


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


def flatten(tree: dict, file: str, row: str, prefix: str = "") -> dict:
    """Nested mapping -> {dotted.key: leaf}; lists are leaves. Dotted keys may also be written directly."""
    flat = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise SpecError(file, f"keys must be strings, got {key!r}", row=row)
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, file, row, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: dict, file: str, row: str) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(file, "sets both a value and sub-keys", row=row, field=dotted)
        node[leaf] = value
    if "model" in tree and "name" not in tree["model"]:
        raise SpecError(file, "model.name is required", row=row, field="model.name")
    return tree


def _rows(runs: Any, file: str) -> list[tuple[str | None, dict, dict]]:
    if runs is None:
        return [(None, {}, {})]
    if not isinstance(runs, list) or not runs:
        raise SpecError(file, "`runs:` must be a non-empty list of rows, each with `name:`", field="runs")
    rows = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("name"), (str, int)):
            raise SpecError(file, f"row #{i + 1} needs a `name:`", field=f"runs[{i}]")
        name = str(run["name"])
        reported = run.get("reported") or {}
        _check_reported(reported, file, name)
        overrides = {k: v for k, v in run.items() if k not in ROW_KEYS}
        rows.append((name, flatten(overrides, file, name), dict(reported)))
    return rows


def _axes(grid: Any, file: str) -> list[tuple[str, list]]:
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise SpecError(file, "`grid:` must map dotted keys to lists of values", field="grid")
    axes = []
    for key, values in flatten(grid, file, "grid").items():
        if not isinstance(values, list) or not values:
            raise SpecError(file, "a grid axis must be a non-empty list of values", field=f"grid.{key}")
        axes.append((key, values))
    return axes


def _reported_table(reported: Any, file: str) -> list[tuple[dict, dict]]:
    """Top-level `reported:` for grids: a list of {where: {dotted: value}, <figures>}."""
    if reported is None:
        return []
    if not isinstance(reported, list):
        raise SpecError(file, "top-level `reported:` must be a list of {where: {...}, figure: value}",
                        field="reported")
    table = []
    for i, entry in enumerate(reported):
        if not isinstance(entry, dict) or not isinstance(entry.get("where"), dict):
            raise SpecError(file, "each entry needs `where:` (dotted keys of the grid)", field=f"reported[{i}]")
        figures = {k: v for k, v in entry.items() if k != "where"}
        _check_reported(figures, file, f"reported[{i}]")
        table.append((flatten(entry["where"], file, f"reported[{i}]"), figures))
    return table


def _check_reported(figures: Any, file: str, row: str) -> None:
    if not isinstance(figures, dict):
        raise SpecError(file, "`reported:` must map figure names to numbers", row=row, field="reported")
    for key, value in figures.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            raise SpecError(file, "a reported figure is a number (or a short note)", row=row,
                            field=f"reported.{key}")


def _match_reported(table: list[tuple[dict, dict]], config: dict) -> dict:
    for where, figures in table:
        if all(_get(config, k) == v for k, v in where.items()):
            return dict(figures)
    return {}


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _trial_name(row: str | None, grid_part: dict) -> str:
    axes = ",".join(f"{k.split('.')[-1]}={v}" for k, v in grid_part.items())
    return "/".join(p for p in (row, axes) if p) or "base"


def trial_config(overrides: dict, file: str = "command line") -> dict:
    """A validated config from defaults plus dotted overrides (used by `runner train`)."""
    return validate(unflatten(dict(overrides), file, "cli"), file, row=None)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def load_yaml_file(path: str) -> Any:
    """Plain YAML reading for files that are not specs (cluster.yaml in tests, resolved configs)."""
    with open(path) as fh:
        return yaml.safe_load(fh)
