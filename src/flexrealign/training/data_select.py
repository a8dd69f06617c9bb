"""`flexrealign data shortest`: concise-answer SFT data from a model's own samples (the short-CoT recipe, §4.2).

Sample k answers per prompt (`flexrealign eval --n_samples k` writes them to generations.jsonl), then keep, per
prompt, the shortest acceptable one as a prompt/completion record. "Acceptable" is chosen by --accept:

    correct   graded correct against the problem's answer (the paper's choice; needs a capable model)
    answered  finished on its own (EOS, not cut off) and states a number: for small models that rarely solve
              the problem, the shortest complete answer still teaches brevity without teaching to stop early
    finished  finished on its own
    any       every sample (only the length decides)

Prompts with no acceptable sample are skipped and counted. The prompt is rebuilt from the problem file with the
same template as the sampling run, so training sees exactly the prompts the samples answered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from flexrealign.eval.benchmarks import DEFAULT_TEMPLATE, Problem, build_messages, load_benchmark
from flexrealign.eval.harness import load_generations
from flexrealign.training.data_prep import PrepStats, write_jsonl

Accept = Literal["correct", "answered", "finished", "any"]
_NUMBER = re.compile(r"\d")


def acceptable(record: dict, accept: Accept) -> bool:
    """Whether one generation record (a line of generations.jsonl) passes the --accept rule."""
    finished = record.get("finish_reason") == "stop"
    if accept == "any":
        return True
    if accept == "correct":
        return bool(record.get("correct"))
    if accept == "answered":
        return finished and bool(_NUMBER.search(record.get("text", "")))
    return finished


def shortest_records(
    generations: dict, problems: list[Problem], accept: Accept, template: str, stats: PrepStats
) -> list[dict]:
    """Per problem (in file order), the shortest acceptable generation as a conversational prompt/completion."""
    by_problem: dict[str, list[dict]] = {}
    for rec in generations.values():
        by_problem.setdefault(str(rec["problem_id"]), []).append(rec)
    out = []
    for problem in problems:
        samples = by_problem.get(problem.id, [])
        if not samples:
            continue
        stats.read += 1
        kept = [r for r in samples if acceptable(r, accept)]
        if not kept:
            stats.skipped[f"no {accept} sample"] += 1
            continue
        best = min(kept, key=lambda r: (r["tokens"], r["sample"]))  # ties: the earliest sample
        stats.kept += 1
        out.append(
            {
                "prompt": build_messages(problem, template),
                "completion": [{"role": "assistant", "content": best["text"]}],
                "problem_id": problem.id,
                "tokens": best["tokens"],
                "samples": len(samples),
            }
        )
    return out


@dataclass
class ShortestArgs:
    generations: str = field(
        metadata={"help": "generations.jsonl written by `flexrealign eval --n_samples k`."}
    )
    problems: str = field(
        metadata={"help": "The problems that were sampled: a benchmark name or FILE.jsonl."}
    )
    output: str = field(metadata={"help": "Output .jsonl of prompt/completion records (written atomically)."})
    accept: Accept = field(
        default="answered", metadata={"help": "correct | answered | finished | any (see above)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Use only this model label's samples (default: all in the file)."}
    )
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "The user-message template the samples were made with."}
    )


def run_shortest(argv: list[str]) -> int:
    """`flexrealign data shortest --generations run/generations.jsonl --problems train.jsonl --output short.jsonl`"""
    from flexrealign.commands._args import fail, parse

    (args,) = parse([ShortestArgs], argv, "data shortest", __doc__)
    try:
        generations = load_generations(args.generations)
        if args.model is not None:
            generations = {k: r for k, r in generations.items() if r["model"] == args.model}
        if not generations:
            raise ValueError(
                f"no generations in {args.generations}" + (f" for {args.model}" if args.model else "")
            )
        problems = load_benchmark(args.problems)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e))
    stats = PrepStats()
    records = shortest_records(generations, problems, args.accept, args.template, stats)
    write_jsonl(records, args.output)
    mean = sum(r["tokens"] for r in records) / max(1, len(records))
    print(f"shortest: {stats.summary()}; mean kept length {mean:.1f} tokens; wrote {args.output}")
    return 0
