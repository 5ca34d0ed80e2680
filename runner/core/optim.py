"""Optimizers by name, and the SAM wrapper of davda54/sam.

Reads the `optimizer` group of a resolved trial config; writes nothing. `build_optimizer` is the only
entry point the training core uses. `fused=True` picks torch's fused kernels (sgd, adam, adamw): with
a GradScaler they read its overflow flag on the device and skip the step there, where any other
optimizer makes the scaler read the flag back to the host every step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "rmsprop")
FUSED = ("sgd", "adam", "adamw")  # the ones with fused kernels that take a GradScaler's flags


def build_optimizer(params: Iterable[nn.Parameter], cfg: dict, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer named in `cfg["name"]`, wrapped in SAM when `cfg["sam_rho"] > 0`."""
    base_class, kwargs = _base_optimizer(cfg)
    if fused:  # the schema allows fp16 (the one caller) only with a FUSED optimizer and no SAM
        kwargs["fused"] = True
    if cfg["sam_rho"] > 0:
        return SAM(params, base_class, rho=cfg["sam_rho"], adaptive=cfg["sam_adaptive"], **kwargs)
    optimizer = base_class(params, **kwargs)
    if fused and cfg["name"] == "sgd" and cfg["momentum"] > 0:
        _zero_momentum(optimizer)
    return optimizer


def _zero_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Start fused SGD's momentum at zero. Its first step makes the buffers with torch.empty_like and
    relies on the kernel to fill them; when the GradScaler skips that step (an fp16 overflow, usual at
    the initial scale) they stay uninitialised memory and the next step applies it (seen as a 1e36
    update on torch 2.14). A zero buffer gives the same first update: 0 * momentum + gradient."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _base_optimizer(cfg: dict) -> tuple[type[torch.optim.Optimizer], dict]:
    name, lr, wd = cfg["name"], cfg["lr"], cfg["weight_decay"]
    betas = tuple(cfg["betas"])
    if name == "sgd":
        return torch.optim.SGD, dict(lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam, dict(lr=lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW, dict(lr=lr, betas=betas, weight_decay=wd)
    if name == "nadam":
        return torch.optim.NAdam, dict(lr=lr, betas=betas, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop, dict(lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    raise ValueError(f"optimizer.name {name!r} is not one of {', '.join(OPTIMIZERS)}")


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al. 2021) around any base optimizer, as in davda54/sam.

    A step is two forward/backward passes: `first_step` climbs to w + e(w) within an L2 ball of
    radius rho (scaled per weight when `adaptive`, i.e. ASAM), `second_step` restores w and lets the
    base optimizer step with the gradient taken at the perturbed point. `step(closure)` does all three
    (the closure takes the second forward/backward), as davda54's does: it is SAM's own `step` that an
    lr scheduler watches, so calling the two halves directly would make torch warn on every run that
    the scheduler stepped before the optimizer.
    """

    def __init__(self, params: Iterable[nn.Parameter], base_optimizer: type[torch.optim.Optimizer],
                 rho: float = 0.05, adaptive: bool = False, **kwargs: object) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        scale_base = 1.0 / (self._grad_norm() + 1e-12)
        for group in self.param_groups:
            scale = group["rho"] * scale_base
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or "old_p" not in self.state[p]:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        """first_step, then `closure()` (the forward/backward at the perturbed weights), then second_step.
        The first pass's gradients must be in `.grad` already."""
        if closure is None:
            raise RuntimeError("SAM needs two passes: call step(closure) with a closure that runs the second "
                               "forward/backward, or first_step() and second_step()")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def _grad_norm(self) -> torch.Tensor:
        # One device for the norm: model parallelism may spread parameters over several.
        shared_device = self.param_groups[0]["params"][0].device
        norms = [
            ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2).to(shared_device)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        return torch.norm(torch.stack(norms), p=2)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
