"""The landing table of `flexrealign demo --real`: a thinking budget ended softly or by the hard cut alone.

SmolLM2 has no think markers, so its whole answer counts as the thinking, and MARKER is the end marker the
budget forces: once forced, the model is in the answer stage and states its number. Each row serves the
held-out prompts the way a server request with these fields is served (`parse_dial`, then `generate`):

    {"lam": 0, "thinking_token_budget": B, "thinking_landing": "soft" | "hard", "lam_marker": MARKER}

on the InRa model the demo trained, greedy, with B at 25%, 50% and 75% of the original model's mean answer
tokens. The soft landing steers by a calibration built from the demo's own lam sweep (mean answer tokens per
lam as the thinking curve, answered % as Pass@1), so no `flexrealign calibrate` run is needed.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flexrealign.core.atomic import atomic_file
from flexrealign.decoding.adaptive import HARD, LANDINGS, SOFT
from flexrealign.decoding.calibration import Calibration, CurvePoint, choose_efforts
from flexrealign.testbed.realscore import TEMPLATE, DemoRow, ref_logprobs

MARKER = "The final answer is"  # forced by the budget; makes the model state its answer next
BUDGET_SHARES = (0.25, 0.5, 0.75)  # of the original model's mean answer tokens
ANSWER_ROOM = 24  # tokens past the budget for the answer stage (the number and EOS)
LANDING_FILE = "landing.json"


@dataclass
class LandingRow:
    """One line of the landing table: the held-out prompts under one budget and landing."""

    landing: str
    budget: int
    think_lam: float  # the lam the thinking starts at (the soft landing's up-front move; 0 for the hard cut)
    steer_lam: float | None  # the soft landing's lam past 75% of the budget; None for the hard cut
    answers: int
    mean_tokens: float
    mean_thinking: float
    answered_pct: float
    ref_logprob: float
    cut_pct: float  # samples whose thinking the hard cut ended


def landing_budgets(base_tokens: float, shares: Sequence[float] = BUDGET_SHARES) -> list[int]:
    """The thinking budgets to compare, ascending and without repeats.

    Args:
        base_tokens: the original model's mean answer tokens on the held-out prompts.
        shares: the fractions of `base_tokens` to use.

    Returns:
        round(share * base_tokens) for each share, at least 1 (a budget of 0 would skip the thinking).
    """
    return sorted({max(1, round(s * base_tokens)) for s in shares})


def sweep_calibration(rows: Sequence[DemoRow]) -> Calibration:
    """A calibration from the demo's lam sweep (its InRa rows), as `flexrealign calibrate` would write one.

    Args:
        rows: the demo's table rows; those of model "inra" give the curve.

    Returns:
        The curve (mean answer tokens as the thinking, answered % as Pass@1) and its default efforts.
    """
    curve = [CurvePoint(r.lam, r.mean_tokens, r.mean_tokens, r.answered_pct, r.answers)
             for r in rows if r.model == "inra" and r.lam is not None]  # fmt: skip
    return Calibration(curve, choose_efforts(curve, can_skip_thinking=False), {"source": "demo --real sweep"})


def _generate(inra_dir: Path, questions: dict[str, str], calibration: Calibration, budgets: Sequence[int],
              batch_size: int) -> list[dict]:  # fmt: skip
    """One record per (budget, landing, held-out prompt), generated through the server's request path.

    Args:
        inra_dir: the InRa adapter folder the demo trained.
        questions: held-out prompt id -> question.
        calibration: the soft landing's calibration (`sweep_calibration`).
        budgets: the thinking budgets.
        batch_size: prompts generated at once.

    Returns:
        The records (`_records`' keys), by budget, the soft landing before the hard cut.
    """
    from flexrealign.conversion.loading import load
    from flexrealign.decoding.dial import parse_dial
    from flexrealign.decoding.generation import generate

    model, tok = load(str(inra_dir))  # the loader the sweep's eval used: the same greedy tokens at lam 0
    prompts = [[{"role": "user", "content": TEMPLATE.replace("{question}", q)}] for q in questions.values()]
    records = []
    for budget in budgets:
        for mode in LANDINGS:
            dial = parse_dial({"lam": 0.0, "thinking_token_budget": budget, "thinking_landing": mode,
                               "lam_marker": MARKER}, calibration)  # fmt: skip
            think_lam, steer_lam, _ = dial.landing.plan(0.0, budget) if dial.landing else (0.0, None, 0)
            out = generate(model, tok, prompts, lam=dial.lam_spec(None, True), thinking=dial.limits(),
                           max_new_tokens=budget + ANSWER_ROOM, batch_size=batch_size)  # fmt: skip
            records += _records(out, list(questions), landing=mode, budget=budget, think_lam=think_lam,
                                steer_lam=steer_lam)  # fmt: skip
    del model
    gc.collect()  # free the InRa model before the scoring loads the original one
    return records


def _records(out, ids: list[str], **fields) -> list[dict]:
    """One record per prompt of `out` (a GenerationResult), with `fields` (landing, budget, lams) added."""
    keys = ("problem_id", "text", "tokens", "thinking_tokens", "thinking_cut", "finish_reason")
    cols = zip(ids, out.texts, out.num_tokens, out.reasoning_tokens, out.thinking_cut, out.finish_reasons,
               strict=True)  # fmt: skip
    return [fields | dict(zip(keys, col, strict=True)) for col in cols]


def measure_landing(base: Path, inra_dir: Path, questions: dict[str, str], rows: Sequence[DemoRow],
                    batch_size: int) -> dict:  # fmt: skip
    """Generate every landing row and score its answers with the original model.

    Args:
        base: the original model's checkpoint (scores the answers: the `ref_logprob` proxy).
        inra_dir: the InRa adapter folder the demo trained.
        questions: held-out prompt id -> question.
        rows: the demo's table rows (the original model's mean tokens and the lam sweep).
        batch_size: prompts generated at once.

    Returns:
        The JSON the cache holds: marker, budgets, the calibration's curve, records, their scores (NaN: None).
    """
    base_tokens = next(r.mean_tokens for r in rows if r.model == "smollm2")
    budgets = landing_budgets(base_tokens)
    calibration = sweep_calibration(rows)
    print(f"[landing] budgets {budgets} of {base_tokens:.1f} original mean tokens: soft vs hard", flush=True)
    records = _generate(inra_dir, questions, calibration, budgets, batch_size)
    scores = ref_logprobs(base, records, questions)
    return {"marker": MARKER, "base_tokens": base_tokens, "budgets": budgets,
            "curve": calibration.to_json()["curve"], "records": records,
            "scores": [s if math.isfinite(s) else None for s in scores]}  # fmt: skip


def run_landing(out: Path, base: Path, inra_dir: Path, questions: dict[str, str], rows: Sequence[DemoRow],
                batch_size: int, timings: dict) -> list[LandingRow]:  # fmt: skip
    """The landing stage: measured once, then read from `out`/landing.json (a rerun skips it).

    Args:
        out: the results folder.
        base, inra_dir, questions, rows, batch_size: as in `measure_landing`.
        timings: stage name -> seconds; the stage adds "landing" when it runs.

    Returns:
        The table's rows (`summarize_landing`).
    """
    path = out / LANDING_FILE
    if path.exists():
        print(f"[landing] cached: {path}")
    else:
        t0 = time.time()
        data = measure_landing(base, inra_dir, questions, rows, batch_size)
        with atomic_file(path) as tmp:  # a crash mid-write must not leave a file that reads as finished
            tmp.write_text(json.dumps(data, indent=1) + "\n")
        timings["landing"] = time.time() - t0
    data = json.loads(path.read_text())
    return summarize_landing(data["records"], [math.nan if s is None else s for s in data["scores"]])


def summarize_landing(records: list[dict], scores: list[float]) -> list[LandingRow]:
    """Rows by budget (ascending), the soft landing before the hard cut.

    Args:
        records: one per generated answer (`_generate`'s keys).
        scores: the original model's mean log-likelihood per token of each answer (NaN for an empty one).

    Returns:
        One LandingRow per (budget, landing); answered: finished on its own and states a number.
    """
    from flexrealign.training.data_select import acceptable

    groups: dict[tuple[int, str], list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec["budget"], rec["landing"]), []).append(i)
    rows = []
    for (budget, mode), idx in sorted(groups.items(), key=lambda kv: (kv[0][0], LANDINGS.index(kv[0][1]))):
        recs, n = [records[i] for i in idx], len(idx)
        finite = [scores[i] for i in idx if math.isfinite(scores[i])]
        rows.append(LandingRow(
            landing=mode, budget=budget, think_lam=recs[0]["think_lam"], steer_lam=recs[0]["steer_lam"],
            answers=n,
            mean_tokens=sum(r["tokens"] for r in recs) / n,
            mean_thinking=sum(r["thinking_tokens"] for r in recs) / n,
            answered_pct=100.0 * sum(acceptable(r, "answered") for r in recs) / n,
            ref_logprob=sum(finite) / len(finite) if finite else math.nan,
            cut_pct=100.0 * sum(bool(r["thinking_cut"]) for r in recs) / n,
        ))  # fmt: skip
    return rows


def landing_markdown(rows: Sequence[LandingRow]) -> str:
    """The landing table as Markdown.

    Args:
        rows: `summarize_landing`'s rows.

    Returns:
        The table; "steers to lam" is "-" for the hard cut, which keeps the request's lam throughout.
    """
    lines = ["| landing | budget | thinks at lam | steers to lam | answers | mean tokens | thinking tokens | "
             "answered % | ref log-lik/token | hard cut % |", "|" + "---|" * 10]  # fmt: skip
    lines += [f"| {r.landing} | {r.budget} | {r.think_lam:g} | {_lam(r.steer_lam)} | {r.answers} | "
              f"{r.mean_tokens:.1f} | {r.mean_thinking:.1f} | {r.answered_pct:.0f} | {r.ref_logprob:.3f} | "
              f"{r.cut_pct:.0f} |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def _lam(lam: float | None) -> str:
    return "-" if lam is None else f"{lam:g}"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def landing_sentence(rows: Sequence[LandingRow]) -> str:
    """One sentence comparing the soft landing with the hard cut, from the numbers of `rows`.

    Args:
        rows: `summarize_landing`'s rows; budgets that lack either landing are left out.

    Returns:
        The per-budget answered % and hard-cut shares of both, their mean tokens and log-likelihoods, and at
        how many budgets the soft landing answered more, as often, or less often.
    """
    by = {(r.budget, r.landing): r for r in rows}
    budgets = sorted({b for b, _ in by if (b, SOFT) in by and (b, HARD) in by})
    if not budgets:
        return "Soft vs hard: no budget was measured with both landings."
    soft, hard = [by[b, SOFT] for b in budgets], [by[b, HARD] for b in budgets]
    more = sum(s.answered_pct > h.answered_pct for s, h in zip(soft, hard, strict=True))
    less = sum(s.answered_pct < h.answered_pct for s, h in zip(soft, hard, strict=True))

    def per(rs: list[LandingRow], attr: str) -> str:  # one value per budget, as "a/b/c"
        return "/".join(f"{getattr(r, attr):.0f}" for r in rs)

    tokens = [_mean([r.mean_tokens for r in rs]) for rs in (soft, hard)]
    loglik = [_mean([r.ref_logprob for r in rs]) for rs in (soft, hard)]
    return (f"Soft vs hard at budgets {'/'.join(map(str, budgets))} tokens: the soft landing answered "
            f"{per(soft, 'answered_pct')}% (the hard cut ended {per(soft, 'cut_pct')}% of its thoughts) "
            f"against {per(hard, 'answered_pct')}% for the hard cut alone (which ended "
            f"{per(hard, 'cut_pct')}%), at {tokens[0]:.1f} vs {tokens[1]:.1f} mean tokens and "
            f"{loglik[0]:.3f} vs {loglik[1]:.3f} ref log-lik/token: more answers at {more}, as many at "
            f"{len(budgets) - more - less} and fewer at {less} of {len(budgets)} budgets.")  # fmt: skip


def landing_section(rows: Sequence[LandingRow]) -> list[str]:
    """The summary lines of the landing table: heading, table, the soft-vs-hard sentence, what it shows."""
    return [
        f'## Thinking budget: soft landing vs hard cut (InRa, request lam 0, greedy; marker "{MARKER}")', "",
        landing_markdown(rows), "", f"- {landing_sentence(rows)}",
        f"- SmolLM2 has no think markers, so the whole answer is the thinking; the budget (25/50/75% of the "
        f"original model's mean answer tokens) forces \"{MARKER}\", then up to {ANSWER_ROOM} answer tokens. "
        "soft: steers by the lam sweep above as a calibration (thinks at the lam whose mean length fits, at "
        "the shortest lam past 75% of the budget); hard cut %: samples whose thinking the hard cut ended.",
        "",
    ]  # fmt: skip
