"""The demo's verdicts on the paper's effects: plain comparisons of the rows, and "not measured" when rows lack."""

from __future__ import annotations

from flexrealign.eval.results import Row
from flexrealign.testbed.effects import hard_pass_at_1, paper_effects, task_checks


def row(model: str, acc: float, tokens: float, lam: float | None = None) -> Row:
    return Row(model, model, lam, 100, 200, acc, tokens, 0.0)


def paper_rows(**changes: tuple[float, float]) -> list[Row]:
    plain = {"reference": (85, 70), "aligned": (84, 40), "trra-lam0.5": (84, 55), "trra-lam2": (90, 35),
             "trra-lam5": (93, 30), "trra-iter": (92, 32)}  # fmt: skip
    inra = {-0.5: (88, 80), 0.0: (85, 70), 0.5: (83, 55), 1.0: (84, 40), 1.5: (88, 33)}
    plain.update({k: v for k, v in changes.items() if not k.startswith("inra")})
    rows = [row(name, *v) for name, v in plain.items()]
    return rows + [row("inra", *v, lam=lam) for lam, v in inra.items()]


def verdicts(rows: list[Row]) -> dict[str, bool | None]:
    return {e.key: e.holds for e in paper_effects(rows)}


def test_all_effects_reproduced_and_kaiming_not_measured() -> None:
    v = verdicts(paper_rows())
    assert v.pop("kaiming_worse") is None
    assert all(v.values()), v


def test_each_effect_can_fail() -> None:
    assert verdicts(paper_rows(**{"trra-lam5": (93, 36)}))["trra_tokens_fall"] is False
    assert verdicts(paper_rows(**{"trra-lam0.5": (82.9, 55)}))["trra_accuracy_kept"] is False
    assert (
        verdicts(paper_rows(**{"trra-lam0.5": (83.0, 55)}))["trra_accuracy_kept"] is True
    )  # 2 points allowed
    assert verdicts(paper_rows(**{"trra-iter": (92, 35)}))["trra_iter_shorter"] is False
    rows = paper_rows()
    rows[-5] = row("inra", 85, 80, lam=-0.5)  # thinks longer but scores the same as lam = 0
    v = verdicts(rows)
    assert v["inra_think_longer"] is False and v["inra_tokens_fall"] is True
    rows[-2] = row("inra", 84, 39, lam=1.0)
    rows[-1] = row("inra", 84, 39, lam=1.5)  # not strictly falling
    assert verdicts(rows)["inra_tokens_fall"] is False


def test_kaiming_ablation_and_task_checks() -> None:
    rows = paper_rows() + [row("inra-kaiming", 60, 50, lam=1.0)]
    assert verdicts(rows)["kaiming_worse"] is True
    recs = [
        {"model": "reference", "lam": None, "problem_id": "p0", "correct": True, "text": "<think>\n0+A1=1\n"},
        {
            "model": "reference",
            "lam": None,
            "problem_id": "p1",
            "correct": False,
            "text": "<think>\n</think>\n",
        },
        {
            "model": "aligned",
            "lam": None,
            "problem_id": "p1",
            "correct": False,
            "text": "<think>\n</think>\n",
        },
        {"model": "inra", "lam": 1.0, "problem_id": "p2", "correct": True, "text": "<think>\n</think>\n"},
    ]
    hard = hard_pass_at_1(recs, {"p0": 6, "p1": 5, "p2": 2}, min_terms=5)
    assert hard == {"reference": (50.0, 2, 50.0), "aligned": (0.0, 1, 100.0)}
    checks = {e.key: e.holds for e in task_checks(rows, hard)}
    assert checks == {
        "reference_below_ceiling": True,
        "aligned_thinks_less": True,
        "aligned_not_better_on_hard": True,
    }
