"""Training checkpoints: one file, `state.pt`, holding only tensors and plain values.

Written by the callers of `train.fit` (the Ray trial, `runner train --out`) once per epoch; read for
resume, registration, submission and by the MLflow bridge. Loading uses `torch.load(weights_only=True)`:
a checkpoint fetched from shared storage that any node can write must not be able to run code, so
a pickled object other than tensors, containers and primitives is refused, never executed.

    save(state, "ckpt/")          # -> ckpt/state.pt, atomically
    state = load("ckpt/")         # the folder or the file itself
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from runner.files import atomic_path

FILE = "state.pt"
# What predicting needs of a checkpoint: no optimizer or scheduler state (half the bytes of a WRN's), which
# only resuming uses, and resuming reads the full checkpoint from Ray's storage.
FOR_INFERENCE = ("model", "classes", "mean", "std", "image_shape", "config", "epoch", "best_val_acc", "metrics",
                 "val_confusion", "params", "within_budget")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or holds more than tensors and plain values."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """`state.pt` itself, or the `state.pt` inside a folder: the one place that decides which."""
    path = Path(path)
    return path / FILE if path.is_dir() else path


def load(path: str | os.PathLike) -> dict:
    """The checkpoint dict at `path` (a `state.pt` file or its folder), on the CPU."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {path} (want {FILE} or the folder holding it)")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{file} holds more than tensors and plain values, so it was not loaded "
                              f"(a checkpoint written by this runner never does): {str(err).splitlines()[0]}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{file} is not a readable checkpoint ({err}); it may be truncated") from err


def save(state: dict, directory: str | os.PathLike) -> Path:
    """Write `state` as `directory/state.pt` atomically (temp name, fsync, rename)."""
    final = Path(directory) / FILE
    with atomic_path(final) as temp:
        torch.save(state, temp)
    return final


def for_inference(state: dict) -> dict:
    """The checkpoint less its training state: what the registered model and the MLflow run keep."""
    return {k: state[k] for k in FOR_INFERENCE if k in state}


def build_model(state: dict) -> torch.nn.Module:
    """The trained network of a checkpoint, in eval mode (its config names the architecture)."""
    import models

    spec = dict(state["config"]["model"])
    net = models.build(spec.pop("name"), len(state["classes"]), **spec)
    net.load_state_dict(state["model"])
    return net.eval()
