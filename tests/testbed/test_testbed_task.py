"""The testbed's task generator: exact answers, arithmetically correct traces, tunable difficulty."""

from __future__ import annotations

import random

import pytest

from flexrealign.eval.grading import grade
from flexrealign.testbed.task import (
    CAREFUL,
    CHUNK,
    CONCISE,
    GARBLED,
    GUESS,
    LABELS,
    TaskConfig,
    TraceStyle,
    check_trace,
    make_problem,
    make_problems,
    parse_question,
    trace_mode,
)
from flexrealign.testbed.tokenizer import build_tokenizer

STYLES = ("long", "short", "efficient")


def recompute(completion: str, terms: tuple[int, ...]) -> list[bool]:
    """Independently check every "s+Lt(+Lt...)=r" line: s is the previous result, the Lt the next labelled terms."""
    oks, acc, i = [], 0, 0
    for line in completion.split("\n"):
        if line == "verify":
            acc, i = 0, 0
        elif "=" in line:
            lhs, r = line.split("=")
            s, *parts = lhs.split("+")
            want = [f"{LABELS[j]}{terms[j]}" for j in range(i, i + len(parts))]
            total = (acc + sum(terms[i : i + len(parts)])) % 10
            oks.append(int(s) == acc and parts == want and int(r) == total)
            acc, i = int(r), i + len(parts)
    return oks


def test_answers_and_traces_are_correct() -> None:
    for p in make_problems(300, seed=3):
        assert p.answer == sum(p.terms) % 10
        assert parse_question(p.question) == p.terms
        for style in STYLES:
            trace = getattr(p, style)
            assert trace.startswith("<think>\n") and trace.endswith(f"\n</think>\n\\boxed{{{p.answer}}}")
            assert all(recompute(trace, p.terms))
            assert check_trace(p.question, trace)
            assert grade(trace, str(p.answer)) and not grade(trace, str((p.answer + 1) % 10))


def test_careful_takes_one_term_per_step_and_concise_up_to_three() -> None:
    for p in make_problems(300, seed=4):
        for style in STYLES:
            mode, trace = p.meta[f"{style}_mode"], getattr(p, style)
            first = trace.split("verify")[0]
            steps = [line for line in first.split("\n") if "=" in line]
            per_step = 1 if mode == CAREFUL else CHUNK
            assert len(steps) == -(-len(p.terms) // per_step)
            if len(p.terms) > 1:
                assert trace_mode(p.question, trace) == mode


def test_long_style_overthinks_and_the_others_think_less() -> None:
    problems, tok = make_problems(2000, seed=5), build_tokenizer()
    mean = {s: sum(len(tok(getattr(p, s)).input_ids) for p in problems) / len(problems) for s in STYLES}
    assert mean["short"] < 0.7 * mean["long"] and mean["efficient"] < 0.8 * mean["long"]
    share = {(s, m): sum(p.meta[f"{s}_mode"] == m for p in problems) / len(problems) for s in STYLES
             for m in (CAREFUL, CONCISE)}  # fmt: skip
    cfg = TaskConfig()
    for style in STYLES:
        assert share[(style, CAREFUL)] == pytest.approx(getattr(cfg, style).careful, abs=0.03)
    # the efficient style thinks carefully a little more often than the reference (so it is at least as
    # accurate), the short one is mostly concise
    assert share[("long", CAREFUL)] < share[("efficient", CAREFUL)] < share[("long", CAREFUL)] + 0.1
    assert share[("short", CONCISE)] > share[("long", CONCISE)] + 0.4


def test_check_trace_rejects_wrong_steps_and_answers() -> None:
    rng = random.Random(0)
    for careful in (1.0, 0.0):
        style = TraceStyle(careful=careful, restate=1.0, careful_verify=1.0, concise_verify=1.0)
        p = make_problem(rng, TaskConfig(long=style), 0, num_terms=5)
        first = next(line for line in p.long.split("\n") if line.startswith("0+A"))
        wrong = f"{first[:-1]}{(int(first[-1]) + 1) % 10}"
        assert not check_trace(p.question, p.long.replace(first, wrong, 1))
        assert not all(recompute(p.long.replace(first, wrong, 1), p.terms))
        wrong_answer = p.long.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{(p.answer + 3) % 10}}}")
        assert not check_trace(p.question, wrong_answer)
        assert not check_trace(p.question, p.long.replace("</think>\n", ""))
        skipped = p.long.replace(first, "", 1)  # a pass that leaves out terms
        assert not check_trace(p.question, skipped)


def test_trace_mode_reads_model_outputs() -> None:
    q = "A7+B3+C9+D4"
    assert (
        trace_mode(q, "<think>\nA7+B3+C9+D4\n0+A7=7\n7+B3=0\n0+C9=9\n9+D4=3\n</think>\n\\boxed{3}") == CAREFUL
    )
    assert trace_mode(q, "<think>\n0+A7+B3+C9=9\n9+D4=3\nverify\n0+A7=7\n</think>\n\\boxed{3}") == CONCISE
    assert trace_mode(q, "<think>\n</think>\n\\boxed{3}") == GUESS
    assert trace_mode(q, "<think>\n0+A7=7\nB3\n</think>\n\\boxed{3}") == GARBLED
    assert trace_mode(q, "0+A7=7") == GARBLED


def test_difficulty_is_tunable_and_seeded() -> None:
    cfg = TaskConfig(min_terms=3, max_terms=4)
    ks = {len(p.terms) for p in make_problems(200, seed=1, cfg=cfg)}
    assert ks == {3, 4}
    assert make_problems(20, seed=7) == make_problems(20, seed=7)
    assert make_problems(20, seed=7) != make_problems(20, seed=8)
    with pytest.raises(ValueError, match="num_terms"):
        make_problem(random.Random(0), TaskConfig(), 0, num_terms=len(LABELS) + 1)


def test_bad_task_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="min_terms"):
        TaskConfig(min_terms=5, max_terms=3)
    with pytest.raises(ValueError, match="restate"):
        TraceStyle(careful=0.5, restate=1.5, careful_verify=1.0, concise_verify=0.0)
    with pytest.raises(TypeError):
        TaskConfig(guess_prob=0.2)  # the guess mode is gone: an old keyword is refused, not ignored
