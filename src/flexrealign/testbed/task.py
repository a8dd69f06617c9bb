"""Verifiable multi-step problems: the last digit of a sum of k labelled digits ("A7+B3+C9+D4" -> 3).

The labels (A, B, C, ...) name the terms so that a step can find its term by content (an induction-head
lookup of its label) rather than by counting positions, which tiny models learn far more slowly.

Each problem comes with traces of different lengths, all in the R1 format `<think>\\n...\\n</think>\\n\\boxed{N}`:

- long (slow thinking, the reference model's data): one running-sum step per term ("3+C9=2": running sum
  3 plus term C (9) is 2 mod 10), then 0-2 "verify" passes
  that redo the steps. The steps make every token an easy local computation, so a tiny model gets it right;
  the verify passes are the overthinking that a concise model can drop without losing accuracy.
- short (the aligned model's data): the steps once, mostly without verification, and a direct answer for
  the easiest problems (k = 2), as an adaptive "think only when needed" policy.
- direct: the answer with an empty think block. Cheapest; a tiny model cannot sum many digits in one token,
  so its accuracy falls towards chance (10%) as k grows. That is the difficulty knob.

The check and direct-answer choices are random, so the trained models hold soft preferences at those forks
and lam moves them smoothly (lam < 0 verifies more, lam > 1 answers directly more).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

THINK, END_THINK, VERIFY = "<think>", "</think>", "verify"
LABELS = "ABCDEFGH"  # term names; at most len(LABELS) terms


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty and trace-style knobs. Probabilities are per problem."""

    min_terms: int = 2
    max_terms: int = 6
    long_verify_probs: tuple[float, ...] = (0.1, 0.6, 0.3)  # P(0, 1, 2 verify passes) in long traces
    long_direct_prob: float = 0.0  # a share of long traces that answer directly (a guess), for any k
    short_verify_probs: tuple[float, ...] = (0.8, 0.2)  # P(0, 1 verify passes) in short traces
    short_direct_max_terms: int = 2  # short traces answer directly up to this many terms...
    short_direct_prob: float = 0.8  # ...with this probability


@dataclass(frozen=True)
class Problem:
    """One problem and its traces; `terms` are the digits, `answer` the last digit of their sum."""

    id: str
    terms: tuple[int, ...]
    answer: int
    question: str
    long: str
    short: str
    direct: str
    meta: dict = field(default_factory=dict, compare=False)


def question_text(terms: tuple[int, ...]) -> str:
    return "+".join(f"{label}{t}" for label, t in zip(LABELS, terms, strict=False))


def parse_question(question: str) -> tuple[int, ...]:
    """The digits of a question "A7+B3+..." (inverse of `question_text`)."""
    return tuple(int(part[1:]) for part in question.split("+"))


def steps(terms: tuple[int, ...]) -> list[str]:
    """Running-sum lines "s+Lt=r": running sum s, plus term L (digit t), gives r = (s + t) mod 10."""
    lines, acc = [], 0
    for label, t in zip(LABELS, terms, strict=False):
        lines.append(f"{acc}+{label}{t}={(acc + t) % 10}")
        acc = (acc + t) % 10
    return lines


def render(lines: list[str], answer: int) -> str:
    """The completion text: think block with `lines`, then the boxed answer."""
    body = "".join(f"{line}\n" for line in lines)
    return f"{THINK}\n{body}{END_THINK}\n\\boxed{{{answer}}}"


def thinking(terms: tuple[int, ...], verify_passes: int) -> list[str]:
    """The steps, then `verify_passes` repetitions of them, each announced by a "verify" line."""
    lines = steps(terms)
    return lines + [VERIFY, *lines] * verify_passes


def make_problem(rng: random.Random, cfg: TaskConfig, index: int, num_terms: int | None = None) -> Problem:
    """A random problem with its three traces; `num_terms` fixes k (else uniform in the config's range)."""
    k = num_terms or rng.randint(cfg.min_terms, cfg.max_terms)
    if not 1 <= k <= len(LABELS):
        raise ValueError(f"num_terms must be between 1 and {len(LABELS)}, got {k}")
    terms = tuple(rng.randrange(10) for _ in range(k))
    answer = sum(terms) % 10
    long_checks = rng.choices(range(len(cfg.long_verify_probs)), weights=cfg.long_verify_probs)[0]
    short_checks = rng.choices(range(len(cfg.short_verify_probs)), weights=cfg.short_verify_probs)[0]
    short_direct = k <= cfg.short_direct_max_terms and rng.random() < cfg.short_direct_prob
    long_direct = rng.random() < cfg.long_direct_prob
    return Problem(
        id=f"p{index}",
        terms=terms,
        answer=answer,
        question=question_text(terms),
        long=render([] if long_direct else thinking(terms, long_checks), answer),
        short=render([] if short_direct else thinking(terms, short_checks), answer),
        direct=render([], answer),
        meta={"num_terms": k, "long_verify": long_checks, "short_verify": short_checks},
    )


def make_problems(n: int, seed: int, cfg: TaskConfig | None = None) -> list[Problem]:
    """`n` problems from a seeded generator (different seeds give disjoint-ish train and test sets)."""
    rng, cfg = random.Random(seed), cfg or TaskConfig()
    return [make_problem(rng, cfg, i) for i in range(n)]


def check_trace(question: str, completion: str) -> bool:
    """True when every step line of `completion` is correct arithmetic on the question's terms, in order,
    and the boxed answer is the last digit of the sum. Used by tests and to audit model outputs."""
    terms = parse_question(question)
    head, sep, tail = completion.partition(f"{END_THINK}\n")
    if not sep or not head.startswith(f"{THINK}\n"):
        return False
    lines = [line for line in head.removeprefix(f"{THINK}\n").split("\n") if line]
    want = steps(terms)
    return all(p == want for p in _split_passes(lines)) and tail == f"\\boxed{{{sum(terms) % 10}}}"


def _split_passes(lines: list[str]) -> list[list[str]]:
    passes: list[list[str]] = [[]]
    for line in lines:
        if line == VERIFY:
            passes.append([])
        else:
            passes[-1].append(line)
    return passes if any(passes) else []
