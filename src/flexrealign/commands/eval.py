"""`flexrealign eval`: evaluate models on math benchmarks over a sweep of lam (the paper's protocol by default).

Example: flexrealign eval --model ref=PATH_A inra=PATH_B --benchmark math500 --lam -0.5 0 0.5 1 1.5 \\
             --baseline ref --out results/math500
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flexrealign.eval.benchmarks import DEFAULT_TEMPLATE
from flexrealign.eval.harness import PAPER_LAMS, ModelSpec


@dataclass
class EvalArgs:
    model: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Checkpoints to compare, as PATH or NAME=PATH (several: --model A B C): folders, Hub names "
            "or .gguf files. An InRa checkpoint (its config has an 'inra' entry, on the Hub too) or adapter "
            "folder is evaluated at every --lam; a plain model once."
        },
    )
    dera_ref: str | None = field(
        default=None, metadata={"help": "DeRa: the reference model (with --dera-aligned)."}
    )
    dera_aligned: str | None = field(default=None, metadata={"help": "DeRa: the aligned model."})
    dera_name: str = field(default="dera", metadata={"help": "Row name of the DeRa pair."})
    benchmark: str = field(
        default="math500", metadata={"help": "math500, aime24, aime25, gsm8k or FILE.jsonl."}
    )
    lam: list[float] = field(
        default_factory=lambda: list(PAPER_LAMS), metadata={"help": "lam values (InRa/DeRa)."}
    )
    n_samples: int = field(default=8, metadata={"help": "Samples per problem; Pass@1 is their mean."})
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = field(default=16384, metadata={"help": "Generations hitting it count as cut off."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N problems."})
    batch_size: int = field(default=16, metadata={"help": "Prompts decoded together."})
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "User message; {question} is replaced."}
    )
    seed: int = 0
    baseline: str | None = field(
        default=None, metadata={"help": "Row for token reduction %%: NAME, or NAME@LAM for InRa/DeRa rows."}
    )
    engine: Literal["flexrealign", "vllm"] = field(
        default="flexrealign",
        metadata={"help": "Our decode loop, or vLLM with the flexrealign plugin (GPU)."},
    )
    vllm_args: str | None = field(
        default=None,
        metadata={"help": "JSON of extra vllm.LLM arguments, e.g. '{\"max_model_len\": 20000}'."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoints (off by default)."}
    )
    out: str = field(default="results/eval", metadata={"help": "Output folder; rerunning resumes it."})
    shared_dir: str | None = field(default=None, metadata={"help": "Folder with data/benchmarks/NAME.jsonl."})


def model_spec(arg: str, trust_remote_code: bool = False) -> ModelSpec:
    """A ModelSpec from PATH or NAME=PATH; the loader tells its kind from its config (Hub names included).

    Raises:
        CheckpointError: no config can be read for the path (the message names it).
    """
    name, sep, path = arg.partition("=")
    if not sep or "/" in name or not name:
        name, path = Path(arg.rstrip("/")).name or arg, arg
    return ModelSpec(name, path=path, trust_remote_code=trust_remote_code)


def build_specs(args: EvalArgs) -> list[ModelSpec]:
    specs = [model_spec(m, args.trust_remote_code) for m in args.model]
    if bool(args.dera_ref) != bool(args.dera_aligned):
        raise ValueError("DeRa needs both --dera-ref and --dera-aligned")
    if args.dera_ref:
        specs.append(
            ModelSpec(args.dera_name, kind="dera", path=args.dera_ref, aligned_path=args.dera_aligned,
                      trust_remote_code=args.trust_remote_code)
        )  # fmt: skip
    if not specs:
        raise ValueError("nothing to evaluate: give --model and/or --dera-ref/--dera-aligned")
    return specs


def run(argv: list[str]) -> int:
    from flexrealign.commands._args import fail, parse
    from flexrealign.eval.benchmarks import load_benchmark
    from flexrealign.eval.harness import EvalConfig, evaluate
    from flexrealign.eval.results import markdown_table

    (args,) = parse([EvalArgs], argv, "eval", __doc__.splitlines()[0])
    try:
        specs = build_specs(args)
        shared = Path(args.shared_dir) if args.shared_dir else None
        problems = load_benchmark(args.benchmark, shared_dir=shared, limit=args.limit)
        cfg = EvalConfig(
            lams=args.lam, n_samples=args.n_samples, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            template=args.template, seed=args.seed, baseline=args.baseline, engine=args.engine,
            vllm_kwargs=json.loads(args.vllm_args) if args.vllm_args else {},
        )  # fmt: skip
        rows = evaluate(specs, problems, cfg, args.out)
    except (ValueError, FileNotFoundError, ImportError) as e:  # json errors are ValueErrors
        return fail(str(e))
    out = Path(args.out).resolve()
    print(f"\n{markdown_table(rows)}\n\nResults: {out}/results.md, {out}/results.csv")
    print(f"Plot: {out}/accuracy_vs_tokens.png\nGenerations: {out}/generations.jsonl")
    return 0
