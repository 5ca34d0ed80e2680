"""`runner run SPEC`: one invocation = one MLflow parent run = one Tune experiment.

Order matters, and every refusal comes before anything is spent or written: the command's arguments,
the spec, the data sets' meta.json and the parameter budget, RAY_ADDRESS and MLflow (reached, not yet
written), then Ray starts and the resource arithmetic is checked against the cluster. Only then is the
MLflow parent run created and the Tuner started. At the end: the results table (every trial, whatever
became of it; printed, CSV beside the Ray results, Markdown in MLflow), then the best in-budget trial is
registered and, on request, a submission written from it.

Exit status: 0; 1 when a trial failed or MLflow did not get every write (tracking incomplete);
128 + signal (130 SIGINT, 143 SIGTERM) when interrupted; 2 for a refusal (raised as a ValueError).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

from runner import data, keys, report, resources, spec
from runner import storage as store
from runner.core import budget
from runner.masking import redact
from runner.tracking.tracker import Tracker
from runner.tune import callbacks, cluster, gpus, invocation, tuner
from runner.tune import search as tune_search
from runner.tune.interrupts import Interrupted, Interrupts

DEFAULT_TRACKING_WAIT_S = 300.0  # after the grid, how long an unreachable MLflow may take to come back
INTERRUPTED_WAIT_S = 10.0  # the same after an interrupt: `ray job stop` SIGKILLs a few seconds later


@dataclass
class Outcome:
    rows: list[dict]
    failed: list[str]
    tracking_error: str | None


def run_spec(path: str, overrides: list[str], *, max_concurrent: int | None, scheduler: str | None,
             storage: str | None, resume: str | None, num_cpus: float | None, register_as: str | None,
             submission: str | None, eval: dict | None, tracking_wait: float | None = None) -> int:
    tracking_wait = DEFAULT_TRACKING_WAIT_S if tracking_wait is None else tracking_wait
    invocation.check_arguments(max_concurrent=max_concurrent, num_cpus=num_cpus, register_as=register_as,
                               submission=submission, tracking_wait=tracking_wait)
    loaded = spec.load_spec(path, overrides)
    scheduler = scheduler or (loaded.search.scheduler if loaded.search else None)  # --scheduler wins
    storage = invocation.storage_root(storage)
    verdicts, metas = _preflight(loaded, storage)
    invocation.check_submission_data(loaded, metas, submission)
    experiment = (invocation.new_name(loaded.name, storage) if resume is None
                  else invocation.resume_name(loaded, storage, resume))
    # reaches MLflow now (fails fast, naming the URI) and writes nothing until the grid starts
    tracker = Tracker(loaded.name, outage_timeout_s=tracking_wait, datasets=metas)
    cluster.start_ray(num_cpus)
    capacity = cluster.capacity()
    choice = gpus.choose(capacity, cluster.describe())
    auto = any(gpus.says_auto(t) for t in _shapes(loaded))
    loaded = dataclasses.replace(loaded, trials=gpus.resolve(loaded.trials, choice))  # what the trials run with
    if loaded.search is not None:  # every sample the gate lets through runs with the same choice
        loaded = dataclasses.replace(loaded, search=_resolved_gpus(loaded.search, choice))
    needs = [resources.need_of(t.name, t.config["scaling"]) for t in _shapes(loaded)]
    concurrency = resources.plan_concurrency(needs, capacity, max_concurrent)
    if resume is None:
        invocation.write_record(storage, experiment, loaded)
    what = (f"a {loaded.search.algorithm} search of {loaded.search.num_samples} samples" if loaded.search
            else f"{len(loaded.trials)} trial(s)")
    print(f"{loaded.name}: {what}, {concurrency} at a time; experiment {experiment}"
          + (f"; {choice.describe()}" if auto else ""))
    interrupts = Interrupts()
    with interrupts.installed():
        outcome = _grid(loaded, verdicts, tracker, interrupts, experiment=experiment, storage=storage,
                        concurrency=concurrency, scheduler=scheduler, resume=resume is not None,
                        wait=tracking_wait, metas=metas)
    table = report.results_table(outcome.rows)
    print("\n" + report.to_markdown(table))
    print(f"results: {_save_csv(table, storage, experiment)}")
    return _verdict(loaded, outcome, interrupts, experiment, register_as, submission, eval)


def _verdict(loaded: spec.Spec, outcome: Outcome, interrupts: Interrupts, experiment: str,
             register_as: str | None, submission: str | None, eval: dict | None) -> int:
    if interrupts.signal:
        killed = [r["trial"] for r in outcome.rows if r["status"] == "KILLED"]
        waiting = [r["trial"] for r in outcome.rows if r["status"] == "NOT STARTED"]
        print(f"runner: interrupted by {interrupts.name}: {len(killed)} trial(s) ended KILLED"
              f"{' (' + ', '.join(killed) + ')' if killed else ''}, {len(waiting)} not started; nothing registered. "
              f"Continue with: runner run {loaded.path} --resume {experiment}", file=sys.stderr)
        return interrupts.exit_code
    if outcome.tracking_error:
        print(f"runner: error: tracking incomplete: {outcome.tracking_error}. The results above are complete "
              f"(results.csv); MLflow's runs are not, so nothing was registered", file=sys.stderr)
    if outcome.failed:
        print(f"runner: {len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)}", file=sys.stderr)
    if outcome.failed or outcome.tracking_error:
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
    for trial in _shapes(loaded):
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
        if loaded.search is not None:
            continue  # a search judges each sample's budget as it draws it (runner/tune/search.py)
        try:
            verdicts[trial.name] = budget.enforce(trial.config["model"], metas[path].num_classes,
                                                  trial.config["budget"])
        except budget.BudgetError as err:
            fix = "" if "budget.mode: flag" in str(err) else "; set budget.mode: flag to train it anyway"
            raise budget.BudgetError(f"{where}: field model: {err}{fix} (it will never be registered)") from err
    return verdicts, metas


def _grid(loaded: spec.Spec, verdicts: dict[str, budget.Verdict], tracker: Tracker, interrupts: Interrupts, *,
          experiment: str, storage: str, concurrency: int, scheduler: str | None, resume: bool,
          wait: float, metas: dict[str, data.Meta]) -> Outcome:
    progress = callbacks.Progress()
    budgets = {name: {"params": v.params, "within_budget": v.within} for name, v in verdicts.items()}
    bridge = callbacks.Tracking(tracker, {t.name: t.reported for t in loaded.trials}, budgets, storage)
    gate = tune_search.gate(loaded.search, metas, budgets) if loaded.search else None
    bridge.writer.submit("start the parent run", lambda: tracker.start_parent(
        spec_path=loaded.path, run_name=experiment, invocation_id=experiment, resume=resume))
    started = time.monotonic()
    try:
        with interrupts.tuning():
            grid = tuner.run_tuner(loaded.trials, experiment=experiment, storage=storage,
                                  max_concurrent=concurrency, scheduler=scheduler, callbacks=[progress, bridge],
                                  restore=resume, driver_resource=cluster.driver_resource(), search=gate)
    except Interrupted:  # before Tune could stop the grid itself: no trial had started
        grid = []
    print(f"grid wall time {time.monotonic() - started:.1f} s")
    if interrupts.signal:
        bridge.end("KILLED")
    rows = tune_search.rows(gate, bridge, grid, progress) if gate else _rows(loaded, bridge, grid, progress)
    failed = [r["trial"] for r in rows if r["status"] == "FAILED"]
    status = "KILLED" if interrupts.signal else "FAILED" if failed else "FINISHED"
    wait = INTERRUPTED_WAIT_S if interrupts.signal else wait
    deadline = time.monotonic() + wait
    bridge.writer.submit("end the parent run", lambda: tracker.finish_parent(status, rows))
    bridge.writer.submit("deliver the last writes", lambda: tracker.close(
        status, timeout_s=max(0.0, deadline - time.monotonic())))
    delivered = bridge.writer.drain(wait + 1.0)
    bridge.writer.stop()
    error = None if delivered else f"MLflow at {tracker.uri} did not take every write within {wait:.0f} s"
    errors = bridge.writer.errors
    if error is None and errors:
        error = errors[0] + (f" (and {len(errors) - 1} more failed MLflow calls)" if len(errors) > 1 else "")
    return Outcome(rows, failed, error)


def _rows(loaded: spec.Spec, bridge: callbacks.Tracking, grid: object, progress: callbacks.Progress) -> list[dict]:
    """Every trial of the spec, in spec order: what the driver saw of it, else (finished in an earlier
    attempt of a resumed run, or never started) what Tune's record says."""
    seen = {row["trial"]: row for row in bridge.rows()}
    results = {r.config["trial"]["name"]: r for r in grid}
    varied = sorted({key for t in loaded.trials for key in t.overrides})
    rows = []
    for trial in loaded.trials:
        result = results.get(trial.name)
        row = seen.get(trial.name)
        if row is None:
            row = _row_from_tune(trial, result)
            if row["status"] in ("FINISHED", "STOPPED", "FAILED"):
                bridge.settle(result, row["status"])
        trial_id = row.get("trial_id")
        rows.append({**row, "varied": {key: keys.get(trial.config, key) for key in varied},
                     "start_s": progress.first_result_s.get(trial_id),
                     "time_s": (result.metrics or {}).get("time_total_s") if result is not None else None})
    return rows


def _row_from_tune(trial: spec.Trial, result: object) -> dict:
    metrics = (getattr(result, "metrics", None) or {}) if result is not None else {}
    epoch = metrics.get("epoch")
    if getattr(result, "error", None) is not None:
        status = "FAILED"
    elif epoch is None:
        status = "NOT STARTED"
    else:
        status = callbacks.status_after(epoch, trial.config["train"]["epochs"])
    frame = getattr(result, "metrics_dataframe", None)
    best = metrics
    if frame is not None and "val_acc" in frame and len(frame):
        best = frame.loc[frame["val_acc"].idxmax()].to_dict()
    return {"trial": trial.name, "trial_id": metrics.get("trial_id"), "status": status,
            "model": trial.config["model"]["name"], "epochs": epoch, "best_epoch": best.get("epoch"),
            **{k: best.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
            "reported": dict(trial.reported)}


def _resolved_gpus(found: spec.search.Search, choice: gpus.Choice) -> spec.search.Search:
    def resolve(sample: dict, name: str) -> dict:
        return gpus.resolve([spec.Trial(name=name, config=found.resolve(sample, name))], choice)[0].config
    return dataclasses.replace(found, resolve=resolve)


def _shapes(loaded: spec.Spec) -> list[spec.Trial]:
    """The trials whose data, budget and resources the pre-flight checks: a grid's rows, or a search's
    base (every sample shares its data set and scaling; each sample's budget is judged as it is drawn)."""
    return loaded.trials if loaded.search is None else [spec.Trial(name="base", config=loaded.search.base())]


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
        data_path = _shapes(loaded)[0].config["data"]["path"]
        submission.make_submission(f"models:/{model_name}/{outcome.version}", data_path, out, eval=eval)
        print(f"submission: {out}")
