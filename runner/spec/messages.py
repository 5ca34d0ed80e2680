"""Pydantic's validation errors in the spec's words: `FILE: row 'E3': field optimizer.lr: must be > 0 (got -1)`.

Reads a `ValidationError` and the root model it came from; writes nothing. Pydantic locates an error as
a tuple (`("model", "wrn", "depth")`: the discriminated union adds its tag); this module turns that
into the dotted field a user typed (`model.depth`) and rewords the error with the field's own range
("must be in [0, 1)") and the allowed keys of the group when a key is unknown.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


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


_EXPECTED = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false",
             "string_type": "a string", "list_type": "a list", "model_type": "a mapping", "dict_type": "a mapping"}
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def spec_error(err: ValidationError, root: type[BaseModel], file: str, row: str | None) -> SpecError:
    """The first of pydantic's errors as a SpecError naming the dotted field (pydantic lists them in
    field order; one located error at a time is what a user fixes)."""
    error = err.errors()[0]
    path, owner, info = _locate(error["loc"], root)
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or None
    return SpecError(file, _message(error, owner, info, root), row=row, field=field)


def _locate(loc: tuple, root: type[BaseModel]) -> tuple[list, type[BaseModel] | None, FieldInfo | None]:
    """(the user's path without union tags, the model holding the last named part, that part's FieldInfo)."""
    path: list = []
    current: Any = root
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for part in loc:
        if isinstance(current, dict):  # a discriminated union: this part is the tag, not a key
            current = current.get(part)
            continue
        path.append(part)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            owner, info = current, current.model_fields.get(part)
            current = _inside(info)
        else:
            owner, info, current = None, None, None  # inside a list: item errors speak for themselves
    return path, owner, info


def _inside(info: FieldInfo | None) -> Any:
    """What a field holds, for walking further: a model class, {tag: class} for a tagged union, or None."""
    if info is None:
        return None
    kind = info.annotation
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind
    if info.discriminator:
        return {cls.model_fields[info.discriminator].default: cls for cls in get_args(kind)}
    return None


def _message(error: dict, owner: type[BaseModel] | None, info: FieldInfo | None, root: type[BaseModel]) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    got = f" (got {value!r})"
    if kind == "extra_forbidden":
        return _unknown_key(str(error["loc"][-1]), owner, root)
    if value is None and kind.endswith("_type"):
        return "must not be empty"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, got {value!r} ({type(value).__name__})"
    if kind in _BOUNDS:
        return _range(info, ctx) + got
    if kind == "literal_error":
        return f"must be one of {', '.join(map(str, _choices(info)))}" + got
    if kind == "finite_number":
        return f"must be finite, got {value}"
    if kind in ("too_short", "too_long"):
        return f"must have {_count(info, ctx)} items" + got
    if kind == "union_tag_invalid":
        close = difflib.get_close_matches(str(ctx.get("tag")), _tags(info), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown model {ctx.get('tag')!r}{hint}; registered models: {', '.join(_tags(info))}"
    if kind == "union_tag_not_found":
        return f"needs `name:` (one of {', '.join(_tags(info))}) and that model's arguments"
    if kind == "value_error":
        return str(ctx["error"]) + ("" if isinstance(value, dict) else got)
    return error["msg"] + got


def _unknown_key(key: str, owner: type[BaseModel] | None, root: type[BaseModel]) -> str:
    allowed = list(owner.model_fields) if owner is not None else []
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    what = "config group" if owner is root else "key"
    return f"unknown {what}{hint}; allowed: {', '.join(allowed)}"


def _range(info: FieldInfo | None, ctx: dict) -> str:
    """The field's whole allowed range ("must be in [0, 1)"), or the one bound pydantic reports."""
    bounds = _constraints(info, ("gt", "ge", "lt", "le")) or {k: v for k, v in ctx.items() if k in _BOUNDS.values()}
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f"must be in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"must be {'>' if low[0] == '(' else '>='} {low[1]}"
    return f"must be {'<' if high and high[0] == ')' else '<='} {high[1] if high else '?'}"


def _choices(info: FieldInfo | None) -> tuple:
    kind = info.annotation if info is not None else None
    return get_args(kind) if get_origin(kind) is Literal else ()


def _tags(info: FieldInfo | None) -> list[str]:
    inside = _inside(info)
    return sorted(inside) if isinstance(inside, dict) else []


def _constraints(info: FieldInfo | None, names: tuple[str, ...]) -> dict:
    """The field's declared constraints among `names` (annotated_types objects carry them as attributes)."""
    found = {}
    for item in info.metadata if info is not None else []:
        found.update({name: getattr(item, name) for name in names if getattr(item, name, None) is not None})
    return found


def _count(info: FieldInfo | None, ctx: dict) -> str:
    lengths = {**ctx, **_constraints(info, ("min_length", "max_length"))}
    low, high = lengths.get("min_length"), lengths.get("max_length")
    return f"exactly {low}" if low is not None and low == high else f"at least {low}" if low else f"at most {high}"
