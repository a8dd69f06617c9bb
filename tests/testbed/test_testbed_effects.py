"""The demo's verdicts on the paper's effects: token comparisons of the rows and paired accuracy comparisons of
their samples, "not measured" where rows lack; and the paired statistics against a direct formula."""

from __future__ import annotations

import math

import pytest

from flexrealign.eval.results import Row
from flexrealign.testbed.effects import paper_effects, task_checks
from flexrealign.testbed.paired import Outcome, hard_stats, outcomes, paired_diff

N = 200  # samples per row; even ids are hard (6 terms), odd ones easy (2 terms)


def sample_row(name: str, right: int, tokens: float, hard_right: int | None = None) -> dict:
    """Outcomes of N samples: the first `right` correct (of the hard ones, `hard_right` if given)."""
    out = {}
    for i in range(N):
        terms = 6 if i % 2 == 0 else 2
        ok = i < right if hard_right is None or terms < 6 else i // 2 < hard_right
        out[(f"p{i}", 0)] = Outcome(ok, round(tokens), "careful", terms)
    return out


def build(specs: dict[str, tuple]) -> tuple[list[Row], dict]:
    """Rows named "model" or "model@lam" from (right, tokens[, hard_right]); Pass@1 and tokens from the samples."""
    rows, samples = [], {}
    for name, spec in specs.items():
        outs = sample_row(name, *spec)
        model, _, lam = name.partition("@")
        acc = 100.0 * sum(o.correct for o in outs.values()) / N
        rows.append(Row(model, model, float(lam) if lam else None, N, N, acc, spec[1], 0.0))
        samples[name] = outs
    return rows, samples


BASE = {
    "reference": (160, 70), "aligned": (130, 40, 60), "trra-lam0.5": (160, 55), "trra-lam2": (160, 35),
    "trra-lam5": (160, 30), "trra-iter": (160, 28), "inra@-0.5": (160, 80, 90), "inra@0": (160, 70, 70),
    "inra@0.5": (160, 55), "inra@1": (150, 40), "inra@1.5": (150, 33),
}  # fmt: skip


def verdicts(**changes: tuple) -> dict[str, bool | None]:
    rows, samples = build({**BASE, **changes})
    return {e.key: e.holds for e in [*task_checks(rows, samples, hard_stats(samples, 5), 5),
                                     *paper_effects(rows, samples, 5)]}  # fmt: skip


def test_paired_diff_matches_the_formula() -> None:
    a = {("p0", 0): Outcome(True, 1, "", 6), ("p1", 0): Outcome(True, 1, "", 6), ("p2", 0): Outcome(False, 1, "", 6),
         ("p3", 0): Outcome(True, 1, "", 2), ("p4", 0): Outcome(True, 1, "", 6)}  # fmt: skip
    b = {k: Outcome(k[0] in ("p1", "p3"), 1, "", o.terms) for k, o in a.items()}
    d = paired_diff(a, b, min_terms=5)  # pairs p0, p1, p2, p4: differences 100, 0, 0, 100
    sd = math.sqrt(((100 - 50) ** 2 * 2 + 50**2 * 2) / 3)
    assert (d.mean, d.n, d.problems) == (50.0, 4, 4)
    assert d.hi - d.mean == pytest.approx(1.959964 * sd / 2)
    assert paired_diff(a, {}) is None


def test_paired_interval_is_clustered_by_problem() -> None:
    """Three samples of each problem: with equal samples per problem the interval is that of the problems'
    mean differences (one draw per problem), wider than treating the 3 x 4 samples as independent."""
    right_a = {"p0": (1, 1, 1), "p1": (1, 1, 0), "p2": (0, 0, 0), "p3": (1, 1, 1)}
    right_b = {"p0": (0, 0, 0), "p1": (1, 0, 0), "p2": (0, 0, 0), "p3": (1, 1, 1)}
    a, b = ({(pid, s): Outcome(bool(r[s]), 1, "", 6) for pid, r in rights.items() for s in range(3)}
            for rights in (right_a, right_b))  # fmt: skip
    per_problem = [100 * (sum(right_a[p]) - sum(right_b[p])) / 3 for p in right_a]  # 100, 33.3, 0, 0
    mean = sum(per_problem) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in per_problem) / 3 / 4)
    d = paired_diff(a, b)
    assert (d.n, d.problems) == (12, 4)
    assert d.mean == pytest.approx(mean)
    assert (d.lo, d.hi) == pytest.approx((mean - 1.959964 * se, mean + 1.959964 * se))
    one_problem = {("p0", 0): a[("p0", 0)], ("p0", 1): a[("p0", 1)]}
    assert paired_diff(one_problem, b) is None  # no interval from one problem


def test_all_effects_reproduced_and_kaiming_not_measured() -> None:
    v = verdicts()
    assert v.pop("kaiming_worse") is None
    assert v.pop("careful_pays") is False  # every synthetic sample is careful: no concise ones to compare
    assert all(v.values()), v


def test_each_effect_can_fail() -> None:
    assert verdicts(**{"trra-lam5": (160, 36)})["trra_tokens_fall"] is False
    assert verdicts(**{"trra-lam2": (160, 43)})["trra_shorter"] is False  # 38.6% fewer, 40% needed
    assert verdicts(**{"trra-lam2": (150, 35)})["trra_accuracy_kept"] is False  # 5 points lost
    assert verdicts(**{"trra-lam2": (158, 35)})["trra_accuracy_kept"] is True  # 1 point: allowed
    assert verdicts(**{"trra-iter": (160, 35)})["trra_iter_shorter"] is False
    assert verdicts(**{"inra@-0.5": (160, 80, 70)})["inra_think_longer"] is False  # longer, not more accurate
    assert verdicts(**{"inra@-0.5": (160, 80, 72)})["inra_think_longer"] is False  # +2 points: interval has 0
    assert verdicts(**{"inra@1.5": (150, 40)})["inra_tokens_fall"] is False  # not strictly falling
    assert verdicts(**{"reference": (190, 70)})["reference_band"] is False
    assert verdicts(**{"aligned": (130, 60, 60)})["aligned_thinks_less"] is False
    assert verdicts(**{"aligned": (130, 40, 78)})["aligned_worse_on_hard"] is False  # 2 points


def test_kaiming_ablation() -> None:
    assert verdicts(**{"inra-kaiming@1": (100, 50)})["kaiming_worse"] is True
    assert verdicts(**{"inra-kaiming@1": (149, 50)})["kaiming_worse"] is False  # within noise


def test_outcomes_and_hard_stats_read_generations() -> None:
    questions = {"p0": "A1+B2+C3+D4+E5", "p1": "A1+B2"}
    recs = [
        {"model": "reference", "lam": None, "problem_id": "p0", "sample": 0, "correct": True, "tokens": 30,
         "text": "<think>\n0+A1=1\n1+B2=3\n3+C3=6\n6+D4=0\n0+E5=5\n</think>\n\\boxed{5}"},
        {"model": "reference", "lam": None, "problem_id": "p0", "sample": 1, "correct": False, "tokens": 12,
         "text": "<think>\n0+A1+B2+C3=6\n6+D4+E5=4\n</think>\n\\boxed{4}"},
        {"model": "reference", "lam": None, "problem_id": "p1", "sample": 0, "correct": True, "tokens": 9,
         "text": "<think>\n0+A1+B2=3\n</think>\n\\boxed{3}"},
        {"model": "inra", "lam": -0.5, "problem_id": "p0", "sample": 0, "correct": True, "tokens": 30,
         "text": "<think>\n</think>\n\\boxed{5}"},
    ]  # fmt: skip
    rows = outcomes(recs, questions)
    assert set(rows) == {"reference", "inra@-0.5"}
    assert rows["reference"][("p0", 1)] == Outcome(False, 12, "concise", 5)
    stats = hard_stats(rows, 5)
    ref = stats["reference"]
    assert (ref.pass_at_1, ref.samples, ref.careful_share, ref.careful_pass, ref.concise_pass) == (
        50,
        2,
        50,
        100,
        0,
    )
    assert stats["inra@-0.5"].careful_pass is None and stats["inra@-0.5"].careful_share == 0
