"""`runner train`: one trial in this process, no Ray, no MLflow; fresh from defaults plus the command
line's fields, or resumed from a checkpoint with the checkpoint's own config.

Reads the data set once (`runner.data.verify`: footers and sha256 first, then `load_trial_data`), prints
one line per epoch, and with `out` writes the per-epoch checkpoint (state.pt) there.

    train({"model.name": ("--model wrn", "wrn")}, resume=None, out="ckpt")    # runner train --model wrn --out ckpt
    train({"train.epochs": ("--epochs 3", 3)}, resume="ckpt", out="ckpt")     # runner train --resume ckpt --epochs 3
"""

from __future__ import annotations

from collections.abc import Callable

from runner import data, keys, report, spec
from runner.core import checkpoint
from runner.core import train as core

Flags = dict[str, tuple[str, object]]  # dotted config key -> (the flag as the user typed it, its value)
DEFAULTS = {"data.path": "synthetic", "model.name": "wrn"}  # what `runner train` trains with no flag at all
# A resumed run may train further and read its data from another place; any other change would make it
# another run (another architecture does not even load its weights), so it is refused by name.
RESUME_MAY_CHANGE = ("train.epochs", "data.path")


def train(flags: Flags, *, resume: str | None, out: str | None) -> core.FitResult:
    state = checkpoint.load(resume) if resume else None  # CheckpointError names a missing path
    cfg = resumed_config(state, flags, resume) if state else spec.trial_config(
        {**DEFAULTS, **{k: v for k, (_, v) in flags.items()}})
    path, epochs = cfg["data"]["path"], cfg["train"]["epochs"]
    meta = data.verify(path)  # footers and sha256 before any epoch; meta.json read once
    data.check_num_classes(meta, cfg["data"]["num_classes"], path)
    if state and list(state["classes"]) != meta.classes:
        raise data.DataError(f"--resume {resume} was trained on classes {state['classes'][:5]}... but {path} "
                             f"has {meta.classes[:5]}...; resume on the data set it was trained on")
    meta, train_split, val_split = data.load_trial_data(cfg["data"], cfg["train"]["seed"], meta=meta)
    start = f", from epoch {state['epoch']}" if state else ""
    print(f"training {cfg['model']} on {path}: {len(train_split)} train, {len(val_split)} val images, "
          f"{epochs} epochs{start}")

    def report_epoch(metrics: dict, state_of: Callable[[], dict]) -> None:
        print(report.format_epoch(metrics, epochs), flush=True)
        if out:
            checkpoint.save(state_of(), out)

    result = core.fit(cfg, train_split, val_split, meta.classes, report_epoch, resume=state)
    note = "" if result.within_budget else " (OVER the parameter cap: flagged, never registered)"
    print(f"done: best val_acc {result.best_val_acc:.4f}, {result.params:,} parameters{note}")
    return result


def resumed_config(state: dict, flags: Flags, where: str) -> dict:
    """The checkpoint's own config, with --epochs/--data applied; a flag that changes anything else is refused."""
    if not {"config", "classes", "epoch", "model"} <= set(state):
        raise checkpoint.CheckpointError(f"--resume {where} is not a checkpoint written by runner train or run "
                                         "(no config/classes/epoch); give the state.pt of a runner trial")
    saved = keys.flatten(state["config"])
    for key, (flag, value) in sorted(flags.items(), key=lambda item: item[0] != "model.name"):  # --model first
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            raise spec.SpecError("--resume", f"{flag} conflicts with the checkpoint's {key}={saved.get(key)!r} "
                                             f"({where}); drop {flag.split()[0]} to resume with its config")
    cfg = spec.trial_config({**saved, **{k: v for k, (_, v) in flags.items() if k in RESUME_MAY_CHANGE}})
    if cfg["train"]["epochs"] <= state["epoch"]:
        raise spec.SpecError("--resume", f"{where} has already trained {state['epoch']} of {cfg['train']['epochs']} "
                                         f"epochs; pass --epochs N (N > {state['epoch']}) to train further")
    try:
        checkpoint.build_model(state)  # its weights must fit its own architecture before an epoch starts
    except (RuntimeError, KeyError, TypeError) as err:
        raise checkpoint.CheckpointError(f"--resume {where}: the weights do not fit the checkpoint's own model "
                                         f"{state['config']['model']} ({str(err).splitlines()[0]}); the file is "
                                         "damaged: resume from another checkpoint") from err
    return cfg
