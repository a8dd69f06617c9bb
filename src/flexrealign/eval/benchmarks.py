"""Load math reasoning benchmarks (MATH-500, AIME24, AIME25, GSM8K) as a uniform list of problems.

Named benchmarks come from the local shared assets when present (offline, byte-stable) and from
the Hugging Face Hub otherwise; any other ``.jsonl`` path is loaded with field auto-detection.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexrealign.eval.grading import gsm8k_gold

R1_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_TEMPLATE = "{question}\n" + R1_PROMPT

# Hub fallbacks: (repo, config, split) parts that are concatenated in order.
HUB_SOURCES: dict[str, list[tuple[str, str | None, str]]] = {
    "math500": [("HuggingFaceH4/MATH-500", None, "test")],
    "aime24": [("HuggingFaceH4/aime_2024", None, "train")],
    "aime25": [
        ("opencompass/AIME2025", "AIME2025-I", "test"),
        ("opencompass/AIME2025", "AIME2025-II", "test"),
    ],
    "gsm8k": [("openai/gsm8k", "main", "test")],
}
BENCHMARKS = tuple(HUB_SOURCES)

_QUESTION_FIELDS = ("problem", "question", "prompt")
_ANSWER_FIELDS = ("answer",)
_ID_FIELDS = ("unique_id", "id")


@dataclass
class Problem:
    """One benchmark item; ``answer`` is the final answer only (GSM8K rationale stripped)."""

    id: str
    question: str
    answer: str


def _first_field(row: Mapping[str, Any], names: Iterable[str]) -> str | None:
    """Name of the first of ``names`` present in ``row`` with a non-null value."""
    return next((n for n in names if row.get(n) is not None), None)


def _to_problem(row: Any, index: int, where: str) -> Problem:
    """Normalise one raw record; ``where`` names its origin (file and line) for error messages."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    q_key = _first_field(row, _QUESTION_FIELDS)
    a_key = _first_field(row, _ANSWER_FIELDS)
    if q_key is None or a_key is None:
        raise ValueError(
            f"{where}: needs a question field ({'|'.join(_QUESTION_FIELDS)}) and an answer field "
            f"({'|'.join(_ANSWER_FIELDS)}); found {sorted(row)}"
        )
    question = str(row[q_key]).strip()
    answer = str(row[a_key]).strip()
    if "####" in answer:
        answer = gsm8k_gold(answer)  # GSM8K: rationale, then "#### N"
    if not question or not answer:
        raise ValueError(f"{where}: empty {q_key if not question else a_key!r}")
    id_key = _first_field(row, _ID_FIELDS)
    return Problem(id=str(row[id_key]) if id_key else str(index), question=question, answer=answer)


def _check_unique_ids(problems: list[Problem], source: str) -> list[Problem]:
    """Ids key result files and resumption, so duplicates would silently merge results."""
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise ValueError(f"{source}: duplicate problem id {p.id!r}")
        seen.add(p.id)
    return problems


def load_jsonl(path: str | Path) -> list[Problem]:
    """Load problems from a JSONL file (one object per line; blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
            problems.append(_to_problem(row, len(problems), f"{path}:{lineno}"))
    if not problems:
        raise ValueError(f"{path}: no problems found")
    return _check_unique_ids(problems, str(path))


def _local_file(name: str, shared_dir: Path | None) -> Path | None:
    """The shared-assets copy of a named benchmark, if one exists."""
    roots = [shared_dir] if shared_dir is not None else []
    if os.environ.get("FLEXREALIGN_SHARED"):
        roots.append(Path(os.environ["FLEXREALIGN_SHARED"]))
    for root in roots:
        candidate = Path(root) / "data" / "benchmarks" / f"{name}.jsonl"
        if candidate.is_file():
            return candidate
    return None


def _load_from_hub(name: str) -> list[Problem]:
    """Download a named benchmark from the Hub (only used when no local copy exists)."""
    from datasets import load_dataset  # heavy import, only needed on this path

    problems: list[Problem] = []
    for repo, config, split in HUB_SOURCES[name]:
        ds = load_dataset(repo, config, split=split)
        for i, row in enumerate(ds):
            problems.append(_to_problem(row, len(problems), f"{repo}[{config or ''}:{split}] row {i}"))
    return _check_unique_ids(problems, name)


def load_benchmark(
    name_or_path: str, shared_dir: Path | None = None, limit: int | None = None
) -> list[Problem]:
    """Problems of a named benchmark (``math500|aime24|aime25|gsm8k``) or of a ``.jsonl`` file.

    Named benchmarks are read from ``shared_dir/data/benchmarks/NAME.jsonl``, else
    ``$FLEXREALIGN_SHARED/data/benchmarks/NAME.jsonl``, else the Hugging Face Hub.
    ``limit`` keeps the first N problems (file order, so subsets are reproducible).
    """
    key = name_or_path.strip().lower()
    if key in HUB_SOURCES:
        local = _local_file(key, shared_dir)
        problems = load_jsonl(local) if local is not None else _load_from_hub(key)
    elif name_or_path.endswith(".jsonl") or Path(name_or_path).exists():
        problems = load_jsonl(name_or_path)
    else:
        raise ValueError(f"unknown benchmark {name_or_path!r}: use one of {BENCHMARKS} or a .jsonl path")
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        problems = problems[:limit]
    return problems


def build_messages(problem: Problem, template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    """Single-turn chat messages for ``problem`` (R1 style: instruction appended to the question).

    ``{question}`` in ``template`` is replaced literally rather than with ``str.format``: the R1
    instruction itself contains ``\\boxed{}``, which ``format`` would read as a placeholder.
    """
    if "{question}" not in template:
        raise ValueError(f"template must contain '{{question}}': {template!r}")
    return [{"role": "user", "content": template.replace("{question}", problem.question)}]
