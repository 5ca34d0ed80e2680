"""A spec's `search:` block: distributions over dotted config keys, sampled into trial configs that are
validated exactly like grid rows (same schema, same file/row/field errors).

    search:
      algorithm: optuna            # random (default) | optuna (Tune's OptunaSearch, TPE)
      num_samples: 32              # configurations drawn; over-budget ones are rejected, never trained
      seed: 0                      # the sampler's seed
      scheduler: asha              # fifo (default) | asha (stops weak trials early)
      metric: val_acc              # what the searcher and ASHA optimise (default val_acc, mode max)
      mode: max
      space:
        model.width: {choice: [2, 4, 6, 8]}
        optimizer.lr: {loguniform: [0.01, 0.4]}
        train.label_smoothing: {uniform: [0.0, 0.2]}
        model.depth: {randint: [10, 29]}          # integers, high excluded (as Tune and numpy)
        schedule.warmup_epochs: {quniform: [0, 4, 1]}   # rounded to multiples of q; ints if all are ints

Reads the parsed YAML (runner/spec/load.py reads the file); writes nothing; imports no Ray. The Ray ring
turns `Domain`s into Tune's search space (runner/tune/search.py) and asks `Search.trial` to resolve each
sample it draws. `sample(rng)` is the same draw the `random` algorithm makes at run time, so `runner check`
prints the very samples a seeded random search will train (Optuna draws its own).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.core import budget
from runner.spec.schema import SpecError

KINDS = ("choice", "uniform", "loguniform", "randint", "quniform")
ALGORITHMS = ("random", "optuna")
SCHEDULERS = ("fifo", "asha")
MODES = ("max", "min")
SEARCH_KEYS = {"algorithm", "num_samples", "seed", "scheduler", "metric", "mode", "space"}


@dataclass(frozen=True)
class Domain:
    """One dimension: `kind` and its arguments as written (choice: the options; others: [low, high(, q)])."""

    key: str
    kind: str
    args: tuple

    def sample(self, rng: random.Random) -> Any:
        a = self.args
        if self.kind == "choice":
            return a[rng.randrange(len(a))]
        if self.kind == "uniform":
            return rng.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(a[0]), math.log(a[1])))
        if self.kind == "randint":
            return rng.randrange(a[0], a[1])
        return self.rounded(rng.uniform(a[0], a[1]))

    def rounded(self, value: float) -> int | float:
        """quniform: the nearest multiple of q (an int when low, high and q are ints)."""
        q = self.args[2]
        out = round(value / q) * q
        return int(out) if self.integer else float(out)

    @property
    def integer(self) -> bool:
        return self.kind == "randint" or (self.kind == "quniform" and all(isinstance(v, int) for v in self.args))

    def extremes(self) -> list:
        """The values that bound what `sample` can return: checked against the schema at load time."""
        a = self.args
        if self.kind == "choice":
            return list(a)
        if self.kind == "randint":
            return [a[0], a[1] - 1]
        if self.kind == "quniform":
            return [self.rounded(a[0]), self.rounded(a[1])]
        return [float(a[0]), float(a[1])]

    def describe(self) -> str:
        return f"{self.kind}({', '.join(map(repr, self.args))})"


@dataclass(frozen=True)
class Search:
    """The parsed block, plus how to turn one sample into a validated trial config."""

    algorithm: str
    num_samples: int
    seed: int
    scheduler: str
    metric: str
    mode: str
    space: list[Domain]
    file: str
    resolve: Callable[[dict, str], dict] = field(repr=False)  # (dotted sample, row name) -> validated config

    def sample(self, rng: random.Random) -> dict:
        """One draw of every dimension, in the space's order (dotted key -> value)."""
        return {d.key: d.sample(rng) for d in self.space}

    def samples(self, n: int) -> list[dict]:
        """The first n draws of the `random` algorithm for this seed."""
        rng = random.Random(self.seed)
        return [self.sample(rng) for _ in range(n)]

    def base(self) -> dict:
        """The spec's base with `--set` applied, validated: what every sample extends."""
        return self.resolve({}, "base")

    def trial(self, sample: dict, name: str) -> dict:
        """The validated trial config of one sample: a SpecError names the file, the sample and the field."""
        return self.resolve(sample, name)


def parse(raw: Any, file: str, cli: dict, resolve: Callable[[dict, str], dict]) -> Search:
    """The `search:` block (with `--set search.KEY=VALUE` overrides in `cli`), every dimension's extremes
    validated against the schema over the spec's base (`resolve(sample, row)` validates one sample)."""
    if not isinstance(raw, dict):
        raise SpecError(file, "`search:` must be a mapping with `space:` (dotted keys -> distributions)",
                        field="search")
    block = {**raw, **cli}
    unknown = sorted(set(block) - SEARCH_KEYS)
    if unknown:
        raise SpecError(file, f"unknown key(s) {unknown}; allowed: {sorted(SEARCH_KEYS)}",
                        field=f"search.{unknown[0]}")
    search = Search(
        algorithm=_one_of(block, "algorithm", ALGORITHMS, "random", file),
        num_samples=_count(block, "num_samples", 10, file, low=1),
        seed=_count(block, "seed", 0, file, low=0),
        scheduler=_one_of(block, "scheduler", SCHEDULERS, "fifo", file),
        metric=_metric(block.get("metric", "val_acc"), file),
        mode=_one_of(block, "mode", MODES, "max", file),
        space=_space(block.get("space"), file),
        file=file, resolve=resolve)
    for domain in search.space:  # each dimension's bounds through the schema, as a grid row would go
        for value in domain.extremes():
            resolve({domain.key: value}, f"search.space.{domain.key}={value!r}")
    return search


def _one_of(block: dict, key: str, allowed: tuple, default: str, file: str) -> str:
    value = block.get(key, default)
    if value not in allowed:
        raise SpecError(file, f"must be one of {', '.join(allowed)} (got {value!r})", field=f"search.{key}")
    return value


def _count(block: dict, key: str, default: int, file: str, low: int) -> int:
    value = block.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(file, f"must be an integer >= {low} (got {value!r})", field=f"search.{key}")
    return value


def _metric(value: Any, file: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(file, f"must name a reported metric, e.g. val_acc (got {value!r})", field="search.metric")
    return value


def _space(space: Any, file: str) -> list[Domain]:
    if not isinstance(space, dict) or not space:
        raise SpecError(file, "`search.space:` must map dotted keys to distributions, e.g. "
                              "optimizer.lr: {loguniform: [0.01, 0.4]}", field="search.space")
    return [_domain(str(key), spec, file) for key, spec in space.items()]


def _domain(key: str, spec: Any, file: str) -> Domain:
    where = f"search.space.{key}"
    if key.startswith("scaling."):
        raise SpecError(file, "a search cannot vary scaling: the resource check plans every trial on the base's; "
                              "set it in base (or --set)", field=where)
    if key == "train.epochs":
        raise SpecError(file, "a search does not vary the training length: set train.epochs in base and let "
                              "`scheduler: asha` stop weak trials early", field=where)
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SpecError(file, f"must be one distribution, {{KIND: ARGS}} with KIND one of {', '.join(KINDS)}, "
                              f"e.g. {{loguniform: [0.01, 0.4]}} (got {spec!r})", field=where)
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise SpecError(file, f"{kind} takes a list, e.g. {kind}: {_EXAMPLES[kind]}", field=where)
    if kind != "choice":
        _check_range(kind, args, file, where)
    return Domain(key, kind, tuple(args))


_EXAMPLES = {"choice": "[2, 4, 8]", "uniform": "[0.0, 0.2]", "loguniform": "[0.01, 0.4]",
             "randint": "[1, 5]", "quniform": "[0, 4, 1]"}


def _check_range(kind: str, args: list, file: str, where: str) -> None:
    size = 3 if kind == "quniform" else 2
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in args)
    if len(args) != size or not numbers:
        raise SpecError(file, f"{kind} takes {size} numbers, e.g. {kind}: {_EXAMPLES[kind]} (got {args!r})",
                        field=where)
    low, high = args[0], args[1]
    if not low < high:
        raise SpecError(file, f"{kind} needs low < high (got {args!r})", field=where)
    if kind == "loguniform" and low <= 0:
        raise SpecError(file, f"loguniform needs low > 0 (got {args!r})", field=where)
    if kind == "randint" and not all(isinstance(v, int) for v in args):
        raise SpecError(file, f"randint takes integers [low, high), high excluded (got {args!r})", field=where)
    if kind == "quniform" and args[2] <= 0:
        raise SpecError(file, f"quniform needs q > 0 (got {args!r})", field=where)


@dataclass(frozen=True)
class Judged:
    """One sample's fate before anything is spent: trained, or rejected with `status`."""

    name: str
    values: dict
    config: dict | None  # None: the sample is invalid
    params: int | None
    status: str  # "ok", "over budget (N params)", "over budget (flag: trained)" or "invalid: ..."
    trains: bool


def judge(search: Search, sample: dict, name: str, num_classes: int) -> Judged:
    """Validate the sample as a grid row, count its model's real parameters, apply the cap: a sample over
    the cap (budget.mode enforce) or invalid is rejected here, before any resource is held."""
    try:
        config = search.trial(sample, name)
    except SpecError as err:
        return Judged(name, sample, None, None, f"invalid: {str(err).split(f'row {name!r}: ', 1)[-1]}", False)
    verdict = budget.check(config["model"], num_classes, config["budget"]["max_params"])
    if not verdict.within and config["budget"]["mode"] == "enforce":
        return Judged(name, sample, config, verdict.params, f"over budget ({verdict.params:,} params)", False)
    return Judged(name, sample, config, verdict.params, "ok" if verdict.within else "over budget (flag: trained)",
                  True)


def sample_name(index: int) -> str:
    """`s001`, `s002`, ...: the trial name of the index-th draw (1-based)."""
    return f"s{index:03d}"
