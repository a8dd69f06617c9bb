"""Per-sample outcomes of the testbed's rows, read from `generations.jsonl`, and paired differences between rows.

Every row samples the same (problem, sample) seeds (`harness.sample_seed` does not depend on the model or lam),
so two rows are compared sample by sample: the difference in correctness of each pair, its mean and a normal
95% interval. Pairing removes the problem-to-problem variance that unpaired standard errors carry. The samples
of one problem are not independent (an easy problem is right in every sample), so the interval's standard error
is clustered by problem: it is computed from the problems' summed differences, as if each problem were one draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from flexrealign.testbed.task import CAREFUL, CONCISE, trace_mode

Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Outcome:
    """One generation: whether it is right, its length, how it thought and how many terms its problem has."""

    correct: bool
    tokens: int
    mode: str
    terms: int


Outcomes = dict[str, dict[tuple[str, int], Outcome]]  # row name -> (problem id, sample) -> outcome


def row_name(record: dict) -> str:
    """ "model" for plain models, "model@lam" for fused ones (as `eval.results.Row.name`)."""
    lam = record["lam"]
    return record["model"] if lam is None else f"{record['model']}@{float(lam):g}"


def outcomes(records: Iterable[dict], problems: dict[str, str]) -> Outcomes:
    """Group generation records by row. `problems` maps problem id -> question (the test set)."""
    out: Outcomes = {}
    for r in records:
        pid = str(r["problem_id"])
        question = problems[pid]
        out.setdefault(row_name(r), {})[(pid, int(r["sample"]))] = Outcome(
            bool(r["correct"]), int(r["tokens"]), trace_mode(question, r["text"]), question.count("+") + 1
        )
    return out


@dataclass(frozen=True)
class Paired:
    """Mean paired difference a - b in Pass@1 points, its 95% interval [lo, hi], the number of pairs and of
    problems they come from."""

    mean: float
    lo: float
    hi: float
    n: int
    problems: int

    def text(self) -> str:
        return (f"{self.mean:+.1f} points, 95% CI [{self.lo:+.1f}, {self.hi:+.1f}], {self.n} pairs "
                f"on {self.problems} problems")  # fmt: skip


def paired_diff(a: dict, b: dict, min_terms: int = 0) -> Paired | None:
    """Paired difference in correctness of two rows' outcomes over their common samples with at least
    `min_terms` terms, with a problem-clustered 95% interval; None when they share fewer than two problems.

    With d_i the difference of pair i (100, 0 or -100), N pairs and S_p the sum of d_i over problem p's P pairs:
    mean = sum(d_i) / N and SE^2 = P / (P - 1) * sum_p (S_p - n_p * mean)^2 / N^2 (the cluster-robust
    variance of a mean; with one sample per problem it is the usual stdev^2 / N).
    """
    keys = sorted(k for k in a.keys() & b.keys() if a[k].terms >= min_terms)
    sums: dict[str, list[float]] = {}  # problem id -> [sum of d, pairs]
    for k in keys:
        acc = sums.setdefault(k[0], [0.0, 0])
        acc[0] += 100.0 * (a[k].correct - b[k].correct)
        acc[1] += 1
    n, p = len(keys), len(sums)
    if p < 2:
        return None
    mean = sum(s for s, _ in sums.values()) / n
    var = p / (p - 1) * sum((s - m * mean) ** 2 for s, m in sums.values()) / n**2
    half = Z95 * math.sqrt(var)
    return Paired(mean, mean - half, mean + half, n, p)


@dataclass(frozen=True)
class HardStats:
    """A row on hard problems: Pass@1, samples, share of careful thinking, and Pass@1 within each mode
    (None where the row has no sample in that mode)."""

    pass_at_1: float
    samples: int
    careful_share: float
    careful_pass: float | None
    concise_pass: float | None
    concise_samples: int


def fmt_pct(x: float | None, unit: str = "") -> str:
    """A Pass@1 or share in points with one decimal, or "-" where a row has no sample to give one."""
    return "-" if x is None else f"{x:.1f}{unit}"


def _pct(xs: list[bool]) -> float | None:
    return 100.0 * sum(xs) / len(xs) if xs else None


def hard_stats(rows: Outcomes, min_terms: int) -> dict[str, HardStats]:
    """`HardStats` of every row on problems with at least `min_terms` terms."""
    stats = {}
    for name, by_key in rows.items():
        hard = [o for o in by_key.values() if o.terms >= min_terms]
        if not hard:
            continue
        careful = [o.correct for o in hard if o.mode == CAREFUL]
        concise = [o.correct for o in hard if o.mode == CONCISE]
        stats[name] = HardStats(
            _pct([o.correct for o in hard]), len(hard), 100.0 * len(careful) / len(hard), _pct(careful),
            _pct(concise), len(concise),
        )  # fmt: skip
    return stats
