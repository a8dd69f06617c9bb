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

An effort stands for request fields (`Effort`: lam or lam_think/lam_answer, the thinking limits, and
`enable_thinking`, which also means a budget of 0). The server and the vLLM plugin expand a request's
`reasoning_effort` into those fields under the request's own (`expand_effort`) and check the result as if the
client had sent it. `load_calibration` checks every value of the file once, when it is loaded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from flexrealign.core.atomic import atomic_file
from flexrealign.decoding.adaptive import AutoPolicy, Landing
from flexrealign.decoding.dial import (  # noqa: F401  (CALIBRATE_HINT, blame, expand_effort: re-exported)
    CALIBRATE_HINT,
    EFFORT_LAM_KEYS,
    DialError,
    blame,
    dial_fields,
    expand_effort,
)
from flexrealign.decoding.thinking import LIMIT_KEYS, limit_conflict

CALIBRATION_FILE = "flexrealign_calibration.json"
EFFORTS = ("none", "low", "medium", "high")
LOW_TOLERANCE = 2.0  # Pass@1 points below lam = 0 that `low` may lose
DIAL_KEYS = (*EFFORT_LAM_KEYS, *LIMIT_KEYS)  # the request fields an effort may stand for
TEMPLATE_KEYS = ("enable_thinking",)  # the chat template arguments an effort may set
_MISSING = object()


class CalibrationError(ValueError):
    """A bad value in a calibration: where it is (`key`, a path such as `efforts.high.lam`), the value, and
    what is wrong with it."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        self.key, self.value, self.problem = key, value, problem
        shown = "" if value is _MISSING else f" = {_short(value)}"
        super().__init__(f"{key}{shown}: {problem}" if key else problem)

    def under(self, prefix: str) -> CalibrationError:
        """The same error, with its key inside `prefix` (`efforts.high` + `lam` -> `efforts.high.lam`)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return CalibrationError(key, self.value, self.problem)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _real(key: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """`value` as a float: an int or float (not a bool or string), finite, within [low, high]."""
    try:  # an int too large for a float (JSON allows 400 digits) overflows: not a finite number either
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        raise CalibrationError(key, value, "must be a finite number")
    if not low <= number <= high:
        raise CalibrationError(key, value, f"must be within [{low:g}, {high:g}]")
    return number


def _count(key: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CalibrationError(key, value, f"must be an int >= {low}")
    return value


@dataclass(frozen=True)
class CurvePoint:
    lam: float
    mean_thinking_tokens: float
    mean_tokens: float
    pass_at_1: float  # %
    samples: int

    def __post_init__(self) -> None:
        for name, low, high in (("lam", -math.inf, math.inf), ("mean_thinking_tokens", 0.0, math.inf),
                                ("mean_tokens", 0.0, math.inf), ("pass_at_1", 0.0, 100.0)):  # fmt: skip
            object.__setattr__(self, name, _real(name, getattr(self, name), low, high))
        _count("samples", self.samples, low=1)


def _dial_value(name: str, value: Any) -> Any:
    """`value` checked as the request field `name` is (`flexrealign.decoding.dial`): an effort stands for request fields."""
    try:
        return dict(dial_fields())[name]["check"](name, value)
    except DialError as e:
        raise CalibrationError(name, value, e.problem) from None


@dataclass(frozen=True)
class Effort:
    """What one reasoning_effort stands for: request fields, exactly as if the client had sent them.

    lam, or lam_think with lam_answer (and lam_marker, the end marker of that schedule); the thinking limits
    thinking_token_budget, min_thinking_tokens and thinking_closing; and chat_template_kwargs, of which only
    `enable_thinking` is taken. `enable_thinking: false` also stands for thinking_token_budget = 0, so that a
    prompt no template renders (completions, vLLM) skips thinking too. Every field is optional, but an
    effort sets at least one. Raises CalibrationError (a ValueError) naming the field and its value.
    """

    lam: float | None = None
    thinking_token_budget: int | None = None
    chat_template_kwargs: dict | None = None
    lam_think: float | None = None
    lam_answer: float | None = None
    lam_marker: str | None = None
    min_thinking_tokens: int | None = None
    thinking_closing: str | None = None

    def __post_init__(self) -> None:
        for name in DIAL_KEYS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _dial_value(name, getattr(self, name)))
        self._check_template()
        self._check_together()

    def _check_template(self) -> None:
        kwargs = self.chat_template_kwargs
        if kwargs is None:
            return
        if not isinstance(kwargs, dict):
            raise CalibrationError(
                "chat_template_kwargs", kwargs, 'must be an object such as {"enable_thinking": false}'
            )
        for key, value in kwargs.items():
            if key not in TEMPLATE_KEYS:
                takes = ", ".join(TEMPLATE_KEYS)
                raise CalibrationError(
                    f"chat_template_kwargs.{key}", value, f"unknown key; an effort's template takes {takes}"
                )
            if not isinstance(value, bool):
                raise CalibrationError(f"chat_template_kwargs.{key}", value, "must be true or false")

    def _check_together(self) -> None:
        own = self.to_json()
        if not self.dial() and not self.chat_template_kwargs:
            raise CalibrationError(
                "", own, f"an effort sets at least one of {', '.join(f.name for f in fields(self))}"
            )
        if self.lam is not None and (self.lam_think is not None or self.lam_answer is not None):
            raise CalibrationError("lam", self.lam, "give either lam or lam_think with lam_answer, not both")
        if (self.lam_think is None) != (self.lam_answer is None):
            key = "lam_think" if self.lam_answer is None else "lam_answer"
            raise CalibrationError(key, own[key], "lam_think and lam_answer go together")
        if self.lam_marker is not None and self.lam_think is None:
            raise CalibrationError(
                "lam_marker", self.lam_marker, "the end marker of a schedule: give lam_think and lam_answer"
            )
        if self.skips_thinking and self.thinking_token_budget not in (None, 0):
            problem = "enable_thinking is false, which means a budget of 0: drop the budget or set it to 0"
            raise CalibrationError("thinking_token_budget", self.thinking_token_budget, problem)
        conflict = limit_conflict(self.dial())
        if conflict is not None:
            message, keys = conflict
            raise CalibrationError(keys[0], self.dial()[keys[0]], message)

    @property
    def skips_thinking(self) -> bool:
        """Whether this effort turns thinking off (chat_template_kwargs enable_thinking = false)."""
        return (self.chat_template_kwargs or {}).get("enable_thinking") is False

    def dial(self) -> dict[str, Any]:
        """The request fields this effort stands for (chat_template_kwargs aside; see the class docstring).

        Returns:
            request field -> value, only the fields it sets.
        """
        out = {k: getattr(self, k) for k in DIAL_KEYS if getattr(self, k) is not None}
        if self.skips_thinking:
            out.setdefault("thinking_token_budget", 0)
        return out

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Calibration:
    curve: list[CurvePoint]
    efforts: dict[str, Effort]
    meta: dict = field(default_factory=dict)  # benchmark, problems, samples, temperature, ...
    auto: AutoPolicy | None = None  # the lam "auto" policy (`flexrealign.decoding.adaptive`), when fitted

    def __post_init__(self) -> None:
        if not isinstance(self.curve, list) or not all(isinstance(p, CurvePoint) for p in self.curve):
            raise CalibrationError("curve", self.curve, "must be a list of points")
        if not isinstance(self.efforts, dict) or not self.efforts:
            raise CalibrationError("efforts", self.efforts, "must map at least one effort name to its fields")
        for name, effort in self.efforts.items():
            if not isinstance(name, str) or not name.strip():
                raise CalibrationError("efforts", name, "an effort's name must be a non-empty string")
            if not isinstance(effort, Effort):
                raise CalibrationError(f"efforts.{name}", effort, "must be an Effort")
        if not isinstance(self.meta, dict) or self.meta.keys() & {"curve", "efforts", "auto"}:
            raise CalibrationError(
                "meta", self.meta, "must be a dict without the keys curve, efforts and auto"
            )
        if "auto" in self.efforts:
            raise CalibrationError("efforts.auto", self.efforts["auto"], 'reasoning_effort "auto" is the '
                                   "calibrated policy (the auto key): name this effort otherwise")  # fmt: skip

    def landing(self) -> Landing:
        """The soft landing this curve gives (`flexrealign.decoding.adaptive.Landing`)."""
        return Landing(tuple((p.lam, p.mean_thinking_tokens) for p in self.curve))

    def to_json(self) -> dict:
        auto = {} if self.auto is None else {"auto": asdict(self.auto)}
        return {"curve": [asdict(p) for p in self.curve],
                "efforts": {k: e.to_json() for k, e in self.efforts.items()}, **auto, **self.meta}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """A calibration from the file's JSON, every value checked.

        Raises:
            CalibrationError: a missing key, a value of the wrong type or out of range, an unknown key; it
                names the key (as a path, such as `efforts.high.lam`) and the value.
        """
        if not isinstance(data, dict):
            shape = '{"curve": [...], "efforts": {...}}'
            raise CalibrationError("", _MISSING, f"the file holds a JSON {type(data).__name__}, not {shape}")
        for key, kind, what in (("curve", list, "a list"), ("efforts", dict, "an object")):
            if key not in data:
                raise CalibrationError(key, _MISSING, "missing")
            if not isinstance(data[key], kind):
                raise CalibrationError(key, data[key], f"must be {what}")
        curve = [_entry(CurvePoint, f"curve[{i}]", p) for i, p in enumerate(data["curve"])]
        efforts = {k: _entry(Effort, f"efforts.{k}", e) for k, e in data["efforts"].items()}
        auto = None if data.get("auto") is None else _entry(AutoPolicy, "auto", data["auto"])
        meta = {k: v for k, v in data.items() if k not in ("curve", "efforts", "auto")}
        return cls(curve, efforts, meta, auto)


def _entry(cls: type, key: str, raw: Any) -> Any:
    """`cls(**raw)` for one object of the file, with errors naming `key`."""
    names = [f.name for f in fields(cls)]
    if not isinstance(raw, dict):
        raise CalibrationError(key, raw, f"must be an object with the keys {', '.join(names)}")
    for k, v in raw.items():
        if k not in names:
            raise CalibrationError(f"{key}.{k}", v, f"unknown key; the keys are {', '.join(names)}")
    missing = [f.name for f in fields(cls) if f.name not in raw and f.default is MISSING]
    if missing:
        raise CalibrationError(f"{key}.{missing[0]}", _MISSING, "missing")
    try:
        return cls(**raw)
    except CalibrationError as e:
        raise e.under(key) from None
    except (ValueError, TypeError) as e:  # AutoPolicy's own checks
        raise CalibrationError(key, raw, str(e)) from None


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
    """Write `folder/flexrealign_calibration.json` atomically (a temporary file renamed over it).

    Args:
        folder: the checkpoint folder.
        calibration: the curve and effort table (checked when it was built).

    Returns:
        The path of the file written.
    """
    target = Path(folder) / CALIBRATION_FILE
    with atomic_file(target) as tmp, tmp.open("w") as f:
        json.dump(calibration.to_json(), f, indent=2, allow_nan=False)
        f.write("\n")
    return target


def load_calibration(folder: str | os.PathLike | None) -> Calibration | None:
    """The checkpoint's calibration, every value of the file checked (`Calibration.from_json`).

    Args:
        folder: a checkpoint folder; None or a Hub name (no such local folder) has no calibration.

    Returns:
        The calibration, or None when `folder` has no calibration file.

    Raises:
        ValueError: the file exists but is not a valid calibration; the message names the file, the key
            (such as `efforts.high.lam`) and the bad value.
    """
    if folder is None:
        return None
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(json.loads(path.read_text()))
    except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError and CalibrationError included
        raise ValueError(f"{path} is not a valid calibration: {e}. Fix the file, or rerun flexrealign "
                         "calibrate") from e  # fmt: skip
