"""Dotted keys over nested mappings: `{"train": {"epochs": 2}}` <-> `{"train.epochs": 2}`.

The spec's grid axes and `--set` overrides, MLflow params and the results table's varied columns all
name a config field by its dotted key; this is the one translation. Lists are leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class KeyConflict(ValueError):
    """A dotted key that sets both a value and sub-keys (`model=x` beside `model.depth=16`)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} sets both a value and sub-keys")
        self.key = key


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted.key: leaf}. Keys must be strings (TypeError names the first that is not)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted.key: leaf} -> nested dicts; KeyConflict when a key is both a leaf and a parent."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KeyConflict(dotted)
        if isinstance(node.get(leaf), dict):
            raise KeyConflict(dotted)
        node[leaf] = value
    return tree


def get(tree: Mapping[str, Any], dotted: str) -> Any:
    """The value at `dotted`, or None when any part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
