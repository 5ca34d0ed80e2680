"""What the data pre-flight costs, measured in one run: `runner.data.verify` (every Parquet footer and
the sha256 of every file against meta.json) on a CIFAR-sized set, beside what one trial reads anyway
(`load_trial_data`, rank 0 of 1); and the metadata of `synthetic:N` from its labels alone, beside
drawing the whole set (what every metadata read cost before).

    .venv/bin/python bench/verify.py                 # prepares synthetic:50000 in a temp folder (~10 s)
    .venv/bin/python bench/verify.py --data DIR      # an already prepared set
Prints the timings (best of --repeat), then the ratio lines last. No Ray, no MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from runner import data  # noqa: E402
from runner.data import synthetic  # noqa: E402


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a prepared data set (default: prepare synthetic:N in a temp folder)")
    parser.add_argument("--n", type=int, default=50_000, help="train images of the synthetic set")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 images, one repeat: a smoke run")
    a = parser.parse_args()
    if a.quick:
        a.n, a.repeat = 2_000, 1
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        path = a.data or os.path.join(tmp, "ds")
        if not a.data:
            data.prepare(f"synthetic:{a.n}", path)
        sizes = {name: os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)
                 if name.endswith(".parquet")}
        print(f"data set {path}: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(sizes.items())))
        cfg = {"path": path, "val_fraction": 0.1, "num_classes": None}
        meta = data.read_meta(path)
        verify_s = best_of(a.repeat, lambda: data.verify(path))
        load_s = best_of(a.repeat, lambda: data.load_trial_data(cfg, 0, meta=meta))
        print(f"verify (footers + sha256 of {len(sizes)} files): {verify_s:.3f} s")
        print(f"load_trial_data (one trial's train + val):     {load_s:.3f} s")
    source = f"synthetic:{a.n}"
    labels_s = best_of(a.repeat, lambda: data.read_meta(source))
    drawn_s = best_of(a.repeat, lambda: synthetic.synthetic(a.n))
    print(f"read_meta({source}) from labels: {labels_s * 1000:.1f} ms; drawing the set: {drawn_s:.2f} s")
    print(f"ratio verify / one trial's load: {verify_s / load_s:.2f}x")
    print(f"ratio synthetic metadata, drawn / from labels: {drawn_s / labels_s:.0f}x")


if __name__ == "__main__":
    main()
