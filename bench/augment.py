"""Images/s of runner/augment.py's batched augmentation against a torchvision PIL DataLoader.

Reads the train split of a prepared data dir (`--data DIR`, through `runner.data.load_split`) or, without
one, random uint8 images [N, 32, 32, 3]; writes only to stdout. Two pipelines, each timed both ways in
this one process on this one machine, warmup first, then `--seconds` of steady state:
  base:       crop(pad 4) + hflip + cutout(16) + normalise
  rot+jitter: the same plus rotation (15 deg) and ColorJitter(0.2, 0.2, 0.2)
PIL side: torchvision transforms per image in a DataLoader with `--workers` processes (each worker
runs torch with 1 thread, DataLoader's default). Batched side: `runner.augment.Augment` on whole
batches in this process with `torch.set_num_threads(--workers)`, so both sides use the same cores.
Both sides include picking the shuffled images out of the data set. CPU only.

Run: .venv/bin/python bench/augment.py [--data DIR] [--workers 2] [--batch 512] [--seconds 4] [--quick]
"""

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from runner.augment import Augment  # noqa: E402

CUTOUT = 16
BASE = {"crop_padding": 4, "hflip": True, "vflip": False, "rotate_deg": 0.0,
        "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "cutout": CUTOUT}
ROT_JITTER = {**BASE, "rotate_deg": 15.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}


def load_images(data: str | None, n: int) -> tuple[torch.Tensor, str]:
    """uint8 [N, 32, 32, 3] from the prepared dir's train split if possible, else random images."""
    if data:
        try:
            from runner.data import load_split
        except ImportError as e:
            print(f"runner.data.load_split unavailable ({e}); using random images")
        else:
            return load_split(data, "train").images, f"{data} (train split)"
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return images, "random uint8"


def pil_transform(cfg: dict, mean: list[float], std: list[float]) -> T.Compose:
    """The torchvision equivalent of an augment config; RandomErasing with a fixed 16x16 square is cutout."""
    ops: list = []
    if cfg["brightness"]:
        ops.append(T.ColorJitter(cfg["brightness"], cfg["contrast"], cfg["saturation"]))
    ops += [T.RandomCrop(32, padding=cfg["crop_padding"]), T.RandomHorizontalFlip()]
    if cfg["rotate_deg"]:
        ops.append(T.RandomRotation(cfg["rotate_deg"]))
    ops += [T.ToTensor(), T.Normalize(mean, std),
            T.RandomErasing(p=1.0, scale=((CUTOUT / 32) ** 2,) * 2, ratio=(1.0, 1.0), value=0)]
    return T.Compose(ops)


class PILImages(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.fromarray(self.images[i]))


def rate(batches: Iterator[torch.Tensor], warmup: int, seconds: float) -> float:
    """Images/s over `seconds` of batches, after `warmup` batches."""
    for _ in range(warmup):
        next(batches)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += len(next(batches))
    return n / (time.perf_counter() - start)


def pil_batches(images: torch.Tensor, tf: T.Compose, batch: int, workers: int) -> Iterator[torch.Tensor]:
    loader = torch.utils.data.DataLoader(PILImages(images.numpy(), tf), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    while True:
        yield from loader


def batched(images: torch.Tensor, aug: Augment, batch: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    while True:
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images) - batch + 1, batch):
            yield aug(images[perm[i:i + batch]], g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="prepared data dir (default: random images)")
    p.add_argument("--n", type=int, default=50_000, help="random images when no --data (default 50000)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers = torch threads")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seconds", type=float, default=4.0, help="per measurement, after warmup")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    a = p.parse_args()
    if a.quick:
        a.n, a.batch, a.seconds = 2048, 128, 0.3

    images, source = load_images(a.data, a.n)
    unit = images.float().div(255)
    mean, std = unit.mean((0, 1, 2)).tolist(), unit.std((0, 1, 2)).tolist()
    del unit
    torch.set_num_threads(a.workers)  # the batched side gets as many cores as the PIL side has workers
    print(f"{len(images)} images from {source}; batch {a.batch}; {a.workers} DataLoader workers / "
          f"{torch.get_num_threads()} torch threads; torch {torch.__version__}; {a.seconds:g} s per figure")

    ratios = []
    for name, cfg in (("crop+flip+cutout", BASE), ("crop+flip+cutout+rotate+jitter", ROT_JITTER)):
        aug = Augment(cfg, mean, std, channels_last=True)
        ours = rate(batched(images, aug, a.batch), warmup=3, seconds=a.seconds)
        print(f"batched ({name}): {ours:,.0f} images/s")
        pil = rate(pil_batches(images, pil_transform(cfg, mean, std), a.batch, a.workers),
                   warmup=2 * max(a.workers, 1), seconds=a.seconds)
        print(f"PIL DataLoader ({name}): {pil:,.0f} images/s")
        ratios.append(f"ratio batched/PIL ({name}): {ours / pil:.1f}x")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
