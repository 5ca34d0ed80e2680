"""One split of images in memory, how a train split is divided (validation, DDP ranks), and its
per-channel statistics. Sources produce a `Split`, the writer stores it, the loaders return it, the
training core and `runner submit` consume it: one class from reading a source to predicting.
`DataError` is the error every refusal in runner.data raises.

    split = Split.of(images_uint8_nhwc, labels, ids)    # numpy in: shares the memory, no copy
    train_idx, val_idx = stratified_split(split.labels.numpy(), 0.1, seed=0)
    mean, std = channel_stats(split.images)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """Bad input data. The message names the file, row or id and says how to fix it."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, H, W, C]
    labels: torch.Tensor  # int64 [N]; -1 = unlabeled
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, ids: list[str]) -> Split:
        """From numpy or torch; numpy arrays are wrapped without a copy."""
        images = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if isinstance(labels, np.ndarray) \
            else torch.as_tensor(labels, dtype=torch.int64)
        return cls(images, labels, list(ids))

    def take(self, idx: np.ndarray) -> Split:
        """Rows `idx`, in that order (a copy)."""
        index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return Split(self.images[index], self.labels[index], [self.ids[i] for i in np.asarray(idx).tolist()])

    def labeled(self) -> bool:
        """Every row has a label (so a solution file can be written for it)."""
        return len(self) > 0 and bool((self.labels >= 0).all())


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), both sorted: `fraction` of each class to val, rounded so the total is
    round(N * fraction) (largest remainders). Same labels and seed -> same split."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    exact = counts * fraction
    n_val = np.floor(exact).astype(np.int64)
    short = int(round(labels.size * fraction)) - int(n_val.sum())
    # Stable sort on the remainders: ties go to the lower class, so the result depends on nothing else.
    n_val[np.argsort(-(exact - n_val), kind="stable")[:max(short, 0)]] += 1
    rng = np.random.default_rng(seed)
    val = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(n_val)]
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx.astype(np.int64)


def shard(labels: np.ndarray, *, val_fraction: float, seed: int, rank: int, world: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """This rank's (train rows, val rows): the stratified split over all rows, then contiguous 1/world
    blocks of each part (disjoint across ranks; sizes differ by at most 1)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world={world}), got {rank}")
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return np.array_split(train_idx, world)[rank], np.array_split(val_idx, world)[rank]


def channel_stats(images: torch.Tensor, all_reduce: Callable[[torch.Tensor], object] | None = None
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 `images` [N, H, W, C], in [0, 1] units.

    Exact, from one 256-bin histogram per channel of the uint8 tensor where it lies (CPU or device):
    no float copy of the pixels (float64 sums of 50k CIFAR images cost seconds and 3 GB; numbers in
    docs/benchmarks.md). `all_reduce` sums the histograms in place across DDP ranks, so every rank
    normalises with the statistics of the whole split."""
    if images.shape[0] == 0:
        raise ValueError("channel_stats of an empty split")
    hist = torch.stack([torch.bincount(images[..., c].reshape(-1), minlength=256) for c in range(images.shape[-1])])
    if all_reduce is not None:
        all_reduce(hist)
    hist = hist.double()
    values = torch.arange(256, dtype=torch.float64, device=hist.device) / 255
    count = hist.sum(1)
    mean = (hist * values).sum(1) / count
    # A constant channel has std 0; the floor keeps normalising by it finite.
    std = ((hist * values**2).sum(1) / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
