"""The paper's effects, checked on the testbed's table: each one "reproduced" or "not reproduced", with its numbers.

Every check is a plain comparison of the measured rows, stated in the effect's own words, so a reader can redo it
from `results.csv`; differences in Pass@1 are shown with two standard errors (`report.noise`) for judging them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from flexrealign.eval.results import Row
from flexrealign.testbed.report import noise

TRRA_LAMS = (0.5, 2.0, 5.0)  # the paper's TrRa sweep (Table 1)
TOLERANCE = 2.0  # Pass@1 points a TrRa student may lose against the reference up to lam = 2


@dataclass(frozen=True)
class Effect:
    """One of the paper's claims: whether the rows reproduce it, and the numbers behind the verdict."""

    key: str
    claim: str
    holds: bool | None  # None: the rows needed are missing
    numbers: str

    def line(self) -> str:
        verdict = {True: "reproduced", False: "NOT reproduced", None: "not measured"}[self.holds]
        return f"{self.claim}: **{verdict}** ({self.numbers})"


def _lam(x: float) -> str:
    return f"{x:g}"


def _trra(rows: dict[str, Row], lam: float) -> Row | None:
    return rows.get(f"trra-lam{_lam(lam)}")


def trra_effects(rows: dict[str, Row], ref: Row) -> list[Effect]:
    """TrRa tokens fall with lam (0.5 -> 2 -> 5); Pass@1 stays within 2 points of the reference up to lam = 2;
    TrRa-iter thinks shorter still than the lam = 2 student it realigns."""
    students = [_trra(rows, x) for x in TRRA_LAMS]
    have = [r for r in students if r is not None]
    tokens = " -> ".join(f"{r.mean_tokens:.1f}" for r in have)
    falls = len(have) == len(TRRA_LAMS) and all(a.mean_tokens > b.mean_tokens for a, b in pairwise(have))
    out = [Effect("trra_tokens_fall", "TrRa: mean tokens fall as lam rises (0.5 -> 2 -> 5)",
                  falls if len(have) == len(TRRA_LAMS) else None, f"tokens {tokens}")]  # fmt: skip
    kept = [r for r in students[:2] if r is not None]
    worst = min(kept, key=lambda r: r.pass_at_1, default=None)
    out.append(Effect(
        "trra_accuracy_kept", f"TrRa: Pass@1 no more than {TOLERANCE:g} points below the reference up to lam=2",
        None if len(kept) < 2 else all(r.pass_at_1 >= ref.pass_at_1 - TOLERANCE for r in kept),
        ", ".join(f"{r.model} {r.pass_at_1:.1f}%" for r in kept) + f" vs reference {ref.pass_at_1:.1f}%"
        + (f" (noise ±{noise(worst):.1f})" if worst else ""),
    ))  # fmt: skip
    it, lam2 = rows.get("trra-iter"), _trra(rows, 2.0)
    out.append(Effect(
        "trra_iter_shorter", "TrRa-iter: fewer tokens still than TrRa lam=2",
        None if it is None or lam2 is None else it.mean_tokens < lam2.mean_tokens,
        "missing rows" if it is None or lam2 is None else
        f"{it.mean_tokens:.1f} vs {lam2.mean_tokens:.1f} tokens, Pass@1 {it.pass_at_1:.1f}% vs {lam2.pass_at_1:.1f}%",
    ))  # fmt: skip
    return out


def inra_effects(rows: dict[str, Row], model: str = "inra") -> list[Effect]:
    """InRa tokens fall strictly as lam rises; lam = -0.5 thinks longer than lam = 0 and scores higher."""
    at = {r.lam: r for r in rows.values() if r.model == model and r.lam is not None}
    lams = sorted(at)
    strict = len(lams) > 2 and all(at[a].mean_tokens > at[b].mean_tokens for a, b in pairwise(lams))
    out = [Effect(
        "inra_tokens_fall", "InRa: mean tokens fall strictly as lam rises", strict if len(lams) > 2 else None,
        ", ".join(f"lam={_lam(x)}: {at[x].mean_tokens:.1f}" for x in lams),
    )]  # fmt: skip
    neg, zero = at.get(-0.5), at.get(0.0)
    if neg is None or zero is None:
        return [*out, Effect("inra_think_longer", "InRa lam=-0.5 thinks longer and scores higher than lam=0",
                             None, "missing rows")]  # fmt: skip
    return [*out, Effect(
        "inra_think_longer", "InRa: lam=-0.5 thinks longer and scores higher than lam=0",
        neg.mean_tokens > zero.mean_tokens and neg.pass_at_1 > zero.pass_at_1,
        f"{neg.mean_tokens:.1f} vs {zero.mean_tokens:.1f} tokens, Pass@1 {neg.pass_at_1:.1f}% vs "
        f"{zero.pass_at_1:.1f}% (noise ±{max(noise(neg), noise(zero)):.1f})",
    )]  # fmt: skip


def kaiming_effect(rows: dict[str, Row], lam: float = 1.0) -> Effect:
    """Paper Table 4: an adapter initialised by kaiming (not as the identity) does worse, here on its own path."""
    ident, kai = rows.get(f"inra@{_lam(lam)}"), rows.get(f"inra-kaiming@{_lam(lam)}")
    claim = (
        f"InRa: a kaiming-initialised adapter scores lower than the identity one (lam={_lam(lam)}, Table 4)"
    )
    if ident is None or kai is None:
        return Effect("kaiming_worse", claim, None, "not run (kaiming_ablation off)")
    return Effect("kaiming_worse", claim, kai.pass_at_1 < ident.pass_at_1,
                  f"Pass@1 {kai.pass_at_1:.1f}% vs {ident.pass_at_1:.1f}% (noise ±{noise(kai):.1f})")  # fmt: skip


def paper_effects(rows: Sequence[Row], reference: str = "reference") -> list[Effect]:
    """Every effect the demo checks (item order: TrRa, TrRa-iter, InRa, the adapter's initialisation)."""
    by_name = {r.name: r for r in rows}
    ref = by_name.get(reference)
    if ref is None:
        raise ValueError(f"no {reference!r} row to compare against")
    return [*trra_effects(by_name, ref), *inra_effects(by_name), kaiming_effect(by_name)]


# ---------------------------------------------------------------------------------------- the task itself
def hard_pass_at_1(records: Sequence[dict], terms: dict[str, int], min_terms: int) -> dict[str, tuple]:
    """Per row name ("model" or "model@lam"): (Pass@1 %, samples, share of guesses %) on problems with at least
    `min_terms` terms. A guess is a completion whose think block is empty."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if terms.get(str(r["problem_id"]), 0) >= min_terms:
            name = r["model"] if r["lam"] is None else f"{r['model']}@{_lam(float(r['lam']))}"
            groups.setdefault(name, []).append(r)
    return {
        name: (100.0 * sum(bool(r["correct"]) for r in g) / len(g), len(g),
               100.0 * sum(r["text"].startswith("<think>\n</think>") for r in g) / len(g))
        for name, g in groups.items()
    }  # fmt: skip


def task_checks(
    rows: Sequence[Row], hard: dict[str, tuple], band: tuple[float, float] = (75.0, 95.0)
) -> list[Effect]:
    """What the testbed must offer for the effects to be able to appear: a reference below the ceiling, and an
    aligned model that thinks less without being better on hard problems."""
    by_name = {r.name: r for r in rows}
    ref, al = by_name.get("reference"), by_name.get("aligned")
    if ref is None or al is None:
        return []
    out = [Effect("reference_below_ceiling", f"Task: the reference scores {band[0]:g}-{band[1]:g}% Pass@1",
                  band[0] <= ref.pass_at_1 <= band[1], f"{ref.pass_at_1:.1f}%")]  # fmt: skip
    out.append(
        Effect(
            "aligned_thinks_less",
            "Task: the aligned model thinks less than the reference",
            al.mean_tokens < ref.mean_tokens,
            f"{al.mean_tokens:.1f} vs {ref.mean_tokens:.1f} tokens",
        )
    )
    if "reference" in hard and "aligned" in hard:
        (ra, n, rg), (aa, _, ag) = hard["reference"], hard["aligned"]
        out.append(Effect(
            "aligned_not_better_on_hard", "Task: on hard problems the aligned model is not better than the reference",
            aa <= ra + 2 * noise_of(ra, n), f"Pass@1 {aa:.1f}% vs {ra:.1f}% on {n} hard samples; guesses {ag:.0f}% "
            f"vs {rg:.0f}%",
        ))  # fmt: skip
    return out


def noise_of(pass_at_1: float, samples: int) -> float:
    """One standard error of a Pass@1 (points); `report.noise` is two of them."""
    p = pass_at_1 / 100.0
    return 100.0 * (max(p * (1 - p), 0.01) / max(samples, 1)) ** 0.5
