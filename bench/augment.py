"""Images/s of runner/core/augment.py's batched augmentation against a torchvision PIL DataLoader.

Reads the train split of a prepared data dir (`--data DIR`, through `runner.data.load_split`) or, without
one, random uint8 images [N, 32, 32, 3]; writes only to stdout. Two pipelines, each timed both ways in
this one process on this one machine, warmup first, then `--repeats` x `--seconds` of steady state,
batched and PIL measurements interleaved, medians printed:
  base:       crop(pad 4) + hflip + cutout(16) + normalise
  rot+jitter: the same plus rotation (15 deg) and ColorJitter(0.2, 0.2, 0.2)
PIL side: torchvision transforms per image in a DataLoader with `--workers` processes (each worker
runs torch with 1 thread, DataLoader's default). Batched side: `runner.core.augment.Augment` on whole
batches in this process with `torch.set_num_threads(--workers)`, so both sides use the same cores
(OMP_WAIT_POLICY=PASSIVE unless set: see below the docstring).
Both sides include picking the shuffled images out of the data set. CPU only.

Allocator: by default glibc is told to keep freed heap memory for reuse (`mallopt`, before the
DataLoader forks, so its workers get it too). Each op on a 512-image float batch allocates 6 MB, and
glibc's defaults give such blocks back to the OS and page-fault them in again on the next allocation;
the GPU's caching allocator never does, and PyTorch's CPU tuning guide recommends jemalloc/tcmalloc for
the same reason. `--default-malloc` measures with glibc's defaults instead.

Run: .venv/bin/python bench/augment.py [--data DIR] [--workers N] [--batch 512] [--seconds 3] [--repeats 3]
                                       [--default-malloc] [--quick]
"""

import os

# Before torch loads OpenMP: idle intra-op threads sleep instead of spinning. With other work on the
# machine, threads spinning at each op's barrier for a descheduled peer cut the batched side ~9x
# (8k vs 70k images/s, 2 threads, load average 5 on 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from runner.core.augment import Augment  # noqa: E402

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


def reuse_freed_memory() -> bool:
    """glibc: serve blocks up to 32 MB from the heap and never trim it below 1 GB. False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    settings = ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20))
    return all(libc.mallopt(key, value) == 1 for key, value in settings)


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
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement, after warmup")
    p.add_argument("--repeats", type=int, default=3, help="measurements per figure; the median is printed")
    p.add_argument("--default-malloc", action="store_true", help="keep glibc's malloc defaults (see above)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    a = p.parse_args()
    if a.quick:
        a.n, a.batch, a.seconds, a.repeats = 2048, 128, 0.3, 1

    malloc = "glibc defaults" if a.default_malloc or not reuse_freed_memory() else "freed memory reused"
    images, source = load_images(a.data, a.n)
    sample = images[:5000].double().div(255)  # stats of a sample: any fixed values would time the same
    mean, std = sample.mean((0, 1, 2)).tolist(), sample.std((0, 1, 2)).tolist()
    torch.set_num_threads(a.workers)  # the batched side gets as many cores as the PIL side has workers
    print(f"{len(images)} images from {source}; batch {a.batch}; {a.workers} DataLoader workers / "
          f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
          f"malloc: {malloc}; torch {torch.__version__}; {a.repeats} x {a.seconds:g} s per figure; "
          f"load average {os.getloadavg()[0]:.1f} (other work skews both sides)")

    ratios = []
    for name, cfg in (("crop+flip+cutout", BASE), ("crop+flip+cutout+rotate+jitter", ROT_JITTER)):
        ours_it = batched(images, Augment(cfg, mean, std, channels_last=True), a.batch)
        pil_it = pil_batches(images, pil_transform(cfg, mean, std), a.batch, a.workers)
        ours, pil = [], []
        for _ in range(a.repeats):  # interleaved, so a burst of other load hits both sides alike
            ours.append(rate(ours_it, warmup=3, seconds=a.seconds))
            pil.append(rate(pil_it, warmup=2 * max(a.workers, 1), seconds=a.seconds))
        ours_m, pil_m = statistics.median(ours), statistics.median(pil)
        print(f"batched ({name}): {ours_m:,.0f} images/s ({spread(ours)})")
        print(f"PIL DataLoader ({name}): {pil_m:,.0f} images/s ({spread(pil)})")
        ratios.append(f"ratio batched/PIL ({name}): {ours_m / pil_m:.1f}x")
    print("\n".join(ratios))


def spread(rates: list[float]) -> str:
    return f"median of {len(rates)}; {min(rates):,.0f}-{max(rates):,.0f}"


if __name__ == "__main__":
    main()
