"""Grade model outputs on math benchmarks: last ``\\boxed{}`` answer vs the gold answer.

The comparison follows the usual R1-style protocol: take the last boxed expression of the
completion, compare plain numbers exactly as numbers, everything else with math-verify
(symbolic equivalence), and fall back to a normalised string comparison.

Exact answers compare exactly: when neither answer is written with a decimal point and both evaluate to
rationals (or tuples, sets or intervals of rationals), they must be equal. math-verify compares unevaluated
numeric expressions in floating point with small differences chopped to zero, which would accept
1/2^98 for 1/2^99 or 2^100 + 1 for 2^100. A float tolerance applies only to answers written as decimals.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

import sympy
from math_verify import parse, verify
from math_verify.errors import TimeoutException

logger = logging.getLogger(__name__)

# `\boxed` / `\fbox` as whole commands (not e.g. `\boxedsomething`).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A plain decimal number; thousands separators only in well-formed groups so that a
# tuple answer like "1,2" is not read as the number 12.
_NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
# Seconds math-verify may spend per parse/compare; only usable on the main thread (SIGALRM).
MATH_VERIFY_TIMEOUT_S = 5
# Longer boxed answers skip symbolic checking: no real benchmark answer is this long (MATH-500's
# longest gold is 53 chars), and degenerate outputs can make sympy parsing take seconds, which
# off the main thread nothing would interrupt.
MAX_SYMBOLIC_CHARS = 256
# Exact evaluation skips powers with larger integer exponents (2^(10^9) would take minutes to expand).
MAX_EXACT_EXPONENT = 10_000
_DECIMAL_RE = re.compile(r"\d?\.\d")  # "0.5", ".5": an answer written as a decimal


def _match_braces(text: str, start: int) -> int | None:
    """Index of the `}` closing the `{` at ``text[start]``, or None if unbalanced."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            # Escaped characters (`\{`, `\}`, `\\`) never open or close a group.
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``.

    Returns None when there is none, or when the last one is cut off (unbalanced braces):
    a truncated final answer must not silently fall back to an earlier, intermediate box.
    """
    if not isinstance(text, str):
        return None
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    pos = matches[-1].end()
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        open_at = pos + len(rest) - len(stripped)
        close_at = _match_braces(text, open_at)
        return None if close_at is None else text[open_at + 1 : close_at].strip()
    # `\boxed 5$` form: the argument is the next token (up to whitespace or `$`).
    token = re.match(r"[^\s$]+", stripped)
    return token.group(0) if token else None


def gsm8k_gold(answer_field: str) -> str:
    """The final answer of a GSM8K ``answer`` field: the number after ``####``, commas removed."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


def _normalise(ans: str) -> str:
    """Light LaTeX normalisation used for numeric detection and the string fallback."""
    s = ans.strip().strip("$").strip()
    # `\text{(C)}` -> `(C)`; `\mbox`/`\textbf` likewise: formatting, not content.
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\{?\\circ\}?", "", s)  # degrees
    for tok in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "\\$", "\\%", "%", "$"):
        s = s.replace(tok, "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".").lower()


def _as_number(ans: str) -> Fraction | None:
    """Exact value of a plain decimal number ("025", "1,000", "-3.50"), else None."""
    s = _normalise(ans)
    if not s or not _NUMBER_RE.fullmatch(s) or not any(c.isdigit() for c in s):
        return None
    return Fraction(s.replace(",", ""))


def _exact_value(expr: object) -> object | None:
    """The exact value of a parsed answer made of rationals only: a Rational, or a tuple / frozenset /
    interval of them. None for anything else (symbols, irrationals, relations), or for powers so large
    that evaluating them could take long."""
    if isinstance(expr, (sympy.Tuple, tuple, list)):
        items = [_exact_value(e) for e in expr]
        return None if any(v is None for v in items) else tuple(items)
    if isinstance(expr, sympy.FiniteSet):
        items = [_exact_value(e) for e in expr.args]
        return None if any(v is None for v in items) else frozenset(items)
    if isinstance(expr, sympy.Interval):
        ends = _exact_value(expr.args[:2])
        return None if ends is None else ("interval", ends, expr.left_open, expr.right_open)
    if not isinstance(expr, sympy.Expr) or expr.free_symbols:
        return None
    if any(p.exp.is_Integer and abs(int(p.exp)) > MAX_EXACT_EXPONENT for p in expr.atoms(sympy.Pow)):
        return None
    value = expr.doit()
    return value if value.is_Rational else None


def _exact_equal(pred: str, gold: str) -> bool | None:
    """Exact comparison when both answers are exact rationals (see the module docstring), else None."""
    if any(_DECIMAL_RE.search(a) or "%" in a for a in (pred, gold)):
        return None  # decimals get math-verify's tolerance; percentages its 9% == 9 rule
    on_main = threading.current_thread() is threading.main_thread()
    limit = MATH_VERIFY_TIMEOUT_S if on_main else None
    try:
        values = []
        for answer in (pred, gold):
            parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=limit)  # type: ignore[arg-type]
            values.append(_exact_value(parsed[0]) if parsed else None)
    except (Exception, TimeoutException):
        return None
    return None if values[0] is None or values[1] is None else values[0] == values[1]


def _math_verify_equal(pred: str, gold: str) -> bool:
    """Symbolic equivalence via math-verify; False on any parse failure or timeout."""
    # math-verify's timeout is signal.alarm based, which raises outside the main thread:
    # disable it there (the caller's thread pool then owns runaway protection).
    on_main = threading.current_thread() is threading.main_thread()
    limit = MATH_VERIFY_TIMEOUT_S if on_main else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=limit)  # type: ignore[arg-type]
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=limit)  # type: ignore[arg-type]
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except (Exception, TimeoutException):
        logger.debug("math-verify failed on pred=%r gold=%r", pred[:200], gold[:200], exc_info=True)
        return False


def grade(prediction_text: str, gold: str) -> bool:
    """True when the last boxed answer of ``prediction_text`` matches ``gold``. Never raises."""
    try:
        pred = last_boxed(prediction_text)
        if pred is None or not isinstance(gold, str) or not gold.strip() or not pred.strip():
            return False
        pred_num, gold_num = _as_number(pred), _as_number(gold)
        if pred_num is not None and gold_num is not None:
            # Both plain numbers: exact comparison ("025" == 25), no float rounding slack.
            return pred_num == gold_num
        if _normalise(pred) == _normalise(gold):
            return True
        if max(len(pred), len(gold)) > MAX_SYMBOLIC_CHARS:
            return False
        exact = _exact_equal(pred, gold)
        return exact if exact is not None else _math_verify_equal(pred, gold)
    except Exception:
        logger.debug("grading failed", exc_info=True)
        return False
