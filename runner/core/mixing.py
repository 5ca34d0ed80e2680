"""MixUp and CutMix on the device, per sample, with label smoothing: soft targets that sum to 1.

Reads the `augment` group's `mixup_alpha`, `cutmix_alpha`, `mix_prob`, `mix_switch_prob` and the
label smoothing; takes a normalised float batch `[B, C, H, W]` (what `Augment` returns) with its integer
labels and returns the mixed batch and `[B, classes]` target probabilities. Like timm's `Mixup` in its
per-element mode: sample i is mixed with sample B-1-i (the batch reversed, so no extra permutation
draw), each sample with its own lambda, its own choice of MixUp or CutMix and its own coin for
mixing at all. One batch-wide op per step, no per-image loop, no host sync; all randomness from the
generator the epoch's augmentation uses, so resume stays exact.

    mixer = Mixer(cfg["augment"], num_classes=100, smoothing=0.1)   # None-free: check `mixer.on` first
    x, target = mixer(x, y, generator)                              # target rows sum to 1
    loss = F.cross_entropy(logits, target)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Target probabilities of `F.cross_entropy(..., label_smoothing=s)`: 1 - s + s/C on the label, s/C
    elsewhere."""
    off = smoothing / num_classes
    target = torch.full((len(labels), num_classes), off, device=labels.device)
    return target.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def beta(alpha: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) from `generator` (torch.distributions.Beta takes no generator;
    Beta(a, a) = G1 / (G1 + G2) for two Gamma(a) draws, with the same kernel torch's Beta uses)."""
    gammas = torch._standard_gamma(torch.full((2, n), float(alpha), device=device), generator=generator)
    return gammas[0] / gammas.sum(0).clamp_min(1e-12)


def cutmix_keep(shape: torch.Size, lam: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, a box of area ~(1 - lam) of the image, centred uniformly and clipped at the border.

    Returns the float keep mask [B, 1, H, W] (1 outside the box, where the image keeps its own pixels)
    and the lambda each box really gives (the kept fraction, after clipping)."""
    b, _, h, w = shape
    device = lam.device
    cut = (1.0 - lam).clamp_min(0).sqrt()
    half_h, half_w = (cut * h / 2).view(b, 1, 1), (cut * w / 2).view(b, 1, 1)
    cy = torch.rand(b, 1, 1, generator=generator, device=device) * h
    cx = torch.rand(b, 1, 1, generator=generator, device=device) * w
    rows = torch.arange(h, device=device).view(1, h, 1) + 0.5
    cols = torch.arange(w, device=device).view(1, 1, w) + 0.5
    in_rows = ((rows >= cy - half_h) & (rows < cy + half_h)).float()  # [B, H, 1]
    in_cols = ((cols >= cx - half_w) & (cols < cx + half_w)).float()  # [B, 1, W]
    keep = 1.0 - in_rows * in_cols
    return keep.unsqueeze(1), keep.mean(dim=(1, 2))


class Mixer:
    """The configured MixUp/CutMix; `on` is False when both alphas are 0 (the default: nothing mixes)."""

    def __init__(self, cfg: Mapping[str, object], num_classes: int, smoothing: float) -> None:
        self.mixup, self.cutmix = float(cfg["mixup_alpha"]), float(cfg["cutmix_alpha"])
        self.prob, self.switch = float(cfg["mix_prob"]), float(cfg["mix_switch_prob"])
        self.num_classes, self.smoothing = num_classes, smoothing
        self.on = self.mixup > 0 or self.cutmix > 0

    def __call__(self, x: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, device = x.shape[0], x.device
        use_cutmix = self._use_cutmix(b, generator, device)
        lam_mixup = beta(self.mixup, b, generator, device) if self.mixup > 0 else torch.ones(b, device=device)
        lam_cut = beta(self.cutmix, b, generator, device) if self.cutmix > 0 else torch.ones(b, device=device)
        keep, lam_cut = cutmix_keep(x.shape, lam_cut, generator)
        mixed = torch.rand(b, generator=generator, device=device) < self.prob
        lam = torch.where(mixed, torch.where(use_cutmix, lam_cut, lam_mixup), torch.ones_like(lam_mixup))
        # Per image either the box mask (CutMix) or the constant lambda (MixUp) weighs its own pixels.
        weight = torch.where((use_cutmix & mixed).view(b, 1, 1, 1), keep, lam.view(b, 1, 1, 1))
        partner = x.flip(0)
        out = torch.lerp(partner, x, weight.to(x.dtype))
        own = smooth_one_hot(labels, self.num_classes, self.smoothing)
        target = torch.lerp(own.flip(0), own, lam.view(b, 1))
        return out, target

    def _use_cutmix(self, b: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        if self.mixup > 0 and self.cutmix > 0:
            return torch.rand(b, generator=generator, device=device) < self.switch
        return torch.full((b,), self.cutmix > 0, device=device)
