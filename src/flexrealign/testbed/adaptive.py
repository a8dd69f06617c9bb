"""The testbed's adaptive thinking: `lam auto` against the fixed lams, and a budget's soft landing against its
hard cut (`flexrealign.decoding.adaptive`; docs/thinking.md).

The InRa checkpoint is calibrated by `flexrealign calibrate`'s own code on problems of its own (a generator
seed apart from training and test), over a wider lam range than Figure 4, because the auto policy picks its
careful lam among the measured ones. Then, on the test set, with the harness's prompts, per-sample seeds and
grading, and every request's dial parsed by `parse_dial` against that calibration, as a server would:
* `inra@auto`, and a fixed row at each lam of the policy that Figure 4 lacks (the fair comparison);
* the landing table: InRa at lam 0 (the reference) with thinking budgets of 25%, 50% and 75% of the
  reference's mean thinking tokens, `hard` and `soft`.
Records go to adaptive.jsonl ("model" is the row name) and are reused while the rows and the calibration they
were measured with are unchanged (adaptive_key.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flexrealign.core.atomic import atomic_file
from flexrealign.decoding.calibration import Calibration, load_calibration
from flexrealign.decoding.dial import parse_dial
from flexrealign.eval.benchmarks import build_messages, load_benchmark
from flexrealign.eval.grading import grade
from flexrealign.eval.harness import load_model, sample_seed
from flexrealign.testbed.effects import TOLERANCE, Effect
from flexrealign.testbed.paired import Outcomes, fmt_pct, paired_diff
from flexrealign.testbed.task import make_problems, write_test_set

CAL_LAMS = (-1.5, -0.5, 0.0, 0.5, 1.0, 1.5)
CAL_SAMPLES = (
    3  # per problem: the probe's labels are each problem's Pass@1 at the short lam (one sample: 0/1)
)
BUDGET_SHARES = (0.25, 0.5, 0.75)
RECORDS, RECORDS_KEY = "adaptive.jsonl", "adaptive_key.json"


@dataclass(frozen=True)
class AdaptiveRow:
    """One row to measure: its name and the dial fields of its requests."""

    name: str
    dial: dict


def calibrate_inra(out: Path, inra_dir: Path, cfg, show: bool) -> Calibration:
    """Calibrate the InRa checkpoint (its calibration file is written into it), unless it already is."""
    from flexrealign.eval.calibration_run import CalibrateArgs, calibrate

    cal = load_calibration(inra_dir)
    if cal is not None and cal.auto is not None:
        return cal
    bench = out / "calibration.jsonl"  # as many problems as the test set, from a generator seed of their own
    write_test_set(bench, make_problems(cfg.n_test, cfg.seed + 3, cfg.task))
    calibrate(CalibrateArgs(model=str(inra_dir), benchmark=str(bench), lam=list(CAL_LAMS),
                            n_problems=cfg.n_test, n_samples=CAL_SAMPLES, temperature=cfg.eval_temperature,
                            top_p=cfg.eval_top_p, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.eval_batch_size, template="{question}", seed=cfg.seed,
                            work_dir=str(out / "calibration")))  # fmt: skip
    return load_calibration(inra_dir)  # type: ignore[return-value]


def plan_rows(cal: Calibration, figure4_lams: tuple[float, ...], ref_thinking: float) -> list[AdaptiveRow]:
    """inra@auto, the policy's lams that Figure 4 lacks, and the landing table's rows."""
    rows = [AdaptiveRow("inra@auto", {"lam": "auto"})]
    rows += [
        AdaptiveRow(f"inra@{lam:g}", {"lam": lam}) for lam in sorted(set(cal.auto.lams) - set(figure4_lams))
    ]
    for share in BUDGET_SHARES:
        budget = max(1, round(share * ref_thinking))
        rows += [AdaptiveRow(f"inra@0 budget {budget} ({share:.0%}) {landing}",
                             {"lam": 0.0, "thinking_token_budget": budget, "thinking_landing": landing})
                 for landing in ("hard", "soft")]  # fmt: skip
    return rows


def measure(out: Path, inra_dir: Path, cfg, rows: list[AdaptiveRow], cal: Calibration) -> list[dict]:
    """Every row's records on the test set (reused from adaptive.jsonl when it holds them all)."""
    path, key = out / RECORDS, out / RECORDS_KEY  # the key: what the records were measured with
    want = json.dumps({"rows": [row.dial for row in rows], "calibration": cal.to_json()}, sort_keys=True)
    if path.is_file() and key.is_file() and key.read_text() == want:
        return [json.loads(line) for line in path.read_text().splitlines()]
    from flexrealign.decoding.generation import generate
    from flexrealign.eval.harness import ModelSpec

    model, tok = load_model(ModelSpec("inra", kind="inra", path=str(inra_dir)))
    problems = load_benchmark(str(out / "test.jsonl"))
    keys = [(p, s) for s in range(cfg.eval_samples) for p in problems]
    prompts = [build_messages(p, "{question}") for p, _ in keys]
    seeds = [sample_seed(cfg.seed, p.id, s) for p, s in keys]
    records = []
    for row in rows:
        dial = parse_dial(row.dial, cal)
        res = generate(model, tok, prompts, lam=dial.lam_spec(None, True), thinking=dial.limits(), seed=seeds,
                       temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.eval_batch_size)  # fmt: skip
        records += [{"model": row.name, "lam": None, "problem_id": p.id, "sample": s, "text": text, "tokens": n,
                     "reasoning_tokens": t, "thinking_cut": cut, "auto_lam": lam, "correct": grade(text, p.answer),
                     "budget": row.dial.get("thinking_token_budget")}
                    for (p, s), text, n, t, cut, lam in zip(keys, res.texts, res.num_tokens, res.reasoning_tokens,
                                                            res.thinking_cut, res.auto_lams, strict=True)]  # fmt: skip
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    key.write_text(want)
    return records


# ------------------------------------------------------------------------------------------------- report
AUTO_CUT, AUTO_KEPT, AUTO_GAIN = (
    0.2,
    1.0,
    2.0,
)  # the targets: >= 20% fewer tokens within 1 point, or +2
LANDING_SHARE = 0.5  # the landing effect is read at the 50% budget


@dataclass(frozen=True)
class RowStats:
    """One row: Pass@1 (all and hard problems), mean tokens and thinking tokens, the share of samples the
    hard cut ended, the most thinking tokens of a sample, and (auto) the share decoded at lam_easy."""

    pass_at_1: float
    hard_pass: float | None
    tokens: float
    thinking: float
    cut_share: float
    max_thinking: int
    budget: int | None
    easy_share: float | None


def row_stats(records: list[dict], questions: dict[str, str], hard_terms: int, lam_easy: float) -> dict:
    """name -> RowStats of the adaptive records."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["model"], []).append(r)
    out = {}
    for name, rs in by.items():
        n, hard = len(rs), [r for r in rs if questions[r["problem_id"]].count("+") + 1 >= hard_terms]
        auto = [r["auto_lam"] for r in rs if r["auto_lam"] is not None]
        out[name] = RowStats(
            100 * sum(r["correct"] for r in rs) / n, 100 * sum(r["correct"] for r in hard) / len(hard) if hard
            else None, sum(r["tokens"] for r in rs) / n, sum(r["reasoning_tokens"] for r in rs) / n,
            100 * sum(r["thinking_cut"] for r in rs) / n, max(r["reasoning_tokens"] for r in rs), rs[0]["budget"],
            100 * sum(x == lam_easy for x in auto) / len(auto) if auto else None,
        )  # fmt: skip
    return out


def _means(rows: dict) -> tuple[float, float]:
    """(Pass@1 %, mean tokens) of one row's outcomes."""
    return 100 * sum(o.correct for o in rows.values()) / len(rows), sum(
        o.tokens for o in rows.values()
    ) / len(rows)


def auto_effect(samples: Outcomes, dial_lams: tuple[float, ...]) -> Effect:
    """auto against the best fixed lam of the dial (Figure 4's lams; highest Pass@1): within 1 point with >= 20%
    fewer tokens, or >= 2 points higher (the paired interval above 0) at no more tokens."""
    claim = (
        "InRa lam auto: within 1 point of the dial's best lam with >= 20% fewer tokens, or >= 2 points higher"
    )
    fixed = [f"inra@{lam:g}" for lam in dial_lams if f"inra@{lam:g}" in samples]
    if "inra@auto" not in samples or not fixed:
        return Effect("auto", claim, None, "missing rows")
    best = max(fixed, key=lambda k: (_means(samples[k])[0], -_means(samples[k])[1]))
    (acc, tok), (_, auto_tok) = _means(samples[best]), _means(samples["inra@auto"])
    d, ratio = paired_diff(samples["inra@auto"], samples[best]), auto_tok / tok
    holds = d is not None and ((d.mean >= -AUTO_KEPT and ratio <= 1 - AUTO_CUT)
                               or (d.mean >= AUTO_GAIN and d.lo > 0 and ratio <= 1.0))  # fmt: skip
    numbers = (f"best fixed {best}: {acc:.1f}% at {tok:.1f} tokens; auto at {ratio:.0%} of its tokens, "
               f"{d.text() if d else 'no pairs'}")  # fmt: skip
    return Effect("auto", claim, holds, numbers)


def auto_kept_effect(samples: Outcomes, lam_hard: float) -> Effect:
    """auto against its own careful lam (a fixed row): no loss (mean loss <= 1 point, the interval not showing
    a loss) at fewer tokens; a fixed lam cannot be more accurate and shorter at once the way a choice can."""
    claim = f"InRa lam auto: no less accurate than its careful lam ({lam_hard:g}) alone, with fewer tokens"
    name = f"inra@{lam_hard:g}"
    if "inra@auto" not in samples or name not in samples:
        return Effect("auto_kept", claim, None, "missing rows")
    (_, tok), (_, auto_tok) = _means(samples[name]), _means(samples["inra@auto"])
    d = paired_diff(samples["inra@auto"], samples[name])
    holds = d is not None and d.mean >= -TOLERANCE and d.hi >= 0 and auto_tok < tok
    return Effect("auto_kept", claim, holds, f"{auto_tok:.1f} vs {tok:.1f} tokens ({auto_tok / tok - 1:+.0%}), "
                  f"{d.text() if d else 'no pairs'}")  # fmt: skip


def landing_effect(samples: Outcomes, stats: dict[str, RowStats]) -> Effect:
    """At the 50% budget, soft ends at most half as many samples by the cut as hard, at no loss."""
    claim = "Soft landing at the 50% budget: at most half the hard cut's cut samples, at no loss of Pass@1"
    names = [k for k in stats if f"({LANDING_SHARE:.0%})" in k]
    hard = next((k for k in names if k.endswith(" hard")), None)
    soft = next((k for k in names if k.endswith(" soft")), None)
    if hard is None or soft is None:
        return Effect("landing", claim, None, "missing rows")
    d = paired_diff(samples[soft], samples[hard])
    h, s = stats[hard], stats[soft]
    holds = d is not None and s.cut_share <= 0.5 * h.cut_share and d.mean >= -TOLERANCE and d.hi >= 0
    return Effect("landing", claim, holds, f"cut {s.cut_share:.1f}% vs {h.cut_share:.1f}%; soft - hard: "
                  f"{d.text() if d else 'no pairs'}")  # fmt: skip


def oracle_line(samples: Outcomes, easy: str, hard: str) -> str:
    """What any per-request choice between the two lams could reach on this test set: per problem the cheaper
    lam among those with the higher Pass@1 (knowing the outcomes, which no policy does)."""
    if easy not in samples or hard not in samples:
        return "oracle: missing rows"
    by: dict[str, dict[str, list]] = {}
    for row in (easy, hard):
        for (pid, _), o in samples[row].items():
            by.setdefault(pid, {}).setdefault(row, []).append(o)
    acc = tok = 0.0
    for rows in by.values():
        (pe, te), (ph, th) = (_means(dict(enumerate(rows[r]))) for r in (easy, hard))
        pick = (pe, te) if pe > ph or (pe == ph and te <= th) else (ph, th)
        acc, tok = acc + pick[0], tok + pick[1]
    return (f"An oracle choosing per problem between {easy} and {hard} (knowing the outcomes): "
            f"{acc / len(by):.1f}% at {tok / len(by):.1f} tokens.")  # fmt: skip


def budget_effect(stats: dict[str, RowStats]) -> Effect:
    over = [k for k, s in stats.items() if s.budget is not None and s.max_thinking > s.budget]
    return Effect("budget_kept", "No sample thinks past its budget (soft or hard)", not over,
                  f"over budget: {', '.join(over) or 'none'}")  # fmt: skip


def adaptive_table(stats: dict[str, RowStats]) -> str:
    lines = ["| row | Pass@1 | hard Pass@1 | mean tokens | thinking tokens | cut by the budget % | lam_easy % |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {s.pass_at_1:.1f} | {fmt_pct(s.hard_pass)} | {s.tokens:.1f} | {s.thinking:.1f} | "
              f"{s.cut_share:.1f} | {fmt_pct(s.easy_share)} |" for k, s in stats.items()]  # fmt: skip
    return "\n".join(lines)


@dataclass(frozen=True)
class AdaptiveResult:
    effects: list[Effect]
    markdown: str
    stats: dict[str, RowStats]
    policy: dict


def run_adaptive(
    out: Path, inra_dir: Path, cfg, show: bool, samples: Outcomes, hard_terms: int
) -> AdaptiveResult:
    """Calibrate, measure and report (see the module docstring); `samples` are the main evaluation's."""
    from dataclasses import asdict

    from flexrealign.eval.generations import GENERATIONS, load_generations
    from flexrealign.testbed.paired import outcomes

    cal = calibrate_inra(out, inra_dir, cfg, show)
    refs = [r for r in load_generations(out / GENERATIONS).values() if r["model"] == "reference"]
    ref_thinking = sum(r["reasoning_tokens"] for r in refs) / len(refs)
    records = measure(out, inra_dir, cfg, plan_rows(cal, tuple(cfg.inra_lams), ref_thinking), cal)
    questions = {
        r["id"]: r["question"] for r in map(json.loads, (out / "test.jsonl").read_text().splitlines())
    }
    stats = row_stats(records, questions, hard_terms, cal.auto.lam_easy)
    both = samples | outcomes(records, questions)
    effects = [auto_effect(both, tuple(cfg.inra_lams)), auto_kept_effect(both, cal.auto.lam_hard),
               landing_effect(both, stats), budget_effect(stats)]  # fmt: skip
    policy = {"lam_easy": cal.auto.lam_easy, "lam_hard": cal.auto.lam_hard, "threshold": cal.auto.threshold,
              "fit": cal.meta.get("auto_fit"), "reference_thinking_tokens": round(ref_thinking, 1)}  # fmt: skip
    text = "\n".join([
        "## Adaptive thinking: lam auto and the soft landing of a thinking budget",
        "",
        f"The auto policy (calibrated on {cfg.n_test} problems of its own): lam {cal.auto.lam_easy:g} where its "
        f"probe gives p >= {cal.auto.threshold:.2f} that it answers right, else lam {cal.auto.lam_hard:g}. "
        f"Budgets are shares of the reference's mean thinking ({ref_thinking:.1f} tokens).",
        "",
        adaptive_table(stats),
        "",
        oracle_line(both, f"inra@{cal.auto.lam_easy:g}", f"inra@{cal.auto.lam_hard:g}"),
        "",
        *[f"- {e.line()}" for e in effects],
    ])  # fmt: skip
    (out / "adaptive.md").write_text(text + "\n")
    summary = {"policy": policy, "rows": {k: asdict(v) for k, v in stats.items()},
               "effects": [asdict(e) for e in effects]}  # fmt: skip
    (out / "adaptive.json").write_text(json.dumps(summary, indent=2) + "\n")
    return AdaptiveResult(effects, text, stats, policy)
