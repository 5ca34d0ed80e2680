"""The parameter cap: count a model config's parameters, judge it against the cap, suggest a fit.

Reads and writes nothing; imports only `models` (no Ray, no MLflow). `train.fit` calls `enforce`
before it spends anything, and `spec.py` can call it per resolved trial to refuse a grid row at load
time; the refusal gives the count, the cap and the nearest variant under it:

    enforce({"name": "efficientnet", "depth": 1.06}, 100, {"max_params": 5_000_000, "mode": "enforce"})
    -> BudgetError: model efficientnet depth=1.06: 6,641,284 parameters > cap 5,000,000; nearest under
    the cap: efficientnet depth=1.0 width=1.0 (4,135,648) ...

Counting builds the model on the meta device: shapes only, no memory, no init arithmetic, no RNG
draws (a WRN-28-10 is slow to build on CPU; on meta it is instant), and the count is identical.

The suggestion searches a small neighbourhood per family and keeps the under-cap config with the
most parameters:
- wrn / wrn_std: the same depth at each smaller width; each smaller valid depth (6n+4, n >= 1) at
  the same width; the other layout at the same depth and width. Equal counts go to the earlier
  candidate in that order, so a tie keeps the user's layout.
- efficientnet: depth capped at 1.0 (any depth in (1.0, 1.25] rounds up to B0 + 7 blocks), then the
  width from the current one down in steps of 0.05; the first width under the cap wins.
- resnet_guide: each smaller base width that is a multiple of 8 (GPU-friendly channel counts).
Other names get no suggestion.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

import models

_WRN_OTHER_LAYOUT = {"wrn": "wrn_std", "wrn_std": "wrn"}
_SHOWN_KEYS = ("depth", "width")  # what the search varies, so what a suggestion names
_EFFNET_WIDTH_STEP = 0.05


class BudgetError(ValueError):
    """A model over the parameter cap in enforce mode."""


@dataclass(frozen=True)
class Verdict:
    """The count against the cap; `suggestion` describes the nearest under-cap config when over."""

    params: int
    max_params: int
    within: bool
    suggestion: str | None

    def message(self) -> str:
        """One line for logs and errors: count vs cap, and the suggestion when over."""
        if self.within:
            return f"{self.params:,} parameters <= cap {self.max_params:,}"
        hint = (f"nearest under the cap: {self.suggestion}" if self.suggestion
                else "nothing in the searched neighbourhood fits (see runner/core/budget.py); choose a smaller model")
        return f"{self.params:,} parameters > cap {self.max_params:,}; {hint}"


def count(model_cfg: Mapping[str, Any], num_classes: int) -> int:
    """Trainable parameters of `{"name": ..., **kwargs}` at `num_classes` outputs, built on the meta device."""
    return _count(json.dumps(dict(model_cfg), sort_keys=True), num_classes)


@functools.lru_cache(maxsize=4096)
def _count(model_json: str, num_classes: int) -> int:
    # A search judges hundreds of samples and their under-cap neighbours, mostly the same few shapes.
    name, kwargs = _split(json.loads(model_json))
    try:
        with torch.device("meta"):
            return models.count_params(models.build(name, num_classes, **kwargs))
    except (NotImplementedError, RuntimeError):
        # A builder whose init needs real data (none of ours today) still gets counted, just slower.
        return models.count_params(models.build(name, num_classes, **kwargs))


def check(model_cfg: Mapping[str, Any], num_classes: int, max_params: int) -> Verdict:
    """Count `model_cfg` and compare with `max_params`; over the cap, look for the nearest fit."""
    params = count(model_cfg, num_classes)
    if params <= max_params:
        return Verdict(params, max_params, True, None)
    best = nearest_under_cap(model_cfg, num_classes, max_params)
    suggestion = None if best is None else f"{describe(best, _SHOWN_KEYS)} ({count(best, num_classes):,})"
    return Verdict(params, max_params, False, suggestion)


def nearest_under_cap(model_cfg: Mapping[str, Any], num_classes: int, max_params: int) -> dict | None:
    """The config in `model_cfg`'s neighbourhood (module docstring) with the most parameters <= the cap.

    Returns `model_cfg` itself (as a new dict) when it already fits, and None when nothing searched fits.
    Other keys of `model_cfg` (dropout, stem, ...) are carried over unchanged.
    """
    name, _ = _split(model_cfg)
    if count(model_cfg, num_classes) <= max_params:
        return dict(model_cfg)
    if name == "efficientnet":
        # Parameters fall with width at fixed depth, so the first fit is the largest.
        return next((c for c in _efficientnet_candidates(model_cfg) if count(c, num_classes) <= max_params), None)
    best, best_params = None, -1
    for candidate in _candidates(model_cfg):
        params = count(candidate, num_classes)
        if best_params < params <= max_params:
            best, best_params = candidate, params
    return best


def enforce(model_cfg: Mapping[str, Any], num_classes: int, budget: Mapping[str, Any]) -> Verdict:
    """Apply the validated `budget` group = {"max_params": int, "mode": "enforce" | "flag"}.

    enforce: raise BudgetError naming the count, the cap and the nearest fit when over the cap.
    flag: return the verdict (within=False when over) so the run goes ahead, marked out of budget.
    """
    verdict = check(model_cfg, num_classes, budget["max_params"])
    if not verdict.within and budget["mode"] == "enforce":
        raise BudgetError(f"model {describe(model_cfg)}: {verdict.message()}; "
                          "or set budget.mode: flag to train it anyway, marked out of budget")
    return verdict


def describe(model_cfg: Mapping[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """`name k=v ...` for messages; `keys` limits (and orders) the keywords shown."""
    name, kwargs = _split(model_cfg)
    shown = kwargs if keys is None else {k: kwargs[k] for k in keys if k in kwargs}
    return " ".join([name, *(f"{k}={v}" for k, v in shown.items())])


def _split(model_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return model_cfg["name"], {k: v for k, v in model_cfg.items() if k != "name"}


def _candidates(model_cfg: Mapping[str, Any]) -> Iterator[dict]:
    name, kwargs = _split(model_cfg)
    full = {**models.model_params(name), **kwargs}
    if name in _WRN_OTHER_LAYOUT:
        depth, width = full["depth"], full["width"]
        for w in range(width - 1, 0, -1):
            yield {**model_cfg, "depth": depth, "width": w}
        for d in range(depth - 6, 9, -6):
            yield {**model_cfg, "depth": d, "width": width}
        # Last, so that its exact tie (wrn d-w has the parameters of wrn_std (d+6)-w) keeps the user's layout.
        yield {**model_cfg, "name": _WRN_OTHER_LAYOUT[name], "depth": depth, "width": width}
    elif name == "resnet_guide":
        for w in range((full["width"] - 1) // 8 * 8, 0, -8):
            yield {**model_cfg, "width": w}


def _efficientnet_candidates(model_cfg: Mapping[str, Any]) -> Iterator[dict]:
    full = {**models.model_params("efficientnet"), **model_cfg}
    depth, width = min(float(full["depth"]), 1.0), float(full["width"])
    k = 0
    # round() keeps suggestions readable (0.95, not 0.9500000000000001).
    while (w := round(width - k * _EFFNET_WIDTH_STEP, 6)) > 0:
        yield {**model_cfg, "depth": depth, "width": w}
        k += 1
