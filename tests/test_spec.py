"""Spec validation: every rule refuses with the file, row and dotted field named."""

from __future__ import annotations

import glob
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest

from runner import resources, spec
from runner.cli import main


def write(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


BASE = """
name: t
base:
  model: {name: wrn, depth: 16, width: 4}
  train: {epochs: 2}
"""


def refuse(tmp_path, text: str, *fragments: str, overrides=()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(spec.SpecError) as err:
        spec.load_spec(path, overrides)
    message = str(err.value)
    assert path in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_grid_and_runs_resolve_to_the_cartesian_product(tmp_path):
    path = write(tmp_path, BASE + """
runs:
  - {name: a, optimizer.lr: 0.05, reported: {kaggle: 0.9}}
  - name: b
    model: {depth: 10}
grid:
  train.batch_size: [16, 32]
""")
    loaded = spec.load_spec(path)
    names = [t.name for t in loaded.trials]
    assert names == ["a/batch_size=16", "a/batch_size=32", "b/batch_size=16", "b/batch_size=32"]
    first, last = loaded.trials[0], loaded.trials[-1]
    assert first.config["optimizer"]["lr"] == 0.05 and first.config["train"]["batch_size"] == 16
    assert last.config["model"]["depth"] == 10 and last.config["optimizer"]["lr"] == 0.1  # the default
    assert first.reported == {"kaggle": 0.9} and last.reported == {}
    assert first.overrides == {"optimizer.lr": 0.05, "train.batch_size": 16}
    assert len(loaded.sha256) == 64


def test_grid_reported_figures_match_by_where(tmp_path):
    path = write(tmp_path, BASE + """
grid:
  optimizer.lr: [0.1, 0.01]
reported:
  - {where: {optimizer.lr: 0.01}, test_auc: 0.95}
""")
    trials = spec.load_spec(path).trials
    assert trials[0].reported == {} and trials[1].reported == {"test_auc": 0.95}


def test_set_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, BASE)
    trial = spec.load_spec(path, ["train.epochs=7", "scaling.gpus_per_worker=0.5"]).trials[0]
    assert trial.config["train"]["epochs"] == 7 and trial.config["scaling"]["gpus_per_worker"] == 0.5
    refuse(tmp_path, BASE, "field train.epochs", "must be >= 1", overrides=["train.epochs=0"])
    with pytest.raises(spec.SpecError, match="dotted.key=value"):
        spec.load_spec(path, ["train.epochs"])


def test_switching_model_family_drops_the_base_family_arguments(tmp_path):
    path = write(tmp_path, BASE + """
runs:
  - {name: eff, model: {name: efficientnet, depth: 1.0}}
""")
    model = spec.load_spec(path).trials[0].config["model"]
    assert model["name"] == "efficientnet" and model["depth"] == 1.0 and "width" in model


@pytest.mark.parametrize("text, fragments", [
    ("name: t\nbase: {model: {name: wrn}\n", ["YAML syntax error"]),
    ("name: t\nbase: {}\nextra: 1\n", ["unknown top-level key", "extra"]),
    ("base: {}\n", ["field name", "required"]),
    (BASE + "runs:\n  - {name: r1, optimizer: {lrr: 0.1}}\n", ["row 'r1'", "field optimizer.lrr", "unknown key"]),
    (BASE + "runs:\n  - {name: r1, bogus: {x: 1}}\n", ["row 'r1'", "field bogus", "unknown config group"]),
    (BASE + "runs:\n  - {name: r1, optimizer.lr: fast}\n", ["field optimizer.lr", "must be a number"]),
    (BASE + "runs:\n  - {name: r1, train.epochs: 2.5}\n", ["field train.epochs", "must be an integer"]),
    (BASE + "runs:\n  - {name: r1, augment.hflip: 1}\n", ["field augment.hflip", "true or false"]),
    (BASE + "runs:\n  - {name: r1, optimizer.lr: 0}\n", ["row 'r1'", "field optimizer.lr", "> 0"]),
    (BASE + "runs:\n  - {name: r1, optimizer.lr: -0.1}\n", ["field optimizer.lr", "> 0"]),
    (BASE + "runs:\n  - {name: r1, train.batch_size: 0}\n", ["field train.batch_size", ">= 1"]),
    (BASE + "runs:\n  - {name: r1, data.val_fraction: 1.0}\n", ["field data.val_fraction", "(0, 1)"]),
    (BASE + "runs:\n  - {name: r1, data.val_fraction: 0}\n", ["field data.val_fraction", "(0, 1)"]),
    (BASE + "runs:\n  - {name: r1, scaling.workers: 0}\n", ["field scaling.workers", ">= 1"]),
    (BASE + "runs:\n  - {name: r1, model.depth: 18}\n", ["row 'r1'", "field model", "6n+4"]),
    (BASE + "runs:\n  - {name: r1, model.name: vit}\n", ["field model", "wrn"]),
    (BASE + "runs:\n  - {name: r1, optimizer.name: lion}\n", ["field optimizer.name", "sgd"]),
    (BASE + "runs:\n  - {name: r1, budget.mode: warn}\n", ["field budget.mode", "enforce, flag"]),
    (BASE + "runs:\n  - {name: r1, schedule.fractions: [0.5, 0.3]}\n", ["field schedule.fractions", "increasing"]),
    (BASE + "runs:\n  - {name: r1, schedule: {name: milestones}}\n", ["field schedule.milestones"]),
    (BASE + "runs:\n  - {name: a}\n  - {name: a}\n", ["row 'a'", "same name"]),
    (BASE + "runs:\n  - {optimizer.lr: 0.1}\n", ["needs a `name:`"]),
    (BASE + "grid:\n  optimizer.lr: 0.1\n", ["field grid.optimizer.lr", "non-empty list"]),
    (BASE + "runs:\n  - {name: r1, scaling.gpus_per_worker: 1.5}\n", ["field scaling.gpus_per_worker", "whole"]),
    (BASE + "runs:\n  - {name: r1, scaling.gpus_per_worker: all}\n", ["field scaling.gpus_per_worker", '"auto"']),
    (BASE + "runs:\n  - {name: r1, model.depht: 16}\n", ["field model.depht", "did you mean 'depth'", "width"]),
    (BASE + "runs:\n  - {name: r1, optimizer.betas: [0.9]}\n", ["field optimizer.betas", "exactly 2 items"]),
    (BASE + "runs:\n  - {name: r1, schedule.fractions: [0.5, 1.5]}\n", ["field schedule.fractions[1]", "< 1"]),
    (BASE + "runs:\n  - {name: r1, optimizer.lr: .nan}\n", ["field optimizer.lr", "finite"]),
    (BASE + "runs:\n  - {name: r1, train.epochs: null}\n", ["field train.epochs", "must not be empty"]),
    (BASE + "runs:\n  - {name: r1, optimizer.momentum: 1}\n", ["field optimizer.momentum", "in [0, 1) (got 1)"]),
    (BASE + "runs:\n  - {name: r1, augment.mixup: 1.0}\n", ["field augment.mixup", "unknown key", "cutout"]),
    (BASE + "runs:\n  - {name: r1, augment.crop_padding: 4.5}\n", ["field augment.crop_padding", "an integer"]),
    (BASE + "runs:\n  - {name: r1, checkpoint: 3}\n", ["field checkpoint", "must be a mapping"]),
])
def test_each_rule_refuses_with_location(tmp_path, text, fragments):
    refuse(tmp_path, text, *fragments)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(spec.SpecError, match="cannot read the spec"):
        spec.load_spec(str(tmp_path / "nope.yaml"))


def test_every_shipped_spec_passes_runner_check(capsys):
    files = sorted(glob.glob("experiments/*.yaml"))
    assert {"experiments/smoke.yaml", "experiments/m1_wrn_grid.yaml", "experiments/m4_effnet_series.yaml"} <= set(files)
    assert main(["check", *files]) == 0
    out = capsys.readouterr().out
    wrn16_4 = next(line for line in out.splitlines() if line.startswith("WRN-16-4 "))
    assert "4,322,100" in wrn16_4 and "100 (spec)" in wrn16_4  # davda54 16-4 at CIFAR-100's 100 classes
    assert "E9" in out and "6,641,284" in out and "NO (flag)" in out  # over the cap, flagged as the spec says


def test_shipped_specs_carry_the_reports_figures():
    m1 = {t.name: t.reported for t in spec.load_spec("experiments/m1_wrn_grid.yaml").trials}
    assert m1["WRN-16-4"] == {"train_acc": 92, "val_acc": 93, "kaggle": 0.9365}
    assert m1["WRN-40-2"]["kaggle"] == 0.9345
    m4 = {t.name: t for t in spec.load_spec("experiments/m4_effnet_series.yaml").trials}
    assert [f"E{i}" for i in range(1, 12)] == [n for n in m4 if n in {f"E{i}" for i in range(1, 12)}]
    assert m4["E9"].reported["kaggle"] == 0.985 and m4["E9"].config["optimizer"]["name"] == "sgd"
    assert m4["E9"].config["schedule"]["milestones"] == [43, 45, 47]
    assert m4["E10"].config["model"]["dropout"] == 0.8 and m4["E10"].config["model"]["drop_connect"] == 0.8
    m3 = spec.load_spec("experiments/m3_adam_lr_batch.yaml").trials
    assert len(m3) == 10 and all(t.reported.get("test_auc") for t in m3)
    best = next(t for t in m3 if t.config["train"]["batch_size"] == 16 and t.config["optimizer"]["lr"] == 1e-4)
    assert best.reported["test_auc"] == 0.9677


def test_check_refuses_an_over_cap_row_under_enforce(tmp_path, capsys):
    path = write(tmp_path, BASE + "runs:\n  - {name: big, model: {name: efficientnet, depth: 1.06}}\n"
                 "  - {name: ok}\n")
    assert main(["check", path]) == 2  # data: built-in synthetic, 10 classes
    err = capsys.readouterr().err
    assert "row 'big'" in err and "6,525,994" in err and "5,000,000" in err and "nearest under the cap" in err


def test_a_float_field_takes_an_int_and_stores_a_float(tmp_path):
    config = spec.load_spec(write(tmp_path, BASE + "runs:\n  - {name: r1, optimizer.lr: 1}\n")).trials[0].config
    assert config["optimizer"]["lr"] == 1.0 and isinstance(config["optimizer"]["lr"], float)
    assert isinstance(config["train"]["epochs"], int)


def test_gpus_per_worker_is_auto_by_default_and_auto_counts_as_no_gpu_until_resolved(tmp_path):
    values = (("b", "auto"), ("c", 0.5), ("d", 2))
    rows = ["{name: a}"] + [f"{{name: {n}, scaling.gpus_per_worker: {v}}}" for n, v in values]
    path = write(tmp_path, BASE + "runs:\n" + "".join(f"  - {row}\n" for row in rows))
    scaling = {t.name: t.config["scaling"] for t in spec.load_spec(path).trials}
    assert [s["gpus_per_worker"] for s in scaling.values()] == ["auto", "auto", 0.5, 2.0]
    assert [resources.gpus(s) for s in scaling.values()] == [0.0, 0.0, 0.5, 2.0]
    assert resources.need_of("a", scaling["a"]).gpus == 0 and resources.need_of("d", scaling["d"]).gpus == 2


def test_runner_schema_matches_the_committed_file(capsys):
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    committed = Path("experiments/spec.schema.json").read_text()
    assert printed == committed, "stale: run `runner schema > experiments/spec.schema.json`"
    jsonschema.Draft202012Validator.check_schema(json.loads(committed))


def test_every_shipped_spec_points_its_editor_at_the_schema():
    for path in sorted(glob.glob("experiments/*.yaml")):
        assert Path(path).read_text().splitlines()[0] == "# yaml-language-server: $schema=spec.schema.json", path


def _editor() -> jsonschema.Draft202012Validator:
    """What an editor's YAML plugin does with the first line: validate the document against the file."""
    return jsonschema.Draft202012Validator(json.loads(Path("experiments/spec.schema.json").read_text()))


def test_editor_validation_accepts_every_shipped_spec():
    for path in sorted(glob.glob("experiments/*.yaml")):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in _editor().iter_errors(spec.load_yaml_file(path))]
        assert errors == [], (path, errors)


@pytest.mark.parametrize("where, patch, complaint", [
    ("base", {"optimizer": {"lrr": 0.1}}, "'lrr' was unexpected"),
    ("base", {"optimizer.lrr": 0.1}, "'optimizer.lrr' was unexpected"),
    ("base", {"model": {"name": "wrn", "stem": "cifar"}}, "'stem' was unexpected"),  # efficientnet's key, not wrn's
    ("base", {"trian": {"epochs": 1}}, "'trian' was unexpected"),
    ("base", {"train": {"epochs": 2.5}}, "not of type 'integer'"),
    ("row", {"optimizer.lr": -1}, "minimum of 0"),
    ("row", {"scaling": {"gpus_per_worker": "all"}}, "not valid under any of the given schemas"),
    ("row", {"model.name": "vit"}, "is not one of"),
    ("top", {"runz": []}, "'runz' was unexpected"),
])
def test_editor_validation_rejects_a_typo(where, patch, complaint):
    doc = spec.load_yaml_file("experiments/smoke.yaml")
    target = {"base": doc["base"], "row": doc["runs"][0], "top": doc}[where]
    target.update(patch)
    messages = [e.message for e in _editor().iter_errors(doc)]
    assert any(complaint in m for m in messages), messages
