"""Verifiable multi-step problems: the last digit of a sum of k labelled digits ("A7+B3+C9+D4" -> 3).

The labels (A, B, C, ...) name the terms so that a step can find its term by content (an induction-head
lookup of its label) rather than by counting positions, which tiny models learn far more slowly.

Every trace is in the R1 format `<think>\\n...\\n</think>\\n\\boxed{N}` and thinks in one of two modes:

- careful: one term per step ("3+C9=2": running sum 3 plus term C (9) is 2 mod 10). Each step is one label
  lookup and a sum of two digits, which the testbed model learns to do almost without error.
- concise: up to three terms per step ("0+A7+B3+C9=9"). Fewer tokens, but each step must find up to three
  labels and add four digits in one token (10^4 cases against careful's 10^2), which a 3-layer, 64-wide model
  does far less reliably, and a problem with more terms needs more such steps. So the concise mode errs
  where careful thinking does not, mostly on hard problems (many terms): the care, not a label, pays.

Both modes may also *overthink*: restate the problem first (a verbatim copy, "A7+B3+C9+D4") and redo the
steps in one verify pass ("verify" then the steps again). Neither changes what the steps compute, so they
cost tokens without raising accuracy: the waste TrRa removes in the paper. A trace never holds more than two
passes (measured on the 3-layer model: a third pass slipped, as a step then finds its term among four
copies of the label).

Three trace styles train the testbed's models: the slow-thinking reference (`long`: mostly careful, mostly
overthinking), the concise aligned model of InRa (`short`: mostly concise, rarely restating, no verify pass of
a concise trace) and the efficient aligned model of TrRa (`efficient`: a little more careful than the reference and overthinking about half as
often; the paper's TrRa teacher DeepScaleR is such a model). The modes and overthinking are chosen by a few
tokens (the first line and the token after the first term), where the models hold soft preferences that logit
fusion (paper Eq. 5) moves.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from flexrealign.core.keywords import refuse_unknown_keywords

THINK, END_THINK, VERIFY = "<think>", "</think>", "verify"
LABELS = "ABCDEFGH"  # term names; at most len(LABELS) terms
CAREFUL, CONCISE, GUESS, GARBLED = "careful", "concise", "guess", "garbled"  # modes read back from outputs
CHUNK = 3  # terms per concise step
_STEP = re.compile(r"(\d)((?:\+[A-H]\d)+)=(\d)")


@dataclass(frozen=True)
class TraceStyle:
    """How one model's training traces think, as probabilities per problem.

    Args:
        careful: share of careful traces (concise takes the rest).
        restate: P(restating the problem first).
        careful_verify: P(one verify pass) in careful traces.
        concise_verify: P(one verify pass) in concise traces.
    """

    careful: float
    restate: float
    careful_verify: float
    concise_verify: float

    def __post_init__(self) -> None:
        for name in ("careful", "restate", "careful_verify", "concise_verify"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"TraceStyle.{name} must be a probability in [0, 1], got {getattr(self, name)}"
                )


# The reference overthinks (restates 80%, verifies 90% careful / 80% concise traces) and is careful 70% of
# the time: it errs where it thinks concisely. The aligned model is concise 85% of the time: shorter and worse
# on hard problems, and restates the problem only 30% of the time, as a model tuned on short traces would: when it
# restated 80% as the reference does, restating was the same at every lam, no lam could shorten a thought below
# it, and a budget at half the reference's thinking still cut 54% of soft landings (90% hard; seed 0); at 30%,
# 19% (docs/thinking.md). The efficient model overthinks less often, not never, and is a little more careful (75%),
# so it is shorter and more accurate, as DeepScaleR is against R1-Distill. Why these numbers (measured on
# seeds 0-2, with TrRa's exact decision probabilities read from the models):
# - fusion multiplies the odds of overthinking by (odds_efficient / odds_reference) ** lam, so a moderate
#   ratio leaves some verify passes at lam = 2 for lam = 5 and TrRa-iter to remove. The lam = 2 student
#   drops restating entirely (the reverse KL of Eq. 6 is mode-seeking) but keeps some verify passes (15% of
#   its seed-0 samples at careful_verify 0.6); at 0.5 and TrRa lr 1e-3 it kept none, and lam = 5 was no
#   shorter (33.9 -> 34.8 tokens). careful_verify 0.55 balances that against lam = 2's 40% cut (42-43% in
#   seeds 0-2).
# - with careful 0.7, as the reference's, the models' learned careful shares differed by -1 to +7 points by
#   seed, and in seed 2 (the efficient model less careful) TrRa lam = 2 lost 2.2 points; at 0.75 the
#   efficient model is the more careful one in every seed, and lam > 1 gains accuracy rather than losing it.
LONG_STYLE = TraceStyle(careful=0.7, restate=0.8, careful_verify=0.9, concise_verify=0.8)
SHORT_STYLE = TraceStyle(careful=0.15, restate=0.3, careful_verify=0.9, concise_verify=0.0)
EFFICIENT_STYLE = TraceStyle(careful=0.75, restate=0.4, careful_verify=0.55, concise_verify=0.35)


@refuse_unknown_keywords
@dataclass(frozen=True)
class TaskConfig:
    """Difficulty (number of terms) and the three trace styles."""

    min_terms: int = 2
    max_terms: int = 6
    long: TraceStyle = LONG_STYLE
    short: TraceStyle = SHORT_STYLE
    efficient: TraceStyle = EFFICIENT_STYLE

    def __post_init__(self) -> None:
        if not 1 <= self.min_terms <= self.max_terms <= len(LABELS):
            raise ValueError(f"need 1 <= min_terms <= max_terms <= {len(LABELS)}, got {self}")


@dataclass(frozen=True)
class Problem:
    """One problem and one trace per style; `terms` are the digits, `answer` the last digit of their sum."""

    id: str
    terms: tuple[int, ...]
    answer: int
    question: str
    long: str
    short: str
    efficient: str
    meta: dict = field(default_factory=dict, compare=False)


def question_text(terms: tuple[int, ...]) -> str:
    return "+".join(f"{label}{t}" for label, t in zip(LABELS, terms, strict=False))


def parse_question(question: str) -> tuple[int, ...]:
    """The digits of a question "A7+B3+..." (inverse of `question_text`)."""
    return tuple(int(part[1:]) for part in question.split("+"))


def steps(terms: tuple[int, ...], chunk: int = 1) -> list[str]:
    """Running-sum lines "s+Lt(+Lt...)=r" of `chunk` terms each: running sum s plus the terms gives r mod 10."""
    lines, acc = [], 0
    for i in range(0, len(terms), chunk):
        part = list(zip(LABELS[i : i + chunk], terms[i : i + chunk], strict=False))
        new = (acc + sum(t for _, t in part)) % 10
        lines.append(f"{acc}" + "".join(f"+{label}{t}" for label, t in part) + f"={new}")
        acc = new
    return lines


def render(lines: list[str], answer: int) -> str:
    """The completion text: think block with `lines`, then the boxed answer."""
    body = "".join(f"{line}\n" for line in lines)
    return f"{THINK}\n{body}{END_THINK}\n\\boxed{{{answer}}}"


def thinking(terms: tuple[int, ...], *, careful: bool, restate: bool, verify: bool) -> list[str]:
    """(The restated problem,) the steps of the mode, then (a verify pass that redoes them)."""
    lines = steps(terms, 1 if careful else CHUNK)
    return [question_text(terms)] * restate + lines + [VERIFY, *lines] * verify


def sample_trace(rng: random.Random, style: TraceStyle, terms: tuple[int, ...]) -> tuple[str, list[str]]:
    """(mode, thinking lines) of one trace in `style`."""
    careful = rng.random() < style.careful
    restate = rng.random() < style.restate
    verify = rng.random() < (style.careful_verify if careful else style.concise_verify)
    return (CAREFUL if careful else CONCISE), thinking(terms, careful=careful, restate=restate, verify=verify)


def make_problem(rng: random.Random, cfg: TaskConfig, index: int, num_terms: int | None = None) -> Problem:
    """A random problem with its traces; `num_terms` fixes k (else uniform in the config's range)."""
    k = num_terms or rng.randint(cfg.min_terms, cfg.max_terms)
    if not 1 <= k <= len(LABELS):
        raise ValueError(f"num_terms must be between 1 and {len(LABELS)}, got {k}")
    terms = tuple(rng.randrange(10) for _ in range(k))
    answer = sum(terms) % 10
    traces, meta = {}, {"num_terms": k}
    for name in ("long", "short", "efficient"):
        mode, lines = sample_trace(rng, getattr(cfg, name), terms)
        traces[name], meta[f"{name}_mode"] = render(lines, answer), mode
    return Problem(f"p{index}", terms, answer, question_text(terms), **traces, meta=meta)


def make_problems(n: int, seed: int, cfg: TaskConfig | None = None) -> list[Problem]:
    """`n` problems from a seeded generator (different seeds give disjoint-ish train and test sets)."""
    rng, cfg = random.Random(seed), cfg or TaskConfig()
    return [make_problem(rng, cfg, i) for i in range(n)]


def thinking_lines(question: str, completion: str) -> list[str] | None:
    """The step and verify lines of a completion's think block (a restated problem dropped), or None when the
    completion has no well-formed think block."""
    head, sep, _ = completion.partition(f"{END_THINK}\n")
    if not sep or not head.startswith(f"{THINK}\n"):
        return None
    lines = [line for line in head.removeprefix(f"{THINK}\n").split("\n") if line]
    return lines[1:] if lines and lines[0] == question else lines


def trace_mode(question: str, completion: str) -> str:
    """How a completion thought, read from its first pass: `careful` (one term per step), `concise` (a step of
    several terms), `guess` (an empty think block) or `garbled` (no think block, or a line that is no step)."""
    lines = thinking_lines(question, completion)
    if lines is None:
        return GARBLED
    first = lines[: lines.index(VERIFY)] if VERIFY in lines else lines
    if not first:
        return GUESS
    parsed = [_STEP.fullmatch(line) for line in first]
    if not all(parsed):
        return GARBLED
    return CAREFUL if all(m.group(2).count("+") == 1 for m in parsed) else CONCISE


def check_trace(question: str, completion: str) -> bool:
    """True when every step line of `completion` (of any number of terms) is correct arithmetic on the
    question's terms, in order, each pass covering all terms, and the boxed answer is the last digit of the
    sum. Used by tests and to audit model outputs."""
    terms, lines = parse_question(question), thinking_lines(question, completion)
    if lines is None or not completion.endswith(f"\\boxed{{{sum(terms) % 10}}}"):
        return False
    passes: list[list[str]] = [[]]
    for line in lines:
        passes.append([]) if line == VERIFY else passes[-1].append(line)
    return all(_pass_ok(p, terms) for p in passes) if lines else True


def _pass_ok(lines: list[str], terms: tuple[int, ...]) -> bool:
    acc, i = 0, 0
    for line in lines:
        m = _STEP.fullmatch(line)
        if m is None or int(m.group(1)) != acc:
            return False
        for part in m.group(2).split("+")[1:]:
            if i >= len(terms) or part != f"{LABELS[i]}{terms[i]}":
                return False
            acc, i = (acc + terms[i]) % 10, i + 1
        if int(m.group(3)) != acc:
            return False
    return i == len(terms)


def write_test_set(path: Path, problems: list[Problem]) -> None:
    """`problems` as a benchmark file (JSONL: id, question, answer, num_terms) that the harness loads."""
    rows = [{"id": p.id, "question": p.question, "answer": str(p.answer), "num_terms": len(p.terms)}
            for p in problems]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
