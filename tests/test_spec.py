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
from runner.spec import diff


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
    # what differs between the spec's trials, as `runner report` shows it
    assert first.overrides == {"model.depth": 16, "optimizer.lr": 0.05, "train.batch_size": 16}
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
    (BASE + "runs:\n  - {name: r1, eval.views: 3}\n", ["field eval.views", "flips or train_transforms"]),
    (BASE + "runs:\n  - {name: r1, eval: {tta: flips}}\n", ["field eval.views", "2..10 views", "got 1"]),
    (BASE + "runs:\n  - {name: r1, eval: {tta: flips, views: 11}}\n", ["field eval.views", "2..10 views"]),
    (BASE + "runs:\n  - {name: r1, eval.tta: mirror}\n", ["field eval.tta", "none, flips, train_transforms"]),
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


def test_a_row_extends_a_row_and_overrides_only_what_it_names(tmp_path):
    path = write(tmp_path, BASE + """
runs:
  - {name: a, optimizer: {lr: 0.05, nesterov: true}, augment.rotate_deg: 15}
  - {name: b, extends: a, optimizer.lr: 0.01}
  - {name: c, extends: b, model: {name: efficientnet, depth: 1.0}}
  - {name: d}
""")
    trials = {t.name: t.config for t in spec.load_spec(path).trials}
    assert trials["b"]["optimizer"]["lr"] == 0.01 and trials["b"]["optimizer"]["nesterov"] is True
    assert trials["b"]["augment"]["rotate_deg"] == 15.0 and trials["b"]["train"]["epochs"] == 2  # a's, then base's
    assert trials["c"]["model"]["name"] == "efficientnet" and "width" in trials["c"]["model"]  # no wrn arguments
    assert trials["c"]["optimizer"]["lr"] == 0.01
    assert trials["d"]["optimizer"]["lr"] == 0.1  # no extends: base


def test_a_row_extends_a_row_of_another_spec_in_the_same_folder(tmp_path):
    (tmp_path / "parent.yaml").write_text(textwrap.dedent(BASE.replace("name: t", "name: parent") + """
runs:
  - {name: P, optimizer: {lr: 0.3, nesterov: true}, train.label_smoothing: 0.1}
"""))
    path = write(tmp_path, "name: child\nruns:\n  - {name: C, extends: parent#P, optimizer.lr: 0.2}\n")
    (child,) = spec.load_spec(path, ["train.epochs=3"]).trials
    assert child.config["optimizer"] == {**child.config["optimizer"], "lr": 0.2, "nesterov": True}
    assert child.config["train"]["label_smoothing"] == 0.1 and child.config["train"]["epochs"] == 3
    assert child.config["model"]["depth"] == 16  # parent's base


@pytest.mark.parametrize("rows, fragments", [
    ("  - {name: a, extends: b}\n  - {name: b, extends: a}\n", ["row 'a'", "field extends", "circle", "a -> b -> a"]),
    ("  - {name: a, extends: a}\n", ["field extends", "a -> a"]),
    ("  - {name: a, extends: E99}\n", ["row 'a'", "field extends", "no row 'E99'", "rows: a"]),
    ("  - {name: a, extends: nospec#X}\n", ["row 'a'", "field extends", "no spec file", "nospec.yaml"]),
    ("  - {name: a, extends: 3}\n", ["row 'a'", "field extends", "SPEC#ROW"]),
])
def test_extends_refuses_cycles_and_unknown_rows_naming_them(tmp_path, rows, fragments):
    refuse(tmp_path, BASE + "runs:\n" + rows, *fragments)


def test_extends_refuses_a_row_of_a_spec_with_a_grid(tmp_path):
    (tmp_path / "g.yaml").write_text(BASE + "runs:\n  - {name: X}\ngrid:\n  optimizer.lr: [0.1, 0.2]\n")
    refuse(tmp_path, "name: t\nruns:\n  - {name: a, extends: g#X}\n", "row 'a'", "has a `grid:`")


M4 = "m4_effnet_series"


@pytest.mark.parametrize("pair, expected", [  # issue 14's done-when lines: exactly these fields, nothing else
    (("E9", "E11"), [f"{M4}#E9 -> {M4}#E11: 1 field differs", "  model.drop_connect: 0.5 -> 0.2",
                     "E11 = E9 with model.drop_connect 0.5 -> 0.2"]),
    (("E5", "E6"), [f"{M4}#E5 -> {M4}#E6: 1 field differs", "  eval.tta: none -> train_transforms",
                    "E6 = E5 with eval.tta none -> train_transforms"]),
    (("m1_wrn_grid#WRN-16-4", "WRN5"), [
        "m1_wrn_grid#WRN-16-4 -> m2_wrn16_4#WRN5: 2 fields differ", "  optimizer.lr: 0.1 -> 0.2",
        "  schedule.fractions: [0.3, 0.6, 0.8] -> [0.3, 0.5, 0.7, 0.9]",
        "WRN5 = m1_wrn_grid#WRN-16-4 with optimizer.lr 0.1 -> 0.2, schedule.fractions [0.3, 0.6, 0.8] -> "
        "[0.3, 0.5, 0.7, 0.9]"]),
])
def test_check_diff_prints_the_reports_sentence(capsys, pair, expected):
    assert main(["check", "--diff", *pair]) == 0  # default: the shipped specs
    assert capsys.readouterr().out.splitlines() == expected


def test_check_diff_refuses_a_missing_or_ambiguous_trial(tmp_path, capsys):
    assert main(["check", "--diff", "E9", "E99"]) == 2
    assert "no trial named 'E99'" in capsys.readouterr().err
    one = write(tmp_path, BASE + "runs:\n  - {name: E9}\n")
    assert main(["check", one, "experiments/m4_effnet_series.yaml", "--diff", "E9", "E11"]) == 2
    assert "'E9' is a trial of t, m4_effnet_series; write SPEC#E9" in capsys.readouterr().err
    assert main(["check", one, "experiments/m4_effnet_series.yaml", "--diff", "t#E9", "m4_effnet_series#E9"]) == 0
    out = capsys.readouterr().out
    assert "t#E9 -> m4_effnet_series#E9:" in out and "  model.name: wrn -> efficientnet" in out
    assert "  model.stem: (not set) -> cifar" in out  # an argument only the other model family has


def _fidelity_chains() -> list[tuple[str, str, str, set[str]]]:
    """(spec, row, parent, fields) from the Chains table of docs/fidelity.md."""
    text = Path("docs/fidelity.md").read_text()
    section = text.split("\n## Chains\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| m")]
    return [(s.strip(), r.strip(), p.strip(), {f.strip() for f in fields.split(",")}) for s, r, p, fields in rows]


def test_each_row_differs_from_its_parent_in_exactly_the_fields_the_report_names():
    chains = _fidelity_chains()
    assert len(chains) >= 25
    loaded: dict[str, spec.Spec] = {}

    def trial(name: str, default_spec: str) -> spec.Trial:
        spec_name, _, row = name.rpartition("#")
        spec_name = spec_name or default_spec
        if spec_name not in loaded:
            loaded[spec_name] = spec.load_spec(f"experiments/{spec_name}.yaml")
        return next(t for t in loaded[spec_name].trials if t.name == row)

    for spec_name, row, parent, fields in chains:
        changed = {key for key, _, _ in diff.differences(trial(parent, spec_name).config, trial(row, spec_name).config)}
        assert changed == fields, (spec_name, row, parent, changed ^ fields)
        raw = next(r for r in spec.load_yaml_file(f"experiments/{spec_name}.yaml")["runs"] if r["name"] == row)
        assert raw.get("extends") in (None, parent), (row, raw.get("extends"))


def test_the_fidelity_page_covers_every_row_of_every_replay_spec():
    text = Path("docs/fidelity.md").read_text()
    for path in sorted(glob.glob("experiments/m*.yaml")):
        for t in spec.load_spec(path).trials:
            assert f"{t.name}" in text, (path, t.name)
    readme = Path("README.md").read_text()
    assert "docs/fidelity.md" in readme.split("| spec | the report's table |", 1)[1].split("\n\n", 1)[0]


def test_the_readme_spec_example_resolves(tmp_path):
    block = Path("README.md").read_text().split("### Specs", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    trials = {t.name: t.config for t in spec.load_spec(write(tmp_path, block)).trials}
    variant = trials["WRN-40-2-plain-sgd/lr=0.1"]
    assert variant["model"]["depth"] == 40 and variant["optimizer"]["sam_rho"] == 0.0
    assert trials["WRN-40-2/lr=0.05"]["optimizer"]["sam_rho"] == 2.0 and len(trials) == 4
