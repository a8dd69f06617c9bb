"""What one vLLM request asks of the dial, read from `SamplingParams.extra_args` (`vllm_xargs` over HTTP):

    lam                         one lam for the whole request (default 1.0)
    lam_think, lam_answer       a lam per thinking stage (together; lam_marker overrides the end marker)
    thinking_token_budget       at most this many thinking tokens (our own key: vLLM's top-level field of the
    min_thinking_tokens         same name needs --reasoning-parser and acts without lam), minimum, and the
    thinking_closing            text forced before the end marker when the budget runs out
    reasoning_effort            an effort of the checkpoint's calibration: the keys it stands for, under the
                                request's own (its lam keys win as a group, its limits one by one)

The same names and rules as `flexrealign serve`. Checks that need no tokenizer run in `check_args`, from the
processor's `validate_params` (so vLLM answers HTTP 400 before the request reaches the engine).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

from vllm.exceptions import VLLMValidationError

from flexrealign.calibration import CALIBRATE_HINT, Calibration, Effort, blame, expand_effort
from flexrealign.generation import LamSchedule, LamSpec, ThinkingLimits
from flexrealign.thinking import MissingThinkMarker, limit_conflict, thinking_plan

DEFAULT_LAM = 1.0  # as flexrealign.generate: a request without lam gets the aligned model
LAM_KEYS = ("lam", "lam_think", "lam_answer")
THINKING_KEYS = ("lam_marker", "thinking_token_budget", "min_thinking_tokens", "thinking_closing")
KEYS = (*LAM_KEYS, *THINKING_KEYS, "reasoning_effort")
CLOSING_KEYS = ("thinking_closing", "thinking_token_budget")

_calibration: Calibration | None = None  # the served checkpoint's, set by the config hook
_tokenizer_source: tuple[str, bool] | None = (
    None  # (tokenizer path, trust_remote_code), set by the config hook
)


def set_served_model(calibration: Calibration | None, tokenizer: str | None, trust_remote_code: bool) -> None:
    """Record what the config hook found: the calibration, and where the tokenizer is (for marker checks)."""
    global _calibration, _tokenizer_source
    _calibration = calibration
    _tokenizer_source = None if tokenizer is None else (tokenizer, trust_remote_code)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def check_markers(dial: DialRequest) -> None:
    """The tokenizer has the think marker the request needs, and the limits fit it (closing text within the
    budget); VLLMValidationError naming the problem otherwise (reasoning_effort when the effort supplied
    every field involved). A no-op when the tokenizer is not known."""
    if not dial.needs_state or _tokenizer_source is None:
        return
    spec = dial.lam
    lams = spec.lams if isinstance(spec, LamSchedule) else (spec, spec)
    marker = (spec.marker if isinstance(spec, LamSchedule) else None) or dial.limits.marker
    lim = dial.limits
    try:
        thinking_plan(_tokenizer(*_tokenizer_source), *lams, budget=lim.thinking_token_budget,
                      min_tokens=lim.min_thinking_tokens, closing=lim.closing, end_marker=marker)  # fmt: skip
    except ValueError as e:  # the fields involved: what needs the marker, or the closing text and budget
        keys = _marker_keys(dial, marker) if isinstance(e, MissingThinkMarker) else list(CLOSING_KEYS)
        raise _blamed(_fail(str(e), blame(keys, dial.taken) or keys[0]), dial) from e


def _marker_keys(dial: DialRequest, marker: str | None) -> list[str]:
    """The keys that make a request need the think marker (and the marker it asks for)."""
    lim = dial.limits
    wanted = {"thinking_token_budget": lim.thinking_token_budget is not None,
              "min_thinking_tokens": lim.min_thinking_tokens > 0,
              "lam_think": isinstance(dial.lam, LamSchedule), "lam_marker": marker is not None}  # fmt: skip
    return [k for k, on in wanted.items() if on]


@dataclass(frozen=True)
class DialRequest:
    """A request's lam (float or LamSchedule) and thinking limits, validated; with its reasoning_effort and
    the keys that came from it (`calibration.expand_effort`)."""

    lam: LamSpec
    limits: ThinkingLimits
    effort: str | None = None
    taken: frozenset[str] = frozenset()
    fields: dict = field(default_factory=dict, compare=False)  # the request's keys with the effort's expanded

    @property
    def needs_state(self) -> bool:
        """Whether the thinking state machine must run for this request (a schedule or a limit)."""
        return isinstance(self.lam, LamSchedule) or self.limits.active


def _fail(message: str, key: str, value: Any = None) -> VLLMValidationError:
    return VLLMValidationError(f"InRa: {message}", parameter=f"vllm_xargs.{key}", value=value)


def _blamed(e: VLLMValidationError, dial: DialRequest) -> VLLMValidationError:
    """`e` as the effort's error when the key it names came from the effort, else `e` itself."""
    key = (e.parameter or "").removeprefix("vllm_xargs.")
    if key not in dial.taken:
        return e
    message = str(e.args[0]).removeprefix("InRa: ")
    return _fail(f"reasoning_effort {dial.effort!r} stands for {key}={dial.fields.get(key)!r}, and {message}",
                 "reasoning_effort", dial.effort)  # fmt: skip


def _number(args: dict, key: str) -> float | None:
    if key not in args:
        return None
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"extra_args / vllm_xargs '{key}' must be a finite number, got {value!r}", key, value)
    return float(value)


def _count(args: dict, key: str) -> int | None:
    value = args.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise _fail(f"'{key}' must be an int >= 0, got {value!r}", key, value)
    return value


def _effort(args: dict) -> Effort | None:
    name = args.get("reasoning_effort")
    if name is None:
        return None
    if _calibration is None:
        raise _fail(f"reasoning_effort needs a calibration of this checkpoint and it has none; create one with: "
                    f"{CALIBRATE_HINT}", "reasoning_effort", name)  # fmt: skip
    effort = _calibration.efforts.get(name) if isinstance(name, str) else None
    if effort is None:
        raise _fail(f"reasoning_effort {name!r} is not offered; this checkpoint offers: "
                    f"{', '.join(_calibration.efforts)}", "reasoning_effort", name)  # fmt: skip
    return effort


def dial_request(extra_args: dict | None) -> DialRequest:
    """Parse and check a request's dial keys, the reasoning_effort's expanded under them (the request's lam
    keys win as a group, its thinking limits one by one) and checked the same way.

    Args:
        extra_args: `SamplingParams.extra_args` (vllm_xargs over HTTP).

    Returns:
        The validated lam and limits.

    Raises:
        VLLMValidationError: HTTP 400 naming the bad key, or reasoning_effort for a value from the effort.
    """
    args = extra_args or {}
    effort = _effort(args)
    explicit = {k: v for k, v in args.items() if k != "reasoning_effort"}
    fields, taken = expand_effort(explicit, effort)
    partial = DialRequest(DEFAULT_LAM, ThinkingLimits(), args.get("reasoning_effort"), taken, fields)
    try:
        spec, marker = _lam_spec(fields, taken)
        return replace(partial, lam=spec, limits=_limits(fields, marker, taken))
    except VLLMValidationError as e:
        raise _blamed(e, partial) from None


def _lam_spec(args: dict, taken: frozenset[str]) -> tuple[LamSpec, str | None]:
    lam, think, answer = (_number(args, k) for k in LAM_KEYS)
    if (think is None) != (answer is None):
        raise _fail("lam_think and lam_answer go together", "lam_think" if answer is None else "lam_answer")
    if lam is not None and think is not None:
        raise _fail("give either lam or lam_think with lam_answer", blame(LAM_KEYS, taken) or "lam")
    marker = args.get("lam_marker")
    if marker is not None and (not isinstance(marker, str) or not marker):
        raise _fail(f"'lam_marker' must be a non-empty string, got {marker!r}", "lam_marker", marker)
    if think is not None:
        return LamSchedule.think_answer(think, answer, marker), marker  # type: ignore[arg-type]
    return (lam if lam is not None else DEFAULT_LAM), marker


def _limits(args: dict, marker: str | None, taken: frozenset[str]) -> ThinkingLimits:
    budget, minimum = _count(args, "thinking_token_budget"), _count(args, "min_thinking_tokens")
    closing = args.get("thinking_closing")
    if closing is not None and (not isinstance(closing, str) or not closing):
        raise _fail(
            f"'thinking_closing' must be a non-empty string, got {closing!r}", "thinking_closing", closing
        )
    conflict = limit_conflict({"thinking_token_budget": budget, "min_thinking_tokens": minimum,
                               "thinking_closing": closing})  # fmt: skip
    if conflict is not None:
        message, keys = conflict
        key = blame(keys, taken) or keys[0]
        raise _fail(message, key, args.get(key))
    try:
        return ThinkingLimits(budget, minimum or 0, closing, marker)
    except ValueError as e:
        raise _fail(str(e), "thinking_token_budget", budget) from e


__all__ = ["DEFAULT_LAM", "DialRequest", "KEYS", "check_markers", "dial_request", "set_served_model"]
