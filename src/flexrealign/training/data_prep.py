"""Data preparation for the paper's two InRa use cases (§4.2, §4.3).

short-cot: fast-thinking SFT data from long chain-of-thought records (OpenR1-Math-220k: `messages`, or `problem`
           with `generation`/`generations`): keep only what follows the last `</think>`, as conversational
           prompt/completion records. Records without `</think>` are skipped and counted.
prefs:     preference pairs in TRL's prompt/chosen/rejected form for DPO (e.g. UltraFeedback binarized, whose
           chosen/rejected are whole conversations: the shared turns become the prompt).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, load_dataset

from flexrealign.core.atomic import atomic_file

THINK_END = "</think>"
Record = dict
Messages = list[dict]


def load_any_dataset(
    source: str, config_name: str | None = None, split: str = "train", max_samples: int | None = None
) -> Dataset:
    """A local .json/.jsonl/.parquet file or a Hub dataset, cut to its first `max_samples` records."""
    suffix = Path(source).suffix
    if suffix in (".json", ".jsonl", ".parquet"):
        ds = load_dataset("parquet" if suffix == ".parquet" else "json", data_files=source, split="train")
    else:
        ds = load_dataset(source, config_name, split=split)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


# ------------------------------------------------------------------------------------------------ short-cot
def _long_cot_text(record: Record) -> tuple[str | None, str | None]:
    """(problem, generation) of an OpenR1-Math-style record; either is None when absent."""
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        answers = [m.get("content") for m in messages if m.get("role") == "assistant"]
        return (users[-1] if users else None), (answers[-1] if answers else None)
    generation = record.get("generation")
    generations = record.get("generations")
    if generation is None and isinstance(generations, list) and generations:
        # Prefer a trace Math-Verify judged correct; the dataset guarantees one per problem.
        verified = record.get("correctness_math_verify") or [False] * len(generations)
        generation = next((g for g, ok in zip(generations, verified, strict=False) if ok), generations[0])
    return record.get("problem"), generation


def short_cot_record(record: Record) -> tuple[Record | None, str]:
    """(prompt/completion record, "kept") or (None, why it was skipped)."""
    problem, generation = _long_cot_text(record)
    if not isinstance(problem, str) or not isinstance(generation, str):
        return None, "no problem/generation fields"
    if THINK_END not in generation:
        return None, f"no {THINK_END}"
    answer = generation.rsplit(THINK_END, 1)[1].strip()
    if not answer:
        return None, f"nothing after {THINK_END}"
    out = {
        "prompt": [{"role": "user", "content": problem}],
        "completion": [{"role": "assistant", "content": answer}],
    }
    return out, "kept"


# -------------------------------------------------------------------------------------------------- prefs
def _is_messages(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _split_conversations(prompt: object, chosen: Messages, rejected: Messages) -> tuple | None:
    """Shared leading turns become the prompt; the differing tails are the two completions."""
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    shared = chosen[:k]
    if not shared:
        if not isinstance(prompt, str) or not prompt:
            return None
        shared = [{"role": "user", "content": prompt}]
    return shared, chosen[k:], rejected[k:]


def preference_record(record: Record) -> tuple[Record | None, str]:
    """(TRL prompt/chosen/rejected record, "kept") or (None, why it was skipped)."""
    prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if _is_messages(chosen) and _is_messages(rejected):
        split = _split_conversations(prompt, chosen, rejected)
        if split is None:
            return None, "no prompt"
        prompt, chosen, rejected = split
    elif not all(isinstance(x, str) and x for x in (prompt, chosen, rejected)):
        return None, "missing prompt/chosen/rejected"
    if chosen == rejected:
        return None, "chosen == rejected"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, "kept"


# ------------------------------------------------------------------------------------------------- output
@dataclass
class PrepStats:
    """How many records were read and kept, and how many were skipped for each reason."""

    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} ({why})" for why, n in self.skipped.most_common()) or "none"
        return f"read {self.read} records, kept {self.kept}, skipped {sum(self.skipped.values())}: {reasons}"


def convert(
    records: Iterable[Record], fn: Callable[[Record], tuple[Record | None, str]], stats: PrepStats
) -> Iterator[Record]:
    """Apply `fn` to each record, yielding the kept ones and counting the rest in `stats`."""
    for record in records:
        stats.read += 1
        out, why = fn(record)
        if out is None:
            stats.skipped[why] += 1
        else:
            stats.kept += 1
            yield out


def write_jsonl(records: Iterable[Record], path: str | os.PathLike) -> None:
    """Write one JSON object per line, atomically (a temporary file renamed into place)."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
