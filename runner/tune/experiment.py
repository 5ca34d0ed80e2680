"""`runner run SPEC`: one invocation = one MLflow parent run = one Tune experiment.

Order matters, and every refusal comes before anything is spent: the spec is validated, the data
sets' meta.json read, the parameter budget enforced and MLflow reached (fail fast) before Ray starts;
the resource arithmetic is checked against the cluster before the Tuner starts. At the end: the
results table (printed, CSV beside the Ray results, Markdown in MLflow), then the best in-budget
trial is registered and, on request, a submission written from it.
"""

from __future__ import annotations

import os
import time

from runner import data, report, resources, spec
from runner import storage as store
from runner.core import budget
from runner.masking import redact
from runner.tracking import queries
from runner.tracking.tracker import Tracker, install_signal_handlers
from runner.tune import callbacks, cluster, tuner

DEFAULT_STORAGE = "results"


def run_spec(path: str, overrides: list[str], *, max_concurrent: int | None, scheduler: str | None,
             storage: str | None, resume: str | None, num_cpus: float | None, register_as: str | None,
             submission: str | None, eval: dict | None) -> int:
    loaded = spec.load_spec(path, overrides)
    if loaded.search is not None:  # the Tune side lands with the engine's trial paths (runner/tune/search.py)
        raise spec.SpecError(path, "`runner run` of a `search:` spec is not wired yet; `runner check` shows its "
                                   "space and first samples", field="search")
    storage = _storage(storage)
    verdicts, metas = _preflight(loaded, storage)
    experiment = _experiment_name(loaded.name, storage, resume)
    with Tracker(loaded.name, datasets=metas) as tracker:  # fails fast, naming the URI, when MLflow is unreachable
        restore_signals = install_signal_handlers(tracker)
        try:
            tracker.start_parent(spec_path=path, run_name=experiment, invocation_id=experiment,
                                 resume=resume is not None)
            rows, failed = _tune(loaded, verdicts, experiment, storage, tracker, max_concurrent=max_concurrent,
                                 scheduler=scheduler, restore=resume is not None, num_cpus=num_cpus)
            table = tracker.finish_parent("FAILED" if failed else "FINISHED", rows)
        finally:
            restore_signals()
    print("\n" + report.to_markdown(table))
    print(f"results: {_save_csv(table, storage, experiment)}")
    if failed:
        print(f"runner: {len(failed)} trial(s) failed: {', '.join(failed)}")
        return 1
    if register_as != "":
        _register_and_submit(loaded, register_as or loaded.name, submission, eval)
    return 0


def _preflight(loaded: spec.Spec, storage: str) -> tuple[dict[str, budget.Verdict], dict[str, data.Meta]]:
    """Data readable, every trial within budget (or flagged), RAY_ADDRESS answering and the storage
    writable, before any process starts or anything is written. Each data set's meta.json is read once;
    returns each trial's budget verdict (its real parameter count) and the metas by data path (the
    tracker logs them as the trials' data set inputs)."""
    cluster.probe_ray_address()
    try:
        store.check(storage, write=True)
    except store.StorageError as err:
        raise store.StorageError(f"storage (--storage or RUNNER_STORAGE) {err}") from err
    metas: dict[str, data.Meta] = {}
    verdicts = {}
    for trial in loaded.trials:
        where = f"{loaded.path}: row {trial.name!r}"
        path = trial.config["data"]["path"]
        try:
            if path not in metas:
                store.check(path, write=False)  # an unreachable endpoint fails in seconds, not minutes
                metas[path] = data.verify(path)  # footers and sha256: a corrupt file is refused here, not in workers
        except (data.DataError, store.StorageError) as err:
            raise type(err)(f"{where}: field data.path: {err}") from err
        try:
            data.check_num_classes(metas[path], trial.config["data"]["num_classes"], path)
        except data.DataError as err:
            raise data.DataError(f"{where}: field data.num_classes: {err}") from err
        try:
            verdicts[trial.name] = budget.enforce(trial.config["model"], metas[path].num_classes,
                                                  trial.config["budget"])
        except budget.BudgetError as err:
            fix = "" if "budget.mode: flag" in str(err) else "; set budget.mode: flag to train it anyway"
            raise budget.BudgetError(f"{where}: field model: {err}{fix} (it will never be registered)") from err
    return verdicts, metas


def _tune(loaded: spec.Spec, verdicts: dict[str, budget.Verdict], experiment: str, storage: str,
          tracker: Tracker, *, max_concurrent: int | None, scheduler: str | None, restore: bool,
          num_cpus: float | None) -> tuple[list[dict], list[str]]:
    cluster.start_ray(num_cpus)
    needs = [resources.need_of(t.name, t.config["scaling"]) for t in loaded.trials]
    concurrency = resources.plan_concurrency(needs, cluster.capacity(), max_concurrent)
    print(f"{loaded.name}: {len(loaded.trials)} trial(s), {concurrency} at a time; experiment {experiment}")
    progress = callbacks.Progress()
    bridge = callbacks.Tracking(tracker, {t.name: t.reported for t in loaded.trials},
                                {name: _budget_tags(v) for name, v in verdicts.items()}, storage)
    started = time.monotonic()
    grid = tuner.run_tuner(loaded.trials, experiment=experiment, storage=storage, max_concurrent=concurrency,
                          scheduler=scheduler, callbacks=[progress, bridge], restore=restore)
    failed = [r.config["trial"]["name"] for r in grid if r.error is not None]
    by_name = {t.name: t for t in loaded.trials}
    seconds = {r.config["trial"]["name"]: (r.metrics or {}).get("time_total_s") for r in grid}
    found = list(bridge.rows.items())
    if restore:  # trials that finished before the driver died are not run again: their rows are in MLflow
        seen = {row["trial"] for row in bridge.rows.values()}
        found += [(row["trial_id"], row) for row in map(queries.run_row, queries.trial_runs(
            tracker.client, tracker.experiment_name, tracker.parent_run_id)) if row["trial"] not in seen]
    rows = []
    for trial_id, row in found:
        trial = by_name[row["trial"]]
        rows.append({**row, "varied": trial.overrides, "start_s": progress.first_result_s.get(trial_id),
                     "time_s": seconds.get(row["trial"])})
    print(f"grid wall time {time.monotonic() - started:.1f} s")
    return rows, failed


def _budget_tags(verdict: budget.Verdict) -> dict:
    """Known before training, so even a trial that fails early carries its verdict."""
    return {"params": verdict.params, "within_budget": str(verdict.within).lower()}


def _storage(storage: str | None) -> str:
    chosen = storage or os.environ.get("RUNNER_STORAGE") or DEFAULT_STORAGE
    return chosen if store.is_remote(chosen) else os.path.abspath(chosen.removeprefix("file://"))


def _experiment_name(spec_name: str, storage: str, resume: str | None) -> str:
    if resume is None:
        return f"{spec_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = store.subfolders(storage)  # local or in the bucket: the storage is the record of what ran
    if resume != "latest":
        if resume not in runs:
            raise spec.SpecError("--resume", f"no experiment {resume!r} under {redact(storage)}; name one "
                                             "of its folders (or pass the --storage it ran with)")
        return resume
    candidates = [d for d in runs if d.startswith(f"{spec_name}-")]
    if not candidates:
        raise spec.SpecError("--resume", f"no earlier run of {spec_name!r} under {redact(storage)}; run it without "
                                         "--resume, or pass the --storage it ran with")
    return candidates[-1]


def _save_csv(table: list[dict], storage: str, experiment: str) -> str:
    """Beside Tune's state (a local folder or the bucket); a kill leaves the old file or the new one."""
    target = f"{storage}/{experiment}/results.csv"
    store.write_text(target, report.to_csv_text(table) or "trial\n")
    return redact(target)


def _register_and_submit(loaded: spec.Spec, model_name: str, out: str | None, eval: dict | None) -> None:
    from runner import submission
    from runner.tracking import registry

    outcome = registry.register_best(loaded.name, name=model_name)  # prints the alias comparison
    if out and outcome.version is not None:
        data_path = loaded.trials[0].config["data"]["path"]
        submission.make_submission(f"models:/{model_name}/{outcome.version}", data_path, out, eval=eval)
        print(f"submission: {out}")
