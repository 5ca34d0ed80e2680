"""The JSON Schema of a whole spec file, for editors (`runner schema > experiments/spec.schema.json`).

Reads the pydantic models of runner/spec/schema.py; writes nothing. An editor's YAML plugin (e.g.
yaml-language-server, through the `# yaml-language-server: $schema=spec.schema.json` first line of
each shipped spec) completes keys and flags a typo'd key or a wrong type while the spec is typed.
It checks what JSON Schema can express: keys, types, ranges, choices. What it cannot (a WRN depth
of 6n+4, increasing milestones, row names that exist) `runner check` still reports.

The file shape it describes: `name`, `description`, `base` (a partial trial config), `runs` (rows:
`name`, `extends`, `reported` plus config), `grid` (dotted keys or groups -> lists of values),
`reported` (figures matched to grid points) and `search` (distributions over dotted keys). Config keys
may be nested (`optimizer: {lr: 0.1}`) or dotted (`optimizer.lr: 0.1`), as the loader accepts both.
"""

from __future__ import annotations

import json

from runner.spec import search
from runner.spec.schema import MODEL_CLASSES, TrialConfig

DRAFT = "https://json-schema.org/draft/2020-12/schema"
FIGURE = {"type": ["number", "string", "null"], "description": "a figure from the report (or a short note)"}


def spec_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a spec file."""
    trial = TrialConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs = trial.pop("$defs")
    groups = dict(trial["properties"])
    groups["model"] = {"$ref": "#/$defs/ModelArgs"}
    defs["ModelArgs"] = _model_args(defs)
    fields = _dotted_fields(groups, defs)
    defs["Config"] = {"type": "object", "additionalProperties": False, "properties": {**groups, **fields},
                      "description": "a partial trial config: groups, or dotted keys such as optimizer.lr"}
    defs["Row"] = {"type": "object", "required": ["name"], "additionalProperties": False,
                   "properties": {"name": {"type": ["string", "integer"], "description": "the trial's name"},
                                  "extends": {"type": "string", "description": "ROW or SPEC#ROW it starts from"},
                                  "reported": {"type": "object", "additionalProperties": FIGURE},
                                  **groups, **fields}}
    return {
        "$schema": DRAFT,
        "title": "runner experiment spec",
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "names the MLflow experiment"},
            "description": {"type": "string"},
            "base": {"$ref": "#/$defs/Config"},
            "runs": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Row"}},
            "grid": _grid(groups, fields, defs),
            "reported": {"type": "array", "items": {
                "type": "object", "required": ["where"], "additionalProperties": FIGURE,
                "properties": {"where": {"type": "object", "description": "dotted keys of the grid point"}}}},
            "search": _search(),
        },
        "$defs": defs,
    }


def schema_text() -> str:
    """The schema as the committed file holds it (stable key order, trailing newline)."""
    return json.dumps(spec_json_schema(), indent=2) + "\n"


def _search() -> dict:
    """The `search:` block (runner/spec/search.py): its keys, and one distribution per dotted key."""
    number = {"type": "number"}
    pair = {"type": "array", "items": number, "minItems": 2, "maxItems": 2}
    kinds = {"choice": {"type": "array", "minItems": 1}, "uniform": pair, "loguniform": pair,
             "randint": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
             "quniform": {"type": "array", "items": number, "minItems": 3, "maxItems": 3}}
    distribution = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                    "properties": kinds}
    return {"type": "object", "required": ["space"], "additionalProperties": False,
            "description": "sample trials from distributions over dotted config keys instead of runs/grid",
            "properties": {
                "algorithm": {"enum": list(search.ALGORITHMS)},
                "num_samples": {"type": "integer", "minimum": 1, "description": "configurations drawn"},
                "seed": {"type": "integer", "minimum": 0},
                "scheduler": {"enum": list(search.SCHEDULERS)},
                "metric": {"type": "string"},
                "mode": {"enum": list(search.MODES)},
                "space": {"type": "object", "minProperties": 1, "additionalProperties": distribution}}}


def _model_args(defs: dict) -> dict:
    """`model:` in a spec may leave out `name` (a row keeps base's model); with a name, only that model's keys."""
    params: dict[str, list[dict]] = {}
    for name in MODEL_CLASSES:
        for key, prop in defs[f"Model_{name}"]["properties"].items():
            if key != "name":
                bare = {k: v for k, v in prop.items() if k not in ("default", "title")}
                params.setdefault(key, [])
                if bare not in params[key]:
                    params[key].append(bare)
    properties = {"name": {"enum": list(MODEL_CLASSES)}}
    properties.update({k: v[0] if len(v) == 1 else {"anyOf": v} for k, v in params.items()})
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "allOf": [{"if": {"required": ["name"], "properties": {"name": {"const": name}}},
                       "then": {"$ref": f"#/$defs/Model_{name}"}} for name in MODEL_CLASSES]}


def _dotted_fields(groups: dict, defs: dict) -> dict:
    """`group.field` -> a pointer to the field's schema, for every field of every group."""
    out = {}
    for group, prop in groups.items():
        if "$ref" in prop:
            target = prop["$ref"]
            out.update({f"{group}.{key}": {"$ref": f"{target}/properties/{key}"}
                        for key in defs[target.rsplit("/", 1)[-1]]["properties"]})
    return out


def _grid(groups: dict, fields: dict, defs: dict) -> dict:
    """A grid axis is a non-empty list of a field's values, keyed dotted or nested in its group."""
    def axis(field: dict) -> dict:
        return {"type": "array", "minItems": 1, "items": field}

    properties = {key: axis(field) for key, field in fields.items()}
    for group, prop in groups.items():
        if "$ref" in prop:
            inner = defs[prop["$ref"].rsplit("/", 1)[-1]]["properties"]
            properties[group] = {"type": "object", "additionalProperties": False,
                                 "properties": {k: axis(v) for k, v in inner.items()}}
        else:  # a top-level field such as max_failures
            properties[group] = axis({"$ref": f"#/$defs/Config/properties/{group}"})
    return {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": properties}
