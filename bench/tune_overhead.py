"""A grid of 8 tiny trials through `runner run` (Tune -> the trial -> MLflow) against the same trials run directly.

The spec is generated (8 rows of `optimizer.lr`, wrn_std-10-1 on the built-in synthetic set; `--data DIR` for a
prepared set), once per trial path (`--workers 1,2`):
  workers 1: each trial trains inside its Tune trial process (0.5 trial CPU + 0.5 worker CPU), 2 at a time;
  workers 2: each trial is a TorchTrainer of 2 DDP workers (0.5 trial CPU + 2 x 0.25 CPU), 2 at a time.
Both sides run in this one invocation, direct first:
  direct: each trial's `runner.core.train.fit` in this process, one after another, with the torch threads a
          trial of that size gets (1), saving a checkpoint every epoch like the Ray path does; the figure
          compared ("ideal") is sum(trial times) / concurrency (the same for both paths: DDP splits the same
          work over 2 ranks);
  runner: `python -m runner run SPEC --num-cpus N --no-register` in a subprocess (local Ray, MLflow in a temp
          sqlite store): the runner's own code, nothing patched; the figure compared is its own "grid wall
          time" (tuner.fit), and the whole process time prints too.
Each runner output line is timestamped as it arrives, which gives every trial's start latency: Tune's trial
start -> the first epoch's result reaching the driver, less that epoch's compute (fit's epoch_s). For DDP
trials Ray Train's controller logs (in the run's own RAY_TMPDIR) give where a trial's start-up goes.

`--ray-env KEY=VALUE` (repeatable) sets environment variables for the runner process.

Run: .venv/bin/python bench/tune_overhead.py [--n 3000] [--epochs 3] [--workers 1,2] [--quick]
It starts a local Ray: on a shared machine wrap it in `flock /tmp/ray-test.lock ...`.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import torch  # noqa: E402

from runner import data, resources, spec  # noqa: E402
from runner.core import checkpoint, train  # noqa: E402

SPEC = """\
name: tune_overhead
description: bench/tune_overhead.py's generated grid
base:
  data: {{path: "{path}", val_fraction: 0.1}}
  model: {{name: wrn_std, depth: 10, width: 1}}
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
  schedule: {{name: cosine}}
  augment: {{crop_padding: 4, hflip: true}}
  train: {{epochs: {epochs}, batch_size: {batch}, seed: 0}}
  scaling: {{workers: {workers}, cpus_per_worker: {worker_cpus}, trial_cpus: {trial_cpus}}}
grid:
  optimizer.lr: {lrs}
"""

def write_spec(directory: str, a: argparse.Namespace, workers: int) -> str:
    """One trial holds the same CPUs on either path: trial + worker share, or trial + 2 x half a share."""
    path = os.path.join(directory, f"tune_overhead_{workers}.yaml")
    lrs = [round(0.01 * (i + 1), 3) for i in range(a.trials)]
    with open(path, "w") as fh:
        fh.write(SPEC.format(path=a.data or f"synthetic:{a.n}", epochs=a.epochs, batch=a.batch, lrs=lrs,
                             workers=workers, worker_cpus=a.worker_cpus / workers, trial_cpus=a.trial_cpus))
    return path


# ---------------------------------------------------------------- direct

def run_direct(trials: list[spec.Trial], threads: int, directory: str) -> list[float]:
    torch.set_num_threads(threads)
    seconds = []
    for trial in trials:
        cfg = trial.config
        started = time.perf_counter()
        meta, train_split, val_split = data.load_trial_data(cfg["data"], cfg["train"]["seed"])
        out = os.path.join(directory, trial.name)
        train.fit(cfg, train_split, val_split, meta.classes,
                  lambda metrics, state, out=out: checkpoint.save(state(), out), device=torch.device("cpu"))
        seconds.append(time.perf_counter() - started)
        print(f"  direct {trial.name}: {seconds[-1]:.1f} s", flush=True)
    return seconds


def run_direct_lanes(trials: list[spec.Trial], threads: int, directory: str, lanes: int) -> float:
    """The same trials `lanes` at a time without Ray: one plain process per lane, started together (their
    start-up and imports not counted); the wall time of the slowest lane. Two trainings at once on a
    small machine each run slower than one alone: this separates that from what the runner adds."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(lanes) as pool:
        totals = pool.starmap(_lane, [(trials[i::lanes], threads, os.path.join(directory, f"lane{i}"))
                                      for i in range(lanes)])
    return max(totals)


def _lane(trials: list[spec.Trial], threads: int, directory: str) -> float:
    return sum(run_direct(trials, threads, directory))


# ---------------------------------------------------------------- through the runner

LINE = re.compile(r"^\[(?P<trial>[^\]]+)\] (?P<what>.*)$")
EPOCH = re.compile(r"epoch (?P<epoch>\d+)/\d+ .* (?P<epoch_s>[\d.]+) s$")


def run_runner(spec_path: str, directory: str, num_cpus: float, env_extra: dict, timeout_s: float) -> dict:
    """`runner run` in a subprocess; its stdout lines timestamped on arrival."""
    os.makedirs(directory, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db", "RAY_TMPDIR": directory, **env_extra}
    for name in ("RAY_ADDRESS", "RUNNER_STORAGE"):
        env.pop(name, None)
    args = [sys.executable, "-m", "runner", "run", spec_path, "--storage", f"{directory}/results",
            "--num-cpus", f"{num_cpus:g}", "--no-register"]
    lines: list[tuple[float, str]] = []
    started = time.time()
    with open(os.path.join(directory, "runner.stderr"), "w") as err:
        proc = subprocess.Popen(args, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))
            if time.time() - started > timeout_s:
                proc.kill()
                break
        code = proc.wait()
    ended = time.time()
    if code != 0:
        tail = "\n".join(text for _, text in lines[-20:])
        with open(os.path.join(directory, "runner.stderr")) as fh:
            tail += "\n" + fh.read()[-3000:]
        raise RuntimeError(f"runner run exited {code}:\n{tail}")
    return {"lines": lines, "process_s": ended - started, "started": started, "logs": _train_logs(directory)}


def trial_timeline(lines: list[tuple[float, str]]) -> dict[str, dict]:
    trials: dict[str, dict] = {}
    for stamp, text in lines:
        match = LINE.match(text)
        if not match:
            continue
        trial = trials.setdefault(match["trial"], {"epochs": []})
        what = match["what"]
        if what == "started":
            trial["started"] = stamp
        elif what == "finished":
            trial["finished"] = stamp
        elif epoch := EPOCH.search(what):
            trial["epochs"].append((stamp, float(epoch["epoch_s"])))
    return trials


def _train_logs(directory: str) -> list[dict]:
    """Phase durations from Ray Train's controller logs (one file per TorchTrainer.fit)."""
    out = []
    for path in sorted(glob.glob(f"{directory}/ray/session_2*/logs/train/ray-train-sys-controller-*.log")):
        phases: dict[str, float] = {}
        with open(path) as fh:
            records = [json.loads(line) for line in fh if line.startswith("{")]
        if not records:
            continue
        stamp = [_when(r["asctime"]) for r in records]
        phases["first_log"] = stamp[0]
        for r, t in zip(records, stamp, strict=True):
            message = r.get("message", "")
            for key, pattern in (("placement_group_s", r"Placement group ready in ([\d.]+)s"),
                                 ("actors_s", r"worker actors created in ([\d.]+)s"),
                                 ("context_s", r"Train context initialized on workers in ([\d.]+)s"),
                                 ("after_start_s", r"after_worker_group_start callbacks completed in ([\d.]+)s"),
                                 ("launch_s", r"Train function launched on workers in ([\d.]+)s"),
                                 ("group_start_s", r"Worker group startup completed in ([\d.]+)s total")):
                if found := re.search(pattern, message):
                    phases[key] = float(found.group(1))
            if "Started training worker group" in message:
                phases["group_started"] = t
            if message.startswith("Shutting down"):
                phases["shutdown_at"] = t
            if "Worker group shutdown successful" in message:
                phases["shutdown_done"] = t
        out.append(phases)
    return out


def _when(asctime: str) -> float:
    return datetime.strptime(asctime, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def summarise(name: str, result: dict, direct_per_slot: float, verbose: bool = False) -> dict:
    lines = result["lines"]
    grid = next((float(m.group(1)) for _, t in lines if (m := re.search(r"grid wall time ([\d.]+) s", t))), None)
    trials = trial_timeline(lines)
    latency = {n: t["epochs"][0][0] - t["started"] - t["epochs"][0][1]
               for n, t in trials.items() if t.get("started") and t["epochs"]}
    tails = {n: t["finished"] - t["epochs"][-1][0] for n, t in trials.items() if t.get("finished") and t["epochs"]}
    print(f"runner run [{name}]: grid wall time {grid} s; whole `runner run` process {result['process_s']:.1f} s")
    if verbose:
        for stamp, text in lines:
            print(f"    +{stamp - result['started']:6.1f} s  {text}")
    print(f"  trial start latency (start -> first result, less its compute): "
          f"median {statistics.median(latency.values()):.1f} s, max {max(latency.values()):.1f} s "
          f"[{', '.join(f'{v:.1f}' for v in latency.values())}]")
    print(f"  last result -> trial finished: median {statistics.median(tails.values()):.1f} s")
    logs = result["logs"]
    starts = sorted(t["started"] for t in trials.values() if t.get("started"))
    firsts = sorted(p["first_log"] for p in logs)
    if logs and len(starts) == len(firsts):
        # Matched in start order: a wave's trials start within a moment of each other.
        phases = [("trial start -> Train controller logging (trial actor, imports, controller actor)",
                   [f - s for s, f in zip(starts, firsts, strict=True)])]
        for label, key in (("placement group", "placement_group_s"), ("worker actor processes", "actors_s"),
                           ("train context on workers", "context_s"),
                           ("process group + callbacks", "after_start_s"),
                           ("train function to the workers (unpickling imports its module)", "launch_s"),
                           ("worker group total", "group_start_s")):
            phases.append((label, [p[key] for p in logs if key in p]))
        phases.append(("controller shutdown",
                       [p["shutdown_done"] - p["shutdown_at"] for p in logs if "shutdown_done" in p]))
        print(f"  Ray Train phases, median over {len(logs)} fits:")
        for label, values in phases:
            if values:
                print(f"    {label}: {statistics.median(values):.2f} s")
    ratio = grid / direct_per_slot if grid else float("nan")
    return {"grid": grid, "ratio": ratio, "latency_max": max(latency.values()),
            "latency_median": statistics.median(latency.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="prepared data dir (default: the built-in synthetic set)")
    p.add_argument("--n", type=int, default=3000, help="synthetic images when no --data (default 3000)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--workers", default="1,2", help="trial paths to measure: 1 (in-process), 2 (DDP), or 1,2")
    p.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 2), help="CPUs of the local Ray")
    p.add_argument("--worker-cpus", type=float, default=0.5, help="a trial's worker CPUs (split over DDP workers)")
    p.add_argument("--trial-cpus", type=float, default=0.5)
    p.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the runner process (e.g. RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per runner run")
    p.add_argument("--verbose", action="store_true", help="print the runner's output, timestamped")
    p.add_argument("--keep", action="store_true", help="keep the work dir (Ray logs, MLflow store) and print it")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    a = p.parse_args()
    if a.quick:
        a.n, a.epochs, a.trials, a.batch, a.workers = 200, 1, 1, 32, "1"
    env = dict(item.partition("=")[::2] for item in a.ray_env)
    paths = [int(w) for w in a.workers.split(",")]

    work = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Ray's unix sockets need a short path
    figures = []
    try:
        specs = {w: write_spec(work, a, w) for w in paths}
        loaded = spec.load_spec(specs[paths[0]])
        needs = [resources.need_of(t.name, t.config["scaling"]) for t in loaded.trials]
        concurrency = resources.plan_concurrency(needs, {"CPU": a.num_cpus})
        threads = max(1, int(a.worker_cpus))  # Ray's OMP_NUM_THREADS for a worker of that many CPUs
        print(f"{len(loaded.trials)} trials of wrn_std-10-1 on {loaded.trials[0].config['data']['path']}, "
              f"{a.epochs} epoch(s), batch {a.batch}; {concurrency} at a time on {a.num_cpus:g} CPUs; "
              f"{threads} torch thread(s) per trial; torch {torch.__version__}, {os.cpu_count()} cores", flush=True)

        direct = run_direct(loaded.trials, threads, os.path.join(work, "direct"))
        per_slot = sum(direct) / concurrency
        print(f"direct: {sum(direct):.1f} s for {len(direct)} trials one after another; / {concurrency} = "
              f"{per_slot:.1f} s (the ideal grid)", flush=True)
        lanes_s = run_direct_lanes(loaded.trials, threads, os.path.join(work, "lanes"), concurrency)
        print(f"direct, {concurrency} plain processes at once (no Ray): {lanes_s:.1f} s", flush=True)
        for workers in paths:
            name = "1 worker: in the trial process" if workers == 1 else f"{workers} workers: TorchTrainer (DDP)"
            result = run_runner(specs[workers], os.path.join(work, f"run{workers}"), a.num_cpus, env, a.timeout)
            figures.append((name, workers, summarise(name, result, per_slot, a.verbose)))
    finally:
        if a.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for name, workers, f in figures:
        goal = "goal <= 3 s" if workers == 1 else "target <= 12 s"
        print(f"[{name}] start latency median {f['latency_median']:.1f} s, max {f['latency_max']:.1f} s ({goal})")
    for name, _, f in figures:
        print(f"[{name}] grid / the same trials {concurrency} at a time without Ray: {f['grid'] / lanes_s:.2f}x "
              f"(what the runner adds beyond {concurrency} trainings sharing the machine)")
    for name, workers, f in figures:
        goal = " (goal <= 1.35x)" if workers == 1 else ""
        print(f"ratio runner grid / (direct sum / {concurrency}) [{name}]: {f['ratio']:.2f}x{goal}")


if __name__ == "__main__":
    main()
