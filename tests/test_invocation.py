"""What a `runner run` invocation is called and which one `--resume` continues (runner/tune/invocation.py),
and `scaling.gpus_per_worker: auto` (runner/tune/gpus.py). No Ray: folders and records on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import spec
from runner.tune import gpus, invocation


def load(tmp_path: Path, name: str = "smoke", rows: str = "") -> spec.Spec:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f'name: {name}\nbase:\n  data: {{path: "synthetic:100"}}\n'
                    f"  model: {{name: wrn_std, depth: 10, width: 1}}\n{rows}")
    return spec.load_spec(str(path))


def ran(storage: Path, name: str, sha: str | None) -> None:
    (storage / name).mkdir(parents=True)
    if sha is not None:
        (storage / name / invocation.RECORD).write_text(json.dumps({"spec_sha256": sha}))


def test_resume_without_a_name_takes_the_newest_run_of_this_very_spec(tmp_path: Path) -> None:
    loaded, storage = load(tmp_path), tmp_path / "results"
    ran(storage, "smoke-20261201-090000", loaded.sha256)
    ran(storage, "smoke-20261201-100000", loaded.sha256)
    ran(storage, "smoke-20261201-100000-2", loaded.sha256)  # two runs in one second
    ran(storage, "smoke-20261201-110000", "0" * 64)  # newer, but another version of the spec
    ran(storage, "smoke-ddp-20261201-120000", loaded.sha256)  # another spec whose name starts the same
    ran(storage, "smoke-20261201-130000", None)  # no record: not known to be this spec
    assert invocation.resume_name(loaded, str(storage), "latest") == "smoke-20261201-100000-2"
    assert invocation.resume_name(loaded, str(storage), "smoke-20261201-110000") == "smoke-20261201-110000"


def test_resume_never_picks_another_specs_experiment(tmp_path: Path) -> None:
    loaded, storage = load(tmp_path), tmp_path / "results"
    ran(storage, "smoke-ddp-20261201-120000", loaded.sha256)
    with pytest.raises(spec.SpecError, match="no earlier run of 'smoke'"):
        invocation.resume_name(loaded, str(storage), "latest")


def test_a_new_name_never_reuses_an_existing_folder(tmp_path: Path) -> None:
    storage = tmp_path / "results"
    first = invocation.new_name("smoke", str(storage))
    (storage / first).mkdir(parents=True)
    second = invocation.new_name("smoke", str(storage))
    assert second in (f"{first}-2",) or second > first  # same second: a suffix; later: a later stamp
    (storage / second).mkdir()
    loaded = load(tmp_path)
    invocation.write_record(str(storage), second, loaded)
    assert invocation.resume_name(loaded, str(storage), "latest") == second


def test_gpus_auto_is_one_per_worker_where_the_cluster_has_gpus_and_an_explicit_number_wins(tmp_path: Path) -> None:
    loaded = load(tmp_path, rows="runs:\n  - name: auto\n  - name: explicit\n    scaling.gpus_per_worker: 0.5\n")
    on_gpus = gpus.choose({"CPU": 64.0, "GPU": 8.0}, "the cluster")
    assert on_gpus.describe() == "scaling.gpus_per_worker auto -> 1 (the cluster has 8 GPU)"
    resolved = {t.name: t.config["scaling"]["gpus_per_worker"] for t in gpus.resolve(loaded.trials, on_gpus)}
    assert resolved == {"auto": 1.0, "explicit": 0.5}
    on_cpus = gpus.choose({"CPU": 2.0}, "this machine's local Ray")
    assert on_cpus.describe() == "scaling.gpus_per_worker auto -> 0 (this machine's local Ray has no GPU)"
    assert {t.name: t.config["scaling"]["gpus_per_worker"] for t in gpus.resolve(loaded.trials, on_cpus)} == {
        "auto": 0.0, "explicit": 0.5}
    assert loaded.trials[0].config["scaling"]["gpus_per_worker"] == "auto"  # the spec itself is untouched
