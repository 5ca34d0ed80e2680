"""`runs:` rows and the rows they extend: each row's config before the grid and `--set` apply.

Reads spec files through the `read` function load.py hands it (this module never opens YAML itself);
writes nothing. A row without `extends:` starts from the spec's `base`; a row with `extends: E9`
starts from row E9's resolved config, and `extends: m1_wrn_grid#WRN-16-4` from row WRN-16-4 of
`m1_wrn_grid.yaml` in the same folder (its own base and chain included). The row then overrides only
what it names, so a row reads as the report's sentence: "E9 with dropout 0.5 and drop-connect 0.2".

    chains = Chains(read)
    flat = chains.config("experiments/m4_effnet_series.yaml", "E11")   # {dotted.key: value}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner import keys
from runner.spec.schema import SpecError

ROW_KEYS = {"name", "reported", "extends"}


@dataclass(frozen=True)
class Row:
    name: str
    own: dict  # the row's own overrides, dotted
    reported: dict
    extends: str | None


def flatten(tree: dict, file: str, row: str) -> dict:
    """Nested mapping -> {dotted.key: leaf}; dotted keys may also be written directly."""
    try:
        return keys.flatten(tree)
    except TypeError as err:
        raise SpecError(file, str(err), row=row) from None


def base_for(parent: dict, changes: dict) -> dict:
    """A row that switches model family must not inherit the parent's (or base's) model arguments."""
    new_model = changes.get("model.name")
    if new_model is None or new_model == parent.get("model.name"):
        return parent
    return {k: v for k, v in parent.items() if not k.startswith("model.")}


def parse_rows(runs: Any, file: str) -> list[Row]:
    if not isinstance(runs, list) or not runs:
        raise SpecError(file, "`runs:` must be a non-empty list of rows, each with `name:`", field="runs")
    rows: list[Row] = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("name"), (str, int)):
            raise SpecError(file, f"row #{i + 1} needs a `name:`", field=f"runs[{i}]")
        name = str(run["name"])
        if any(r.name == name for r in rows):
            raise SpecError(file, "two rows have the same name; give runs distinct names", row=name)
        extends = run.get("extends")
        if extends is not None and (not isinstance(extends, str) or not extends.strip()):
            raise SpecError(file, "`extends:` names a row: ROW, or SPEC#ROW for a row of another spec",
                            row=name, field="extends")
        reported = run.get("reported") or {}
        check_reported(reported, file, name)
        own = flatten({k: v for k, v in run.items() if k not in ROW_KEYS}, file, name)
        rows.append(Row(name, own, dict(reported), extends))
    return rows


def check_reported(figures: Any, file: str, row: str) -> None:
    if not isinstance(figures, dict):
        raise SpecError(file, "`reported:` must map figure names to numbers", row=row, field="reported")
    for key, value in figures.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            raise SpecError(file, "a reported figure is a number (or a short note)", row=row,
                            field=f"reported.{key}")


def spec_file(ref: str, beside: str) -> str:
    """`m1_wrn_grid` (or `m1_wrn_grid.yaml`) -> that file in the folder of the spec `beside`."""
    name = ref if ref.endswith((".yaml", ".yml")) else f"{ref}.yaml"
    return os.path.join(os.path.dirname(beside) or ".", name)


class Chains:
    """Each row's flat config, following `extends` within and across spec files (each file read once)."""

    def __init__(self, read: Callable[[str], dict]) -> None:
        self._read = read
        self._specs: dict[str, tuple[dict, dict[str, Row], bool]] = {}

    def spec(self, path: str) -> tuple[dict, dict[str, Row], bool]:
        """(base, flat; the rows by name; whether the spec has a grid) of the spec file at `path`."""
        key = os.path.abspath(path)
        if key not in self._specs:
            raw = self._read(path)
            base = raw.get("base") or {}
            if not isinstance(base, dict):
                raise SpecError(path, "`base:` must be a mapping of config groups", field="base")
            runs = raw.get("runs")
            rows = parse_rows(runs, path) if runs is not None else []
            self._specs[key] = (flatten(base, path, "base"), {r.name: r for r in rows}, raw.get("grid") is not None)
        return self._specs[key]

    def config(self, path: str, name: str, _chain: tuple[tuple[str, str], ...] = ()) -> dict:
        """Row `name` of the spec at `path` as a flat config: its parent's (or base's), then its own keys."""
        base, rows, _ = self.spec(path)
        here = (os.path.abspath(path), name)
        if here in _chain:
            loop = " -> ".join(row for _, row in (*_chain[_chain.index(here):], here))
            raise SpecError(path, f"`extends:` goes round in a circle: {loop}; one of these rows must start "
                                  "from base or another row", row=name, field="extends")
        row = rows[name]
        parent = base if row.extends is None else self._parent(path, row, (*_chain, here))
        return {**base_for(parent, row.own), **row.own}

    def _parent(self, path: str, row: Row, chain: tuple[tuple[str, str], ...]) -> dict:
        spec, _, target = row.extends.rpartition("#")
        other = spec_file(spec, path) if spec else path
        if spec:
            if not os.path.exists(other):
                raise SpecError(path, f"`extends: {row.extends}`: no spec file {other}", row=row.name, field="extends")
            if self.spec(other)[2]:
                raise SpecError(path, f"`extends: {row.extends}`: {other} has a `grid:`, so its rows are many "
                                      "trials, not one config", row=row.name, field="extends")
        rows = self.spec(other)[1]
        if target not in rows:
            where = f"{other}" if spec else "this spec"
            raise SpecError(path, f"`extends: {row.extends}`: no row {target!r} in {where}; rows: "
                                  f"{', '.join(rows) or '(none)'}", row=row.name, field="extends")
        return self.config(other, target, chain)
