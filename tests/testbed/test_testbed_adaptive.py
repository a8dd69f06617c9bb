"""The testbed's adaptive-thinking verdicts (`flexrealign.testbed.adaptive`): lam auto against the dial's best
lam and its own careful lam, the soft landing against the hard cut, the budget check and the oracle bound, on
made-up outcomes whose answers are known."""

from __future__ import annotations

from flexrealign.testbed.adaptive import (
    RowStats,
    auto_effect,
    auto_kept_effect,
    budget_effect,
    landing_effect,
    oracle_line,
)
from flexrealign.testbed.paired import Outcome

N = 100  # problems, one sample each


def row(right: int, tokens: int, first_right: bool = True) -> dict:
    """N outcomes: `right` of them correct (the first ones, or the last ones), each `tokens` long."""
    ok = [i < right for i in range(N)] if first_right else [i >= N - right for i in range(N)]
    return {(f"p{i}", 0): Outcome(ok[i], tokens, "careful", 4) for i in range(N)}


def stats(cut: float, budget: int = 30, most: int = 30) -> RowStats:
    return RowStats(50.0, None, 30.0, 25.0, cut, most, budget, None)


def test_auto_against_the_dial_needs_a_gain_at_no_more_tokens_or_a_cut_at_no_loss() -> None:
    dial = {"inra@-0.5": row(90, 70), "inra@0": row(85, 66), "inra@1": row(60, 40)}
    gain = auto_effect(dial | {"inra@auto": row(96, 70)}, (-0.5, 0.0, 1.0))
    assert gain.holds and "best fixed inra@-0.5" in gain.numbers
    assert auto_effect(dial | {"inra@auto": row(90, 55)}, (-0.5, 0.0, 1.0)).holds  # 21% fewer tokens, no loss
    assert not auto_effect(dial | {"inra@auto": row(90, 60)}, (-0.5, 0.0, 1.0)).holds  # 14% fewer only
    assert not auto_effect(dial | {"inra@auto": row(96, 72)}, (-0.5, 0.0, 1.0)).holds  # more tokens
    assert auto_effect(dial, (-0.5,)).holds is None


def test_auto_kept_compares_with_its_careful_lam() -> None:
    hard = {"inra@-1.5": row(98, 76)}
    assert auto_kept_effect(hard | {"inra@auto": row(98, 70)}, -1.5).holds
    assert not auto_kept_effect(hard | {"inra@auto": row(90, 70)}, -1.5).holds  # 8 points lost
    assert not auto_kept_effect(hard | {"inra@auto": row(98, 80)}, -1.5).holds  # longer


def test_landing_needs_half_the_cuts_and_no_loss() -> None:
    names = ("inra@0 budget 30 (50%) hard", "inra@0 budget 30 (50%) soft")
    samples = {names[0]: row(40, 36), names[1]: row(50, 28)}
    assert landing_effect(samples, {names[0]: stats(90.0), names[1]: stats(20.0)}).holds
    assert not landing_effect(samples, {names[0]: stats(90.0), names[1]: stats(50.0)}).holds
    worse = {names[0]: row(50, 36), names[1]: row(40, 28)}
    assert not landing_effect(worse, {names[0]: stats(90.0), names[1]: stats(20.0)}).holds
    assert budget_effect({names[1]: stats(20.0)}).holds
    assert not budget_effect({names[1]: stats(20.0, budget=30, most=31)}).holds


def test_the_oracle_picks_per_problem() -> None:
    """lam_easy right on the first 60 problems (short), lam_hard on the last 90 (long): the oracle takes the
    short answer on those 60 and the long one on the other 40, all right: 100% at (60 * 20 + 40 * 80) / 100."""
    line = oracle_line(
        {"inra@1.5": row(60, 20), "inra@-1.5": row(90, 80, first_right=False)}, "inra@1.5", "inra@-1.5"
    )
    assert "100.0% at 44.0 tokens" in line
