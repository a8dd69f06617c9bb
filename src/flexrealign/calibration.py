"""`reasoning_effort` calibration: the measured (lam -> thinking tokens, Pass@1) curve of a checkpoint and the
effort table derived from it, kept in the checkpoint as one small JSON file written atomically.

    {"curve": [{"lam": -0.5, "mean_thinking_tokens": 812.4, "mean_tokens": 901.2, "pass_at_1": 71.3, ...}],
     "efforts": {"none": {"lam": 1.5, "thinking_token_budget": 0}, "low": {"lam": 1.0}, ...}, ...}

Defaults chosen from the curve (edit the file to override):
* high:   the lam with the best Pass@1 (ties: the one that thinks longer);
* low:    the largest lam whose Pass@1 is within 2 points of lam = 0 (the reference model; the lam closest to 0
          when 0 was not measured);
* medium: the lam between them whose mean thinking tokens are closest to the midpoint of theirs;
* none:   the shortest-thinking lam, with thinking skipped: `enable_thinking=False` where the chat template
          takes it, else a thinking budget of 0 (the end marker is forced at once).

The server and the vLLM plugin map a request's `reasoning_effort` to that entry's lam (and budget); an
explicit lam wins.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

CALIBRATION_FILE = "flexrealign_calibration.json"
EFFORTS = ("none", "low", "medium", "high")
LOW_TOLERANCE = 2.0  # Pass@1 points below lam = 0 that `low` may lose


@dataclass(frozen=True)
class CurvePoint:
    lam: float
    mean_thinking_tokens: float
    mean_tokens: float
    pass_at_1: float  # %
    samples: int


@dataclass(frozen=True)
class Effort:
    """What one reasoning_effort means: a lam, optionally a thinking budget and chat template arguments."""

    lam: float
    thinking_token_budget: int | None = None
    chat_template_kwargs: dict | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Calibration:
    curve: list[CurvePoint]
    efforts: dict[str, Effort]
    meta: dict = field(default_factory=dict)  # benchmark, problems, samples, temperature, ...

    def to_json(self) -> dict:
        return {"curve": [asdict(p) for p in self.curve],
                "efforts": {k: e.to_json() for k, e in self.efforts.items()}, **self.meta}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        rest = {k: v for k, v in data.items() if k not in ("curve", "efforts")}
        return cls([CurvePoint(**p) for p in data["curve"]],
                   {k: Effort(**e) for k, e in data["efforts"].items()}, rest)  # fmt: skip


def choose_efforts(curve: list[CurvePoint], can_skip_thinking: bool) -> dict[str, Effort]:
    """The default effort table from a measured curve (see the module docstring)."""
    if not curve:
        raise ValueError("an empty calibration curve: measure at least one lam")
    pts = sorted(curve, key=lambda p: p.lam)
    high = max(pts, key=lambda p: (p.pass_at_1, p.mean_thinking_tokens))
    base = min(pts, key=lambda p: abs(p.lam))
    low = max((p for p in pts if p.pass_at_1 >= base.pass_at_1 - LOW_TOLERANCE), key=lambda p: p.lam)
    lo_lam, hi_lam = sorted((low.lam, high.lam))
    mid_tokens = (low.mean_thinking_tokens + high.mean_thinking_tokens) / 2
    between = [p for p in pts if lo_lam <= p.lam <= hi_lam]
    medium = min(between, key=lambda p: (abs(p.mean_thinking_tokens - mid_tokens), -p.pass_at_1))
    shortest = min(pts, key=lambda p: (p.mean_thinking_tokens, -p.pass_at_1))
    none = (
        Effort(shortest.lam, chat_template_kwargs={"enable_thinking": False})
        if can_skip_thinking
        else Effort(shortest.lam, thinking_token_budget=0)
    )
    return {"none": none, "low": Effort(low.lam), "medium": Effort(medium.lam), "high": Effort(high.lam)}


def save_calibration(folder: str | os.PathLike, calibration: Calibration) -> Path:
    """Write `folder/flexrealign_calibration.json` atomically (a temporary file renamed over it)."""
    folder = Path(folder)
    target = folder / CALIBRATION_FILE
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(calibration.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_calibration(folder: str | os.PathLike | None) -> Calibration | None:
    """The checkpoint's calibration, None when it has none (or `folder` is not a local folder).

    Raises ValueError for a file that exists but cannot be read as a calibration.
    """
    if folder is None:
        return None
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid calibration ({e}); rerun flexrealign calibrate") from e


CALIBRATE_HINT = (
    "flexrealign calibrate --model CHECKPOINT --benchmark FILE.jsonl --lam -0.5 0 0.5 1 1.5 --n-problems 50"
)
