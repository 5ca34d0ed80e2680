"""One `runner run` invocation: its arguments (checked before anything is spent), where it lives (the
storage root) and what it is called (`SPEC-YYYYmmdd-HHMMSS`, the Tune experiment folder, the MLflow
parent run's name), and the record (`runner-invocation.json` in that folder: spec name and sha256) by
which `--resume` without a name finds the spec's own latest invocation.
"""

from __future__ import annotations

import json
import os
import re
import time

from runner import data, spec
from runner import storage as store
from runner.masking import redact

DEFAULT_STORAGE = "results"
RECORD = "runner-invocation.json"
STAMP = r"-\d{8}-\d{6}(-\d+)?"


def check_arguments(*, max_concurrent: int | None, num_cpus: float | None, register_as: str | None,
                    submission: str | None, tracking_wait: float) -> None:
    """`runner run`'s own arguments, before the spec is even read (the spec's fields are the schema's;
    `--tta` is checked by the schema while the command line is parsed)."""
    if max_concurrent is not None and max_concurrent < 1:
        raise spec.SpecError("--max-concurrent", f"must be at least 1, got {max_concurrent}; or leave it out "
                                                 "and the runner derives it from the cluster")
    if num_cpus is not None and num_cpus <= 0:
        raise spec.SpecError("--num-cpus", f"must be > 0, got {num_cpus:g}")
    if tracking_wait < 0:
        raise spec.SpecError("--tracking-wait", f"must be >= 0 seconds, got {tracking_wait:g}")
    if submission is None:
        return
    if register_as == "":
        raise spec.SpecError("--submission", "is written from the registered model: drop --no-register")
    parent = os.path.dirname(os.path.abspath(submission))
    if os.path.isdir(submission):
        raise spec.SpecError("--submission", f"{submission} is a folder; name the CSV file to write")
    existing = next(p for p in _ancestors(parent) if os.path.exists(p))
    if not os.path.isdir(existing):
        raise spec.SpecError("--submission", f"{existing} is a file, so {submission} cannot be written there")


def check_submission_data(loaded: spec.Spec, metas: dict[str, data.Meta], submission: str | None) -> None:
    """A submission predicts the test split of the first trial's data set: it must have one."""
    if submission is None:
        return
    path = loaded.trials[0].config["data"]["path"]
    if "test" not in metas[path].splits:
        raise data.DataError(f"--submission {submission}: the data set {path} has no test split to predict; "
                             "prepare one with a test split (kaggle:DIR with test/ + sample_submission.csv)")


def storage_root(storage: str | None) -> str:
    chosen = storage or os.environ.get("RUNNER_STORAGE") or DEFAULT_STORAGE
    return chosen if store.is_remote(chosen) else os.path.abspath(chosen.removeprefix("file://"))


def new_name(spec_name: str, storage: str) -> str:
    """`SPEC-YYYYmmdd-HHMMSS`, with `-2`, `-3`, ... when that folder exists (two runs in one second):
    a reused name would make Tune and Train resume the old run."""
    name = f"{spec_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    existing = set(store.subfolders(storage))
    taken = 1
    while (name if taken == 1 else f"{name}-{taken}") in existing:
        taken += 1
    return name if taken == 1 else f"{name}-{taken}"


def write_record(storage: str, experiment: str, loaded: spec.Spec) -> None:
    record = {"spec": loaded.name, "spec_path": os.path.abspath(loaded.path), "spec_sha256": loaded.sha256}
    store.write_text(f"{storage}/{experiment}/{RECORD}", json.dumps(record, indent=1) + "\n")


def resume_name(loaded: spec.Spec, storage: str, resume: str) -> str:
    """The experiment `--resume [NAME]` continues (local storage or a bucket: the storage is the record of
    what ran). Without a name: the newest folder named exactly `SPEC-<stamp>` whose record has this spec
    file's sha256, never another spec's `SPEC-ddp-...`."""
    runs = store.subfolders(storage)
    where = redact(storage)
    if resume != "latest":
        if resume not in runs:
            raise spec.SpecError("--resume", f"no experiment {resume!r} under {where}; name one of its folders "
                                             "(or pass the --storage it ran with)")
        return resume
    pattern = re.compile(re.escape(loaded.name) + STAMP)
    own = sorted((d for d in runs if pattern.fullmatch(d)), key=_stamp_order, reverse=True)
    for name in own:
        if _recorded_sha256(f"{storage}/{name}") == loaded.sha256:
            return name
    if own:
        raise spec.SpecError("--resume", f"no earlier run of this version of {loaded.path} under {where}: "
                                         f"{', '.join(own[:3])} ran another version of the spec (its sha256 "
                                         f"differs); pass --resume {own[0]} to continue that one anyway")
    raise spec.SpecError("--resume", f"no earlier run of {loaded.name!r} under {where}; run it without "
                                     "--resume, or pass the --storage it ran with")


def _stamp_order(name: str) -> tuple[str, str, int]:
    day, clock, *taken = re.search(STAMP + "$", name).group(0).split("-")[1:]
    return day, clock, int(taken[0]) if taken else 1


def _recorded_sha256(folder: str) -> str | None:
    try:
        return json.loads(store.read_text(f"{folder}/{RECORD}")).get("spec_sha256")
    except (OSError, ValueError):
        return None


def _ancestors(path: str) -> list[str]:
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out
