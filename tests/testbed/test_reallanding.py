"""The real demo's landing table on synthetic records: budgets, the sweep's calibration, rows and the sentence.
(The rows themselves come from SmolLM2 in `flexrealign demo --real`; generation is tested in tests/decoding.)"""

from __future__ import annotations

import json
import math

from flexrealign.decoding.dial import parse_dial
from flexrealign.testbed.realdemo import DemoRow
from flexrealign.testbed.reallanding import (
    MARKER,
    landing_budgets,
    landing_markdown,
    landing_section,
    landing_sentence,
    run_landing,
    summarize_landing,
    sweep_calibration,
)


def rec(landing, budget, pid, text, reason="stop", cut=False, tokens=10):
    soft = landing == "soft"
    return {"landing": landing, "budget": budget, "think_lam": 1.5 if soft else 0.0, "steer_lam": 1.5 if soft else None,
            "problem_id": pid, "text": text, "tokens": tokens, "thinking_tokens": tokens - 3,
            "thinking_cut": cut, "finish_reason": reason}  # fmt: skip


def demo_rows():
    row = dict(answers=2, ref_logprob=-1.0, pass_at_1=0.0, cutoff_pct=0.0)
    return [DemoRow("smollm2", None, mean_tokens=41.0, answered_pct=50.0, **row),
            DemoRow("inra", 0.0, mean_tokens=41.0, answered_pct=50.0, **row),
            DemoRow("inra", 1.5, mean_tokens=12.0, answered_pct=100.0, **row),
            DemoRow("trra_lam2", None, mean_tokens=9.0, answered_pct=0.0, **row)]  # fmt: skip


def test_budgets_are_rounded_shares_at_least_one_without_repeats():
    assert landing_budgets(41.0) == [10, 20, 31]
    assert landing_budgets(2.0) == [1, 2], "shares of 0.5 and 1.0 tokens both give a budget of 1"
    assert landing_budgets(0.0) == [1]


def test_sweep_calibration_drives_a_soft_landing():
    cal = sweep_calibration(demo_rows())
    assert [(p.lam, p.mean_thinking_tokens, p.pass_at_1) for p in cal.curve] == [
        (0.0, 41.0, 50.0),
        (1.5, 12.0, 100.0),
    ]
    dial = parse_dial(
        {"lam": 0.0, "thinking_token_budget": 10, "thinking_landing": "soft", "lam_marker": MARKER}, cal
    )
    assert dial.landing is not None and dial.landing.shortest_lam == 1.5 and dial.limits().marker == MARKER
    hard = parse_dial(
        {"lam": 0.0, "thinking_token_budget": 10, "thinking_landing": "hard", "lam_marker": MARKER}, cal
    )
    assert hard.landing is None


def test_rows_table_and_sentence():
    records = [rec("hard", 8, "a", "It is 5", cut=True), rec("hard", 8, "b", "no number", cut=True),
               rec("soft", 8, "a", "5", tokens=4), rec("soft", 8, "b", "7", tokens=6),
               rec("hard", 4, "a", "x", reason="length", cut=True), rec("soft", 4, "a", "")]  # fmt: skip
    rows = summarize_landing(records, [-2.0, -3.0, -1.0, -1.5, -4.0, math.nan])
    assert [(r.budget, r.landing) for r in rows] == [(4, "soft"), (4, "hard"), (8, "soft"), (8, "hard")]
    soft8, hard8 = rows[2], rows[3]
    assert (soft8.mean_tokens, soft8.answered_pct, soft8.cut_pct, soft8.ref_logprob) == (
        5.0,
        100.0,
        0.0,
        -1.25,
    )
    assert (hard8.answered_pct, hard8.cut_pct, hard8.mean_thinking) == (50.0, 100.0, 7.0)
    assert math.isnan(rows[0].ref_logprob), "an empty answer's NaN score leaves no finite mean"
    table = landing_markdown(rows)
    assert "| soft | 8 | 1.5 | 1.5 | 2 | 5.0 | 2.0 | 100 | -1.250 | 0 |" in table
    assert "| hard | 8 | 0 | - | 2 | 10.0 | 7.0 | 50 | -2.500 | 100 |" in table
    sentence = landing_sentence(rows)
    assert "budgets 4/8 tokens" in sentence and "answered 0/100%" in sentence and "against 0/50%" in sentence
    assert "more answers at 1, as many at 1 and fewer at 0 of 2 budgets" in sentence
    assert landing_sentence(rows[:1]).endswith("no budget was measured with both landings.")
    assert any(sentence in line for line in landing_section(rows))


def test_run_landing_reads_the_cache_without_a_model(tmp_path):
    records = [rec("soft", 8, "a", "5"), rec("hard", 8, "a", "x", reason="length", cut=True)]
    (tmp_path / "landing.json").write_text(json.dumps({"records": records, "scores": [-1.0, None]}))
    timings = {}
    rows = run_landing(
        tmp_path, tmp_path / "no-base", tmp_path / "no-inra", {"a": "q"}, demo_rows(), 4, timings
    )
    assert [(r.landing, r.answered_pct, r.cut_pct) for r in rows] == [
        ("soft", 100.0, 0.0),
        ("hard", 0.0, 100.0),
    ]
    assert math.isnan(rows[1].ref_logprob) and timings == {}, "a cached stage runs nothing"
