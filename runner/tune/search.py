"""A spec's `search:` on Tune: a sampler (random, or Optuna's TPE through Tune's OptunaSearch) behind a
budget gate that decides, for every draw, before Tune makes it a trial: trained, or rejected.

The gate (`BudgetGate`, a Tune `Searcher`) counts each sample's real parameters on the meta device
(runner/spec/search.py `judge`, the same validation as a grid row). A sample over the cap (budget.mode
enforce) or invalid never becomes a Tune trial, so no process, placement group or worker is started
for it; it is counted, printed, kept for the results table ("over budget (N params)"), and told to the
sampler as the worst possible result, so that Optuna learns where the cap lies instead of sampling
there again. `search.num_samples` counts draws, rejected ones included: the gate answers FINISHED after
that many, and Tune (num_samples=-1) stops asking.

    gate = BudgetGate(found, make_sampler(found), num_classes=100)
    ray.tune.TuneConfig(search_alg=gate, num_samples=-1, metric=found.metric, mode=found.mode, ...)
    ... tuner.fit(); gate.rejected    # the samples that were never trained
"""

from __future__ import annotations

import os
import pickle
import random
import sys
import tempfile

import optuna
import ray.tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from runner.spec import search as search_block

# Optuna's TPE splits trials into good and bad by rank, so any value below every real result works;
# -inf would be refused by Optuna's `tell` (it logs a warning and drops the trial, learning nothing).
WORST = {"max": -1e9, "min": 1e9}


class RandomSampler(Searcher):
    """Independent draws with runner/spec/search.py's sampler: for a seed, the samples `runner check` shows."""

    def __init__(self, found: search_block.Search) -> None:
        super().__init__(metric=found.metric, mode=found.mode)
        self.found, self.rng = found, random.Random(found.seed)

    def suggest(self, trial_id: str) -> dict:
        return self.found.sample(self.rng)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # random search learns nothing

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.rng.getstate(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.rng.setstate(pickle.load(fh))


def make_sampler(found: search_block.Search) -> Searcher:
    """The spec's algorithm over its space."""
    if found.algorithm == "random":
        return RandomSampler(found)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study and trial beside the progress
    # Converted here with Tune's own converter: OptunaSearch warns when handed Tune's distributions.
    space = OptunaSearch.convert_search_space({d.key: tune_domain(d) for d in found.space})
    return OptunaSearch(space=space, metric=found.metric, mode=found.mode, seed=found.seed)


def tune_domain(domain: search_block.Domain) -> ray.tune.search.sample.Domain:
    """The Tune distribution of one dimension (the same family, bounds and rounding)."""
    a = domain.args
    if domain.kind == "choice":
        return ray.tune.choice(list(a))
    if domain.kind == "uniform":
        return ray.tune.uniform(a[0], a[1])
    if domain.kind == "loguniform":
        return ray.tune.loguniform(a[0], a[1])
    if domain.kind == "randint":
        return ray.tune.randint(a[0], a[1])  # high excluded, as runner/spec/search.py documents
    if domain.integer:
        return ray.tune.qrandint(a[0], a[1], a[2])
    return ray.tune.quniform(a[0], a[1], a[2])


class BudgetGate(Searcher):
    """Draws from `sampler` until a sample may train; rejected draws are told to the sampler at once."""

    def __init__(self, found: search_block.Search, sampler: Searcher, num_classes: int, *,
                 budgets: dict[str, dict] | None = None, stream=sys.stdout) -> None:  # noqa: ANN001 - a text stream
        super().__init__(metric=found.metric, mode=found.mode)
        self.found, self.sampler, self.num_classes, self.stream = found, sampler, num_classes, stream
        self.budgets = {} if budgets is None else budgets  # trial name -> its budget verdict, for the bridge
        self.drawn = 0
        self.rejected: list[search_block.Judged] = []
        self.accepted: list[search_block.Judged] = []
        self._draw_of: dict[str, str] = {}  # Tune trial id -> the sampler's id for that draw

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: object) -> bool:
        return True  # the space is the spec's; Tune's param_space holds only constants

    def suggest(self, trial_id: str) -> dict | str | None:
        while self.drawn < self.found.num_samples:
            draw_id = f"draw-{self.drawn + 1}"
            sample = self.sampler.suggest(draw_id)
            if sample is None or sample == Searcher.FINISHED:
                return sample
            self.drawn += 1
            judged = search_block.judge(self.found, sample, search_block.sample_name(self.drawn), self.num_classes)
            if judged.trains:
                self._draw_of[trial_id] = draw_id
                self.accepted.append(judged)
                self.budgets[judged.name] = {"params": judged.params, "within_budget": judged.status == "ok"}
                return {"trial": {"name": judged.name, "config": judged.config, "sample": judged.values}}
            self.rejected.append(judged)
            print(f"[{judged.name}] {judged.status}: rejected, never trained", file=self.stream, flush=True)
            self.sampler.on_trial_complete(draw_id, result={self.found.metric: WORST[self.found.mode]})
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._draw_of:
            self.sampler.on_trial_result(self._draw_of[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._draw_of:
            self.sampler.on_trial_complete(self._draw_of.pop(trial_id), result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        """Tune checkpoints its searcher beside the experiment state (for `runner run --resume`)."""
        with tempfile.TemporaryDirectory() as directory:
            inner = os.path.join(directory, "sampler.pkl")
            self.sampler.save(inner)
            with open(inner, "rb") as fh:
                sampler = fh.read()
        state = {"drawn": self.drawn, "rejected": self.rejected, "accepted": self.accepted,
                 "draw_of": self._draw_of, "sampler": sampler}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        self.drawn, self.rejected, self.accepted = state["drawn"], state["rejected"], state["accepted"]
        self._draw_of = state["draw_of"]
        with tempfile.TemporaryDirectory() as directory:
            inner = os.path.join(directory, "sampler.pkl")
            with open(inner, "wb") as fh:
                fh.write(state["sampler"])
            self.sampler.restore(inner)


def gate(found: search_block.Search, metas: dict, budgets: dict[str, dict]) -> BudgetGate:
    """The gate of `runner run`: counts at the data set's class count; each sample it lets through gets its
    budget verdict in `budgets` (the MLflow bridge tags the trial's run with it)."""
    num_classes = metas[found.base()["data"]["path"]].num_classes
    return BudgetGate(found, make_sampler(found), num_classes, budgets=budgets)


def rows(gate: BudgetGate, bridge: object, grid: object, progress: object) -> list[dict]:
    """The search's results rows, in draw order: every trained sample as the driver saw it (the MLflow
    bridge's record), every rejected one with its reason, so the table accounts for all num_samples draws."""
    values = {j.name: j.values for j in gate.accepted + gate.rejected}
    seen = {row["trial"]: row for row in bridge.rows()}
    seconds = {r.config["trial"]["name"]: (r.metrics or {}).get("time_total_s") for r in grid}
    out = [{**row, "varied": values.get(name, {}), "start_s": progress.first_result_s.get(row.get("trial_id")),
            "time_s": seconds.get(name)} for name, row in seen.items()]
    for judged in gate.rejected:
        model = judged.config["model"]["name"] if judged.config else judged.values.get("model.name", "")
        out.append({"trial": judged.name, "status": judged.status, "model": model, "params": judged.params,
                    "within_budget": False if judged.params is not None else None, "varied": judged.values,
                    "epochs": None, "reported": {}})
    return sorted(out, key=lambda row: row["trial"])
