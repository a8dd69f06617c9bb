"""`flexrealign data shortest`: the shortest acceptable of k samples per prompt, as prompt/completion SFT data."""

from __future__ import annotations

import json

from flexrealign.cli import main
from flexrealign.training.data_select import acceptable


def rec(pid: str, sample: int, text: str, tokens: int, reason: str = "stop", correct: bool = False) -> dict:
    return {"model": "m", "family": "m", "kind": "plain", "lam": None, "problem_id": pid, "sample": sample,
            "answer": "5", "text": text, "tokens": tokens, "finish_reason": reason, "correct": correct}  # fmt: skip


def test_acceptable_rules():
    assert acceptable(rec("a", 0, "It is 5.", 4), "answered")
    assert not acceptable(rec("a", 0, "It is five.", 4), "answered"), "no number stated"
    assert not acceptable(rec("a", 0, "It is 5", 4, reason="length"), "answered"), "cut off"
    assert acceptable(rec("a", 0, "It is five.", 4), "finished")
    assert not acceptable(rec("a", 0, "It is 5.", 4), "correct")
    assert acceptable(rec("a", 0, "It is 5.", 4, correct=True), "correct")


def test_shortest_command(tmp_path, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text(
        "".join(json.dumps({"id": i, "question": f"Q{i}?", "answer": "5"}) + "\n" for i in "abc")
    )
    gens = tmp_path / "generations.jsonl"
    records = [
        rec("a", 0, "long answer with 5 in it", 9),
        rec("a", 1, "5", 1, reason="length"),  # shortest, but cut off: not acceptable
        rec("a", 2, "so 5.", 3),
        rec("b", 0, "no number here", 3),  # b has no acceptable sample: skipped and counted
        rec("c", 0, "c is 7", 3),
        rec("c", 1, "it's 7", 3),  # a tie: the earlier sample wins
    ]
    gens.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "short.jsonl"
    argv = [
        "--generations",
        str(gens),
        "--problems",
        str(problems),
        "--output",
        str(out),
        "--template",
        "{question}",
    ]
    assert main(["data", "shortest", *argv]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["a", "c"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "Qa?"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "so 5."}]
    assert rows[1]["completion"][0]["content"] == "c is 7"
    assert "kept 2" in capsys.readouterr().out


def test_shortest_command_refuses_an_empty_run(tmp_path, capsys):
    (tmp_path / "g.jsonl").write_text("")
    (tmp_path / "p.jsonl").write_text(json.dumps({"question": "Q?", "answer": "1"}) + "\n")
    argv = [
        "--generations",
        str(tmp_path / "g.jsonl"),
        "--problems",
        str(tmp_path / "p.jsonl"),
        "--output",
        "x",
    ]
    assert main(["data", "shortest", *argv]) == 2
    assert "no generations" in capsys.readouterr().err
