"""`runner run SPEC`: one invocation = one MLflow parent run = one Tune experiment.

Order matters, and every refusal comes before anything is spent: the spec is validated, the data
sets' meta.json read, the parameter budget enforced and MLflow reached (fail fast) before Ray starts;
the resource arithmetic is checked against the cluster before the Tuner starts. At the end: the
results table (printed, CSV beside the Ray results, Markdown in MLflow), then the best in-budget
trial is registered and, on request, a submission written from it.
"""

from __future__ import annotations

import csv
import os
import time

from runner import budget, data, report, resources, spec, tracking
from runner.commands import num_classes

DEFAULT_STORAGE = "results"


def run_spec(path: str, overrides: list[str], *, max_concurrent: int | None, scheduler: str | None,
             storage: str | None, resume: str | None, num_cpus: float | None, register_as: str | None,
             submission: str | None, tta: int) -> int:
    loaded = spec.load_spec(path, overrides)
    _preflight(loaded)
    storage = _storage(storage)
    experiment = _experiment_name(loaded.name, storage, resume)
    with tracking.Tracker(loaded.name) as tracker:  # fails fast, naming the URI, when MLflow is unreachable
        restore_signals = tracking.install_signal_handlers(tracker)
        try:
            tracker.start_parent(spec_path=path, run_name=experiment, invocation_id=experiment,
                                 resume=resume is not None)
            rows, failed = _tune(loaded, experiment, storage, tracker, max_concurrent=max_concurrent,
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
        _register_and_submit(loaded, register_as or loaded.name, submission, tta)
    return 0


def _preflight(loaded: spec.Spec) -> None:
    """Data readable and every trial within budget (or flagged) before any process starts."""
    metas = {}
    for trial in loaded.trials:
        path = trial.config["data"]["path"]
        if path not in metas:
            metas[path] = data.read_meta(path)
        classes, _ = num_classes(trial.config)
        try:
            budget.enforce(trial.config["model"], classes, trial.config["budget"])
        except budget.BudgetError as err:
            raise budget.BudgetError(f"{loaded.path}: row {trial.name!r}: field model: {err}; set "
                                     "budget.mode: flag to train it anyway (it will never be registered)") from err


def _tune(loaded: spec.Spec, experiment: str, storage: str, tracker: tracking.Tracker, *,
          max_concurrent: int | None, scheduler: str | None, restore: bool,
          num_cpus: float | None) -> tuple[list[dict], list[str]]:
    import ray

    from runner import callbacks, tune

    _start_ray(num_cpus)
    needs = [resources.need_of(t.name, t.config["scaling"]) for t in loaded.trials]
    concurrency = resources.plan_concurrency(needs, ray.cluster_resources(), max_concurrent)
    print(f"{loaded.name}: {len(loaded.trials)} trial(s), {concurrency} at a time; experiment {experiment}")
    progress = callbacks.Progress()
    bridge = callbacks.Tracking(tracker, {t.name: t.reported for t in loaded.trials},
                                {t.name: _budget_tags(t) for t in loaded.trials}, storage)
    started = time.monotonic()
    grid = tune.run_tuner(loaded.trials, experiment=experiment, storage=storage, max_concurrent=concurrency,
                          scheduler=scheduler, callbacks=[progress, bridge], restore=restore)
    failed = [r.config["trial"]["name"] for r in grid if r.error is not None]
    by_name = {t.name: t for t in loaded.trials}
    seconds = {r.config["trial"]["name"]: (r.metrics or {}).get("time_total_s") for r in grid}
    rows = []
    for trial_id, row in bridge.rows.items():
        trial = by_name[row["trial"]]
        rows.append({**row, "varied": trial.overrides, "start_s": progress.first_result_s.get(trial_id),
                     "time_s": seconds.get(row["trial"])})
    print(f"grid wall time {time.monotonic() - started:.1f} s")
    return rows, failed


def _budget_tags(trial: spec.Trial) -> dict:
    """Known before training, so even a trial that fails early carries its verdict."""
    verdict = budget.check(trial.config["model"], num_classes(trial.config)[0], trial.config["budget"]["max_params"])
    return {"params": verdict.params, "within_budget": str(verdict.within).lower()}


def _start_ray(num_cpus: float | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        except Exception as err:  # noqa: BLE001 - Ray raises several unrelated types here
            raise resources.ResourceError(
                f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} is unreachable ({type(err).__name__}: {err}); start the "
                "cluster (`ray up cluster.yaml` / `ray start --head`) or unset RAY_ADDRESS for a local Ray") from err
        return
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             configure_logging=True, logging_level="warning")


def _storage(storage: str | None) -> str:
    chosen = storage or os.environ.get("RUNNER_STORAGE") or DEFAULT_STORAGE
    return chosen if "://" in chosen else os.path.abspath(chosen)


def _experiment_name(spec_name: str, storage: str, resume: str | None) -> str:
    if resume is None:
        return f"{spec_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume != "latest":
        return resume
    if "://" in storage:
        raise spec.SpecError("--resume", "name the experiment to resume when storage is remote "
                                         f"(--resume {spec_name}-YYYYmmdd-HHMMSS)")
    candidates = sorted(d for d in os.listdir(storage) if d.startswith(f"{spec_name}-")) \
        if os.path.isdir(storage) else []
    if not candidates:
        raise spec.SpecError("--resume", f"no earlier run of {spec_name!r} under {storage}")
    return candidates[-1]


def _save_csv(table: list[dict], storage: str, experiment: str) -> str:
    target = f"{storage}/{experiment}/results.csv"
    if "://" in storage:
        return target  # the same table is in MLflow; remote storage is written by Ray only
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temp = target + ".tmp"
    with open(temp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]) if table else ["trial"])
        writer.writeheader()
        writer.writerows(table)
    os.replace(temp, target)
    return target


def _register_and_submit(loaded: spec.Spec, model_name: str, submission: str | None, tta: int) -> None:
    from runner import registry, submit

    outcome = registry.register_best(loaded.name, name=model_name)  # prints the alias comparison
    if submission and outcome.version is not None:
        data_path = loaded.trials[0].config["data"]["path"]
        submit.make_submission(f"models:/{model_name}/{outcome.version}", data_path, submission, tta=tta)
        print(f"submission: {submission}")
