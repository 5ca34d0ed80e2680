"""The built-in data set, `synthetic[:N]`: N train + N//5 test 32x32 RGB images, 10 classes (a colour
family x a shape), drawn procedurally from fixed seeds, with the test labels kept so a submission can
be scored. Needs no files or network: the demo and the tests train on it.
"""

from __future__ import annotations

import re

import numpy as np

from runner.data.sources import SourceData
from runner.data.split import DataError, Split

SYNTHETIC_SHAPES = ("disc", "square", "triangle", "ring", "plus")
SYNTHETIC_FAMILIES = ("warm", "cool")
SYNTHETIC_SEED = 20261130
CLASSES = [f"{f}_{s}" for f in SYNTHETIC_FAMILIES for s in SYNTHETIC_SHAPES]
IMAGE_SHAPE = (32, 32, 3)


def synthetic_n(source: str) -> int:
    m = re.fullmatch(r"synthetic(?::(\d+))?", source)
    if not m or (m.group(1) is not None and int(m.group(1)) < 10):
        raise DataError(f"bad source {source!r}: use synthetic or synthetic:N with N >= 10 (train images)")
    return int(m.group(1)) if m.group(1) else 5000


def synthetic(n: int = 5000) -> SourceData:
    """The built-in set: n train + n//5 test 32x32 RGB images, 10 classes = colour family x shape.

    Deterministic (fixed seeds); cheap (docs/benchmarks.md). Test labels are kept so a submission can be scored.
    """
    parts = []
    for index, (name, count) in enumerate(_sizes(n)):
        rng = np.random.default_rng([SYNTHETIC_SEED, index])
        labels = _labels(rng, count)
        parts.append(Split.of(_draw(rng, labels), labels, [f"{name}_{i:05d}" for i in range(count)]))
    return SourceData(list(CLASSES), parts[0], parts[1], None, False, f"synthetic:{n}")


def synthetic_labels(n: int) -> dict[str, np.ndarray]:
    """{"train": labels, "test": labels} exactly as `synthetic(n)` draws them, without drawing a pixel:
    what the data set's metadata needs, at a tiny fraction of the cost of drawing the images."""
    return {name: _labels(np.random.default_rng([SYNTHETIC_SEED, index]), count)
            for index, (name, count) in enumerate(_sizes(n))}


def _sizes(n: int) -> tuple[tuple[str, int], tuple[str, int]]:
    return ("train", n), ("test", n // 5)


def _labels(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.permutation(np.arange(count) % len(CLASSES)).astype(np.int64)  # balanced


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    h6 = (h % 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(h6 % 2 - 1))
    z = np.zeros_like(c)
    i = np.floor(h6).astype(np.int64) % 6
    rgb = [np.choose(i, p) for p in ([c, x, z, z, x, c], [x, c, c, x, z, z], [z, z, x, c, c, x])]
    return np.stack(rgb, -1) + (v - c)[:, None]


def _draw(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    u01 = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    shape, family = labels % len(SYNTHETIC_SHAPES), labels // len(SYNTHETIC_SHAPES)
    p = {  # per-image parameters, drawn once for all n so a chunk's content does not depend on its size
        "shape": shape, "cx": u01(9, 23), "cy": u01(9, 23), "r": u01(4.5, 10), "th": u01(0, 2 * np.pi),
        # A small distractor blob of any hue, so the colour family is not readable from the mean colour alone.
        "dx": u01(2, 30), "dy": u01(2, 30), "dr": u01(1.5, 3.5), "d_on": rng.random(n) < 0.6,
        "gx": u01(-0.01, 0.01), "gy": u01(-0.01, 0.01), "noise": u01(0.05, 0.35),  # noise: uniform half-width
    }
    fg_hue = np.where(family == 0, u01(-0.1, 0.14), u01(0.4, 0.7))  # warm: red..yellow, cool: green..blue
    # palette per image: 0 background, 1 distractor, 2 shape
    p["palette"] = np.stack([
        _hsv(u01(0, 1), u01(0, 0.45), u01(0.1, 0.9)),
        _hsv(u01(0, 1), u01(0.6, 1.0), u01(0.5, 1.0)),
        _hsv(fg_hue, u01(0.45, 1.0), u01(0.45, 1.0)),
    ], 1).astype(np.float32)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    chunk = 256  # ~3 MiB float32 temporaries: they stay in cache/heap instead of page-faulting
    for lo in range(0, n, chunk):
        c = {k: v[lo:lo + chunk] for k, v in p.items()}
        noise = np.frombuffer(rng.bytes(len(c["shape"]) * 32 * 32 * 3), np.uint8).reshape(-1, 32, 32, 3)
        out[lo:lo + chunk] = _render(c, noise)
    return out


def _render(c: dict, noise: np.ndarray) -> np.ndarray:
    k = len(c["shape"])
    col = lambda v: v[:, None, None]  # noqa: E731  per-image scalar -> broadcast over pixels
    grid = np.arange(32, dtype=np.float32) + 0.5
    dx, dy = grid[None, None, :] - col(c["cx"]), grid[None, :, None] - col(c["cy"])
    cos, sin, r = col(np.cos(c["th"])), col(np.sin(c["th"])), col(c["r"])
    a, b = np.abs(cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
    rho = np.sqrt(a * a + b * b)
    masks = np.stack([
        rho <= 1.0,                                               # disc
        np.maximum(a, np.abs(b)) <= 0.8,                          # square (rotated)
        (b >= -0.9) & (b <= 0.8) & (a <= (b + 0.9) * 0.65),       # triangle
        (rho <= 1.0) & (rho >= 0.6),                              # ring
        ((a <= 0.3) & (np.abs(b) <= 1)) | ((np.abs(b) <= 0.3) & (a <= 1)),  # plus
    ])
    fg = masks[c["shape"], np.arange(k)]
    ddx, ddy = grid[None, None, :] - col(c["dx"]), grid[None, :, None] - col(c["dy"])
    blob = (ddx * ddx + ddy * ddy <= col(c["dr"]) ** 2) & col(c["d_on"])
    which = np.where(fg, 2, blob.astype(np.uint8))
    img = c["palette"][np.arange(k)[:, None, None], which]
    img += (col(c["gx"]) * dx + col(c["gy"]) * dy)[..., None]  # background gradient
    img += (noise.astype(np.float32) * np.float32(1 / 255) - 0.5) * col(c["noise"])[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
