"""Batched data augmentation on the training device, and test-time-augmentation views.

Reads a uint8 batch `[B, H, W, C]` (the layout `runner.data.Split.images` stores) and writes a float
`[B, C, H, W]` batch, normalised with the data set's own per-channel mean/std. Every op is a pure
function `f(images, generator, ...) -> images` over the whole batch: no per-image Python loop, no host
sync (`.item()`, `.cpu()`), and all randomness drawn from `generator`, a `torch.Generator` on the batch's
device, so a seed gives the same batches again on that device type (CPU and CUDA draw different numbers).

Order inside `Augment.__call__`: colour jitter on [0, 1] -> normalise -> crop -> flips -> rotate ->
cutout. Cutout and the borders that crop (zero mode) and rotate bring in are 0 after normalisation,
i.e. the data set's mean colour.

    aug = Augment(cfg["augment"], mean=meta_mean, std=meta_std, channels_last=True)
    x = aug(split.images[idx].to(device), generator)      # training batch
    x = aug.eval(split.images[idx].to(device))            # evaluation batch
    views = aug.views(images, "flips", 2)                 # the eval group's views; caller averages softmax

Timing: `python bench/augment.py` (images/s against a torchvision PIL DataLoader).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

Stats = Sequence[float] | torch.Tensor

# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


def _per_image(x: torch.Tensor, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """One uniform draw in [low, high] per image, shaped [B, 1, 1, 1] to broadcast over the image."""
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u


def _coin(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A bool [B, 1, 1, 1], True with p=0.5 per image."""
    return torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device) < 0.5


# ---------------------------------------------------------------- layout and normalisation

def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [0, 1] (contiguous NCHW)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def normalise(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """(x - mean) / std per channel, for a float [B, C, H, W] batch in [0, 1] units."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(-mean_t / std_t, x, 1.0 / std_t)


def to_float(images: torch.Tensor, mean: Stats, std: Stats, channels_last: bool) -> torch.Tensor:
    """uint8 [B, H, W, C] -> normalised float [B, C, H, W]; mean/std per channel in [0, 1] units."""
    x = _normalise_bytes_(images.permute(0, 3, 1, 2).contiguous().float(), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _normalise_bytes_(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """In place on a contiguous float NCHW batch of byte values: x / 255 -> (x - mean) / std.

    NCHW because a per-channel op on NHWC's 3-wide inner dim is much slower on CPU; in place because
    each extra 6 MB temporary (a 512 batch) can cost page faults with glibc's malloc (docs/benchmarks.md)."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


# ---------------------------------------------------------------- geometric ops

def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator,
                mode: str = "reflect") -> torch.Tensor:
    """Pad each side by `padding` ("reflect" or "zeros"), then take a random HxW window per image.

    Equivalent to shifting each image by (dy, dx), both uniform in [-padding, padding].
    """
    if padding == 0:
        return x
    rows, cols, valid = _crop_map(x, padding, generator, mode)
    out = _remap(x, rows, cols)
    return out if valid is None else out.mul_(valid)


def _crop_map(x: torch.Tensor, padding: int, generator: torch.Generator,
              mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Source row [B, H, 1] and column [B, 1, W] of each output pixel of a random crop (no padded copy
    is built), and for "zeros" a [B, 1, H, W] mask of the pixels that fall inside the image."""
    if mode not in ("reflect", "zeros"):
        raise ValueError(f"random_crop mode must be 'reflect' or 'zeros', got {mode!r}")
    b, _, h, w = x.shape
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding must be smaller than the image ({h}x{w}), got {padding}")
    dy = torch.randint(-padding, padding + 1, (b, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(-padding, padding + 1, (b, 1, 1), generator=generator, device=x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    if mode == "reflect":
        return _reflect(rows, h), _reflect(cols, w), None
    valid = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    return rows.clamp(0, h - 1), cols.clamp(0, w - 1), valid


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices in [-(n-1), 2n-2] into [0, n) without repeating the edge (F.pad's "reflect")."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def _remap(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, rows[b, i], cols[b, j]], one gather over the flattened planes."""
    b, c, h, w = x.shape
    idx = (rows * w + cols).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)


def hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with p=0.5."""
    return torch.where(_coin(x, generator), x.flip(3), x)


def vflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image upside-down with p=0.5."""
    return torch.where(_coin(x, generator), x.flip(2), x)


def rotate(x: torch.Tensor, max_deg: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image about its centre by an angle uniform in [-max_deg, max_deg] degrees.

    Bilinear; pixels from outside the image are 0. Positive angles turn the content clockwise on screen
    (row index growing downwards).
    """
    if max_deg == 0:
        return x
    b, _, h, w = x.shape
    theta = torch.rand(b, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
    theta = (2 * theta - 1) * (max_deg * math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # The grid F.affine_grid(align_corners=False) builds for [[cos, sin, 0], [-sin, cos, 0]] (the inverse
    # rotation: it maps output to input coords), by broadcasting: its batched matmul is 10x slower on CPU.
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1
    ys = ((torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1).view(h, 1)
    grid = torch.stack([cos * xs + sin * ys, cos * ys - sin * xs], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image; its centre is uniform over the image, so it may be clipped.

    As in davda54/sam example/utility/cutout.py, minus its p=0.5 coin: every image gets a square.
    """
    return x if size == 0 else x * _cutout_keep(x, size, generator)


def _cutout_keep(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Float [B, 1, H, W]: 0 inside each image's square, 1 elsewhere. Multiplying by it is ~10x faster
    than masked_fill's broadcast over channels on CPU."""
    b, _, h, w = x.shape
    half = size // 2
    top = torch.randint(-half, h - half, (b, 1, 1), generator=generator, device=x.device)
    left = torch.randint(-half, w - half, (b, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    row_in = ((rows >= top) & (rows < top + size)).to(x.dtype)  # [B, H, 1]
    col_in = ((cols >= left) & (cols < left + size)).to(x.dtype)  # [B, 1, W]
    return (1 - row_in * col_in).unsqueeze(1)


# ---------------------------------------------------------------- colour (on [0, 1] images)

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB [B, 3, H, W] batch as [B, 1, H, W]."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x * factor, clamped to [0, 1]; factor broadcasts per image ([B, 1, 1, 1])."""
    return (x * factor).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean grey level (torchvision semantics), clamped to [0, 1]."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean, x, factor).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's own greyscale (factor 0 -> grey), clamped to [0, 1]."""
    return torch.lerp(grayscale(x), x, factor).clamp_(0.0, 1.0)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 generator: torch.Generator) -> torch.Tensor:
    """torchvision ColorJitter on [0, 1] RGB images: each factor uniform in [max(0, 1-v), 1+v] per image.

    A value of 0 leaves that property alone. Fixed order brightness, contrast, saturation
    (torchvision shuffles the order per call; a per-image order would need one pass per permutation).
    """
    for value, adjust in ((brightness, adjust_brightness), (contrast, adjust_contrast),
                          (saturation, adjust_saturation)):
        if value > 0:
            x = adjust(x, _per_image(x, max(0.0, 1.0 - value), 1.0 + value, generator))
    return x


# ---------------------------------------------------------------- the configured pipeline

class Augment:
    """The augment config group as one callable: uint8 [B, H, W, C] -> normalised float [B, C, H, W].

    `cfg` is the validated `augment` group (runner/spec/schema.py); `mean`/`std` are the data set's
    per-channel stats in [0, 1] units. Crop pads by reflection, like cifar10-airbench.
    """

    def __init__(self, cfg: Mapping[str, object], mean: Stats, std: Stats, channels_last: bool) -> None:
        self.cfg = dict(cfg)
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        self.channels_last = channels_last

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Moved once per device, so the hot path does no host-to-device copy.
        if self.mean.device != device:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self.mean, self.std

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise only."""
        mean, std = self._stats(images.device)
        return to_float(images, mean, std, self.channels_last)

    def views(self, images: torch.Tensor, tta: str, views: int,
              generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The evaluation views of a uint8 batch (the `eval` config group), each a normalised float batch;
        the caller averages the softmax over them.

        none: the image itself (`views` is 1). flips: `tta_views` (identity, mirror, then 2-pixel shifts).
        train_transforms: `views` draws of this trial's own train augmentation from `generator`, as the
        report's E6 did ("test images get the train transforms")."""
        if tta == "train_transforms":
            return [self(images, generator) for _ in range(views)]
        x = self.eval(images)
        return tta_views(x, views) if tta == "flips" else [x]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = self.cfg
        mean, std = self._stats(images.device)
        jitter = (c["brightness"], c["contrast"], c["saturation"])
        if any(jitter):
            x = normalise(color_jitter(to_unit(images), *jitter, generator), mean, std)
        else:
            x = to_float(images, mean, std, channels_last=False)
        x = self._crop_flip(x, generator)
        x = rotate(x, c["rotate_deg"], generator)
        if c["cutout"]:
            x.mul_(_cutout_keep(x, c["cutout"], generator))  # in place: x is this call's own tensor
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _crop_flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """random_crop, then hflip, then vflip, as one gather: the flips reverse the crop's index map.
        Same draws in the same order as calling the three functions, and the same result; with the
        in-place cutout, more images/s than the plain calls (bench/augment.py; docs/benchmarks.md)."""
        c = self.cfg
        if not (c["crop_padding"] or c["hflip"] or c["vflip"]):
            return x
        b, _, h, w = x.shape
        if c["crop_padding"]:
            rows, cols, _ = _crop_map(x, c["crop_padding"], generator, "reflect")
        else:
            rows = torch.arange(h, device=x.device).view(1, h, 1).expand(b, h, 1)
            cols = torch.arange(w, device=x.device).view(1, 1, w).expand(b, 1, w)
        if c["hflip"]:
            cols = torch.where(_coin(x, generator)[:, 0], cols.flip(2), cols)
        if c["vflip"]:
            rows = torch.where(_coin(x, generator)[:, 0], rows.flip(1), rows)
        return _remap(x, rows, cols)


# ---------------------------------------------------------------- test-time augmentation

# (flip, dy, dx) per view, in the order tta_views returns them.
_TTA = ((False, 0, 0), (True, 0, 0),
        (False, 0, 2), (False, 0, -2), (False, 2, 0), (False, -2, 0),
        (True, 0, 2), (True, 0, -2), (True, 2, 0), (True, -2, 0))
MAX_TTA_VIEWS = len(_TTA)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate content by (dy, dx) pixels, filling the uncovered border by reflection."""
    if dy == 0 and dx == 0:
        return x
    p = max(abs(dy), abs(dx))
    h, w = x.shape[2:]
    padded = F.pad(x, (p,) * 4, mode="reflect")
    return padded[:, :, p - dy:p - dy + h, p - dx:p - dx + w]


def tta_views(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """k deterministic views of a normalised float batch: identity, horizontal flip, then +-2 px shifts
    (of the original, then of the flip). The caller averages softmax over the views."""
    if not 1 <= k <= MAX_TTA_VIEWS:
        raise ValueError(f"tta views must be between 1 and {MAX_TTA_VIEWS}, got {k}")
    return [_shift(x.flip(3) if flip else x, dy, dx) for flip, dy, dx in _TTA[:k]]
