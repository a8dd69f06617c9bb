"""Benchmark loader: shared files, custom JSONL, error messages, prompt building."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexrealign.eval.benchmarks import R1_PROMPT, Problem, build_messages, load_benchmark
from helpers import shared_path


@pytest.mark.parametrize(
    ("name", "count"), [("math500", 500), ("aime24", 30), ("aime25", 30), ("gsm8k", 1319)]
)
def test_shared_benchmarks_load(name: str, count: int) -> None:
    problems = load_benchmark(name, shared_dir=shared_path())
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.id and p.question.strip() and p.answer.strip() for p in problems)


def test_gsm8k_answers_are_final_numbers(tmp_path: Path) -> None:
    problems = load_benchmark("gsm8k", shared_dir=shared_path())
    assert problems[0].answer == "18"
    assert all("####" not in p.answer and "," not in p.answer for p in problems)


def test_env_var_lookup_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXREALIGN_SHARED", str(shared_path()))
    problems = load_benchmark("aime24", limit=5)
    assert len(problems) == 5
    assert problems[0].id == "60"  # the file's own id, not the line index


def test_custom_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"problem": "1+1?", "answer": 2},
        {"question": "Sum?", "answer": "Work.\n#### 1,234", "id": "q7"},
        {"prompt": "Name?", "answer": "x"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    problems = load_benchmark(str(path))
    assert problems == [Problem("0", "1+1?", "2"), Problem("q7", "Sum?", "1234"), Problem("2", "Name?", "x")]


def test_malformed_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_benchmark(str(path))


def test_missing_fields_and_files(tmp_path: Path) -> None:
    path = tmp_path / "nofield.jsonl"
    path.write_text('{"problem": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"nofield\.jsonl:1.*answer"):
        load_benchmark(str(path))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("not-a-benchmark")


def test_build_messages_r1_prompt() -> None:
    messages = build_messages(Problem("0", "What is $2+2$?", "4"))
    assert messages == [{"role": "user", "content": "What is $2+2$?\n" + R1_PROMPT}]
    assert "\\boxed{}" in R1_PROMPT
    custom = build_messages(Problem("0", "Q", "A"), template="Solve: {question}")
    assert custom[0]["content"] == "Solve: Q"
