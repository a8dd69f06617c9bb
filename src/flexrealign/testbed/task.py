"""Verifiable multi-step problems: the last digit of a sum of k labelled digits ("A7+B3+C9+D4" -> 3).

The labels (A, B, C, ...) name the terms so that a step can find its term by content (an induction-head
lookup of its label) rather than by counting positions, which tiny models learn far more slowly.

Every trace is in the R1 format `<think>\\n...\\n</think>\\n\\boxed{N}` and follows one of three modes, chosen
at the first thinking token:

- careful: restate the problem ("A7+B3+C9+D4", a verbatim copy), one running-sum step per term ("3+C9=2":
  running sum 3 plus term C (9) is 2 mod 10), then one verify pass that redoes the steps. Slow and right.
- concise: the steps once, sometimes one verify pass. Right as well: every step is an easy local computation.
- guess: the answer with an empty think block. Cheap, but a tiny model cannot sum many digits in one token,
  so a guess is right about as often as chance (10%) on hard problems (large k). Thinking is what makes hard
  problems solvable: that is the difficulty knob (`min_terms`, `max_terms`).

A trace never holds more than two passes: measured on the 2-layer testbed model, a third pass slipped in about a
third of the samples (a step then finds its term among four copies of the label), and a restatement written in
another format ("A7 B3 C9") was miscopied in about four in ten careful samples. Both made the slow-thinking
reference *less* accurate than the concise model, the opposite of the setting the paper studies.

The slow-thinking reference's data (`long`) is mostly careful; the aligned model's data (`short`) mostly
concise. Both guess equally often (`guess_prob`): the aligned model thinks less, and is no more accurate.
The mode is one token, so the models hold soft preferences there and logit fusion (paper Eq. 5) moves them:
lam > 1 extrapolates toward concise, lam < 0 toward careful. Fused logits are renormalised, so a mode both
models give the same probability (the guess) keeps its logit while the others move: outside [0, 1] it loses
share, inside it gains a little. Whether that yields the paper's effects is measured, not built in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from flexrealign.core.keywords import refuse_unknown_keywords

THINK, END_THINK, VERIFY = "<think>", "</think>", "verify"
LABELS = "ABCDEFGH"  # term names; at most len(LABELS) terms
GUESS, CAREFUL, CONCISE = "guess", "careful", "concise"


@dataclass(frozen=True)
class TraceStyle:
    """How one model's training traces think: mode shares and verify-pass counts (probabilities per problem).

    `careful` and `guess` are shares of all traces (concise takes the rest); `careful_verify[i]` and
    `concise_verify[i]` are P(i verify passes) in those modes.
    """

    careful: float
    careful_verify: tuple[float, ...]
    concise_verify: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("careful_verify", "concise_verify"):
            probs = getattr(self, name)
            if not probs or any(p < 0 for p in probs) or sum(probs) <= 0:
                raise ValueError(f"{name} must be non-negative weights with a positive sum, got {probs}")


# Shares of all traces (guess_prob 0.2 is shared): the reference is careful in 60% of them, the aligned model in
# 36%. Chosen so that the aligned model still leaves some careful mass and some verify passes: fusion at lam = 2
# then has room left to shorten, and lam = 5 or a TrRa-iter round shorten further (see the module docstring).
LONG_STYLE = TraceStyle(careful=0.6, careful_verify=(0.0, 1.0), concise_verify=(0.5, 0.5))
SHORT_STYLE = TraceStyle(careful=0.36, careful_verify=(0.0, 1.0), concise_verify=(0.75, 0.25))


@refuse_unknown_keywords
@dataclass(frozen=True)
class TaskConfig:
    """Difficulty (number of terms) and the two trace styles. `guess_prob` is shared by both styles."""

    min_terms: int = 2
    max_terms: int = 6
    guess_prob: float = 0.2
    long: TraceStyle = LONG_STYLE
    short: TraceStyle = SHORT_STYLE

    def __post_init__(self) -> None:
        if not 1 <= self.min_terms <= self.max_terms <= len(LABELS):
            raise ValueError(f"need 1 <= min_terms <= max_terms <= {len(LABELS)}, got {self}")
        for style in (self.long, self.short):
            if min(self.guess_prob, style.careful) < 0 or self.guess_prob + style.careful > 1:
                raise ValueError(f"guess_prob + careful must lie in [0, 1], got {self.guess_prob} + {style}")


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


def restate(terms: tuple[int, ...]) -> str:
    """The careful mode's first line: the problem copied verbatim, "A7+B3+C9" (its first token marks the mode)."""
    return question_text(terms)


def thinking(terms: tuple[int, ...], verify_passes: int, careful: bool = False) -> list[str]:
    """(The restated terms,) the steps, then `verify_passes` repetitions of them, each announced by "verify"."""
    lines = steps(terms)
    return [restate(terms)] * careful + lines + [VERIFY, *lines] * verify_passes


def sample_trace(rng: random.Random, style: TraceStyle, guess_prob: float, terms: tuple[int, ...]) -> tuple:
    """(mode, verify passes, lines) of one trace in `style`; a guess has no lines."""
    u = rng.random()
    if u < guess_prob:
        return GUESS, 0, []
    careful = u < guess_prob + style.careful
    probs = style.careful_verify if careful else style.concise_verify
    passes = rng.choices(range(len(probs)), weights=probs)[0]
    return (CAREFUL if careful else CONCISE), passes, thinking(terms, passes, careful)


def make_problem(rng: random.Random, cfg: TaskConfig, index: int, num_terms: int | None = None) -> Problem:
    """A random problem with its traces; `num_terms` fixes k (else uniform in the config's range)."""
    k = num_terms or rng.randint(cfg.min_terms, cfg.max_terms)
    if not 1 <= k <= len(LABELS):
        raise ValueError(f"num_terms must be between 1 and {len(LABELS)}, got {k}")
    terms = tuple(rng.randrange(10) for _ in range(k))
    answer = sum(terms) % 10
    long_mode, long_passes, long_lines = sample_trace(rng, cfg.long, cfg.guess_prob, terms)
    short_mode, short_passes, short_lines = sample_trace(rng, cfg.short, cfg.guess_prob, terms)
    return Problem(
        id=f"p{index}",
        terms=terms,
        answer=answer,
        question=question_text(terms),
        long=render(long_lines, answer),
        short=render(short_lines, answer),
        direct=render([], answer),
        meta={"num_terms": k, "long_mode": long_mode, "long_verify": long_passes, "short_mode": short_mode,
              "short_verify": short_passes},
    )  # fmt: skip


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
    if lines and lines[0] == restate(terms):  # the careful mode's first line
        lines = lines[1:]
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
