"""One dial field's check, in pure Python: the value checks that `flexrealign.decoding.dial.Dial` declares its
fields with (`dial_field`), and the error they raise (`DialError`), which every surface turns into its own (a 400,
a `VLLMValidationError`, a usage error)."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from flexrealign.decoding.adaptive import AUTO, LANDINGS


class DialError(ValueError):
    """A dial value that is refused: `param` names the field, `code` classifies the problem.

    Args:
        message: what is wrong and how to fix it.
        param: the dial field at fault (`reasoning_effort` when the effort supplied the value).
        code: a short class of the problem (`invalid_lam`, `lam_out_of_range`, `missing_think_marker`, ...).
        value: the offending value, when there is one.
        problem: what is wrong without the field and value ("must be an int >= 0"); default: the message.
    """

    def __init__(
        self, message: str, param: str, code: str = "invalid_value", value: Any = None, problem: str = ""
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.value = message, param, code, value
        self.problem = problem or message


def bad_value(name: str, value: Any, problem: str, code: str = "invalid_value") -> DialError:
    return DialError(f"{name} {problem}, got {value!r}", name, code, value, problem)


def finite_real(name: str, value: Any) -> float:
    try:  # an int too large for a float (JSON allows 400 digits) is not a finite number either
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        ok = False
    if not ok:
        raise bad_value(name, value, "must be a finite number", "invalid_lam")
    return float(value)


def finite_reals(name: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise bad_value(name, value, "must be a non-empty list of finite numbers")
    return tuple(finite_real(name, v) for v in value)


def lam_value(name: str, value: Any) -> float | str:
    return AUTO if value == AUTO else finite_real(name, value)


def landing_value(name: str, value: Any) -> str:
    if value not in LANDINGS:
        raise bad_value(name, value, f"must be one of {', '.join(map(repr, LANDINGS))}")
    return value


class LamValue:
    """The type of a lam flag's value: a number, or "auto" (the checkpoint's calibrated policy)."""

    def __new__(cls, text: str) -> float | str:  # type: ignore[misc]
        return AUTO if str(text).strip().lower() == AUTO else float(text)


def count_value(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_value(name, value, "must be an int >= 0")
    return value


def text_value(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad_value(name, value, "must be a non-empty string")
    return value


_TYPES = {
    finite_real: float,
    finite_reals: list[float],
    count_value: int,
    text_value: str,
    lam_value: LamValue,
    landing_value: str,
}  # the type of a value, by its check


def dial_field(check, help: str, flag: str | None = None, many: bool = False):  # noqa: A002
    """A dial field: its check, the type of its value, its help, its CLI flag when it is not its name, and
    whether the CLI takes several values (a sweep of lams, answered one after another)."""
    meta = {"check": check, "type": _TYPES[check], "help": help, "flag": flag, "many": many}
    return field(default=None, metadata=meta)
