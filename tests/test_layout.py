"""The import rule, enforced: each folder of the code may import only what its row below allows.

This table is the rule (docs/architecture.md states it in words and points here). Every import in
`runner/` and `models/` counts, including the lazy ones inside functions. The standard library is
always allowed. Run: .venv/bin/pytest tests/test_layout.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# area -> (third-party packages it may import, project areas it may import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "models": ({"torch", "timm"}, {"models"}),
    "runner.files": (set(), set()),
    "runner.keys": (set(), set()),
    "runner.masking": (set(), {"runner.keys"}),
    "runner.resources": (set(), set()),
    "runner.storage": ({"pyarrow"}, {"runner.files", "runner.masking"}),
    "runner.cost": (set(), {"runner.resources"}),
    "runner.report": ({"matplotlib", "numpy"}, {"runner.cost"}),
    "runner.data": ({"numpy", "pyarrow", "PIL", "torch", "torchvision"},
                    {"runner.data", "runner.files", "runner.masking", "runner.storage"}),
    "runner.core": ({"torch", "numpy"}, {"models", "runner.core", "runner.data", "runner.files"}),
    "runner.spec": ({"yaml", "pydantic"}, {"models", "runner.spec", "runner.core", "runner.keys", "runner.data"}),
    "runner.tracking": ({"mlflow", "torch", "numpy", "pandas"},
                        {"runner.tracking", "runner.core", "runner.data", "runner.spec", "runner.keys",
                         "runner.masking", "runner.files", "runner.report", "runner.cost", "runner.resources"}),
    "runner.local_train": (set(), {"runner.core", "runner.data", "runner.spec", "runner.keys", "runner.report"}),
    "runner.submission": ({"torch"}, {"runner.core", "runner.data", "runner.files", "runner.tracking"}),
    "runner.tune": ({"ray", "pyarrow", "torch", "optuna"},
                    {"runner.tune", "runner.core", "runner.data", "runner.spec", "runner.tracking", "runner.resources",
                     "runner.cost", "runner.report", "runner.files", "runner.keys", "runner.masking",
                     "runner.submission", "runner.storage"}),
    "runner.cli": (None, None),  # the front door may import anything; nothing may import it
    "runner.__main__": (set(), {"runner.cli"}),
    "runner": (set(), set()),  # runner/__init__.py
}
# Importing ray or mlflow (and their sub-packages) is what the rings are for; nowhere else.
RINGS = {"ray": "runner.tune", "mlflow": "runner.tracking"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def area_of(module: str) -> str | None:
    matches = [area for area in RULES if module == area or module.startswith(area + ".")]
    return max(matches, key=len) if matches else None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, top-level or inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from runner import data` imports runner.data: check the names too
            found += [(node.lineno, f"{base}.{alias.name}" if base in {"runner", "models"} else base)
                      for alias in node.names]
    return found


def code_files() -> list[Path]:
    return sorted([*ROOT.joinpath("runner").rglob("*.py"), *ROOT.joinpath("models").rglob("*.py")])


def violations(path: Path) -> list[str]:
    module = module_name(path)
    area = area_of(module)
    if area is None:
        return [f"{module}: in no area of tests/test_layout.py RULES; give its folder a row"]
    third, internal = RULES[area]
    problems = []
    for line, name in imports(path):
        top = name.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{line}: {module} imports {name}"
        if top in RINGS and area != RINGS[top] and third is not None:
            problems.append(f"{where}, but only {RINGS[top]} may import {top}")
        elif top in {"runner", "models"}:
            target = area_of(name) or name
            if target == "runner.cli" and area != "runner.cli" and "runner.cli" not in (internal or ()):
                problems.append(f"{where}: nothing below the command line imports it")
            elif internal is not None and target != area and target not in internal:
                problems.append(f"{where}, which {area} may not import (allowed: {sorted(internal)})")
        elif third is not None and top not in sys.stdlib_module_names and top not in third and top != "__future__":
            problems.append(f"{where}, a package {area} may not import (allowed: {sorted(third)})")
    return problems


def test_every_import_follows_the_layout_rule() -> None:
    problems = [p for path in code_files() for p in violations(path)]
    assert not problems, "\n".join(problems)


def test_the_rule_catches_ray_in_the_training_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule can fail: a copy of the training core that imports ray is refused, naming the line."""
    core = ROOT / "runner" / "core" / "train.py"
    planted = tmp_path / "runner" / "core" / "train.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("import ray\n" + core.read_text())
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = violations(planted)
    assert problems and "runner/core/train.py:1: runner.core.train imports ray, but only runner.tune may import ray" \
        in problems[0]


def test_no_module_is_over_the_size_limit() -> None:
    """Modules stay readable in one sitting (the house rule: ~350 lines)."""
    long = {str(p.relative_to(ROOT)): n for p in code_files() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
