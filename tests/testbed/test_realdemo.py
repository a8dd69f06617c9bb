"""The real demo's bookkeeping on synthetic records: split, table rows, the lam = 0 check and the plot.
(The demo itself runs SmolLM2 for minutes: `flexrealign demo --real`; its stages are the commands tested elsewhere.)"""

from __future__ import annotations

import json

from flexrealign.testbed.realdemo import (
    RealDemoConfig,
    lam0_matches,
    plot,
    split_gsm8k,
    summarize,
    table_markdown,
)


def rec(model, lam, pid, text, tokens, reason="stop"):
    return {"model": model, "lam": lam, "problem_id": pid, "text": text, "tokens": tokens,
            "finish_reason": reason, "correct": False}  # fmt: skip


def test_split_is_disjoint_and_ordered(tmp_path):
    src = tmp_path / "gsm8k.jsonl"
    src.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(10))
    )
    train, held = split_gsm8k(src, tmp_path / "d", RealDemoConfig(train_prompts=3, heldout_prompts=2))
    ids = [[json.loads(x)["id"] for x in p.read_text().splitlines()] for p in (train, held)]
    assert ids == [["gsm8k-0", "gsm8k-1", "gsm8k-2"], ["gsm8k-3", "gsm8k-4"]]


def test_rows_lam0_check_and_plot(tmp_path):
    records = [
        rec("smollm2", None, "a", "It is 5.", 10), rec("smollm2", None, "b", "Seven", 20),
        rec("inra", 0.0, "a", "It is 5.", 10), rec("inra", 0.0, "b", "Eight", 20),
        rec("inra", 1.0, "a", "5", 4), rec("inra", 1.0, "b", "7 and more", 8, reason="length"),
        rec("trra_lam2", None, "a", "5", 3), rec("trra_lam2", None, "b", "7", 3),
    ]  # fmt: skip
    rows = summarize(records, [-1.0] * 6 + [float("nan"), -2.0], "trra_lam2")
    assert [(r.model, r.lam) for r in rows] == [
        ("smollm2", None),
        ("inra", 0.0),
        ("inra", 1.0),
        ("trra_lam2", None),
    ]
    assert rows[2].mean_tokens == 6.0 and rows[2].answered_pct == 50.0 and rows[2].cutoff_pct == 50.0
    assert rows[3].ref_logprob == -2.0, "NaN scores (empty answers) are left out of the mean"
    assert lam0_matches(records) == (1, 2)
    assert "| inra | 1 | 2 | 6.0 |" in table_markdown(rows)
    assert plot(rows, tmp_path / "p.png", 2.0).stat().st_size > 1000
