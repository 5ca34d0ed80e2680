"""Epoch time of one trial through Ray Train (1 CPU worker) against the same training core called directly.

Same data (built-in synthetic set, or `--data DIR` prepared), model, batch, seed and torch threads on
both sides. Each side runs the runner's own code:
  direct: `runner.core.train.fit` in this process, saving the checkpoint every epoch (as `runner train --out` does);
  Ray:    a `TorchTrainer` with one worker whose train function is `runner.tune.trial.train_worker` (reads its
          shard, calls `fit`, rank 0 writes the checkpoint, `ray.train.report` hands it to Ray Train).
An epoch's wall time is the gap between two consecutive reports as the training process sees them, so it
holds the epoch's compute (fit's own `epoch_s`) plus everything the report path costs. The first epoch
also holds start-up and warm-up, so the ratio uses epochs 2.. (steady state); start-up (fit() called ->
first report, less that epoch's compute) and teardown (last report -> fit() returned) print separately.
Order: direct, Ray, direct again (ABA, so drift from other load on the machine shows and averages out);
Ray is not running during the direct runs.

Run: .venv/bin/python bench/ray_overhead.py [--data DIR] [--n 5000] [--epochs 4] [--threads 1] [--quick]
     [--ray-env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25 ...]
It starts a local Ray: on a shared machine wrap it in `flock /tmp/ray-test.lock ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local throwaway cluster: no token file needed

import torch  # noqa: E402

from runner import data, spec  # noqa: E402
from runner.core import checkpoint, train  # noqa: E402
from runner.tune import cluster as ray_cluster  # noqa: E402


def trial_config(a: argparse.Namespace) -> dict:
    return spec.trial_config({
        "data.path": a.data or f"synthetic:{a.n}", "data.val_fraction": 0.1,
        "model.name": a.model, "model.depth": a.depth, "model.width": a.width,
        "optimizer.name": "sgd", "optimizer.lr": 0.05, "schedule.name": "cosine",
        "augment.crop_padding": 4, "augment.hflip": True, "augment.cutout": 8,
        "train.epochs": a.epochs, "train.batch_size": a.batch, "train.seed": 0,
        "scaling.workers": 1, "scaling.cpus_per_worker": float(a.threads),
    })


# ---------------------------------------------------------------- direct: the training core in this process

def run_direct(cfg: dict, threads: int, directory: str) -> dict:
    torch.set_num_threads(threads)
    started = time.time()
    meta, train_split, val_split = data.load_trial_data(cfg["data"], seed=0)
    stamps: list[tuple[float, float]] = []

    def report(metrics: dict, state) -> None:  # noqa: ANN001 - runner.core.train.Reporter
        checkpoint.save(state(), directory)
        stamps.append((time.time(), metrics["epoch_s"]))

    train.fit(cfg, train_split, val_split, meta.classes, report, device=torch.device("cpu"))
    return {"called": started, "entry": started, "reports": stamps, "returned": time.time()}


# ---------------------------------------------------------------- Ray: runner.tune.trial.train_worker in a TorchTrainer

def _ray_worker(loop_config: dict) -> None:
    """runner.tune.trial.train_worker, with `ray.train.report` timed (the one thing added)."""
    entry = time.time()
    import ray.train
    import torch as worker_torch

    from runner.tune import trial as tune

    worker_torch.set_num_threads(loop_config["threads"])
    stamps, real_report = [], ray.train.report

    def timed_report(metrics: dict, checkpoint=None, **kwargs) -> None:  # noqa: ANN001 - Ray's signature
        real_report(metrics, checkpoint=checkpoint, **kwargs)
        stamps.append((time.time(), metrics["epoch_s"]))

    ray.train.report = timed_report
    try:
        tune.train_worker({"config": loop_config["config"]})
    finally:
        ray.train.report = real_report
        with open(loop_config["log"], "w") as fh:
            json.dump({"entry": entry, "reports": stamps, "threads": worker_torch.get_num_threads()}, fh)


def run_ray(cfg: dict, threads: int, directory: str) -> dict:
    import ray
    import ray.train
    import ray.train.torch

    log = os.path.join(directory, "worker.json")
    trainer = ray.train.torch.TorchTrainer(
        _ray_worker,
        train_loop_config={"config": cfg, "threads": threads, "log": log},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False,
                                               resources_per_worker={"CPU": float(threads)}),
        run_config=ray.train.RunConfig(
            name=f"ray-overhead-{os.getpid()}-{time.time_ns()}", storage_path=os.path.join(directory, "storage"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg["checkpoint"]["keep"],
                                                         checkpoint_score_attribute="val_acc",
                                                         checkpoint_score_order="max"),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )
    called = time.time()
    trainer.fit()
    returned = time.time()
    with open(log) as fh:
        worker = json.load(fh)
    if worker["threads"] != threads:
        raise RuntimeError(f"the Ray worker ran {worker['threads']} torch threads, the direct side {threads}")
    return {"called": called, "entry": worker["entry"], "reports": [tuple(r) for r in worker["reports"]],
            "returned": returned}


# ---------------------------------------------------------------- figures

def summarise(name: str, run: dict) -> dict:
    times = [t for t, _ in run["reports"]]
    compute = [c for _, c in run["reports"]]
    walls = [b - a for a, b in zip(times, times[1:], strict=False)]  # epochs 2..E: report to report
    steady = statistics.median(walls)
    startup = times[0] - run["called"] - compute[0]
    print(f"{name}: steady epoch {steady:.2f} s (median of epochs 2..{len(times)}: "
          f"{', '.join(f'{w:.2f}' for w in walls)}); fit's own epoch_s {statistics.median(compute[1:]):.2f} s; "
          f"start-up {startup:.1f} s (to the train function {run['entry'] - run['called']:.1f} s); "
          f"teardown {run['returned'] - times[-1]:.1f} s", flush=True)
    return {"steady": steady, "startup": startup}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="prepared data dir (default: the built-in synthetic set)")
    p.add_argument("--n", type=int, default=5000, help="synthetic images when no --data (default 5000)")
    p.add_argument("--model", default="wrn_std")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="the first is start-up; the rest are compared")
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides = the worker's CPUs")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs the local Ray gets (default: cores)")
    p.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for Ray Train, set before ray.init (e.g. RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    a = p.parse_args()
    if a.quick:
        a.n, a.epochs, a.batch = 300, 2, 32
        if not a.ray_env:  # short epochs: without this Ray's 2 s poll holds every report (see docs/benchmarks.md)
            a.ray_env = ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2"]
    for item in a.ray_env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    cfg = trial_config(a)
    print(f"{cfg['model']} on {cfg['data']['path']}, batch {a.batch}, {a.epochs} epochs, {a.threads} torch "
          f"thread(s) each side; torch {torch.__version__}, {os.cpu_count()} cores; "
          f"Ray env {a.ray_env or 'default'}", flush=True)

    import ray

    work = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # Ray's unix sockets need a short path
    try:
        first = summarise("direct (1st)", run_direct(cfg, a.threads, os.path.join(work, "direct1")))
        started = time.time()
        # As runner run, quieter: a Ray of its own, never one recorded in /tmp/ray.
        ray_cluster.start_local_ray(a.num_cpus, logging_level="warning", configure_logging=True, log_to_driver=False,
                                    _temp_dir=os.path.join(work, "ray"))
        print(f"ray.init {time.time() - started:.1f} s", flush=True)
        try:
            through_ray = summarise("Ray Train", run_ray(cfg, a.threads, os.path.join(work, "ray-run")))
        finally:
            ray.shutdown()
        second = summarise("direct (2nd)", run_direct(cfg, a.threads, os.path.join(work, "direct2")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    direct = (first["steady"] + second["steady"]) / 2
    print(f"start-up through Ray Train {through_ray['startup']:.1f} s vs direct "
          f"{(first['startup'] + second['startup']) / 2:.1f} s (not in the ratio)")
    print(f"ratio Ray/direct (steady-state epoch time): {through_ray['steady'] / direct:.3f}x (goal <= 1.05x)")


if __name__ == "__main__":
    main()
