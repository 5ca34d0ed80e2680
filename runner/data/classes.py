"""Checks on a source's training labels before anything is written: every class has images, and no
class is so much rarer than the rest that it is more likely a typo than a class.

A Kaggle copy with one row relabelled `zebra` among ~30 rows per real class would otherwise become an
eleventh class of one image: the model gets an output nobody wants and a submission may predict it.
`runner data prepare ... --allow-rare-classes` says such a class is intended.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np

from runner.data.split import DataError

RARE_FRACTION = 0.05  # a class with fewer images than this fraction of the median class count is refused
SHOW = 5  # offenders listed in a message; the rest are counted


def listing(names: list[str]) -> str:
    return ", ".join(names[:SHOW]) + (f" (and {len(names) - SHOW} more)" if len(names) > SHOW else "")


def check_classes(classes: list[str], labels: np.ndarray, where: str, row_name: Callable[[int], str],
                  *, allow_rare: bool = False) -> None:
    """Refuse no labels, an empty class, and (unless `allow_rare`) a rare one. `labels` are the training
    rows' class indices; `row_name(i)` says where row i is (a CSV line, a file) for the message."""
    if labels.size == 0:
        raise DataError(f"no labeled training images in {where}")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"empty class in {where}: {listing([repr(c) for c in empty])} has no training images; "
                        "add images, or relabel so class labels are contiguous")
    median = float(np.median(counts))
    rare = np.flatnonzero(counts < RARE_FRACTION * median)
    if allow_rare or rare.size == 0:
        return
    common = [c for i, c in enumerate(classes) if i not in set(rare.tolist())]
    found = []
    for k in rare.tolist()[:SHOW]:
        rows = np.flatnonzero(labels == k).tolist()
        nearest = difflib.get_close_matches(classes[k], common, n=3, cutoff=0.0)
        found.append(f"{classes[k]!r} has {counts[k]} image(s) ({listing([row_name(i) for i in rows])}); "
                     f"nearest existing classes: {', '.join(map(repr, nearest))}")
    more = f" (and {rare.size - SHOW} more rare classes)" if rare.size > SHOW else ""
    raise DataError(f"rare class in {where}: " + "; ".join(found) + more
                    + f". The median class has {median:g} images, and a class under {RARE_FRACTION:.0%} of that is "
                    "more likely a mislabelled row than a class: fix the label, or pass --allow-rare-classes if it "
                    "is a class")
