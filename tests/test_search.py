"""The `search:` block of a spec: distributions parsed and refused by field, samples validated exactly as
grid rows are, the budget verdict of each sample, and what `runner check` prints (text and --json).

Run: .venv/bin/pytest tests/test_search.py
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

import pytest

from runner import spec
from runner.cli import main
from runner.spec import search

BASE = """\
name: s
base:
  data: {path: "synthetic:200"}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 3}
"""


def write(tmp_path: Path, search_block: str, head: str = BASE) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(head + textwrap.dedent(search_block))
    return str(path)


def test_every_distribution_samples_within_its_bounds_and_repeats_for_a_seed(tmp_path):
    path = write(tmp_path, """\
        search:
          num_samples: 400
          seed: 3
          space:
            model.width: {choice: [1, 2, 3]}
            optimizer.lr: {loguniform: [0.001, 0.1]}
            train.label_smoothing: {uniform: [0.0, 0.2]}
            train.batch_size: {randint: [16, 20]}
            schedule.warmup_epochs: {quniform: [0, 2, 1]}
            optimizer.momentum: {quniform: [0.8, 0.95, 0.05]}
        """)
    found = spec.load_spec(path).search
    draws = found.samples(400)
    assert draws == found.samples(400)  # the seed fixes them: `runner check` shows what a random search trains
    assert {d["model.width"] for d in draws} == {1, 2, 3}
    assert {d["train.batch_size"] for d in draws} == {16, 17, 18, 19}  # high excluded, as Tune's randint
    assert {d["schedule.warmup_epochs"] for d in draws} == {0, 1, 2}
    assert all(isinstance(d["schedule.warmup_epochs"], int) for d in draws)  # all-int quniform gives ints
    assert {round(d["optimizer.momentum"], 6) for d in draws} == {0.8, 0.85, 0.9, 0.95}
    lrs = [d["optimizer.lr"] for d in draws]
    assert 0.001 <= min(lrs) and max(lrs) <= 0.1
    below = sum(lr < 0.01 for lr in lrs) / len(lrs)  # log-uniform: half the draws below the geometric middle
    assert 0.4 < below < 0.6
    assert all(0.0 <= d["train.label_smoothing"] <= 0.2 for d in draws)
    assert found.samples(2) != search.Search(**{**found.__dict__, "seed": 4}).samples(2)


def test_a_sample_resolves_to_the_config_a_grid_row_with_its_values_gets(tmp_path):
    path = write(tmp_path, """\
        search:
          space:
            model.width: {choice: [2]}
            optimizer.lr: {uniform: [0.01, 0.02]}
        """)
    found = spec.load_spec(path, ["train.epochs=2"]).search
    sample = {"model.width": 2, "optimizer.lr": 0.015}
    grid = tmp_path / "grid.yaml"
    grid.write_text(BASE + "grid:\n  model.width: [2]\n  optimizer.lr: [0.015]\n")
    [row] = spec.load_spec(str(grid), ["train.epochs=2"]).trials
    assert found.trial(sample, "s001") == row.config


@pytest.mark.parametrize("block, field, words", [
    ("space: {optimizer.lr: {loguniform: [0, 0.1]}}", "search.space.optimizer.lr", "loguniform needs low > 0"),
    ("space: {optimizer.lr: {normal: [0, 1]}}", "search.space.optimizer.lr", "KIND one of choice, uniform"),
    ("space: {train.batch_size: {randint: [16.5, 20]}}", "search.space.train.batch_size", "randint takes integers"),
    ("space: {optimizer.lr: {uniform: [0.2, 0.1]}}", "search.space.optimizer.lr", "low < high"),
    ("space: {schedule.warmup_epochs: {quniform: [0, 2]}}", "search.space.schedule.warmup_epochs", "3 numbers"),
    ("space: {}", "search.space", "must map dotted keys"),
    ("space: {scaling.workers: {choice: [1, 2]}}", "search.space.scaling.workers", "cannot vary scaling"),
    ("space: {train.epochs: {choice: [1, 2]}}", "search.space.train.epochs", "scheduler: asha"),
    ("{algorithm: grid, space: {model.width: {choice: [1]}}}", "search.algorithm", "random, optuna"),
    ("{num_samples: 0, space: {model.width: {choice: [1]}}}", "search.num_samples", "integer >= 1"),
    ("{samples: 3, space: {model.width: {choice: [1]}}}", "search.samples", "unknown key"),
    # each dimension's bounds go through the schema, as a grid row's values would
    ("space: {optimizer.lr: {uniform: [-0.1, 0.1]}}", "optimizer.lr", "must be > 0"),
    ("space: {model.width: {choice: [1, wide]}}", "model.width", "an integer"),
    ("space: {optimizer.nesterov_typo: {choice: [true]}}", "optimizer.nesterov_typo", "unknown key"),
])
def test_a_bad_search_block_is_refused_naming_its_field(tmp_path, block, field, words):
    path = write(tmp_path, f"search: {block}\n" if block.startswith("{") else f"search:\n  {block}\n")
    with pytest.raises(spec.SpecError) as err:
        spec.load_spec(path)
    assert f"field {field}" in str(err.value) and words in str(err.value), str(err.value)


def test_search_with_runs_or_grid_and_search_overrides_on_a_grid_spec_are_refused(tmp_path):
    path = write(tmp_path, "grid: {model.width: [1, 2]}\nsearch: {space: {optimizer.lr: {uniform: [0.01, 0.1]}}}\n")
    with pytest.raises(spec.SpecError, match="field grid: `search:` samples its own trials"):
        spec.load_spec(path)
    with pytest.raises(spec.SpecError, match="field search.num_samples: this spec has no `search:` block"):
        spec.load_spec("experiments/smoke.yaml", ["search.num_samples=8"])


def test_judge_rejects_over_the_cap_and_invalid_samples_before_anything_runs(tmp_path):
    path = write(tmp_path, """\
        search:
          space:
            model.depth: {randint: [10, 17]}
            model.width: {choice: [1, 8]}
        """, BASE.replace("  train: {epochs: 3}", "  train: {epochs: 3}\n  budget: {max_params: 1000000}"))
    found = spec.load_spec(path).search
    ok = search.judge(found, {"model.depth": 10, "model.width": 1}, "s001", 10)
    assert ok.trains and ok.params == 77_850 and ok.status == "ok" and ok.config["model"]["width"] == 1
    over = search.judge(found, {"model.depth": 10, "model.width": 8}, "s002", 10)
    assert not over.trains and over.status == f"over budget ({over.params:,} params)" and over.params > 1_000_000
    bad = search.judge(found, {"model.depth": 13, "model.width": 1}, "s003", 10)
    assert not bad.trains and bad.status.startswith("invalid: field model") and "6n+4" in bad.status
    flagged = spec.load_spec(path, ["budget.mode=flag"]).search
    assert search.judge(flagged, {"model.depth": 10, "model.width": 8}, "s002", 10).trains  # flag: trained


def test_runner_check_prints_the_space_and_the_seeded_first_samples(capsys):
    assert main(["check", "experiments/m5_search.yaml", "--set", "search.num_samples=6", "--set", "search.seed=1"]) == 0
    out = capsys.readouterr().out
    assert "search: optuna, 6 samples, seed 1, scheduler asha, val_acc (max); 100 classes (spec)" in out
    assert "model.width             choice(2, 3, 4, 5, 6, 8)" in out
    assert "optimizer.lr            loguniform(0.02, 0.3)" in out
    found = spec.load_spec("experiments/m5_search.yaml", ["search.seed=1"]).search
    for i, sample in enumerate(found.samples(6)):
        line = next(x for x in out.splitlines() if x.startswith(f"s{i + 1:03d} "))
        assert f"width={sample['model.width']}" in line and f"depth={sample['model.depth']}" in line
    assert "over budget (" in out and " ok" in out  # about half of the m5 space is over the 5M cap


def test_runner_check_json_and_runner_version(capsys):
    assert main(["check", "experiments/smoke.yaml", "--json"]) == 0
    [smoke] = json.loads(capsys.readouterr().out)
    assert main(["check", "experiments/m5_search.yaml", "--json", "--set", "search.num_samples=4"]) == 0
    [m5] = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in smoke["trials"]] == ["wrn10-1", "wrn10-1-ddp2", "wrn10-1-adam"]
    assert smoke["trials"][0]["params"] == 77_850 and smoke["trials"][0]["within_budget"] is True
    assert smoke["trials"][0]["config"]["train"]["epochs"] == 3 and smoke["search"] is None
    assert m5["trials"] == [] and m5["search"]["num_samples"] == 4 and len(m5["search"]["samples"]) == 4
    assert {d["key"] for d in m5["search"]["space"]} >= {"model.name", "model.depth", "model.width"}
    for sample in m5["search"]["samples"]:
        assert sample["status"] == "ok" or sample["status"] == f"over budget ({sample['params']:,} params)"
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == "runner 0.1.0"


def test_m5s_space_is_about_half_over_the_cap():
    found = spec.load_spec("experiments/m5_search.yaml").search
    judged = [search.judge(found, s, "x", 100) for s in found.samples(200)]
    over = sum(j.status.startswith("over budget") for j in judged) / len(judged)
    assert 0.3 < over < 0.7  # a search there without the gate would spend about half its GPU-hours over the cap
    assert all(j.status == "ok" or j.status.startswith("over budget") for j in judged)  # no invalid sample


# ---------------------------------------------------------------- the budget gate (Tune's searcher API, no Ray started)

HALF = BASE.replace("depth: 10, width: 1}", "depth: 16, width: 1}") + "  budget: {max_params: 3000000}\n"


def drive(found: search.Search) -> tuple[list[bool], object, object]:
    """Ask the gate for trials as Tune would and finish each at once; per draw, True = rejected. The
    result (val_acc) depends on the lr only, so nothing but the rejections steers a sampler off wide nets."""
    from runner.tune.search import BudgetGate, make_sampler

    gate = BudgetGate(found, make_sampler(found), num_classes=10, stream=io.StringIO())
    fates, i = [], 0
    while True:
        seen = len(gate.rejected)
        out = gate.suggest(f"trial-{i}")
        fates += [True] * (len(gate.rejected) - seen)
        if not isinstance(out, dict):
            return fates, gate, out
        fates.append(False)
        cfg = out["trial"]["config"]
        gate.on_trial_complete(f"trial-{i}", {"val_acc": 0.9 - 0.3 * abs(math.log10(cfg["optimizer"]["lr"]) + 1)})
        i += 1


def test_the_gate_trains_only_in_budget_samples_and_optuna_learns_the_cap(tmp_path):
    path = write(tmp_path, """\
        search:
          num_samples: 40
          space:
            model.width: {choice: [1, 2, 3, 4, 5, 6, 7, 8]}
            optimizer.lr: {loguniform: [0.01, 0.4]}
        """, HALF)  # widths 1-4 fit under 3M at depth 16, widths 5-8 do not: half the space is over the cap
    late = {}
    for algorithm in ("random", "optuna"):
        late[algorithm] = 0
        for seed in (0, 1, 2):
            found = spec.load_spec(path, [f"search.algorithm={algorithm}", f"search.seed={seed}"]).search
            fates, gate, last = drive(found)
            assert last == "FINISHED" and len(fates) == gate.drawn == 40  # num_samples counts every draw
            assert all(j.params <= 3_000_000 for j in gate.accepted)  # only these became (Tune) trials
            assert all(j.params > 3_000_000 and j.status.startswith("over budget") for j in gate.rejected)
            assert len(gate.rejected) == sum(fates)
            late[algorithm] += sum(fates[20:])
    assert late["random"] >= 20  # ~half of 60 late draws over the cap, as the space says
    assert late["optuna"] < 0.7 * late["random"], late  # told the rejections, TPE samples there less
