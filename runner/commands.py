"""What the light `runner` commands do: list models, train one trial in-process, check specs.

Each function takes parsed values (never argparse objects' internals beyond plain fields), prints
for a person, and returns the exit status. Heavier jobs live in their own modules (`experiment.py`
for `runner run`, `registry.py`, `submit.py`, `report.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import models
from runner import budget, data, spec


def show_models(num_classes: int, max_params: int) -> int:
    rows = []
    for label, model_cfg in models.presets():
        verdict = budget.check(model_cfg, num_classes, max_params)
        note = "within cap" if verdict.within else "OVER cap"
        if not verdict.within and verdict.suggestion:
            note += f"; nearest under: {verdict.suggestion}"
        rows.append((label, f"{verdict.params:,}", note))
    print(f"parameter counts at {num_classes} classes, cap {max_params:,}")
    _print_table(("model", "params", "verdict"), rows)
    return 0


def train_once(overrides: dict, sets: Iterable[str], *, out: str | None, resume: str | None) -> int:
    """`runner train`: one trial in this process, printing each epoch; no Ray, no MLflow."""
    from runner import train

    flat = dict(overrides)
    for item in sets:
        key, value = spec.parse_override(item)
        flat[key] = value
    cfg = spec.trial_config(flat)
    meta = data.read_meta(cfg["data"]["path"])
    train_split, val_split = data.load_train_shard(cfg["data"]["path"], rank=0, world=1,
                                                   val_fraction=cfg["data"]["val_fraction"],
                                                   seed=cfg["train"]["seed"])
    state = train.load_checkpoint(resume) if resume else None
    epochs = cfg["train"]["epochs"]
    print(f"training {cfg['model']} on {cfg['data']['path']}: {len(train_split.ids)} train, "
          f"{len(val_split.ids)} val images, {epochs} epochs")

    def report(metrics: dict, state_fn) -> None:  # noqa: ANN001 - the Reporter protocol
        print(format_epoch(metrics, epochs), flush=True)
        if out:
            train.save_checkpoint(state_fn(), out)

    result = train.fit(cfg, train_split, val_split, meta.classes, report, resume=state)
    note = "" if result.within_budget else " (OVER the parameter cap: flagged, never registered)"
    print(f"done: best val_acc {result.best_val_acc:.4f}, {result.params:,} parameters{note}")
    return 0


def format_epoch(metrics: dict, epochs: int) -> str:
    return (f"epoch {metrics['epoch']}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_acc']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_acc']:.4f}  lr {metrics['lr']:.4g}  "
            f"{metrics['images_per_s']:.0f} img/s  {metrics['epoch_s']:.1f} s")


def check_specs(paths: list[str], overrides: list[str]) -> int:
    """`runner check`: validate, resolve and print each spec's trials with real parameter counts."""
    for path in paths:
        loaded = spec.load_spec(path, overrides)
        print(f"\n{path}: spec {loaded.name!r}, {len(loaded.trials)} trial(s)")
        rows = []
        for trial in loaded.trials:
            cfg = trial.config
            classes, source = num_classes(cfg)
            verdict = budget.check(cfg["model"], classes, cfg["budget"]["max_params"])
            within = "yes" if verdict.within else f"NO ({cfg['budget']['mode']})"
            if not verdict.within and cfg["budget"]["mode"] == "enforce":
                raise budget.BudgetError(f"{path}: row {trial.name!r}: field model: {verdict.message()}; "
                                         "set budget.mode: flag to train it anyway (never registered)")
            model = " ".join(f"{k}={v}" for k, v in cfg["model"].items())
            s = cfg["scaling"]
            rows.append((trial.name, model, f"{verdict.params:,}", f"{classes}{source}", within,
                         f"{s['workers']}x(cpu {s['cpus_per_worker']:g}, gpu {s['gpus_per_worker']:g})",
                         str(cfg["train"]["epochs"])))
        _print_table(("trial", "model", "params", "classes", "in budget", "workers", "epochs"), rows)
    return 0


def num_classes(cfg: dict) -> tuple[int, str]:
    """From the data set's meta.json when readable; else `data.num_classes`; else 10, said so."""
    try:
        return len(data.read_meta(cfg["data"]["path"]).classes), ""
    except (data.DataError, OSError):
        if cfg["data"]["num_classes"]:
            return cfg["data"]["num_classes"], " (spec)"
        return 10, " (assumed)"


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())



def register(spec_name: str | None, *, run_id: str | None, metric: str, name: str, alias: str) -> int:
    """`runner register`: the best in-budget trial of a spec's latest run (or one run) -> version + alias."""
    from runner import registry

    if bool(spec_name) == bool(run_id):
        raise ValueError("runner register: give a SPEC_NAME (its latest run's best trial) or --run-id, not both")
    if run_id:
        registry.register_run(run_id, metric=metric, name=name, alias=alias)
    else:
        registry.register_best(spec_name, metric=metric, name=name, alias=alias)
    return 0


def submit(model_uri: str, data_path: str, out: str, *, tta: int) -> int:
    from runner.submit import make_submission

    path = make_submission(model_uri, data_path, out, tta=tta)
    print(f"wrote {path}")
    return 0


def score(submission_csv: str, solution_csv: str) -> int:
    from runner.submit import score as accuracy

    print(f"accuracy {accuracy(submission_csv, solution_csv):.4f}")
    return 0


def report(spec_name: str, *, fmt: str, out: str | None) -> int:
    """`runner report`: the spec's latest run from MLflow, the report's figures beside the replayed ones."""
    from runner import report as tables
    from runner.tracking import fetch_trial_rows

    table = tables.results_table(fetch_trial_rows(spec_name))
    text = tables.to_markdown(table) if fmt == "md" else tables.to_csv_text(table)
    if out:
        tables.atomic_write_text(out, text)
        print(f"wrote {out}")
    else:
        print(text, end="")
    return 0


def reconcile(spec_name: str | None) -> int:
    """`runner mlflow reconcile`: runs left RUNNING by a killed driver are marked KILLED."""
    from runner.tracking import reconcile as end_orphans

    ended = end_orphans(spec_name)
    print(f"marked {len(ended)} run(s) KILLED" + (f": {', '.join(ended)}" if ended else ""))
    return 0
