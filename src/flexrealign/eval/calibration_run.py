"""The measuring behind `flexrealign calibrate` (the command parses its flags into `CalibrateArgs` and prints the
result): the evaluation harness at each lam, the curve and effort table, and the `auto` policy's fit, written
into the checkpoint (`flexrealign.decoding.calibration`). The testbed calibrates its InRa model with it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flexrealign.eval.benchmarks import DEFAULT_TEMPLATE


@dataclass
class CalibrateArgs:
    model: str = field(metadata={"help": "An InRa checkpoint folder (the calibration is written into it)."})
    benchmark: str = field(metadata={"help": "math500, aime24, aime25, gsm8k or FILE.jsonl."})
    lam: list[float] = field(
        default_factory=lambda: [-0.5, 0.0, 0.5, 1.0, 1.5], metadata={"help": "lam values to measure."}
    )
    n_problems: int = field(default=50, metadata={"help": "Use the first N problems of the benchmark."})
    n_samples: int = field(default=1, metadata={"help": "Samples per problem; Pass@1 is their mean."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (the cheapest stable estimate)."})
    top_p: float = 1.0
    max_new_tokens: int = field(default=4096, metadata={"help": "Generations hitting it count as cut off."})
    batch_size: int = field(default=16, metadata={"help": "Prompts decoded together."})
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "User message; {question} is replaced."}
    )
    seed: int = 0
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Where generations are kept (resumable); default MODEL/calibration_run."},
    )
    shared_dir: str | None = field(default=None, metadata={"help": "Folder with data/benchmarks/NAME.jsonl."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoint (off by default)."}
    )
    auto_tolerance: float = field(
        default=0.0,
        metadata={"help": "Pass@1 points below the most accurate lam that the auto policy may lose, measured out "
                  "of fold on these problems (that estimate is optimistic: keep it small)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.n_problems < 1 or self.n_samples < 1:
            raise ValueError("--n-problems and --n-samples must be >= 1")
        if not self.lam:
            raise ValueError("give at least one --lam")


def curve_from_generations(done: dict, label: str, lams: list[float], problems: list) -> list:
    """One CurvePoint per lam from the harness's finished generations (thinking tokens counted on ids)."""
    from flexrealign.decoding.calibration import CurvePoint

    ids = {p.id for p in problems}
    points = []
    for lam in lams:
        recs = [r for (m, x, pid, _), r in done.items() if m == label and x == lam and pid in ids]
        if not recs:
            continue
        n = len(recs)
        thinking = [r["tokens"] if r.get("reasoning_tokens") is None else r["reasoning_tokens"] for r in recs]
        points.append(CurvePoint(lam, sum(thinking) / n, sum(r["tokens"] for r in recs) / n,
                                 100.0 * sum(bool(r["correct"]) for r in recs) / n, n))  # fmt: skip
    return points


def calibrate(args: CalibrateArgs) -> Path:
    """Measure, choose the efforts, write the file; returns its path."""
    from flexrealign.conversion.loading import is_two_path, load_tokenizer, model_kind
    from flexrealign.decoding.autofit import FOLDS
    from flexrealign.decoding.calibration import Calibration, choose_efforts, save_calibration
    from flexrealign.eval.benchmarks import load_benchmark
    from flexrealign.eval.generations import load_generations
    from flexrealign.eval.harness import EvalConfig, ModelSpec, evaluate

    if not Path(args.model).is_dir():  # the calibration is written into the checkpoint
        raise ValueError(f"{args.model} is not a local folder: calibrate writes into the checkpoint folder")
    if not is_two_path(model_kind(args.model, args.trust_remote_code)):
        raise ValueError(
            f"{args.model} is not an InRa checkpoint or adapter folder: reasoning_effort maps to lam"
        )
    shared = Path(args.shared_dir) if args.shared_dir else None
    problems = load_benchmark(args.benchmark, shared_dir=shared, limit=args.n_problems)
    lams = [float(x) for x in args.lam]
    cfg = EvalConfig(lams=lams, n_samples=args.n_samples, temperature=args.temperature, top_p=args.top_p,
                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, template=args.template,
                     seed=args.seed)  # fmt: skip
    work = Path(args.work_dir or Path(args.model) / "calibration_run")
    spec = ModelSpec("model", kind="inra", path=args.model, trust_remote_code=args.trust_remote_code)
    evaluate([spec], problems, cfg, work)
    curve = curve_from_generations(load_generations(work / "generations.jsonl"), "model", lams, problems)
    template = load_tokenizer(args.model, args.trust_remote_code).chat_template or ""
    meta = {"benchmark": args.benchmark, "n_problems": len(problems), "n_samples": args.n_samples,
            "temperature": args.temperature, "max_new_tokens": args.max_new_tokens}  # fmt: skip
    efforts = choose_efforts(curve, "enable_thinking" in template)
    auto = None
    if len(problems) >= FOLDS:  # the threshold is chosen out of fold
        auto, meta["auto_fit"] = fit_auto(args, spec, problems, curve, work, efforts["high"].lam)
    else:
        meta["auto_fit"] = f"not fitted: the auto policy needs at least {FOLDS} problems"
    return save_calibration(args.model, Calibration(curve, efforts, meta, auto))


def fit_auto(args: CalibrateArgs, spec, problems: list, curve: list, work: Path, lam_hard: float) -> tuple:
    """The auto policy (`flexrealign.decoding.autofit`): for each lam of the curve that thinks less than
    `lam_hard` (the most accurate), a probe choosing between it and `lam_hard`; the one that spends the fewest
    tokens out of fold wins (a too-short lam that is never safe to use would spend lam_hard's).

    Returns:
        (the AutoPolicy, its out-of-fold statistics with the short lams it tried).
    """
    from flexrealign.decoding.autofit import fit_auto_policy, prompt_states
    from flexrealign.eval.benchmarks import build_messages
    from flexrealign.eval.harness import load_model

    hard = next(p for p in curve if p.lam == lam_hard)
    shorter = sorted((p for p in curve if p.mean_thinking_tokens < hard.mean_thinking_tokens),
                     key=lambda p: p.mean_thinking_tokens) or [hard]  # fmt: skip
    model, tok = load_model(spec)
    states = prompt_states(model, tok, [build_messages(p, args.template) for p in problems],
                           batch_size=args.batch_size)  # fmt: skip
    fits = [fit_auto_policy(states, problem_outcomes(work, problems, p.lam, lam_hard), p.lam, lam_hard,
                            tolerance=args.auto_tolerance) for p in shorter]  # fmt: skip
    policy, stats = min(fits, key=lambda f: (f[1]["out_of_fold_mean_tokens"], -f[1]["out_of_fold_pass_at_1"]))
    tried = {f"{f[0].lam_easy:g}": f[1]["out_of_fold_mean_tokens"] for f in fits}
    return policy, stats | {"out_of_fold_mean_tokens_by_lam_easy": tried}


def problem_outcomes(work: Path, problems: list, lam_easy: float, lam_hard: float) -> list:
    """Per problem, Pass@1 (0..1) and mean tokens at both lams, from the run's generations."""
    from flexrealign.decoding.autofit import ProblemOutcome
    from flexrealign.eval.generations import load_generations

    sums: dict[tuple[float, str], list[float]] = {}
    for (label, lam, pid, _), r in load_generations(work / "generations.jsonl").items():
        if label == "model" and lam in (lam_easy, lam_hard):
            acc = sums.setdefault((lam, pid), [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + bool(r["correct"]), acc[1] + r["tokens"], acc[2] + 1
    mean = {key: (c / n, t / n) for key, (c, t, n) in sums.items()}
    return [ProblemOutcome(mean[lam_easy, p.id][0], mean[lam_hard, p.id][0], mean[lam_easy, p.id][1],
                           mean[lam_hard, p.id][1]) for p in problems]  # fmt: skip
