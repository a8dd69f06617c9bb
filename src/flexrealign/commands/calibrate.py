"""`flexrealign calibrate`: measure thinking tokens and Pass@1 per lam, and write the reasoning_effort table.

Runs the evaluation harness (resumable: generations go to --work-dir) on the first --n-problems of a
benchmark at each --lam, then writes the curve and an effort table (none/low/medium/high) into the
checkpoint as flexrealign_calibration.json, atomically, and reads it back through the same checks as
`flexrealign serve` and the vLLM plugin, which map a request's `reasoning_effort` to the fields of its entry
(a lam, a budget; see docs/thinking.md for the keys an edited entry may take).

Example: flexrealign calibrate --model ckpt/ --benchmark math500 --lam -0.5 0 0.5 1 1.5 --n-problems 50
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
    cal = Calibration(curve, choose_efforts(curve, "enable_thinking" in template), meta)
    return save_calibration(args.model, cal)


def run(argv: list[str]) -> int:
    """`flexrealign calibrate`: measure, write the file, then load it back as the server and the vLLM plugin
    will (every value checked) and print it.

    Args:
        argv: the command's flags.

    Returns:
        The exit status: 0, or 2 with the error on stderr.
    """
    from flexrealign.commands._args import fail, parse
    from flexrealign.decoding.calibration import load_calibration

    (args,) = parse([CalibrateArgs], argv, "calibrate", __doc__.splitlines()[0])
    try:
        path = calibrate(args)
        cal = load_calibration(path.parent)
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    if cal is None:
        return fail(f"{path} is missing right after it was written")
    print(f"{'lam':>6} {'thinking tokens':>16} {'pass@1':>7}")
    for p in cal.curve:
        print(f"{p.lam:>6g} {p.mean_thinking_tokens:>16.1f} {p.pass_at_1:>7.1f}")
    print("efforts: " + ", ".join(f"{k}={e.to_json()}" for k, e in cal.efforts.items()))
    print(f"wrote {path}")
    return 0
