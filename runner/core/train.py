"""The training core: plain PyTorch, no Ray, no MLflow.

`fit(cfg, train, val, classes, report)` trains one resolved trial config on in-memory uint8 splits and
calls `report(metrics, state)` once per epoch. Ray Train calls it from each DDP worker (it initialises
`torch.distributed`; `fit` then wraps the model in DDP and all-reduces the epoch metrics), the CLI's
`runner train` and the tests call it directly. Its pieces are public for the benchmarks, so they time
the same setup and the same step (one setup path):

    run = train.prepare(cfg, train_split, val_split, classes, device=device)  # model, data on device, ...
    metrics, confusion = train.run_epoch(run, epoch)        # train_epoch + evaluate + the epoch's schedule
    loss, logits = step.step(run, x, target)                # runner/core/step.py: forward_backward + update

The hot path follows cifar10-airbench: the whole split lives on the device as uint8, every epoch is a
device-side permutation, augmentation (and MixUp/CutMix) runs on whole batches there, and loss/accuracy
accumulate in device tensors that are read once per epoch (the only host sync). Recipes, each off by
default: EMA of the weights (runner/core/ema.py), MixUp/CutMix (runner/core/mixing.py), per-step lr
schedules (runner/core/schedule.py), SyncBatchNorm, gradient clipping, fp16 with a GradScaler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

import models
from runner.core import budget
from runner.core import step as steps
from runner.core.augment import Augment
from runner.core.ema import Ema
from runner.core.mixing import Mixer
from runner.core.optim import build_optimizer
from runner.core.schedule import Schedule
from runner.data import Split, channel_stats

Reporter = Callable[[dict, Callable[[], dict]], None]
EVAL_BATCH = 512


class Stopped(Exception):
    """Raised by `fit` between two steps once its `should_stop()` says so: the epoch is abandoned."""


@dataclass
class FitResult:
    metrics: dict
    best_val_acc: float
    model: nn.Module  # the evaluated weights: the EMA when train.ema_decay > 0
    params: int
    within_budget: bool


@dataclass
class Run:
    """One trial's training state, built once by `prepare`: what every epoch and step reads."""

    cfg: dict
    net: nn.Module  # the live weights, plain
    model: nn.Module  # net compiled and/or DDP-wrapped: what trains
    ema: Ema | None
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    augment: Augment
    mixer: Mixer
    scaler: torch.amp.GradScaler | None  # fp16 only
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int
    world: int
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    mean: list[float]
    std: list[float]
    verdict: budget.Verdict
    steps_per_epoch: int
    start_epoch: int = 0
    best_val_acc: float = 0.0
    should_stop: Callable[[], bool] | None = None  # asked before every step; see `fit`

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation, checkpoints and so registration see: the average when EMA is on. Plain (no
        DDP, no second compiled graph)."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def batch(self) -> int:
        """The configured batch is global: DDP's gradient all-reduce averages `world` local batches."""
        return max(1, self.cfg["train"]["batch_size"] // self.world)


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def fit(cfg: dict, train: Split, val: Split | None, classes: list[str], report: Reporter | None = None,
        *, device: torch.device | None = None, resume: dict | None = None,
        should_stop: Callable[[], bool] | None = None) -> FitResult:
    """Train `cfg` for its epochs (from `resume["epoch"]` when resuming) and return the last metrics.

    `should_stop` is for a caller told to stop while an epoch trains (a scheduler's early stop arrives
    one report late): once it returns True, `fit` raises `Stopped` before the next step, so the
    caller's process is free again within one step instead of one epoch."""
    run = prepare(cfg, train, val, classes, device=device, resume=resume)
    run.should_stop = should_stop
    metrics: dict = {}
    for epoch in range(run.start_epoch, cfg["train"]["epochs"]):
        metrics, confusion = run_epoch(run, epoch)
        if report is not None:
            report(metrics, lambda e=epoch, m=metrics, c=confusion: state(run, e + 1, m, c))
    return FitResult(metrics=metrics, best_val_acc=run.best_val_acc, model=run.eval_model,
                     params=run.verdict.params, within_budget=run.verdict.within)


def prepare(cfg: dict, train: Split, val: Split | None, classes: list[str], *, device: torch.device | None = None,
            resume: dict | None = None, compile_backend: str = "inductor") -> Run:
    """Everything before the first epoch: budget check, model, data on the device, optimizer, schedule,
    recipes; from a checkpoint's state when resuming. `compile_backend` is for benchmarks on a CPU."""
    device = device or default_device()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    verdict = budget.enforce(cfg["model"], len(classes), cfg["budget"])  # refuse before spending anything
    torch.manual_seed(cfg["train"]["seed"])  # identical initial weights on every rank
    net = _build_model(cfg, len(classes), device, world)
    train_x, train_y = _to_device(train, device)
    val_x, val_y = _to_device(val, device) if val is not None and len(val.ids) else (None, None)
    # Statistics of the whole train split: each rank's histograms are summed over all ranks.
    mean, std = (resume["mean"], resume["std"]) if resume else channel_stats(
        train_x, dist.all_reduce if dist.is_initialized() else None)
    autocast_dtype, scaler = steps.precision(cfg, device)
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"], fused=scaler is not None)
    batch = max(1, cfg["train"]["batch_size"] // world)
    per_epoch = _steps_per_epoch(len(train_y), batch, device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: pick the fastest conv algorithms once
    run = Run(cfg=cfg, net=net, model=_distribute(_maybe_compile(net, cfg, compile_backend), device),
              ema=Ema(net, cfg["train"]["ema_decay"]) if cfg["train"]["ema_decay"] > 0 else None,
              optimizer=optimizer, schedule=Schedule(optimizer, cfg["schedule"], cfg["train"]["epochs"], per_epoch),
              augment=Augment(cfg["augment"], mean, std, cfg["train"]["channels_last"]),
              mixer=Mixer(cfg["augment"], len(classes), cfg["train"]["label_smoothing"]), scaler=scaler,
              device=device, autocast_dtype=autocast_dtype, rank=rank, world=world, classes=list(classes),
              train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, mean=list(mean), std=list(std),
              verdict=verdict, steps_per_epoch=per_epoch)
    if resume:
        _restore(run, resume)
    return run


def run_epoch(run: Run, epoch: int) -> tuple[dict, torch.Tensor]:
    """Train one epoch (0-based), evaluate, step the per-epoch schedule; the metrics and the val confusion."""
    started = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    train_sums = train_epoch(run, epoch)
    val_sums, confusion = evaluate(run, epoch)
    sums = torch.cat([train_sums, val_sums])
    if run.world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(confusion)
    loss, correct, seen, val_loss, val_correct, val_seen = sums.tolist()  # the epoch's one host sync
    seconds = time.perf_counter() - started
    metrics = {
        "epoch": epoch + 1,
        "train_loss": loss / max(seen, 1), "train_acc": correct / max(seen, 1),
        "val_loss": val_loss / val_seen if val_seen else math.nan,
        "val_acc": val_correct / val_seen if val_seen else 0.0,
        "lr": lr, "epoch_s": seconds, "images_per_s": seen / seconds,
        "batch_per_worker": run.batch, "workers": run.world,
    }
    if run.scaler is not None:
        metrics["loss_scale"] = run.scaler.get_scale()  # fp16 only; a second sync per epoch, not per step
    run.best_val_acc = max(run.best_val_acc, metrics["val_acc"])
    metrics["best_val_acc"] = run.best_val_acc
    run.schedule.after_epoch(metrics["val_acc"] if run.val_x is not None else metrics["train_acc"])
    return metrics, confusion


def train_epoch(run: Run, epoch: int) -> torch.Tensor:
    """One pass over the local train split: loss sum, correct count and images seen, as device tensors.
    With MixUp/CutMix, "correct" counts the argmax against each image's own label."""
    generator = seed_epoch(run, epoch)
    run.model.train()
    batch = run.batch
    order = torch.randperm(len(run.train_y), device=run.device, generator=generator)
    sums = torch.zeros(2, device=run.device, dtype=torch.float64)
    seen = 0  # counted on the host: a device tensor built from it each step would be a sync
    for i in range(run.steps_per_epoch):
        _check_stop(run)
        index = order[i * batch:(i + 1) * batch]
        x, y = run.augment(run.train_x[index], generator), run.train_y[index]
        x, target = run.mixer(x, y, generator) if run.mixer.on else (x, y)
        loss, logits = steps.step(run, x, target)
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
        seen += len(y)
    # torch.full fills on the device; a host tensor copied over would be a (pageable, synchronising) copy.
    return torch.cat([sums, torch.full((1,), float(seen), dtype=torch.float64, device=run.device)])


@torch.no_grad()
def evaluate(run: Run, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, correct, seen) and the confusion matrix (rows = true class) of `run.eval_model` on the
    local val split, scored as the trial's `eval` group says, as device tensors."""
    c = run.num_classes
    sums = torch.zeros(2, device=run.device, dtype=torch.float64)
    confusion = torch.zeros(c * c, device=run.device, dtype=torch.int64)
    if run.val_x is None:
        return torch.zeros(3, device=run.device, dtype=torch.float64), confusion.view(c, c)
    run.eval_model.eval()
    generator = _eval_generator(run, epoch)
    for start in range(0, len(run.val_y), EVAL_BATCH):
        _check_stop(run)
        y = run.val_y[start:start + EVAL_BATCH]
        logits = _eval_logits(run, run.val_x[start:start + EVAL_BATCH], generator)
        predicted = logits.argmax(1)
        sums += torch.stack([nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                             (predicted == y).sum().double()])
        # index_add_, not bincount: CUDA's bincount reads the max back to the host (a sync per batch).
        confusion.index_add_(0, y * c + predicted, torch.ones_like(y))
    seen = torch.full((1,), float(len(run.val_y)), dtype=torch.float64, device=run.device)
    return torch.cat([sums, seen]), confusion.view(c, c)


def _check_stop(run: Run) -> None:
    if run.should_stop is not None and run.should_stop():
        raise Stopped("should_stop() turned true during an epoch")


def _eval_logits(run: Run, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One view's logits, or the log of the softmax averaged over the eval views: cross-entropy and argmax
    read both alike (log-softmax of log-probabilities that sum to 1 is the identity)."""
    views = run.augment.views(images, run.cfg["eval"]["tta"], run.cfg["eval"]["views"], generator)
    with steps.autocast(run):
        outs = [run.eval_model(x).float() for x in views]
    if len(outs) == 1:
        return outs[0]
    return torch.stack([out.softmax(1) for out in outs]).mean(0).clamp_min_(1e-12).log_()


def _eval_generator(run: Run, epoch: int) -> torch.Generator:
    """Draws for `eval.tta: train_transforms`, apart from training's so that scoring never shifts them."""
    generator = torch.Generator(device=run.device)
    generator.manual_seed((run.cfg["train"]["seed"] * 1_000_003 + epoch * 1009 + run.rank + 500_009) % (2**63))
    return generator


def seed_epoch(run: Run, epoch: int) -> torch.Generator:
    """Per-epoch seeds make resume exact without saving RNG state: epoch e always sees the same draws."""
    seed = (run.cfg["train"]["seed"] * 1_000_003 + epoch * 1009 + run.rank) % (2**63)
    torch.manual_seed(seed)  # dropout and drop-connect draw from the global generator
    generator = torch.Generator(device=run.device)
    generator.manual_seed(seed)
    return generator


def state(run: Run, epochs_done: int, metrics: dict, confusion: torch.Tensor) -> dict:
    """The checkpoint after `epochs_done` epochs. `model` holds the evaluated weights (the EMA when on:
    registration and submission load it); the live weights and the EMA's step count travel for resume."""
    out = {
        "model": _cpu(run.eval_model.state_dict()),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "epoch": epochs_done, "best_val_acc": run.best_val_acc, "metrics": dict(metrics),
        "val_confusion": confusion.cpu(), "config": run.cfg, "classes": list(run.classes),
        "mean": list(run.mean), "std": list(run.std), "params": run.verdict.params,
        "within_budget": run.verdict.within,
        "image_shape": list(run.train_x.shape[1:]),  # what a served model must be given (runner.core.predict)
    }
    if run.ema is not None:
        out.update(train_model=_cpu(run.net.state_dict()), ema_updates=run.ema.updates)
    if run.scaler is not None:
        out["scaler"] = run.scaler.state_dict()
    return out


def _restore(run: Run, resume: dict) -> None:
    run.net.load_state_dict(resume.get("train_model", resume["model"]))
    if run.ema is not None:
        run.ema.load_state_dict({"model": resume["model"], "updates": resume.get("ema_updates", 0)})
    run.optimizer.load_state_dict(resume["optimizer"])
    run.schedule.load_state_dict(resume["scheduler"])
    if run.scaler is not None and "scaler" in resume:
        run.scaler.load_state_dict(resume["scaler"])
    run.start_epoch, run.best_val_acc = resume["epoch"], resume["best_val_acc"]


def _cpu(weights: dict) -> dict:
    """A copy on the CPU (on a CPU device `.cpu()` alone would alias the weights that keep training)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


def _build_model(cfg: dict, num_classes: int, device: torch.device, world: int) -> nn.Module:
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    net = models.build(cfg["model"]["name"], num_classes, **kwargs).to(device)
    if cfg["train"]["sync_bn"] and world > 1:
        if device.type == "cpu":  # torch's SyncBatchNorm has no CPU kernel: it would fail at the first step
            raise ValueError("train.sync_bn: torch's SyncBatchNorm runs on GPUs only and this DDP worker is on "
                             "the CPU; set train.sync_bn: false for CPU trials (or give the workers GPUs)")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if cfg["train"]["channels_last"]:
        # Faster on CUDA tensor cores, and measured 2.4x faster for WRN convs on a 2-core CPU (oneDNN) too.
        net = net.to(memory_format=torch.channels_last)
    return net


def _maybe_compile(net: nn.Module, cfg: dict, backend: str) -> nn.Module:
    return torch.compile(net, backend=backend) if cfg["train"]["compile"] else net


def _distribute(net: nn.Module, device: torch.device) -> nn.Module:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)


def _steps_per_epoch(local_count: int, batch: int, device: torch.device, world: int) -> int:
    """Every rank must take the same number of steps or DDP's all-reduce waits forever."""
    fewest = local_count
    if world > 1:
        count = torch.tensor(local_count, device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        fewest = int(count)  # a host sync, once per trial
    # Drop the last partial batch (as airbench does); a one-image batch would break BatchNorm.
    return max(1, fewest // batch) if fewest >= 2 else 0


def _to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Pinned memory lets the one host-to-device copy of the data set run at full bus speed.
    images = split.images.pin_memory() if device.type == "cuda" else split.images
    return images.to(device, non_blocking=True), split.labels.to(device, non_blocking=True)
