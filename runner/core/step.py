"""One optimisation step of the training core, and the precision it runs at.

`step(run, x, target)` = `forward_backward` (autocast forward, loss, scaled backward) + `update`
(gradient clipping, the optimizer — SAM's second pass included —, the GradScaler, the EMA, the per-step
schedule). `target` is either the integer labels (label smoothing applied by the loss) or MixUp/CutMix
target probabilities (smoothing already in them). Nothing here reads a device value back to the host:
clipping scales on the device, and fp16 uses fused optimizers that take the scaler's overflow flag on
the device (a plain optimizer would make `GradScaler.step` read it every step).

Precision (`train.precision`): `bf16` autocast; `fp16` autocast with a GradScaler (for GPUs without
bf16: T4, V100); `fp32`; `auto` = bf16 on a GPU that has it, else fp16 where the optimizer allows it
(sgd/adam/adamw without SAM), else fp32; fp32 on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from runner.core.optim import FUSED, SAM

if TYPE_CHECKING:
    from runner.core.train import Run


def precision(cfg: dict, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype (None = fp32) and, for fp16, the GradScaler."""
    chosen = cfg["train"]["precision"]
    if chosen == "auto":
        chosen = _auto(cfg, device)
    if chosen == "bf16":
        return torch.bfloat16, None
    if chosen == "fp16":
        return torch.float16, torch.amp.GradScaler(device.type)
    return None, None


def _auto(cfg: dict, device: torch.device) -> str:
    if device.type != "cuda":
        return "fp32"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    scalable = cfg["optimizer"]["name"] in FUSED and cfg["optimizer"]["sam_rho"] == 0
    return "fp16" if scalable else "fp32"


def autocast(run: Run) -> torch.autocast:
    return torch.autocast(run.device.type, dtype=run.autocast_dtype, enabled=run.autocast_dtype is not None)


def step(run: Run, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a prepared batch; the (unscaled) loss and the logits of the first pass."""
    loss, logits = forward_backward(run, x, target)
    update(run, x, target)
    return loss, logits


def forward_backward(run: Run, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast(run):
        logits = run.model(x)
        loss = _loss(logits.float(), target, run.cfg["train"]["label_smoothing"])
    (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
    return loss, logits


def update(run: Run, x: torch.Tensor, target: torch.Tensor) -> None:
    """Everything after the first backward: SAM takes its second forward/backward at the perturbed
    weights (x, target again), with BatchNorm statistics from the first pass only (davda54)."""
    optimizer = run.optimizer
    if isinstance(optimizer, SAM):
        def second_pass() -> None:
            with _frozen_batchnorm(run.model):
                forward_backward(run, x, target)
            _clip(run)  # SAM's climb is scale-free, so only the gradient the base optimizer uses is clipped
        optimizer.step(second_pass)
    elif run.scaler is not None:
        _clip(run)
        run.scaler.step(optimizer)  # fused: skips an overflowing step on the device
        run.scaler.update()
    else:
        _clip(run)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update()
    run.schedule.after_step()


def _loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    if target.is_floating_point():  # MixUp/CutMix probabilities, smoothing already in them
        return F.cross_entropy(logits, target)
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


def _clip(run: Run) -> None:
    limit = run.cfg["optimizer"]["clip_grad_norm"]
    if not limit:
        return
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients; the step then skips unscaling
    # error_if_nonfinite stays off: checking it would read the norm back to the host every step.
    torch.nn.utils.clip_grad_norm_(run.net.parameters(), limit)


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
