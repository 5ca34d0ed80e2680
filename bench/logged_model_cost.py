"""What the per-trial logged model adds: time and bytes, beside the checkpoint upload every trial did before.

Against a real `mlflow server` on 127.0.0.1 (its default sqlite database, artifacts proxied), for a
checkpoint shaped as `runner.core.train.fit` writes it (weights, SGD momentum, config). Before: each
trial's run got the full `checkpoint/state.pt`. Now: the checkpoint less its optimizer state
(`checkpoint.for_inference`) plus the logged model (`runner.tracking.pyfunc.log`: save the pyfunc
folder, create the logged model, upload, finalize, link to the run). Both sides alternate, `--repeats`
times each; prints medians and the ratios now / before.

    python bench/logged_model_cost.py                 # WRN-16-4 (4.3M parameters), 5 repeats
    python bench/logged_model_cost.py --quick         # WRN-10-1, 1 repeat (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import Server  # noqa: E402

import models  # noqa: E402
from runner.core import checkpoint  # noqa: E402
from runner.masking import flatten_params  # noqa: E402
from runner.tracking import pyfunc  # noqa: E402


def trained_like_state(depth: int, width: int) -> dict:
    """A checkpoint as fit writes it: weights, SGD momentum buffers (one step taken), config, metadata."""
    torch.manual_seed(0)
    net = models.build("wrn", 10, depth=depth, width=width)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    config = {"model": {"name": "wrn", "depth": depth, "width": width, "dropout": 0.0},
              "eval": {"tta": "none", "views": 1}, "augment": {}}
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {}, "epoch": 1,
            "best_val_acc": 0.5, "metrics": {"val_acc": 0.5}, "config": config, "classes": [f"c{i}" for i in range(10)],
            "mean": [0.5] * 3, "std": [0.25] * 3, "image_shape": [32, 32, 3], "params": models.count_params(net),
            "within_budget": True}


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    depth, width = (10, 1) if args.quick else (16, 4)
    repeats = args.repeats or (1 if args.quick else 5)
    state = trained_like_state(depth, width)
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp, Server(Path(tmp) / "server") as server:
        client = MlflowClient(server.uri)
        experiment = client.create_experiment("logged-model-cost")
        full = checkpoint.save(state, Path(tmp) / "full")
        slim = checkpoint.save(checkpoint.for_inference(state), Path(tmp) / "slim")
        model_dir = pyfunc.save(state, Path(tmp) / "model")
        before, now, model_s = [], [], []
        for _ in range(repeats):  # alternate, so load on the shared machine hits both sides alike
            run_id = client.create_run(experiment).info.run_id
            started = time.perf_counter()
            client.log_artifact(run_id, str(full), "checkpoint")
            before.append(time.perf_counter() - started)
            run_id = client.create_run(experiment).info.run_id
            started = time.perf_counter()
            client.log_artifact(run_id, str(slim), "checkpoint")
            middle = time.perf_counter()
            pyfunc.log(client, experiment, run_id, state, step=1, params=flatten_params(state["config"]))
            now.append(time.perf_counter() - started)
            model_s.append(time.perf_counter() - middle)
        full_mb, slim_mb, model_mb = full.stat().st_size / 2**20, slim.stat().st_size / 2**20, folder_mb(model_dir)
        code_mb = folder_mb(model_dir / "code")
    print(f"WRN-{depth}-{width}: {state['params']:,} parameters; median of {repeats}")
    print(f"before: full checkpoint {statistics.median(before):.2f} s, {full_mb:.1f} MiB")
    print(f"now: checkpoint less optimizer state + logged model {statistics.median(now):.2f} s "
          f"(logged model {statistics.median(model_s):.2f} s), {slim_mb:.1f} + {model_mb:.1f} MiB "
          f"(model code {code_mb:.2f} MiB)")
    print(f"ratio now / before: time {statistics.median(now) / statistics.median(before):.2f}, "
          f"bytes {(slim_mb + model_mb) / full_mb:.2f}")


if __name__ == "__main__":
    main()
