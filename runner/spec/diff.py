"""What one resolved trial changes from another: `runner check --diff E9 E11`.

Reads resolved specs (runner/spec/load.py); writes nothing. A trial is named by its name (searched in
the specs given) or `SPEC#NAME` (a spec given, by its `name:` or file stem, or the file SPEC.yaml in
their folder). The difference reads like the report's sentence:

    E11 = E9 with model.drop_connect 0.5 -> 0.2
"""

from __future__ import annotations

import glob
import json
from typing import Any

from runner import keys
from runner.spec.load import Spec, Trial, load_spec
from runner.spec.rows import spec_file
from runner.spec.schema import SpecError

_ABSENT = object()


def find_trial(ref: str, specs: list[Spec], overrides: list[str] | None = None) -> tuple[Spec, Trial]:
    """The spec and trial `ref` names; refuses a name that is missing or in two specs, naming them."""
    spec_ref, _, name = ref.rpartition("#")
    where = specs
    if spec_ref:
        where = [s for s in specs if spec_ref in (s.name, _stem(s.path))]
        if not where and specs:
            where = [load_spec(spec_file(spec_ref, specs[0].path), overrides or [])]
    found = [(s, t) for s in where for t in s.trials if t.name == name]
    searched = ", ".join(s.path for s in where) or "(no spec)"
    if not found:
        close = sorted({t.name for s in where for t in s.trials if t.name.startswith(f"{name}/")})
        hint = f"; it expands to {', '.join(close)}: name one" if close else ""
        raise SpecError(searched, f"--diff {ref}: no trial named {name!r}{hint}")
    if len(found) > 1:
        raise SpecError(searched, f"--diff {ref}: {name!r} is a trial of {', '.join(s.name for s, _ in found)}; "
                                  f"write SPEC#{name}")
    return found[0]


def describe(ref_a: str, ref_b: str, paths: list[str], overrides: list[str] | None = None) -> list[str]:
    """The lines `runner check --diff` prints: a heading, one line per field, then the sentence. The
    trials are looked up in the spec files `paths` (none given: experiments/*.yaml)."""
    specs = [load_spec(path, overrides or []) for path in paths or sorted(glob.glob("experiments/*.yaml"))]
    (spec_a, a), (spec_b, b) = (find_trial(ref, specs, overrides) for ref in (ref_a, ref_b))
    changes = differences(a.config, b.config)
    count = "1 field differs" if len(changes) == 1 else f"{len(changes)} fields differ"
    return [f"{spec_a.name}#{a.name} -> {spec_b.name}#{b.name}: {count}",
            *(f"  {key}: {change(old, new)}" for key, old, new in changes),
            sentence(ref_a, ref_b, changes)]


def differences(before: dict, after: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in `before`, value in `after`) for every field that differs, in config order."""
    a, b = keys.flatten(before), keys.flatten(after)
    fields = list(dict.fromkeys([*a, *b]))
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in fields if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def sentence(before: str, after: str, changes: list[tuple[str, Any, Any]]) -> str:
    """`E11 = E9 with model.drop_connect 0.5 -> 0.2, ...` (or `... = ... unchanged`)."""
    if not changes:
        return f"{after} = {before}, unchanged"
    return f"{after} = {before} with " + ", ".join(f"{key} {change(old, new)}" for key, old, new in changes)


def change(old: Any, new: Any) -> str:
    """`0.5 -> 0.2`; a field one side lacks (another model family's argument) shows as `(not set)`."""
    return f"{_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    """As the spec would write it: 0.5, [43, 45, 47], true, null, auto."""
    if value is _ABSENT:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)


def _stem(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0]
