"""Short-CoT extraction and preference pairs: the formats of OpenR1-Math-220k and UltraFeedback binarized."""

from __future__ import annotations

import json

from flexrealign.cli import main
from flexrealign.training.data_prep import PrepStats, convert, preference_record, short_cot_record

LONG = "<think>\nLet me add 2 and 2 carefully... that is 4.\n</think>\n\nThe answer is $\\boxed{4}$."


def test_short_cot_keeps_only_what_follows_think_from_messages_and_generations():
    from_messages = {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": LONG}]
    }
    from_generations = {
        "problem": "2+2?",
        "generations": ["<think>wrong</think> 5", LONG],
        "correctness_math_verify": [False, True],
    }
    for record in (from_messages, from_generations, {"problem": "2+2?", "generation": LONG}):
        out, why = short_cot_record(record)
        assert why == "kept"
        assert out == {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "completion": [{"role": "assistant", "content": "The answer is $\\boxed{4}$."}],
        }


def test_short_cot_skips_records_without_think_and_counts_them():
    records = [
        {"problem": "a", "generation": LONG},
        {"problem": "b", "generation": "no reasoning markers here"},
        {"problem": "c", "generation": "<think>only thinking</think>   "},
        {"question": "d"},
        {"problem": "e", "generation": "still thinking, cut off at the length limit <think> ..."},
    ]
    stats = PrepStats()
    kept = list(convert(records, short_cot_record, stats))
    assert len(kept) == 1 and stats.read == 5 and stats.kept == 1
    assert stats.skipped == {"no </think>": 2, "nothing after </think>": 1, "no problem/generation fields": 1}
    assert "skipped 4" in stats.summary() and "2 (no </think>)" in stats.summary()


def test_prefs_split_shared_turns_into_the_prompt():
    user = {"role": "user", "content": "Be kind?"}
    ultrafeedback = {
        "prompt": "Be kind?",
        "chosen": [user, {"role": "assistant", "content": "Yes."}],
        "rejected": [user, {"role": "assistant", "content": "No."}],
    }
    out, _ = preference_record(ultrafeedback)
    assert out == {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "Yes."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    stats = PrepStats()
    bad = [{"prompt": "p", "chosen": "x", "rejected": "x"}, {"prompt": "p", "chosen": "x"}]
    assert list(convert(bad, preference_record, stats)) == []
    assert stats.skipped == {"chosen == rejected": 1, "missing prompt/chosen/rejected": 1}


def test_short_cot_command_writes_jsonl_and_reports_the_skips(tmp_path, capsys):
    src, dst = tmp_path / "long.jsonl", tmp_path / "short.jsonl"
    rows = [{"problem": "a", "generation": LONG}, {"problem": "b", "generation": "none"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "short-cot", "--input", str(src), "--output", str(dst)]) == 0
    lines = dst.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["completion"][0]["content"].startswith("The answer")
    assert "skipped 1: 1 (no </think>)" in capsys.readouterr().out


def test_prefs_command_writes_trl_triples(tmp_path, capsys):
    src, dst = tmp_path / "uf.jsonl", tmp_path / "prefs.jsonl"
    user = {"role": "user", "content": "Hi?"}
    rows = [
        {"prompt": "Hi?", "chosen": [user, {"role": "assistant", "content": "Hello!"}],
         "rejected": [user, {"role": "assistant", "content": "Go away."}]},
        {"prompt": "Hi?", "chosen": [user, {"role": "assistant", "content": "Same"}],
         "rejected": [user, {"role": "assistant", "content": "Same"}]},
    ]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "prefs", "--input", str(src), "--output", str(dst)]) == 0
    (line,) = dst.read_text().splitlines()
    assert json.loads(line) == {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    assert "kept 1, skipped 1: 1 (chosen == rejected)" in capsys.readouterr().out
