"""Experiment specs: YAML -> validated spec -> resolved trial configs.

The only module that reads YAML. A spec file holds `name`, a `base` trial config, and a matrix:
`grid:` (cartesian axes over dotted keys) and/or `runs:` (named rows over `base`, or over the row
they `extends:`, runner/spec/rows.py), plus `reported:` figures copied from the original report.
Every resolved trial is a complete nested dict of plain values, validated by `runner/spec/schema.py`
(which holds every default).

    spec = load_spec("experiments/m1_wrn_grid.yaml", overrides=["train.epochs=2"])
    for trial in spec.trials: trial.name, trial.config, trial.reported
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from runner import keys
from runner.spec import search as search_block
from runner.spec.rows import Chains, base_for, check_reported, flatten
from runner.spec.schema import SpecError, validate

SPEC_KEYS = {"name", "description", "base", "grid", "runs", "reported", "search"}


@dataclass(frozen=True)
class Trial:
    name: str
    config: dict
    reported: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)  # dotted keys whose value differs between the spec's trials


@dataclass(frozen=True)
class Spec:
    name: str
    path: str
    sha256: str
    description: str
    trials: list[Trial]  # a search spec has none: its trials are drawn at run time (`search`)
    search: search_block.Search | None = None


def load_spec(path: str, overrides: Iterable[str] = ()) -> Spec:
    """Read, validate and resolve a spec file; `overrides` are `dotted.key=value` strings (CLI `--set`);
    `search.KEY=VALUE` ones set the search block's own keys (e.g. search.num_samples=8)."""
    raw, text = read_raw(path)
    cli, search_cli = {}, {}
    for item in overrides:
        key, value = parse_override(item, path)
        if key.startswith("search."):
            search_cli[key.removeprefix("search.")] = value
        else:
            cli[key] = value
    found = None
    if "search" in raw:
        found, trials = resolve_search(raw, path, cli, search_cli), []
    elif search_cli:
        raise SpecError(path, "this spec has no `search:` block to set", field=f"search.{next(iter(search_cli))}")
    else:
        trials = resolve(raw, path, cli)
    return Spec(name=raw["name"], path=path, sha256=hashlib.sha256(text).hexdigest(),
                description=str(raw.get("description", "")), trials=trials, search=found)


def resolve_search(raw: dict, file: str, cli: dict, search_cli: dict) -> search_block.Search:
    """The `search:` block over the spec's `base` (no `runs:` or `grid:` beside it): each sample is a row
    `base + sample + --set`, validated as any grid row is."""
    mixed = sorted({"runs", "grid"} & set(raw))
    if mixed:
        raise SpecError(file, f"`search:` samples its own trials; drop `{mixed[0]}:` (or split the spec in two)",
                        field=mixed[0])
    if not isinstance(raw.get("base") or {}, dict):
        raise SpecError(file, "`base:` must be a mapping of config groups", field="base")
    base = flatten(raw.get("base") or {}, file, "base")

    def one(sample: dict, name: str) -> dict:
        changes = {**sample, **cli}
        return _validated({**base_for(base, changes), **changes}, file, name, cli)

    return search_block.parse(raw["search"], file, search_cli, one)


def read_raw(path: str) -> tuple[dict, bytes]:
    """The spec file's YAML mapping (top-level keys and `name:` checked) and its bytes."""
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as err:
        raise SpecError(path, f"cannot read the spec ({err.strerror}); check the path") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(path, f"YAML syntax error: {_yaml_problem(err)}; fix the YAML there (`runner check "
                              f"{path}` checks it without running anything)") from err
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
    return raw, text


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line, with 1-based line/column ("<byte string>" says nothing to a user)."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if not problem or mark is None:
        return " ".join(str(err).split())
    text = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None:
        text += f" ({context} at line {start.line + 1})"
    return text


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
    """The cartesian product of `runs` x `grid`, each row over its parent (or `base`), then CLI overrides."""
    cli = cli or {}
    chains = Chains(lambda p: raw if os.path.abspath(p) == os.path.abspath(file) else read_raw(p)[0])
    base, rows, _ = chains.spec(file)
    starts = [(r.name, chains.config(file, r.name), r.reported) for r in rows.values()] or [(None, base, {})]
    axes = _axes(raw.get("grid"), file)
    reported_table = _reported_table(raw.get("reported"), file)
    trials, seen = [], set()
    for row_name, row_flat, row_reported in starts:
        for combo in itertools.product(*[[(k, v) for v in values] for k, values in axes]):
            grid_part = dict(combo)
            name = _trial_name(row_name, grid_part)
            if name in seen:
                raise SpecError(file, "two trials resolve to the same name; give runs distinct names", row=name)
            seen.add(name)
            changes = {**grid_part, **cli}
            config = _validated({**base_for(row_flat, changes), **changes}, file, name, cli)
            reported = row_reported or _match_reported(reported_table, config)
            trials.append(Trial(name=name, config=config, reported=reported))
    return _with_varied(trials)


def _validated(flat: dict, file: str, name: str, cli: dict) -> dict:
    try:
        return validate(unflatten(flat, file, name), file, row=name)
    except SpecError as err:  # a bad value typed on the command line: say so, not only the file
        if cli and err.field in cli:
            err.args = (f"{err} (from the command line: --set {err.field}={cli[err.field]})",)
        raise


def _with_varied(trials: list[Trial]) -> list[Trial]:
    """Each trial's `overrides`: the dotted keys whose value differs between the spec's trials (as
    `runner report` computes them from MLflow), so a results line says what it changed."""
    flats = [keys.flatten(t.config) for t in trials]
    every = list(dict.fromkeys(k for f in flats for k in f))
    varied = [k for k in every if len({repr(f.get(k)) for f in flats}) > 1]
    return [dataclasses.replace(t, overrides={k: f[k] for k in varied if k in f})
            for t, f in zip(trials, flats, strict=True)]


def unflatten(flat: dict, file: str, row: str) -> dict:
    try:
        tree = keys.unflatten(flat)
    except keys.KeyConflict as err:
        raise SpecError(file, "sets both a value and sub-keys", row=row, field=err.key) from None
    if "model" in tree and "name" not in tree["model"]:
        raise SpecError(file, "model.name is required", row=row, field="model.name")
    return tree


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
        check_reported(figures, file, f"reported[{i}]")
        table.append((flatten(entry["where"], file, f"reported[{i}]"), figures))
    return table


def _match_reported(table: list[tuple[dict, dict]], config: dict) -> dict:
    for where, figures in table:
        if all(keys.get(config, k) == v for k, v in where.items()):
            return dict(figures)
    return {}


def _trial_name(row: str | None, grid_part: dict) -> str:
    axes = ",".join(f"{k.split('.')[-1]}={v}" for k, v in grid_part.items())
    return "/".join(p for p in (row, axes) if p) or "base"


def trial_config(overrides: dict, file: str = "command line") -> dict:
    """A validated config from defaults plus dotted overrides (used by `runner train`)."""
    return validate(unflatten(dict(overrides), file, "cli"), file, row=None)


def eval_override(text: str) -> dict:
    """A command line's `--tta`: N (N flip views; 1 is none, as before the eval group existed) or
    MODE[:N] -> a validated `eval` group (the same rules as a spec's; SpecError names the problem)."""
    mode, _, count = text.partition(":")
    if mode.lstrip("-").isdigit():
        mode, count = ("none" if int(mode) == 1 else "flips"), mode
    try:
        views = int(count) if count else (2 if mode == "flips" else 1)
    except ValueError:
        raise SpecError("--tta", f"views {count!r} must be an integer, e.g. flips:4") from None
    return trial_config({"eval.tta": mode, "eval.views": views}, file="--tta")["eval"]


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def load_yaml_file(path: str) -> Any:
    """Plain YAML reading for files that are not specs (cluster.yaml in tests, resolved configs)."""
    with open(path) as fh:
        return yaml.safe_load(fh)
