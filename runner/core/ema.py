"""An exponential moving average of a network's weights (`train.ema_decay`), as timm's ModelEmaV3.

The average is a second, plain copy of the network, updated after every optimizer step:
`ema = decay_t * ema + (1 - decay_t) * live` over parameters and floating buffers (BatchNorm's running
statistics, so the average evaluates with statistics that match its weights); integer buffers are
copied. `decay_t = min(decay, (1 + t) / (10 + t))` at update t: the average follows the live weights
closely at first instead of staying near the random initialisation for ~1/(1 - decay) steps, which
would make short runs evaluate a barely trained network.

When on, the average is what the training core evaluates, checkpoints as `model` and therefore what
registration and submission load; the live weights travel in the checkpoint only for resuming.

    ema = Ema(net, decay=0.999)
    ... optimizer.step(); ema.update()               # a few fused kernels, no host sync
    ema.module(x)                                      # evaluate the average
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_OFFSET = 10  # timm's: decay_t reaches 0.9 after 80 updates, 0.99 after 890


class Ema:
    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        ours, theirs = self.module.state_dict(keep_vars=True), net.state_dict(keep_vars=True)
        # Parameters are held as objects, not their .data: SAM swaps a parameter's .data every step.
        self._floats = [(ours[k], theirs[k]) for k in ours if ours[k].is_floating_point()]
        self._others = [(ours[k], theirs[k]) for k in ours if not ours[k].is_floating_point()]

    def decay_now(self) -> float:
        """The decay the next update uses."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (WARMUP_OFFSET + t))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the live network it was made from."""
        weight = 1.0 - self.decay_now()  # a host float: no device value is read
        self.updates += 1
        averages, live = zip(*self._floats, strict=True)
        torch._foreach_lerp_([a.detach() for a in averages], [v.detach() for v in live], weight)
        for mine, theirs in self._others:
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
