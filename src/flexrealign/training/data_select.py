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
from typing import Literal, get_args

from flexrealign.eval.benchmarks import Problem, build_messages
from flexrealign.training.data_prep import PrepStats

Accept = Literal["correct", "answered", "finished", "any"]
ACCEPT_RULES: tuple[str, ...] = get_args(Accept)
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
