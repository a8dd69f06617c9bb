"""The testbed's task generator: exact answers, arithmetically correct traces, tunable difficulty."""

from __future__ import annotations

import random

import pytest

from flexrealign.eval.grading import grade
from flexrealign.testbed.task import (
    CAREFUL,
    CONCISE,
    GUESS,
    LABELS,
    TaskConfig,
    TraceStyle,
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
        passes = 0 if p.meta["long_mode"] == GUESS else 1 + p.meta["long_verify"]
        assert len(steps) == len(p.terms) * passes
        assert len(p.direct) <= len(p.short)
    long_mean = sum(len(p.long) for p in make_problems(500, 5)) / 500
    short_mean = sum(len(p.short) for p in make_problems(500, 5)) / 500
    assert short_mean < 0.9 * long_mean  # the aligned style thinks less, leaving fusion room to extrapolate


def test_check_trace_rejects_wrong_steps_and_answers() -> None:
    p = make_problem(random.Random(0), TaskConfig(guess_prob=0.0), 0, num_terms=5)
    first = next(line for line in p.long.split("\n") if line.startswith("0+A"))  # "0+At=t"
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


def test_modes_are_decided_at_the_first_thinking_token() -> None:
    """careful restates the terms, concise starts stepping, guess closes the think block: one token decides."""
    first = {CAREFUL: "A", CONCISE: "0", GUESS: "</think>"}
    for p in make_problems(300, seed=6):
        for style in ("long", "short"):
            body = getattr(p, style).removeprefix("<think>\n")
            assert body.startswith(first[p.meta[f"{style}_mode"]])


def test_both_styles_guess_equally_and_the_long_one_is_more_careful() -> None:
    problems = make_problems(4000, seed=2)
    share = {(s, m): sum(p.meta[f"{s}_mode"] == m for p in problems) / 4000 for s in ("long", "short")
             for m in (GUESS, CAREFUL)}  # fmt: skip
    cfg = TaskConfig()
    for style in ("long", "short"):
        assert share[(style, GUESS)] == pytest.approx(cfg.guess_prob, abs=0.025)
        assert share[(style, CAREFUL)] == pytest.approx(getattr(cfg, style).careful, abs=0.025)
    assert share[("long", CAREFUL)] > share[("short", CAREFUL)] + 0.2


def test_bad_task_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="min_terms"):
        TaskConfig(min_terms=5, max_terms=3)
    with pytest.raises(ValueError, match="guess_prob"):
        TaskConfig(guess_prob=0.5, long=TraceStyle(0.7, (1.0,), (1.0,)))
    with pytest.raises(ValueError, match="verify"):
        TraceStyle(0.5, (), (1.0,))
