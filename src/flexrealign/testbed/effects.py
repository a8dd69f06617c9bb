"""The paper's effects, checked on the testbed's rows: each one "reproduced" or "NOT reproduced", with its numbers.

Token claims compare mean tokens. Accuracy claims compare rows sample by sample (`paired.paired_diff`: every row
samples the same (problem, sample) seeds) and hold only when the paired 95% interval excludes zero in the
paper's direction; a claim of *no loss* holds when the mean loss is at most `TOLERANCE` points and the
interval does not show a loss (its upper end is at or above zero). Each check is stated in the effect's own
words, so a reader can redo it from `generations.jsonl`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from flexrealign.eval.results import Row
from flexrealign.testbed.paired import HardStats, Outcomes, fmt_pct, paired_diff

TRRA_LAMS = (0.5, 2.0, 5.0)  # the paper's TrRa sweep (Table 1)
TOLERANCE = 1.0  # Pass@1 points TrRa lam = 2 may lose against the reference
TRRA_CUT = 0.4  # TrRa lam = 2 thinks at least 40% less than the reference (the paper: 54.63%)
ALIGNED_CUT, ALIGNED_HARD_LOSS = 0.25, 3.0  # the aligned model thinks >= 25% less, >= 3 points worse on hard
THINK_LONGER_GAIN = 2.0  # InRa lam = -0.5 gains at least this many points on hard problems over lam = 0
REFERENCE_BAND = (70.0, 92.0)


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


def _missing(key: str, claim: str) -> Effect:
    return Effect(key, claim, None, "missing rows")


def trra_effects(rows: dict[str, Row], samples: Outcomes) -> list[Effect]:
    """TrRa lam = 2 thinks >= 40% less than the reference at no loss; tokens fall 0.5 -> 2 -> 5; TrRa-iter
    thinks shorter still than the lam = 2 student it realigns."""
    ref, two = rows.get("reference"), _trra(rows, 2.0)
    out = [_trra_cut(ref, two), _trra_kept(ref, two, samples)]
    have = [r for r in (_trra(rows, x) for x in TRRA_LAMS) if r is not None]
    claim = "TrRa: mean tokens fall as lam rises (0.5 -> 2 -> 5)"
    out.append(Effect("trra_tokens_fall", claim, all(a.mean_tokens > b.mean_tokens for a, b in pairwise(have)),
                      "tokens " + " -> ".join(f"{r.mean_tokens:.1f}" for r in have))
               if len(have) == len(TRRA_LAMS) else _missing("trra_tokens_fall", claim))  # fmt: skip
    it, claim = rows.get("trra-iter"), "TrRa-iter: fewer tokens still than TrRa lam=2"
    out.append(_missing("trra_iter_shorter", claim) if it is None or two is None else Effect(
        "trra_iter_shorter", claim, it.mean_tokens < two.mean_tokens,
        f"{it.mean_tokens:.1f} vs {two.mean_tokens:.1f} tokens, Pass@1 {it.pass_at_1:.1f}% vs {two.pass_at_1:.1f}%",
    ))  # fmt: skip
    return out


def _trra_cut(ref: Row | None, two: Row | None) -> Effect:
    claim = f"TrRa lam=2: at least {100 * TRRA_CUT:.0f}% fewer tokens than the reference"
    if ref is None or two is None:
        return _missing("trra_shorter", claim)
    cut = 1 - two.mean_tokens / ref.mean_tokens
    return Effect("trra_shorter", claim, cut >= TRRA_CUT,
                  f"{100 * cut:.1f}% fewer ({two.mean_tokens:.1f} vs {ref.mean_tokens:.1f} tokens)")  # fmt: skip


def _trra_kept(ref: Row | None, two: Row | None, samples: Outcomes) -> Effect:
    claim = f"TrRa lam=2: Pass@1 no more than {TOLERANCE:g} point below the reference (paired)"
    d = (
        None
        if ref is None or two is None
        else paired_diff(samples.get(two.name, {}), samples.get(ref.name, {}))
    )
    if d is None:
        return _missing("trra_accuracy_kept", claim)
    return Effect("trra_accuracy_kept", claim, d.mean >= -TOLERANCE and d.hi >= 0,
                  f"{two.pass_at_1:.1f}% vs {ref.pass_at_1:.1f}%, difference {d.text()}")  # fmt: skip


def inra_effects(
    rows: dict[str, Row], samples: Outcomes, hard_terms: int, model: str = "inra"
) -> list[Effect]:
    """InRa tokens fall strictly as lam rises; lam = -0.5 thinks longer than lam = 0 and is more accurate on
    hard problems by at least `THINK_LONGER_GAIN` points, paired interval above zero."""
    at = {r.lam: r for r in rows.values() if r.model == model and r.lam is not None}
    lams = sorted(at)
    claim = "InRa: mean tokens fall strictly as lam rises"
    out = [Effect("inra_tokens_fall", claim, all(at[a].mean_tokens > at[b].mean_tokens for a, b in pairwise(lams)),
                  ", ".join(f"lam={_lam(x)}: {at[x].mean_tokens:.1f}" for x in lams))
           if len(lams) > 2 else _missing("inra_tokens_fall", claim)]  # fmt: skip
    neg, zero = at.get(-0.5), at.get(0.0)
    claim = (f"InRa: lam=-0.5 thinks longer than lam=0 and is at least {THINK_LONGER_GAIN:g} points more "
             f"accurate on hard problems (paired)")  # fmt: skip
    d = (
        None
        if neg is None or zero is None
        else paired_diff(samples[neg.name], samples[zero.name], hard_terms)
    )
    if d is None:
        return [*out, _missing("inra_think_longer", claim)]
    return [*out, Effect(
        "inra_think_longer", claim,
        neg.mean_tokens > zero.mean_tokens and d.mean >= THINK_LONGER_GAIN and d.lo > 0,
        f"{neg.mean_tokens:.1f} vs {zero.mean_tokens:.1f} tokens; on hard problems {d.text()}",
    )]  # fmt: skip


def kaiming_effect(rows: dict[str, Row], samples: Outcomes, lam: float = 1.0) -> Effect:
    """Paper Table 4: an adapter initialised by kaiming (not as the identity) does worse, here on its own path."""
    ident, kai = rows.get(f"inra@{_lam(lam)}"), rows.get(f"inra-kaiming@{_lam(lam)}")
    claim = (
        f"InRa: a kaiming-initialised adapter scores lower than the identity one (lam={_lam(lam)}, Table 4)"
    )
    if ident is None or kai is None:
        return Effect("kaiming_worse", claim, None, "not run (kaiming_ablation off)")
    d = paired_diff(samples[kai.name], samples[ident.name])
    return Effect(
        "kaiming_worse",
        claim,
        d is not None and d.hi < 0,
        f"Pass@1 {kai.pass_at_1:.1f}% vs {ident.pass_at_1:.1f}%, difference {d.text() if d else '-'}",
    )


def paper_effects(rows: Sequence[Row], samples: Outcomes, hard_terms: int) -> list[Effect]:
    """Every effect the demo checks (item order: TrRa, TrRa-iter, InRa, the adapter's initialisation)."""
    by_name = {r.name: r for r in rows}
    if "reference" not in by_name:
        raise ValueError("no 'reference' row to compare against")
    return [*trra_effects(by_name, samples), *inra_effects(by_name, samples, hard_terms),
            kaiming_effect(by_name, samples)]  # fmt: skip


# ---------------------------------------------------------------------------------------- the task itself
def task_checks(
    rows: Sequence[Row], samples: Outcomes, hard: dict[str, HardStats], hard_terms: int
) -> list[Effect]:
    """What the testbed must offer for the effects to be able to appear: a reference below the ceiling whose
    careful thinking pays on hard problems, and an aligned model that thinks less and is worse on them."""
    by_name = {r.name: r for r in rows}
    ref, al = by_name.get("reference"), by_name.get("aligned")
    if ref is None or al is None:
        return []
    lo, hi = REFERENCE_BAND
    out = [Effect("reference_band", f"Task: the reference scores {lo:g}-{hi:g}% Pass@1", lo <= ref.pass_at_1 <= hi,
                  f"{ref.pass_at_1:.1f}%")]  # fmt: skip
    rh = hard.get("reference")
    if rh is not None:
        pays = (
            rh.careful_pass is not None and rh.concise_pass is not None and rh.careful_pass > rh.concise_pass
        )
        out.append(Effect(
            "careful_pays", "Task: on hard problems the reference's careful traces are more accurate than its "
            "concise ones", pays, f"careful {fmt_pct(rh.careful_pass, '%')} vs concise {fmt_pct(rh.concise_pass, '%')} "
            f"({rh.concise_samples} of {rh.samples} samples concise)",
        ))  # fmt: skip
    cut = 1 - al.mean_tokens / ref.mean_tokens
    out.append(
        Effect(
            "aligned_thinks_less",
            f"Task: the aligned model thinks at least {100 * ALIGNED_CUT:.0f}% less",
            cut >= ALIGNED_CUT,
            f"{al.mean_tokens:.1f} vs {ref.mean_tokens:.1f} tokens ({100 * cut:.0f}% less)",
        )
    )
    d = paired_diff(samples.get("aligned", {}), samples.get("reference", {}), hard_terms)
    out.append(Effect(
        "aligned_worse_on_hard", f"Task: on hard problems the aligned model is at least {ALIGNED_HARD_LOSS:g} points "
        "less accurate (paired)", d is not None and d.mean <= -ALIGNED_HARD_LOSS and d.hi < 0,
        d.text() if d else "missing rows",
    ))  # fmt: skip
    return out
