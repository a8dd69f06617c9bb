"""The testbed's task generator: exact answers, arithmetically correct traces, tunable difficulty."""

from __future__ import annotations

import random

import pytest

from flexrealign.eval.grading import grade
from flexrealign.testbed.task import (
    LABELS,
    TaskConfig,
    check_trace,
    make_problem,
    make_problems,
    parse_question,
)


def recompute(completion: str, terms: tuple[int, ...]) -> list[bool]:
    """Independently check every "s+Lt=r" line: s is the previous result, Lt the next labelled term."""
    oks, acc, i = [], 0, 0
    for line in completion.split("\n"):
        if line == "verify":
            acc, i = 0, 0
        elif "=" in line:
            lhs, r = line.split("=")
            s, lt = lhs.split("+")
            oks.append(int(s) == acc and lt == f"{LABELS[i]}{terms[i]}" and int(r) == (acc + terms[i]) % 10)
            acc, i = int(r), i + 1
    return oks


def test_answers_and_traces_are_correct() -> None:
    for p in make_problems(300, seed=3):
        assert p.answer == sum(p.terms) % 10
        assert parse_question(p.question) == p.terms
        for trace in (p.long, p.short, p.direct):
            assert trace.startswith("<think>\n") and "\n</think>\n" in trace.replace(
                "<think>\n</think>", "\n</think>"
            )
            assert trace.endswith(f"\\boxed{{{p.answer}}}")
            assert all(recompute(trace, p.terms))
            assert check_trace(p.question, trace)
            assert grade(trace, str(p.answer)) and not grade(trace, str((p.answer + 1) % 10))


def test_long_traces_take_every_step_and_are_longest() -> None:
    for p in make_problems(200, seed=4):
        steps = [line for line in p.long.split("\n") if "=" in line]
        assert len(steps) == len(p.terms) * (1 + p.meta["long_verify"])
        assert len(p.direct) <= len(p.short)
    long_mean = sum(len(p.long) for p in make_problems(500, 5)) / 500
    short_mean = sum(len(p.short) for p in make_problems(500, 5)) / 500
    assert short_mean < 0.7 * long_mean


def test_check_trace_rejects_wrong_steps_and_answers() -> None:
    p = make_problem(random.Random(0), TaskConfig(), 0, num_terms=5)
    first = p.long.split("\n")[1]  # "0+At=t"
    wrong = f"{first[:-1]}{(int(first[-1]) + 1) % 10}"
    assert not check_trace(p.question, p.long.replace(first, wrong, 1))
    assert not all(recompute(p.long.replace(first, wrong, 1), p.terms))
    wrong_answer = p.long.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{(p.answer + 3) % 10}}}")
    assert not check_trace(p.question, wrong_answer)
    assert not check_trace(p.question, p.long.replace("</think>\n", ""))


def test_difficulty_is_tunable_and_seeded() -> None:
    cfg = TaskConfig(min_terms=3, max_terms=4)
    ks = {len(p.terms) for p in make_problems(200, seed=1, cfg=cfg)}
    assert ks == {3, 4}
    assert make_problems(20, seed=7) == make_problems(20, seed=7)
    assert make_problems(20, seed=7) != make_problems(20, seed=8)
    with pytest.raises(ValueError, match="num_terms"):
        make_problem(random.Random(0), TaskConfig(), 0, num_terms=len(LABELS) + 1)


def test_short_traces_answer_easy_problems_directly() -> None:
    cfg = TaskConfig(short_direct_prob=1.0)
    for p in make_problems(100, seed=2, cfg=cfg):
        assert (p.short == p.direct) == (len(p.terms) <= cfg.short_direct_max_terms)
