"""The parameter cap (runner/core/budget.py): counts, verdicts, suggestions and the enforce/flag modes.

Run: .venv/bin/pytest tests/test_budget.py
"""

import pytest

from runner.core import budget

CAP = 5_000_000
ENFORCE = {"max_params": CAP, "mode": "enforce"}
FLAG = {"max_params": CAP, "mode": "flag"}
EFFNET_106 = {"name": "efficientnet", "depth": 1.06}


def test_meta_count_matches_the_known_figure() -> None:
    assert budget.count({"name": "wrn", "depth": 16, "width": 4}, 10) == 4_298_970


def test_enforce_refuses_effnet_depth_106_with_count_cap_and_fitting_suggestion() -> None:
    with pytest.raises(budget.BudgetError) as err:
        budget.enforce(EFFNET_106, 100, ENFORCE)
    message = str(err.value)
    assert "6,641,284 parameters > cap 5,000,000" in message
    assert "nearest under the cap: efficientnet depth=1.0 width=1.0 (4,135,648)" in message
    assert "budget.mode: flag" in message
    suggestion = budget.nearest_under_cap(EFFNET_106, 100, CAP)
    assert suggestion == {"name": "efficientnet", "depth": 1.0, "width": 1.0}
    assert budget.check(suggestion, 100, CAP).within


def test_flag_mode_returns_the_over_cap_verdict() -> None:
    verdict = budget.enforce(EFFNET_106, 100, FLAG)
    assert verdict == budget.Verdict(6_641_284, CAP, False, "efficientnet depth=1.0 width=1.0 (4,135,648)")
    assert verdict.message().startswith("6,641,284 parameters > cap 5,000,000; nearest under the cap")


def test_wrn_16_4_is_within() -> None:
    verdict = budget.enforce({"name": "wrn", "depth": 16, "width": 4}, 10, ENFORCE)
    assert verdict == budget.Verdict(4_298_970, CAP, True, None)
    assert verdict.message() == "4,298,970 parameters <= cap 5,000,000"


@pytest.mark.parametrize("cfg,num_classes,expected", [
    # Narrower at the same depth (4.30M) wins: wrn_std 16-8 (11.0M) and wrn 10-8 (11.0M) are over.
    ({"name": "wrn", "depth": 16, "width": 8, "dropout": 0.3}, 10,
     {"name": "wrn", "depth": 16, "width": 4, "dropout": 0.3}),
    # Shallower (4.30M) beats narrower (wrn_std 28-3: 3.29M); davda54 28-4 is bigger still (7.40M).
    ({"name": "wrn_std", "depth": 28, "width": 4}, 10, {"name": "wrn_std", "depth": 22, "width": 4}),
    # wrn 16-4 and wrn_std 22-4 tie at 4,298,970: the user's layout is kept.
    ({"name": "wrn", "depth": 22, "width": 4}, 10, {"name": "wrn", "depth": 16, "width": 4}),
    ({"name": "resnet_guide"}, 10, {"name": "resnet_guide", "width": 40}),
    ({"name": "efficientnet", "width": 1.3, "stem": "cifar"}, 1000,
     {"name": "efficientnet", "width": 0.95, "depth": 1.0, "stem": "cifar"}),
])
def test_nearest_under_cap_picks_the_largest_fit_in_the_neighbourhood(cfg: dict, num_classes: int,
                                                                      expected: dict) -> None:
    found = budget.nearest_under_cap(cfg, num_classes, CAP)
    assert found == expected
    assert budget.count(found, num_classes) <= CAP


def test_nearest_under_cap_returns_a_fitting_config_itself_and_none_when_nothing_fits() -> None:
    cfg = {"name": "wrn_std", "depth": 16, "width": 4}
    assert budget.nearest_under_cap(cfg, 10, CAP) == cfg
    assert budget.nearest_under_cap({"name": "wrn", "depth": 10, "width": 1}, 10, 1_000) is None
    verdict = budget.check({"name": "wrn", "depth": 10, "width": 1}, 10, 1_000)
    assert not verdict.within and verdict.suggestion is None
    assert "nothing in the searched neighbourhood fits" in verdict.message()
