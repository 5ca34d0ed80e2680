"""What `runner check` reports about a spec, as plain data: its text table and `--json` both come from here.

Reads the loaded spec and each data set's class count (meta.json, or the spec's `data.num_classes`);
counts every model's real parameters; writes nothing and starts nothing. A grid row over the cap in
`enforce` mode is an error (the run would refuse it); a search sample over the cap is a rejection the
run makes too, shown with its count.

    report = check_spec(spec.load_spec("experiments/m5_search.yaml"))
    report["trials"], report["search"]["space"], report["search"]["samples"]
"""

from __future__ import annotations

from runner import data
from runner.core import budget
from runner.spec import search as search_block
from runner.spec.load import Spec

SHOWN_SAMPLES = 8


def check_spec(loaded: Spec, samples: int = SHOWN_SAMPLES) -> dict:
    """The spec's trials (or its search space and first samples) with parameter counts and verdicts."""
    out = {"file": loaded.path, "name": loaded.name, "sha256": loaded.sha256,
           "trials": [_trial(loaded.path, t.name, t.config) for t in loaded.trials], "search": None}
    if loaded.search is not None:
        out["search"] = _search(loaded.search, samples)
    return out


def _trial(path: str, name: str, cfg: dict) -> dict:
    classes, source = data.class_count(cfg["data"])
    verdict = budget.check(cfg["model"], classes, cfg["budget"]["max_params"])
    if not verdict.within and cfg["budget"]["mode"] == "enforce":
        raise budget.BudgetError(f"{path}: row {name!r}: field model: {verdict.message()}; "
                                 "set budget.mode: flag to train it anyway (never registered)")
    return {"name": name, "model": cfg["model"], "params": verdict.params, "classes": classes,
            "classes_source": source.strip(" ()") or "meta.json", "within_budget": verdict.within,
            "budget_mode": cfg["budget"]["mode"], "scaling": cfg["scaling"], "epochs": cfg["train"]["epochs"],
            "config": cfg}


def _search(found: search_block.Search, samples: int) -> dict:
    first = found.samples(min(samples, found.num_samples))
    base = found.base()
    classes, source = data.class_count(base["data"])
    judged = [search_block.judge(found, s, search_block.sample_name(i + 1), classes) for i, s in enumerate(first)]
    return {
        "algorithm": found.algorithm, "num_samples": found.num_samples, "seed": found.seed,
        "scheduler": found.scheduler, "metric": found.metric, "mode": found.mode,
        "classes": classes, "classes_source": source.strip(" ()") or "meta.json",
        "space": [{"key": d.key, "kind": d.kind, "args": list(d.args)} for d in found.space],
        "samples": [{"name": j.name, "values": j.values, "params": j.params, "status": j.status,
                     "trains": j.trains, "model": None if j.config is None else j.config["model"]} for j in judged],
    }
