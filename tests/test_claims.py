"""The docs are a contract: docs/claims.md lists every command, flag and spec field with the test that
exercises it. These tests fail when the CLI grows a flag or the schema a field the table does not list,
when a row names something that no longer exists, or when a listed test does not exist.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time
import typing
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from runner import cli
from runner.spec import load, rows, schema, search

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "docs" / "claims.md"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([^|]*?)\s*\|\s*$")
TEST = re.compile(r"^(tests/test_\w+\.py)::(\w+)(\[[^\]]*\])?$")


@cache
def table() -> dict[str, list[str]]:
    """claim -> the tests named for it, from every `| \\`claim\\` | tests |` row of docs/claims.md."""
    found: dict[str, list[str]] = {}
    for line in CLAIMS.read_text().splitlines():
        if m := ROW.match(line):
            assert m.group(1) not in found, f"docs/claims.md lists {m.group(1)!r} twice"
            found[m.group(1)] = [t.strip().strip("`") for t in m.group(2).split(",") if t.strip()]
    return found


def cli_claims(parser: argparse.ArgumentParser, prefix: str = "runner") -> list[str]:
    """`runner COMMAND [ACTION]` for each command, and `runner COMMAND --flag` for each of its flags."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [f"{prefix} {name}", *cli_claims(sub, f"{prefix} {name}")]
        elif action.option_strings and "--help" not in action.option_strings:
            found.append(f"{prefix} {max(action.option_strings, key=len)}")
    return found


def _choices(annotation: object) -> list[str]:
    return [str(v) for v in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Literal else []


def schema_claims(model: type[BaseModel] = schema.TrialConfig, prefix: str = "") -> list[str]:
    """Every trial config field as a dotted key, and each choice of a `name` field (`optimizer.name: adam`):
    a new optimizer, schedule or architecture is a new code path, so it needs its own row."""
    found = []
    for name, info in model.model_fields.items():
        key = prefix + name
        if name == "model" and not prefix:
            for family in schema.MODEL_CLASSES.values():
                found += [k for k in schema_claims(family, "model.") if k not in found]
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += schema_claims(info.annotation, key + ".")
        else:
            found += [key] + [f"{key}: {choice}" for choice in _choices(info.annotation) if name == "name"]
    return found


def spec_file_claims() -> list[str]:
    """The spec file's own keys: top level, a row of `runs:`, the `search:` block and its distributions."""
    return ([f"spec {key}" for key in sorted(load.SPEC_KEYS)] + [f"spec runs[].{key}" for key in sorted(rows.ROW_KEYS)]
            + [f"spec search.{key}" for key in sorted(search.SEARCH_KEYS)]
            + [f"spec search.space: {kind}" for kind in search.KINDS])


def documented() -> list[str]:
    return cli_claims(cli._parser()) + spec_file_claims() + schema_claims()


@cache
def defined_tests(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_command_flag_and_field_has_a_row() -> None:
    missing = [claim for claim in documented() if claim not in table()]
    assert not missing, "add a row (and a test) to docs/claims.md for: " + ", ".join(missing)


def test_every_row_names_something_that_exists() -> None:
    stale = set(table()) - set(documented())
    assert not stale, f"docs/claims.md lists what the CLI/schema no longer has: {sorted(stale)}"


def test_every_row_names_tests_that_exist() -> None:
    problems = []
    for claim, tests in table().items():
        if not tests:
            problems.append(f"{claim}: no test named")
        for name in tests:
            m = TEST.match(name)
            if not m:
                problems.append(f"{claim}: {name!r} is not tests/test_x.py::test_name")
            elif not (ROOT / m.group(1)).exists() or m.group(2) not in defined_tests(m.group(1)):
                problems.append(f"{claim}: {name} does not exist")
    assert not problems, "\n".join(problems)


def test_the_walk_sees_what_the_cli_and_schema_have() -> None:
    """The walkers can fail: a flag, a field and a choice that exist are found; made-up ones are not."""
    claims = documented()
    assert {"runner run --max-concurrent", "runner data prepare --resize", "runner mlflow reconcile"} <= set(claims)
    assert {"optimizer.lr", "model.depth", "schedule.name: cosine", "checkpoint.keep", "spec grid"} <= set(claims)
    assert "runner run --no-such-flag" not in claims and "optimizer.no_such_field" not in claims


# ---------------------------------------------------------------- the README's commands, top to bottom
SHARED_DATA = "../shared/data/cifar10-kaggle-mini"  # the README's example set; here drawn from `synthetic`


def readme_commands() -> list[str]:
    """The command lines of the README's "The commands" block, comments dropped, cluster (s3://) lines aside."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## The commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("runner ") and "s3://" not in line]


def kaggle_from_synthetic(root: Path, n: int) -> Path:
    """The README's kaggle:DIR layout (train/ + train.csv, test/ + sample_submission.csv, solution.csv),
    drawn from the built-in synthetic set."""
    import csv

    from PIL import Image

    from runner.data import synthetic

    source = synthetic.synthetic(n)
    for part, split in (("train", source.train), ("test", source.test)):
        (root / part).mkdir(parents=True)
        rows = []
        for image, label, ident in zip(split.images.numpy(), split.labels.tolist(), split.ids, strict=True):
            Image.fromarray(image).save(root / part / f"{ident}.png")
            rows.append((ident, source.classes[label]))
        names = {"train": ["train.csv"], "test": ["sample_submission.csv", "solution.csv"]}[part]
        for name in names:
            with open(root / name, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "label"])
                writer.writerows((i, source.classes[0]) if name == "sample_submission.csv" else (i, c) for i, c in rows)
    return root


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_readme_commands_run_top_to_bottom_on_a_fresh_clone(tmp_path: Path, short_dir: str) -> None:
    """Each command of the README, as written, in a fresh clone (no data/, mlruns/, results/), with the
    example data set replaced by one of the same layout drawn from the built-in synthetic set."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    example = kaggle_from_synthetic(tmp_path / "shared" / "data" / "cifar10-kaggle-mini", 60)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RUNNER_", "RAY_ADDRESS"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", RAY_USAGE_STATS_ENABLED="0",
               RAY_TMPDIR=short_dir)
    commands = readme_commands()
    assert len(commands) >= 15 and any(c.startswith("runner run ") for c in commands), commands
    for command in commands:
        line = command.replace(SHARED_DATA, str(example))
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True)
        print(f"{time.monotonic() - started:6.1f} s  {command}")
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
