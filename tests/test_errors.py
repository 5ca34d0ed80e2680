"""The bad-input catalogue (docs/errors.md), one test per row, met the way a user meets it: through
`runner ...` (in-process `runner.cli.main`, which returns 2 for a user error). Each row checks the exit
status, that the message names the file/row/field and says the fix, and that nothing half-made is left.
Also: what the project starts listens on 127.0.0.1 only, and secrets stay out of MLflow.

Run: .venv/bin/pytest tests/test_errors.py   (no Ray is started: a bad RAY_ADDRESS is refused before)
"""

from __future__ import annotations

import csv
import os
import re
import socket
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner import cli

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "frog")


# ---------------------------------------------------------------- inputs a user might hand over
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(path: Path, seed: int, size: int = 32) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_rows(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("id", "label")) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def kaggle(root: Path, labels: tuple[str, ...] = CLASSES, per_class: int = 2, tests: int = 3) -> Path:
    """DIR/train/*.png + train.csv, DIR/test/*.png + sample_submission.csv: a valid kaggle:DIR source."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for k in range(per_class * len(labels)):
        png(root / "train" / f"tr{k:02d}.png", k)
        rows.append((f"tr{k:02d}", labels[k % len(labels)]))
    write_rows(root / "train.csv", rows)
    for k in range(tests):
        png(root / "test" / f"te{k}.png", 100 + k)
    write_rows(root / "sample_submission.csv", [(f"te{k}", labels[0]) for k in range(tests)])
    return root


def edit_csv(path: Path, change: Callable[[list[list[str]]], None]) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    change(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


SPEC = """
name: errors
base:
  data: {path: "synthetic:300"}
  model: {name: wrn_std, depth: 10, width: 1}
  train: {epochs: 1}
"""


# ---------------------------------------------------------------- the catalogue
@dataclass
class Case:
    """One row of docs/errors.md. `setup(tmp)` writes the inputs and returns the argv; `says` are the
    fragments the message must hold ({tmp} is the test's folder); `absent` must not exist afterwards."""

    setup: Callable[[Path], list[str]]
    says: list[str]
    absent: list[str] = field(default_factory=lambda: ["out", "results", "mlflow.db"])
    env: dict[str, str] = field(default_factory=dict)


def spec_run(text: str, *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "spec.yaml").write_text(textwrap.dedent(text))
        return ["run", str(tmp / "spec.yaml"), "--storage", str(tmp / "results"), "--no-register", *extra]
    return setup


def prepare(break_it: Callable[[Path], None], *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        break_it(kaggle(tmp / "src"))
        return ["data", "prepare", f"kaggle:{tmp / 'src'}", str(tmp / "out"), *extra]
    return setup


def _corrupt(src: Path) -> None:
    (src / "train" / "tr04.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def _unlabeled(src: Path) -> None:
    png(src / "train" / "stray.png", 99)


def _unknown_label(src: Path) -> None:
    edit_csv(src / "train.csv", lambda rows: rows[3].__setitem__(1, "7"))  # an integer among names


def _duplicate_id(src: Path) -> None:
    edit_csv(src / "train.csv", lambda rows: rows.append(list(rows[2])))


def _wrong_size(src: Path) -> None:
    png(src / "train" / "tr01.png", 1, size=40)


def _empty_class(src: Path) -> None:  # integer labels 0 and 2: class 1 has no image
    edit_csv(src / "train.csv", lambda rows: [row.__setitem__(1, "2" if row[1] == "dog" else "0") for row in rows[1:]])


def _test_ids_mismatch(src: Path) -> None:
    edit_csv(src / "sample_submission.csv", lambda rows: rows[1].__setitem__(0, "te9"))


def _score_mismatch(tmp: Path) -> list[str]:
    write_rows(tmp / "solution.csv", [("a", "1"), ("b", "2"), ("c", "3")])
    write_rows(tmp / "submission.csv", [("a", "1"), ("c", "3"), ("z", "9")])
    return ["score", str(tmp / "submission.csv"), str(tmp / "solution.csv")]


def _existing_out(tmp: Path) -> list[str]:
    (tmp / "ds").mkdir()
    (tmp / "ds" / "keep.txt").write_text("old")
    return ["data", "prepare", "synthetic:20", str(tmp / "ds")]


def _missing_checkpoint(tmp: Path) -> list[str]:
    return ["submit", "--model", str(tmp / "nope" / "state.pt"), "--data", "synthetic:20", "--out",
            str(tmp / "out" / "submission.csv")]


def _prepared(break_it: Callable[[Path], None], *extra: str, spec: str = SPEC) -> Callable[[Path], list[str]]:
    """A prepared synthetic set at {tmp}/ds, broken by `break_it`, then `runner run` on it."""
    def setup(tmp: Path) -> list[str]:
        from runner import data

        data.prepare("synthetic:300", str(tmp / "ds"))
        break_it(tmp / "ds")
        return spec_run(spec, "--data", str(tmp / "ds"), *extra)(tmp)
    return setup


def _flip_a_byte(ds: Path) -> None:
    raw = bytearray((ds / "train.parquet").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the image data: the file still parses, its content changed
    (ds / "train.parquet").write_bytes(bytes(raw))


def _rare_class(tmp: Path) -> list[str]:
    src = kaggle(tmp / "src", per_class=21)
    edit_csv(src / "train.csv", lambda rows: rows[5].__setitem__(1, "dgo"))  # line 6: a typo of dog
    return ["data", "prepare", f"kaggle:{src}", str(tmp / "out")]


def _empty_test_folder(src: Path) -> None:
    for image in (src / "test").iterdir():
        image.unlink()
    (src / "sample_submission.csv").unlink()


def _resume_conflict(tmp: Path) -> list[str]:
    import models
    from runner import spec
    from runner.core import checkpoint

    cfg = spec.trial_config({"data.path": "synthetic:300", "model.name": "wrn_std", "model.depth": 10,
                             "model.width": 1, "train.epochs": 1})
    net = models.build("wrn_std", 10, depth=10, width=1)
    checkpoint.save({"model": net.state_dict(), "config": cfg, "classes": [str(i) for i in range(10)], "epoch": 1},
                    tmp / "ckpt")
    return ["train", "--resume", str(tmp / "ckpt"), "--depth", "16", "--epochs", "2"]


def _nothing_registrable(tmp: Path) -> list[str]:
    """An experiment whose only trial failed: there is nothing to register."""
    from runner.tracking.tracker import Tracker

    with Tracker("errors", f"sqlite:///{tmp / 'store' / 'mlflow.db'}", staging_dir=tmp) as tracker:
        tracker.start_parent()
        tracker.finish_trial(tracker.start_trial("t0", "row-0", {"model": {"name": "wrn_std"}}), "FAILED")
        tracker.finish_parent("FAILED")
    return ["register", "errors"]


def _no_test_split(tmp: Path) -> list[str]:
    """A prepared data set of class folders only (folder:DIR without test/)."""
    from runner import data

    for k, label in enumerate(CLASSES * 2):
        (tmp / "src" / label).mkdir(parents=True, exist_ok=True)
        png(tmp / "src" / label / f"{k}.png", k)
    data.prepare(f"folder:{tmp / 'src'}", str(tmp / "ds"))
    return [*spec_run(SPEC)(tmp)[:4], "--data", str(tmp / "ds"), "--submission", str(tmp / "sub.csv")]


def _resume_changed_spec(tmp: Path) -> list[str]:
    """Earlier invocations: another spec's (`errors-ddp-...`) and this spec's name with another sha256."""
    for name, sha in (("errors-ddp-20261130-101010", None), ("errors-20261130-090909", "0" * 64)):
        (tmp / "results" / name).mkdir(parents=True)
        if sha:
            (tmp / "results" / name / "runner-invocation.json").write_text(f'{{"spec_sha256": "{sha}"}}')
    return spec_run(SPEC, "--resume")(tmp)


RAY_PORT = closed_port()
MLFLOW_PORT = closed_port()

CASES: dict[str, Case] = {
    "spec file missing": Case(lambda tmp: ["run", str(tmp / "nope.yaml")],
                              ["{tmp}/nope.yaml", "cannot read the spec", "check the path"]),
    "spec syntax error": Case(spec_run("name: errors\nbase:\n  train: {epochs: 2\n  model: {name: wrn}\n"),
                              ["{tmp}/spec.yaml", "YAML syntax error", "line 3", "fix the YAML"]),
    "unknown key": Case(spec_run(SPEC + "  optimizer: {learning_rate: 0.1}\n"),
                        ["{tmp}/spec.yaml", "row 'base'", "field optimizer.learning_rate", "unknown key",
                         "allowed: name, lr"]),
    "wrong type": Case(spec_run(SPEC.replace("epochs: 1", "epochs: three")),
                       ["{tmp}/spec.yaml", "field train.epochs", "must be an integer, got 'three'"]),
    "impossible value": Case(spec_run(SPEC + "  optimizer: {lr: -0.1}\n"),
                             ["{tmp}/spec.yaml", "field optimizer.lr", "must be > 0 (got -0.1)"]),
    "rows extending in a circle": Case(
        spec_run(SPEC + "runs:\n  - {name: a, extends: b}\n  - {name: b, extends: a}\n"),
        ["{tmp}/spec.yaml", "row 'a'", "field extends", "goes round in a circle: a -> b -> a"]),
    "extends an unknown row": Case(spec_run(SPEC + "runs:\n  - {name: a, extends: E99}\n"),
                                   ["{tmp}/spec.yaml", "row 'a'", "field extends", "no row 'E99'", "rows: a"]),
    "unknown model": Case(spec_run(SPEC.replace("name: wrn_std", "name: vgg16")),
                          ["{tmp}/spec.yaml", "field model", "vgg16", "wrn"]),
    "model over the cap under enforce": Case(
        spec_run(SPEC.replace("name: wrn_std, depth: 10, width: 1", "name: wrn, depth: 28, width: 10")),
        ["{tmp}/spec.yaml", "row 'base'", "field model", "5,000,000", "budget.mode: flag"]),
    "out-of-range --set": Case(spec_run(SPEC, "--set", "optimizer.momentum=1.5"),
                               ["{tmp}/spec.yaml", "field optimizer.momentum", "--set optimizer.momentum=1.5",
                                "must be in [0, 1)"]),
    "malformed --set": Case(spec_run(SPEC, "--set", "train.epochs"),
                            ["--set 'train.epochs'", "dotted.key=value"]),
    "data dir missing (run)": Case(spec_run(SPEC, "--data", "/nonexistent/cifar"),
                                   ["{tmp}/spec.yaml", "row 'base'", "field data.path", "/nonexistent/cifar",
                                    "not a prepared data set", "runner data prepare"]),
    "data dir missing (prepare)": Case(lambda tmp: ["data", "prepare", f"kaggle:{tmp / 'nope'}", str(tmp / "out")],
                                       ["{tmp}/nope", "data directory not found", "check the path"]),
    "corrupt image": Case(prepare(_corrupt), ["corrupt image {tmp}/src/train/tr04.png", "replace or delete it"]),
    "unlabeled image": Case(prepare(_unlabeled), ["{tmp}/src/train/stray.png", "no row in {tmp}/src/train.csv",
                                                  "add rows for them or delete the files"]),
    "unknown label": Case(prepare(_unknown_label), ["unknown label '7'", "{tmp}/src/train.csv line 4",
                                                    "all class names or all integers"]),
    "duplicate id": Case(prepare(_duplicate_id), ["duplicate id 'tr01'", "{tmp}/src/train.csv", "lines 3 and 8",
                                                  "keep one row"]),
    "wrong image size": Case(prepare(_wrong_size), ["{tmp}/src/train/tr01.png is 40x40, expected 32x32", "--resize"]),
    "empty class": Case(prepare(_empty_class), ["empty class in {tmp}/src/train.csv", "'1' has no training images",
                                                "add images"]),
    "test ids not matching sample_submission": Case(
        prepare(_test_ids_mismatch), ["{tmp}/src/sample_submission.csv", "te9", "te0", "no image in {tmp}/src/test",
                                      "list every test image once"]),
    "prepare over an existing OUT": Case(_existing_out, ["{tmp}/ds already exists", "--overwrite"], absent=[]),
    "submission with missing/extra ids (score)": Case(
        _score_mismatch, ["{tmp}/solution.csv", "{tmp}/submission.csv", "1 ids", "['b']", "['z']",
                          "same data set's test split"], absent=[]),
    "submit from a missing checkpoint": Case(_missing_checkpoint, ["{tmp}/nope/state.pt", "no such checkpoint",
                                                                   "models:/NAME@alias"]),
    "corrupt train.parquet": Case(_prepared(_flip_a_byte),
                                  ["{tmp}/spec.yaml", "row 'base'", "field data.path", "{tmp}/ds/train.parquet",
                                   "does not match the sha256", "runner data prepare synthetic:300 {tmp}/ds"]),
    "corrupt meta.json": Case(_prepared(lambda ds: (ds / "meta.json").write_text('{"classes": [')),
                              ["{tmp}/spec.yaml", "field data.path", "{tmp}/ds/meta.json is not valid JSON",
                               "prepare the data again"]),
    "classes differ from data.num_classes": Case(
        spec_run(SPEC.replace('{path: "synthetic:300"}', '{path: "synthetic:300", num_classes: 100}')),
        ["{tmp}/spec.yaml", "row 'base'", "field data.num_classes",
         "the spec says 100 classes but synthetic:300 has 10", "fix data.num_classes"]),
    "rare class (a likely typo)": Case(_rare_class, ["rare class in {tmp}/src/train.csv", "'dgo' has 1 image(s)",
                                                     "line 6 (id 'tr04')", "nearest existing classes: 'dog'",
                                                     "--allow-rare-classes"]),
    "empty test folder": Case(prepare(_empty_test_folder), ["{tmp}/src/test holds no images", "empty test split"]),
    "resume from a missing checkpoint": Case(lambda tmp: ["train", "--resume", str(tmp / "nope")],
                                             ["no checkpoint at {tmp}/nope", "state.pt"]),
    "resume with a conflicting flag": Case(_resume_conflict, ["--depth 16 conflicts with the checkpoint's "
                                                              "model.depth=10", "{tmp}/ckpt", "drop --depth"]),
    "RAY_ADDRESS unreachable": Case(spec_run(SPEC), [f"RAY_ADDRESS=127.0.0.1:{RAY_PORT}", "nothing answers",
                                                     "ray start --head", "unset RAY_ADDRESS"],
                                    env={"RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}"}),
    "MLflow unreachable": Case(spec_run(SPEC), [f"http://127.0.0.1:{MLFLOW_PORT}", "unreachable",
                                                "MLFLOW_TRACKING_URI"],
                               env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}"}),
    "resume with nothing to resume": Case(spec_run(SPEC, "--resume"), ["--resume", "no earlier run of 'errors'",
                                                                       "{tmp}/results", "without --resume"]),
    "resume of a changed spec": Case(_resume_changed_spec, [
        "--resume", "no earlier run of this version of {tmp}/spec.yaml", "errors-20261130-090909 ran another version",
        "pass --resume errors-20261130-090909"], absent=["out", "mlflow.db"]),
    "--max-concurrent below 1": Case(spec_run(SPEC, "--max-concurrent", "0"),
                                     ["--max-concurrent", "must be at least 1, got 0", "leave it out"]),
    "--submission without registering": Case(spec_run(SPEC, "--submission", "sub.csv"),
                                             ["--submission", "registered model", "drop --no-register"]),
    "--submission of a data set without a test split": Case(
        _no_test_split, ["--submission", "{tmp}/ds has no test split", "prepare one with a test split"],
        absent=["out", "results", "mlflow.db"]),
    "nothing registrable": Case(_nothing_registrable, ["errors: no FINISHED trial has metric 'val_acc'",
                                                       "finish a trial first"], absent=["out", "results"],
                                env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/store/mlflow.db"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_location_and_fix(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    row = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # `connect` sets these; keep them to this test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    for key, value in row.env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    argv = row.setup(tmp_path)
    capsys.readouterr()  # what setting the case up printed is not the command's output
    before = set(os.listdir(tmp_path))

    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("runner: error: ") and "Traceback" not in captured.err, captured.err
    for fragment in row.says:
        assert fragment.format(tmp=tmp_path) in message, f"{fragment!r} not in: {message}"
    for name in row.absent:
        assert not (tmp_path / name).exists(), f"{case}: left {name}"
    assert set(os.listdir(tmp_path)) == before, f"{case}: left {set(os.listdir(tmp_path)) - before}"


def test_docs_list_every_case_with_its_message() -> None:
    text = (ROOT / "docs" / "errors.md").read_text().split("## Bad input catalogue", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| (.+) \| (.+) \| (.+) \|$", text, flags=re.MULTILINE)
    listed = [case for case, *_ in rows if case != "case"]
    assert sorted(listed) == sorted(CASES), set(listed) ^ set(CASES)
    for case, command, message, fix in rows:
        assert command.strip("`") and message.strip("`") and fix, case


# ---------------------------------------------------------------- security
def test_what_the_project_starts_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from runner.tune import cluster

    started = {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    cluster.start_ray(1)
    assert started["dashboard_host"] == "127.0.0.1"  # the Jobs API runs code: never on a public interface
    # (tests/test_faults.py checks the running dashboard's own command line during a real `runner run`)
    assert re.search(r"^ui:.*\n\t.*mlflow ui .*--host 127\.0\.0\.1", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert '"--host", "127.0.0.1"' in (ROOT / "tests" / "conftest.py").read_text()  # the test MLflow server
    assert "--dashboard-host=127.0.0.1" in (ROOT / "tests" / "test_job_submit.py").read_text()  # `ray start`


def test_secrets_stay_out_of_mlflow_and_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from mlflow import MlflowClient

    from runner.tracking import tracker as tracking
    from runner.tracking.connection import TrackingError
    from runner.tune import callbacks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"data": {"path": "synthetic:20", "api_key": "hunter2"}, "model": {"name": "wrn_std", "depth": 10},
              "store": {"credentials": {"user": "ann", "pass": "s3cret"}, "token": ["t0k3n"]}}
    with tracking.Tracker("secrets", uri, staging_dir=tmp_path) as tracker:
        tracker.start_parent()
        run_id = tracker.start_trial("t0", "row", config)
        bridge = callbacks.Tracking(tracker, {}, {}, str(tmp_path))
        assert pickle.loads(pickle.dumps(bridge)).tracker is None  # Tune pickles callbacks into tuner.pkl
        tracker.finish_trial(run_id)
        tracker.finish_parent()
    client = MlflowClient(uri)
    params = client.get_run(run_id).data.params
    assert params["data.api_key"] == params["store.credentials"] == params["store.token"] == "***"
    assert params["data.path"] == "synthetic:20"
    resolved = Path(client.download_artifacts(run_id, "config/resolved.yaml", str(tmp_path))).read_text()
    assert "synthetic:20" in resolved and not {"hunter2", "s3cret", "ann", "t0k3n"} & set(re.findall(r"\w+", resolved))

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingError) as err:
        tracking.Tracker("secrets", f"http://ann:s3cret@127.0.0.1:{closed_port()}")
    assert "http://***@127.0.0.1" in str(err.value) and "s3cret" not in str(err.value)


def test_every_exit_status_and_fault_row_names_tests_that_exist() -> None:
    """docs/errors.md's exit-status and fault tables name their tests: each must exist in tests/."""
    text = (ROOT / "docs" / "errors.md").read_text()
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for section in ("## Exit status", "## Faults during a run"):
        table = text.split(section, 1)[1].split("\n## ", 1)[0]
        named = re.findall(r"`(test_\w+)`", table)
        assert named, section
        missing = [name for name in named if f"def {name}(" not in sources]
        assert not missing, f"{section}: {missing}"
    statuses = re.findall(r"^\| (\d+) \|", text.split("## Exit status", 1)[1].split("\n## ", 1)[0], re.MULTILINE)
    assert statuses == ["0", "1", "2", "130", "143"]
