"""The `runner` command (also `python -m runner`): argument parsing and dispatch, nothing else.

    runner models --classes 10
    runner data prepare kaggle:DIR data/cifar10-mini
    runner train --data data/cifar10-mini --model wrn --depth 16 --width 4 --epochs 1
    runner check experiments/*.yaml
    runner check --diff m1_wrn_grid#WRN-16-4 WRN5
    runner schema > experiments/spec.schema.json
    runner run experiments/smoke.yaml
    runner register SPEC_NAME | runner submit ... | runner score SUB SOLUTION | runner report SPEC_NAME

Exit status (docs/errors.md): 0 done; 2 a mistake or refused request (`runner: error: <file/row/field
and the fix>`: every user-facing error class is a ValueError); 1 a runtime failure (a failed trial, MLflow
writes lost; an unexpected exception prints its traceback); 128 + signal when interrupted (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # MLflow's artifact progress bars are carriage-return noise in `ray job logs` and CI output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from runner import masking, storage

    masking.redact_log_records()  # credentials in a URI never reach a log line

    storage.share_endpoint(os.environ)  # one S3 endpoint for MLflow, pyarrow and Ray, before any of them starts
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt as err:  # runner.tune.interrupts.Interrupted carries the signal (SIGTERM too)
        signum = getattr(err, "signal", signal.SIGINT)
        print(f"runner: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except ValueError as err:  # every user-facing error class of the project derives from ValueError
        print(f"runner: error: {masking.redact(str(err))}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    """Every command and flag in one place, read like `runner --help`: long by design, one line per flag."""
    parser = argparse.ArgumentParser(prog="runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"runner {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = commands.add_parser("models", help="every architecture preset with its real parameter count")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--max-params", type=int, default=5_000_000)
    p.set_defaults(handler=_models)

    p = commands.add_parser("data", help="prepare a data set (Parquet + meta.json)")
    data_commands = p.add_subparsers(metavar="ACTION")
    prep = data_commands.add_parser("prepare", help="SOURCE OUT; SOURCE: kaggle:DIR folder:DIR cifar10 cifar100 "
                                                    "parquet:FILE synthetic[:N]")
    prep.add_argument("source")
    prep.add_argument("out")
    prep.add_argument("--resize", action="store_true", help="resize images of another size instead of refusing")
    prep.add_argument("--from", dest="from_dir", help="already-downloaded CIFAR batches")
    prep.add_argument("--overwrite", action="store_true")
    prep.add_argument("--allow-rare-classes", action="store_true",
                      help="keep a class with under 5%% of the median class count (refused as a likely typo)")
    prep.set_defaults(handler=_data_prepare)

    p = commands.add_parser("train", help="one trial in this process, no Ray")
    p.add_argument("--data", help="prepared data set or synthetic[:N] (default: synthetic)")
    p.add_argument("--model", help="architecture (default: wrn)")
    p.add_argument("--depth", type=_number)
    p.add_argument("--width", type=_number)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    p.add_argument("--out", help="directory for the per-epoch checkpoint (state.pt)")
    p.add_argument("--resume", help="a checkpoint (state.pt or its directory) to continue from, with its own config "
                                    "(--epochs may extend it; a flag that changes anything else is refused)")
    p.set_defaults(handler=_train)

    p = commands.add_parser("check", help="validate specs and print the resolved trials; spends nothing")
    p.add_argument("specs", nargs="*", help="spec files (with --diff, default: experiments/*.yaml)")
    p.add_argument("--diff", nargs=2, metavar=("FROM", "TO"),
                   help="print what trial TO changes from trial FROM (NAME or SPEC#NAME), e.g. --diff E9 E11")
    p.add_argument("--cluster-gpus", type=float, metavar="N",
                   help="estimate the grid's wall time and GPU-hours on N GPUs from earlier runs in MLflow")
    p.add_argument("--cluster-cpus", type=float, metavar="N", help="with --cluster-gpus: CPUs too (default: enough)")
    p.add_argument("--json", action="store_true", help="print the checked specs as JSON (for scripts)")
    _spec_overrides(p)
    p.set_defaults(handler=_check)

    p = commands.add_parser("schema", help="print the JSON Schema of a spec file (editors complete and check specs)")
    p.set_defaults(handler=_schema)

    p = commands.add_parser("run", help="run a spec as a Ray Tune grid of Ray Train trials")
    p.add_argument("spec")
    _spec_overrides(p)
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster can place)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default=None,
                   help="fifo or asha (default: a search spec's search.scheduler, else fifo)")
    p.add_argument("--storage", help="Ray storage path or URI (default $RUNNER_STORAGE or ./results)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="EXPERIMENT",
                   help="continue an interrupted invocation (default: the latest of this spec)")
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray instance started when RAY_ADDRESS is unset")
    p.add_argument("--register", metavar="MODEL_NAME", help="register the best in-budget trial under this name")
    p.add_argument("--no-register", dest="register", action="store_const", const="",
                   help="skip registering the best trial")
    p.add_argument("--submission", metavar="FILE", help="write a submission from the registered model")
    p.add_argument("--tta", type=_tta, metavar="N|MODE[:N]",
                   help="test-time augmentation for --submission (default: the trial's own eval group)")
    p.add_argument("--tracking-wait", type=float, metavar="SECONDS",
                   help="after the grid, how long to wait for an unreachable MLflow before ending with "
                        "'tracking incomplete' (exit 1; results.csv is written either way; default 300)")
    p.set_defaults(handler=_run)

    p = commands.add_parser("register", help="register the best in-budget trial of a spec's latest run")
    p.add_argument("spec_name", nargs="?")
    p.add_argument("--run-id")
    p.add_argument("--metric", default="val_acc")
    p.add_argument("--name", help="registered model name (default: the spec's name, as `runner run` uses)")
    p.add_argument("--alias", default="champion")
    p.set_defaults(handler=_register)

    p = commands.add_parser("submit", help="predict the test split and write a Kaggle submission")
    p.add_argument("--model", required=True, help="models:/NAME@alias, runs:/ID/..., or a checkpoint path")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tta", type=_tta, metavar="N|MODE[:N]",
                   help="test-time augmentation: N flip views (1: none), or none, flips:N, train_transforms:N "
                        "(default: the model's own eval group)")
    p.set_defaults(handler=_submit)

    p = commands.add_parser("score", help="accuracy of a submission against a solution file")
    p.add_argument("submission")
    p.add_argument("solution")
    p.set_defaults(handler=_score)

    p = commands.add_parser("report", help="the report's table with the replayed figures beside it")
    p.add_argument("spec_name")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md",
                   help="json: the trials' raw rows (numbers as numbers), for scripts")
    p.add_argument("--out")
    p.set_defaults(handler=_report)

    p = commands.add_parser("mlflow", help="tracking maintenance")
    mlflow_commands = p.add_subparsers(metavar="ACTION")
    rec = mlflow_commands.add_parser("reconcile",
                                     help="mark RUNNING runs whose driver is gone KILLED; live ones are skipped")
    rec.add_argument("spec_name", nargs="?")
    rec.set_defaults(handler=_reconcile)
    return parser


def _version() -> str:
    """The installed package's version (pyproject.toml's), or "unknown" from a bare checkout."""
    from importlib import metadata

    try:
        return metadata.version("cifar-runner")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _spec_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    p.add_argument("--data", help="shortcut for --set data.path=...")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=...")


def spec_overrides(args: argparse.Namespace) -> list[str]:
    items = list(args.set)
    if args.data:
        items.append(f"data.path={_absolute_if_local(args.data)}")
    if args.epochs is not None:
        items.append(f"train.epochs={args.epochs}")
    return items


def _absolute_if_local(path: str) -> str:
    """Workers run elsewhere (other cwd, other node): a relative local path must not travel as is."""
    if "://" in path or path.startswith("synthetic") or not os.path.exists(path):
        return path
    return os.path.abspath(path)


def _tta(text: str) -> dict:
    """`--tta N|MODE[:N]`, checked by the schema while the arguments are parsed (runner.spec.eval_override)."""
    from runner import spec

    try:
        return spec.eval_override(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _models(args: argparse.Namespace) -> int:
    import models
    from runner import report
    from runner.core import budget

    rows = []
    for label, model_cfg in models.presets():
        verdict = budget.check(model_cfg, args.classes, args.max_params)
        note = "within cap" if verdict.within else "OVER cap"
        if not verdict.within and verdict.suggestion:
            note += f"; nearest under: {verdict.suggestion}"
        rows.append((label, f"{verdict.params:,}", note))
    print(f"parameter counts at {args.classes} classes, cap {args.max_params:,}")
    print(report.text_table(("model", "params", "verdict"), rows), end="")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from runner import data

    meta = data.prepare(args.source, args.out, resize=args.resize, from_dir=args.from_dir,
                        overwrite=args.overwrite, allow_rare_classes=args.allow_rare_classes)
    print(f"wrote {args.out}: {len(meta.classes)} classes, counts {meta.counts}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """`runner train`: one trial in this process, printing each epoch; no Ray, no MLflow."""
    from runner import local_train

    local_train.train(_train_flags(args), resume=args.resume, out=args.out)
    return 0


_TRAIN_FLAGS = {"data": "data.path", "model": "model.name", "depth": "model.depth", "width": "model.width",
                "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "optimizer.lr",
                "optimizer": "optimizer.name"}  # `runner train` flag (argparse dest) -> the config field it sets


def _train_flags(args: argparse.Namespace) -> dict[str, tuple[str, object]]:
    """The config fields the command line sets: dotted key -> (the flag as typed, value)."""
    from runner import spec

    flags = {key: (f"--{name.replace('_', '-')} {getattr(args, name)}", getattr(args, name))
             for name, key in _TRAIN_FLAGS.items() if getattr(args, name) is not None}
    if "data.path" in flags:
        flags["data.path"] = (flags["data.path"][0], _absolute_if_local(args.data))
    for item in args.set:
        key, value = spec.parse_override(item)
        flags[key] = (f"--set {item}", value)
    return flags


def _check(args: argparse.Namespace) -> int:
    """`runner check`: validate, resolve and print each spec's trials (or search space and first samples)
    with real parameter counts; `--json` prints the same as JSON."""
    from runner import report, spec
    from runner.spec.check import check_spec
    from runner.tune import gpus

    if args.diff:  # `--diff FROM TO`: what trial TO changes from FROM, as the report's sentence
        print("\n".join(spec.diff.describe(*args.diff, args.specs, spec_overrides(args))))
        return 0
    if not args.specs:
        raise ValueError("runner check: name at least one spec file, e.g. runner check experiments/*.yaml")
    checked = []
    for path in args.specs:
        loaded = spec.load_spec(path, spec_overrides(args))
        loaded, gpus_note = gpus.for_check(loaded)  # "auto" as `runner run` would resolve it here
        checked.append(check_spec(loaded))
        if args.json:
            continue
        kind = ", a search" if loaded.search else ""
        print(f"\n{path}: spec {loaded.name!r}, {len(loaded.trials)} trial(s){kind}")
        if gpus_note:
            print(gpus_note)
        header, rows = report.check_table(checked[-1])
        if args.cluster_gpus is not None:
            header, rows = _with_estimate(loaded, header, rows, args.cluster_gpus, args.cluster_cpus)
        if rows:
            print(report.text_table(header, rows), end="")
        if loaded.search:
            print(report.search_text(checked[-1]["search"]), end="")
    if args.json:
        print(report.to_json(checked), end="")
    return 0


def _with_estimate(loaded: object, header: tuple, rows: list, gpus: float, cpus: float | None) -> tuple:
    """`runner check --cluster-gpus N`: each trial's estimated time, then the grid's, from earlier runs."""
    from runner.tracking import estimate

    found = estimate.estimate(loaded.trials, gpus, cpus if cpus is not None else float("inf"))
    rows = [(*row, _hours(found.seconds[trial.name])) for row, trial in zip(rows, loaded.trials, strict=True)]
    total = ("no grid estimate" if found.wall_s is None else
             f"grid on {gpus:g} GPUs: wall {_hours(found.wall_s)}, {found.gpu_hours:.2f} GPU-hours")
    print(f"{total} ({'; '.join(found.notes)})")
    return (*header, "est. time"), rows


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _schema(args: argparse.Namespace) -> int:
    from runner.spec import export

    return 0 if sys.stdout.write(export.schema_text()) else 1


def _run(args: argparse.Namespace) -> int:
    from runner.tune.experiment import run_spec

    return run_spec(args.spec, spec_overrides(args), max_concurrent=args.max_concurrent, scheduler=args.scheduler,
                    storage=args.storage, resume=args.resume, num_cpus=args.num_cpus,
                    register_as=args.register, submission=args.submission, eval=args.tta,
                    tracking_wait=args.tracking_wait)


def _register(args: argparse.Namespace) -> int:
    """The best in-budget trial of a spec's latest run (or one run) -> version + alias."""
    from runner.tracking import registry

    if not args.spec_name and not args.run_id:
        raise ValueError("runner register: say what to register: a SPEC_NAME (the best in-budget trial of "
                         "its latest run, e.g. `runner register smoke`) or --run-id RUN_ID (one trial)")
    if args.spec_name and args.run_id:
        raise ValueError("runner register: give a SPEC_NAME or --run-id, not both")
    if args.run_id:
        registry.register_run(args.run_id, metric=args.metric, name=args.name, alias=args.alias)
    else:
        registry.register_best(args.spec_name, metric=args.metric, name=args.name, alias=args.alias)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from runner import submission

    print(f"wrote {submission.make_submission(args.model, args.data, args.out, eval=args.tta)}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from runner import submission

    accuracy, run_id = submission.score_and_log(args.submission, args.solution)
    print(f"accuracy {accuracy:.4f}" + (f" (logged as `kaggle` on the model's run {run_id})" if run_id else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    """The spec's latest run from MLflow, the report's figures beside the replayed ones."""
    from runner import files, report
    from runner.tracking import queries

    rows = queries.fetch_trial_rows(args.spec_name)
    if args.format == "json":
        text = report.to_json({"spec": args.spec_name, "trials": rows})
    else:
        table = report.results_table(rows)
        text = report.to_markdown(table) if args.format == "md" else report.to_csv_text(table)
    if args.out:
        files.atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """Runs left RUNNING by a killed driver are marked KILLED."""
    from runner.tracking import queries

    outcome = queries.reconcile(args.spec_name)
    print(f"marked {len(outcome.ended)} run(s) KILLED" + (f": {', '.join(outcome.ended)}" if outcome.ended else ""))
    for run_id, name, why in outcome.skipped:
        print(f"skipped {name} ({run_id}): still alive, {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
