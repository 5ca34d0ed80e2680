"""One Tune trial, on one of two paths with one behaviour (same metrics, progress lines, checkpoints,
MLflow runs; see docs/architecture.md):

- `scaling.workers: 1` trains inside its own Tune trial process (`_train_in_process`): no TorchTrainer,
  whose controller, worker and four helper processes cost ~20 s per trial on 2 cores (bench/tune_overhead.py).
  Tune keeps its checkpoints (the best `checkpoint.keep` by val accuracy), restarts it after a failure
  (`max_failures`, set per trial by `tuner.PerTrialSettings`) and hands it back with `ray.tune.get_checkpoint()`.
- `scaling.workers >= 2` is a Ray Train `TorchTrainer` of DDP workers (`_train_ddp`, `train_worker`), as in
  Ray's Train/Tune interop example; Train keeps the checkpoints and restarts the worker group.

Both report through `_reporter`: once per epoch, the metrics plus a checkpoint folder holding `state.pt`
and `history.json` (every epoch's metrics so far, written by the trial, not the driver). After a restart
the first report carries the history up to the checkpoint it resumed from (`history`, a JSON string), so
the driver can fill in epochs whose results it never received (a SIGKILLed driver, then `--resume`).
The checkpoint's upload to storage runs beside the next epoch on both paths (docs/benchmarks.md,
bench/checkpoint_upload.py: WRN-16-4's 21 MiB state.pt held each report 0.33-0.49 s on a local S3
endpoint, half a GPU epoch): DDP ranks report with Train's `CheckpointUploadMode.ASYNC`; Tune's report
has no such mode, so the 1-worker path reports from a helper thread (`_InBackground`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
import ray.tune
import torch

from runner import data, files, resources
from runner.core import checkpoint, train

METRIC, MODE = "val_acc", "max"
HISTORY = "history.json"  # beside state.pt in every checkpoint folder


def run_trial(config: dict) -> None:
    """The Tune function trainable: `config` is {"trial": {"name", "config"}, "train_storage", ...}."""
    # Tune waits this long (default 2 s) for a stopped trial's function to return before it reuses the
    # process for the next trial, and fails that trial if it has not: a 1-worker trial returns within one
    # training step of the stop (tuner._reuse_actors), and a step on a CPU can take longer than 2 s.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")
    if resources.trains_in_process(config["trial"]["config"]["scaling"]["workers"]):
        _train_in_process(config["trial"]["config"])
    else:
        _train_ddp(config)


def trial_resources(config: dict) -> ray.tune.PlacementGroupFactory:
    """The Tune trial process's request, from the same `TrialNeed` the resource check used."""
    need = resources.need_of(config["trial"]["name"], config["trial"]["config"]["scaling"])
    return ray.tune.PlacementGroupFactory([need.trial_bundle(config.get("driver_resource"))])


# ---------------------------------------------------------------- workers == 1: in the trial process
def _train_in_process(cfg: dict) -> None:
    scaling = cfg["scaling"]
    # Tune logs "Checkpoint successfully created at: ..." at INFO for every epoch: noise beside the progress lines
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # Ray sizes a Train worker's torch threads by its CPUs; this process holds the worker's share.
    torch.set_num_threads(max(1, int(scaling["cpus_per_worker"])))
    classes, train_split, val_split = _load(cfg, rank=0, world=1)
    resume, history = _restore(ray.tune.get_checkpoint())

    send = _InBackground()
    device = torch.device("cuda", 0) if resources.gpus(scaling) else torch.device("cpu")
    report = _reporter(resume, history, nodes=1, send=send, rank=0)
    try:
        if not _reported_as_finished(cfg, resume, history, report):
            train.fit(cfg, train_split, val_split, classes, report, device=device, resume=resume,
                      should_stop=send.halted.is_set)
    except train.Stopped:
        send.wait()  # raises what halted the reports: Tune's stop (SystemExit) or an error
        raise
    except BaseException:
        send.wait(reraise=False)  # the training's own error is the one to see
        raise
    send.wait()  # the last epoch's checkpoint is in storage before the trial ends


class _InBackground:
    """`ray.tune.report` from a helper thread, one report at a time and in order, so the next epoch trains
    while this one's checkpoint uploads; the thread deletes the folder after. What a report raised (an error,
    or the SystemExit by which Tune stops a trial) sets `halted`, which the training loop asks before every
    step, and is raised in the training thread by `wait`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._raised: BaseException | None = None
        self.halted = threading.Event()

    def __call__(self, metrics: dict, directory: str | None) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._send, args=(metrics, directory), daemon=True)
        self._thread.start()

    def _send(self, metrics: dict, directory: str | None) -> None:
        try:
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(directory))
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._raised = exc
            self.halted.set()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def wait(self, reraise: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        raised, self._raised = self._raised, None
        if raised is not None and reraise:
            raise raised


# ---------------------------------------------------------------- workers >= 2: a TorchTrainer
def train_worker(loop_config: dict) -> None:
    """One DDP rank. Ray has initialised torch.distributed (gloo on CPU, nccl on GPU)."""
    import ray.train.torch

    _quiet_train_reports()
    cfg = loop_config["config"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    classes, train_split, val_split = _load(cfg, rank=rank, world=world)
    # After a node loss (Train restarts the group) or `--resume` (Train finds its run by name), this is
    # the last *committed* checkpoint: Train's own record, never a listing of checkpoint folders.
    resume, history = _restore(ray.train.get_checkpoint())

    def send(metrics: dict, directory: str | None) -> None:
        saved = ray.train.Checkpoint.from_directory(directory) if directory else None
        # every rank reports, or the group stalls; Train uploads in the background, then deletes the folder
        ray.train.report(metrics, checkpoint=saved, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)

    report = _reporter(resume, history, nodes=_distinct_nodes(world), send=send, rank=rank)
    if not _reported_as_finished(cfg, resume, history, report):
        train.fit(cfg, train_split, val_split, classes, report, device=ray.train.torch.get_device(), resume=resume)


def _train_ddp(config: dict) -> None:
    """A Tune trial: one `TorchTrainer.fit()`. The Train run name is the trial id, which is unique per
    invocation (a reused name silently resumes an old run) and stable across `Tuner.restore`."""
    import ray.train.torch
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = config["trial"]["config"]
    scaling = cfg["scaling"]
    need = resources.need_of(config["trial"]["name"], scaling)
    trial_id = ray.tune.get_context().get_trial_id()
    # Train's controller polls its workers every 2 s and takes one report per poll, so any epoch
    # shorter than 2 s was stretched to 2 s (docs/benchmarks.md). It reads this from the process that
    # calls fit(): this one.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg},
        scaling_config=ray.train.ScalingConfig(num_workers=need.workers, use_gpu=bool(need.gpus_per_worker),
                                               resources_per_worker=need.worker_bundle(),
                                               placement_strategy=scaling["placement"]),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=config["train_storage"],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg["checkpoint"]["keep"],
                                                         checkpoint_score_attribute=METRIC,
                                                         checkpoint_score_order=MODE),
            failure_config=ray.train.FailureConfig(max_failures=cfg["max_failures"]),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown progress
        ),
    )
    trainer.fit()


def _quiet_train_reports() -> None:
    """Train V2 logs "Reporting training result N: ..." at INFO per epoch per rank through a logger named
    after its file (outside "ray.train", so LoggingConfig misses it): half of the demo's output."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _distinct_nodes(world: int) -> int:
    """How many nodes this worker group spans (shown with the metrics; DDP across nodes costs more)."""
    node = ray.get_runtime_context().get_node_id()
    if world == 1:  # an elastic group down to one worker
        return 1
    everyone = [None] * world
    torch.distributed.all_gather_object(everyone, node)
    return len(set(everyone))


# ---------------------------------------------------------------- shared by both paths
def _load(cfg: dict, *, rank: int, world: int) -> tuple[list[str], data.Split, data.Split]:
    meta, train_split, val_split = data.load_trial_data(cfg["data"], cfg["train"]["seed"], rank, world)
    return meta.classes, train_split, val_split


def _restore(committed: ray.train.Checkpoint | None) -> tuple[dict | None, list[dict]]:
    """(checkpoint state, the history of epochs up to it) of the checkpoint a restarted trial resumes from."""
    if committed is None:
        return None, []
    with committed.as_directory() as directory:
        state = checkpoint.load(directory)
        history_file = Path(directory) / HISTORY
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
    return state, [h for h in history if h["epoch"] <= state["epoch"]]


def _reporter(resume: dict | None, history: list[dict], *, nodes: int, rank: int,
              send: Callable[[dict, str | None], None]) -> Callable[[dict, Callable[[], dict]], None]:
    """`train.fit`'s per-epoch report: metrics (+ node count, restart point) and, from rank 0, a
    checkpoint folder with `state.pt` and `history.json`."""
    resumed_from = resume["epoch"] if resume else 0  # epochs this process did not have to train
    backfill = list(history)

    def report(metrics: dict, state: Callable[[], dict]) -> None:
        metrics = {**metrics, "worker_nodes": nodes, "resumed_from": resumed_from}
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if backfill:  # once, after a restart: what the driver may have missed before the resume point
            metrics["history"] = json.dumps(backfill)
            backfill.clear()
        if rank != 0:
            send(metrics, None)
            return
        directory = tempfile.mkdtemp(prefix="checkpoint-")  # the sender deletes it once it is in storage
        checkpoint.save(state(), directory)
        files.atomic_write_text(Path(directory) / HISTORY, json.dumps(history))
        send(metrics, directory)

    return report


def _reported_as_finished(cfg: dict, resume: dict | None, history: list[dict],
                          report: Callable[[dict, Callable[[], dict]], None]) -> bool:
    """True when the checkpoint a restored trial resumes from is its last epoch's: it finished while its
    driver was gone (SIGKILL, then `--resume`). Nothing is left to train, so its last epoch is reported
    once more, with the history backfill, so the new driver records the trial's result and every epoch."""
    if resume is None or resume["epoch"] < cfg["train"]["epochs"] or not history:
        return False
    last = {k: v for k, v in history.pop().items() if k not in ("worker_nodes", "resumed_from")}
    report(last, lambda: resume)  # appends `last` to the history again
    return True
