"""The harness's append-only JSONL of generations (`generations.jsonl`): one record per (model, lam, problem id,
sample index), appended and fsynced batch by batch, read back by key. A half-written last line left by a crash
is cut off and a corrupt line skipped, so an interrupted run resumes where it stopped without redoing or
duplicating a finished key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

GENERATIONS = "generations.jsonl"

Key = tuple[str, float | None, str, int]  # (model label, lam or None for plain models, problem id, sample)


def record_key(rec: dict) -> Key:
    lam = rec.get("lam")
    return (rec["model"], None if lam is None else float(lam), str(rec["problem_id"]), int(rec["sample"]))


def load_generations(path: str | os.PathLike) -> dict[Key, dict]:
    """Finished generations by key. A truncated last line (a crash mid-write) is cut off the file, so the next
    append starts on a fresh line; a duplicate key keeps its first record."""
    path = Path(path)
    if not path.exists():
        return {}
    _drop_partial_last_line(path)
    done: dict[Key, dict] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                done.setdefault(record_key(rec), rec)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a corrupt line in the middle: its key is simply generated again
    return done


def _drop_partial_last_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_generations(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Append whole lines and fsync, so a crash loses at most the batch being written."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
