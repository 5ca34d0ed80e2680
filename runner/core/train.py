"""The training core: plain PyTorch, no Ray, no MLflow.

`fit(cfg, train, val, classes, report)` trains one resolved trial config on in-memory uint8 splits and
calls `report(metrics, state)` once per epoch. Ray Train calls it from each DDP worker (it initialises
`torch.distributed`; `fit` then wraps the model in DDP and all-reduces the epoch metrics), the CLI's
`runner train` and the benchmarks call it directly.

The hot path follows cifar10-airbench: the whole split lives on the device as uint8, every epoch is a
device-side permutation, augmentation runs on whole batches there, and loss/accuracy accumulate in
device tensors that are read once per epoch (the only host sync).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import models
from runner.core import budget
from runner.core.augment import Augment
from runner.core.optim import SAM, build_optimizer
from runner.core.schedule import EpochSchedule
from runner.data import Split, channel_stats

Reporter = Callable[[dict, Callable[[], dict]], None]
EVAL_BATCH = 512


@dataclass
class FitResult:
    metrics: dict
    best_val_acc: float
    model: nn.Module
    params: int
    within_budget: bool


@dataclass
class _Run:
    """What one epoch needs; built once per fit."""

    cfg: dict
    model: nn.Module  # what trains: compiled and/or DDP-wrapped
    eval_model: nn.Module  # the same weights, plain: evaluation needs neither DDP nor another compiled graph
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    augment: Augment
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int
    world: int
    num_classes: int


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def fit(cfg: dict, train: Split, val: Split | None, classes: list[str], report: Reporter | None = None,
        *, device: torch.device | None = None, resume: dict | None = None) -> FitResult:
    """Train `cfg` for its epochs (from `resume["epoch"]` when resuming) and return the last metrics."""
    device = device or default_device()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    verdict = budget.enforce(cfg["model"], len(classes), cfg["budget"])  # refuse before spending anything
    torch.manual_seed(cfg["train"]["seed"])  # identical initial weights on every rank
    net = _build_model(cfg, len(classes), device)
    train_x, train_y = _to_device(train, device)
    val_x, val_y = _to_device(val, device) if val is not None and len(val.ids) else (None, None)
    # Statistics of the whole train split: each rank's histograms are summed over all ranks.
    mean, std = (resume["mean"], resume["std"]) if resume else channel_stats(
        train_x, dist.all_reduce if dist.is_initialized() else None)
    optimizer = build_optimizer(net.parameters(), cfg["optimizer"])
    schedule = EpochSchedule(optimizer, cfg["schedule"], cfg["train"]["epochs"])
    start, best = 0, 0.0
    if resume:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        start, best = resume["epoch"], resume["best_val_acc"]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: pick the fastest conv algorithms once
    run = _Run(cfg=cfg, model=_distribute(_maybe_compile(net, cfg), device), eval_model=net,
               optimizer=optimizer, schedule=schedule,
               augment=Augment(cfg["augment"], mean, std, _channels_last(cfg, device)),
               device=device, autocast_dtype=_autocast_dtype(cfg, device), rank=rank, world=world,
               num_classes=len(classes))
    metrics: dict = {}
    for epoch in range(start, cfg["train"]["epochs"]):
        metrics, confusion = _epoch(run, epoch, train_x, train_y, val_x, val_y)
        best = max(best, metrics["val_acc"])
        metrics["best_val_acc"] = best
        schedule.step(metrics["val_acc"] if val_x is not None else metrics["train_acc"])
        if report is not None:
            report(metrics, _state_builder(run, net, epoch + 1, best, metrics, confusion, classes,
                                           mean, std, verdict, tuple(train.images.shape[1:])))
    return FitResult(metrics=metrics, best_val_acc=best, model=net, params=verdict.params,
                     within_budget=verdict.within)


def _epoch(run: _Run, epoch: int, train_x: torch.Tensor, train_y: torch.Tensor,
           val_x: torch.Tensor | None, val_y: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    started = time.perf_counter()
    generator = _seed_epoch(run, epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    train_sums = _train_epoch(run, train_x, train_y, generator)
    val_sums, confusion = _evaluate(run, val_x, val_y, _eval_generator(run, epoch))
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
        "batch_per_worker": _local_batch(run), "workers": run.world,
    }
    return metrics, confusion


def _train_epoch(run: _Run, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Loss sum, correct count and images seen, as device tensors."""
    run.model.train()
    batch = _local_batch(run)
    steps = _steps_per_epoch(len(labels), batch, run)
    order = torch.randperm(len(labels), device=run.device, generator=generator)
    sums = torch.zeros(2, device=run.device, dtype=torch.float64)
    seen = 0  # counted on the host: a device tensor built from it each step would be a sync
    smoothing = run.cfg["train"]["label_smoothing"]
    for step in range(steps):
        index = order[step * batch:(step + 1) * batch]
        x, y = run.augment(images[index], generator), labels[index]
        loss, logits = _step(run, x, y, smoothing)
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
        seen += len(y)
    # torch.full fills on the device; a host tensor copied over would be a (pageable, synchronising) copy.
    return torch.cat([sums, torch.full((1,), float(seen), dtype=torch.float64, device=run.device)])


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; SAM takes its second forward/backward at the perturbed weights."""
    loss, logits = _forward_backward(run, x, y, smoothing)
    if isinstance(run.optimizer, SAM):
        run.optimizer.first_step(zero_grad=True)
        with _frozen_batchnorm(run.model):  # davda54: BN statistics come from the first pass only
            _forward_backward(run, x, y, smoothing)
        run.optimizer.second_step(zero_grad=True)
    else:
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss, logits


def _local_batch(run: _Run) -> int:
    """The configured batch is global: DDP's gradient all-reduce averages `world` local batches."""
    return max(1, run.cfg["train"]["batch_size"] // run.world)


def _forward_backward(run: _Run, x: torch.Tensor, y: torch.Tensor,
                      smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    with _autocast(run):
        logits = run.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    loss.backward()
    return loss, logits


@torch.no_grad()
def _evaluate(run: _Run, images: torch.Tensor | None, labels: torch.Tensor | None,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, correct, seen) and the confusion matrix (rows = true class) on the val split, scored
    as the trial's `eval` group says."""
    c = run.num_classes
    sums = torch.zeros(2, device=run.device, dtype=torch.float64)
    confusion = torch.zeros(c * c, device=run.device, dtype=torch.int64)
    if images is None:
        return torch.zeros(3, device=run.device, dtype=torch.float64), confusion.view(c, c)
    run.eval_model.eval()
    for start in range(0, len(labels), EVAL_BATCH):
        y = labels[start:start + EVAL_BATCH]
        logits = _eval_logits(run, images[start:start + EVAL_BATCH], generator)
        predicted = logits.argmax(1)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), (predicted == y).sum().double()])
        # index_add_, not bincount: CUDA's bincount reads the max back to the host (a sync per batch).
        confusion.index_add_(0, y * c + predicted, torch.ones_like(y))
    seen = torch.full((1,), float(len(labels)), dtype=torch.float64, device=run.device)
    return torch.cat([sums, seen]), confusion.view(c, c)


def _eval_logits(run: _Run, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One view's logits, or the log of the softmax averaged over the eval views: cross-entropy and argmax
    read both alike (log-softmax of log-probabilities that sum to 1 is the identity)."""
    views = run.augment.views(images, run.cfg["eval"]["tta"], run.cfg["eval"]["views"], generator)
    with _autocast(run):
        outs = [run.eval_model(x).float() for x in views]
    if len(outs) == 1:
        return outs[0]
    return torch.stack([out.softmax(1) for out in outs]).mean(0).clamp_min_(1e-12).log_()


def _eval_generator(run: _Run, epoch: int) -> torch.Generator:
    """Draws for `eval.tta: train_transforms`, apart from training's so that scoring never shifts them."""
    generator = torch.Generator(device=run.device)
    generator.manual_seed((run.cfg["train"]["seed"] * 1_000_003 + epoch * 1009 + run.rank + 500_009) % (2**63))
    return generator


def _autocast(run: _Run) -> torch.autocast:
    return torch.autocast(run.device.type, dtype=run.autocast_dtype, enabled=run.autocast_dtype is not None)


def _steps_per_epoch(local_count: int, batch: int, run: _Run) -> int:
    """Every rank must take the same number of steps or DDP's all-reduce waits forever."""
    fewest = local_count
    if run.world > 1:
        count = torch.tensor(local_count, device=run.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        fewest = int(count)  # a host sync, once per epoch
    # Drop the last partial batch (as airbench does); a one-image batch would break BatchNorm.
    return max(1, fewest // batch) if fewest >= 2 else 0


def _seed_epoch(run: _Run, epoch: int) -> torch.Generator:
    """Per-epoch seeds make resume exact without saving RNG state: epoch e always sees the same draws."""
    seed = (run.cfg["train"]["seed"] * 1_000_003 + epoch * 1009 + run.rank) % (2**63)
    torch.manual_seed(seed)  # dropout and drop-connect draw from the global generator
    generator = torch.Generator(device=run.device)
    generator.manual_seed(seed)
    return generator


def _state_builder(run: _Run, net: nn.Module, epochs_done: int, best: float, metrics: dict,
                   confusion: torch.Tensor, classes: list[str], mean: list[float], std: list[float],
                   verdict: budget.Verdict, image_shape: tuple[int, ...]) -> Callable[[], dict]:
    def state() -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.schedule.state_dict(),
            "epoch": epochs_done, "best_val_acc": best, "metrics": dict(metrics),
            "val_confusion": confusion.cpu(), "config": run.cfg, "classes": list(classes),
            "mean": list(mean), "std": list(std), "params": verdict.params, "within_budget": verdict.within,
            "image_shape": list(image_shape),  # what a served model must be given (runner.core.predict)
        }
    return state


def _build_model(cfg: dict, num_classes: int, device: torch.device) -> nn.Module:
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    net = models.build(cfg["model"]["name"], num_classes, **kwargs).to(device)
    if _channels_last(cfg, device):
        net = net.to(memory_format=torch.channels_last)
    return net


def _maybe_compile(net: nn.Module, cfg: dict) -> nn.Module:
    return torch.compile(net) if cfg["train"]["compile"] else net


def _distribute(net: nn.Module, device: torch.device) -> nn.Module:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)


def _channels_last(cfg: dict, device: torch.device) -> bool:
    # Faster on CUDA tensor cores, and for WRN convs on CPU (oneDNN) too: docs/benchmarks.md.
    return cfg["train"]["channels_last"]


def _autocast_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    precision = cfg["train"]["precision"]
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Pinned memory lets the one host-to-device copy of the data set run at full bus speed.
    images = split.images.pin_memory() if device.type == "cuda" else split.images
    return images.to(device, non_blocking=True), split.labels.to(device, non_blocking=True)


class _frozen_batchnorm:
    """Context manager: BatchNorm layers use but do not update running statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum in zip(self.norms, self.saved, strict=True):
            m.momentum = momentum
