"""What one vLLM request asks of the dial, read from `SamplingParams.extra_args` (`vllm_xargs` over HTTP):

    lam                         one lam for the whole request (default 1.0)
    lam_think, lam_answer       a lam per thinking stage (together; lam_marker overrides the end marker)
    thinking_token_budget       at most this many thinking tokens (our own key: vLLM's top-level field of the
    min_thinking_tokens         same name needs --reasoning-parser and acts without lam), minimum, and the
    thinking_closing            text forced before the end marker when the budget runs out
    reasoning_effort            an effort of the checkpoint's calibration (an explicit lam wins)

The same names and rules as `flexrealign serve`. Checks that need no tokenizer run in `check_args`, from the
processor's `validate_params` (so vLLM answers HTTP 400 before the request reaches the engine).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from vllm.exceptions import VLLMValidationError

from flexrealign.calibration import CALIBRATE_HINT, Calibration, Effort
from flexrealign.generation import LamSchedule, LamSpec, ThinkingLimits
from flexrealign.thinking import thinking_plan

DEFAULT_LAM = 1.0  # as flexrealign.generate: a request without lam gets the aligned model
LAM_KEYS = ("lam", "lam_think", "lam_answer")
THINKING_KEYS = ("lam_marker", "thinking_token_budget", "min_thinking_tokens", "thinking_closing")
KEYS = (*LAM_KEYS, *THINKING_KEYS, "reasoning_effort")

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
    budget); VLLMValidationError naming the problem otherwise. A no-op when the tokenizer is not known."""
    if not dial.needs_state or _tokenizer_source is None:
        return
    spec = dial.lam
    lams = spec.lams if isinstance(spec, LamSchedule) else (spec, spec)
    marker = (spec.marker if isinstance(spec, LamSchedule) else None) or dial.limits.marker
    lim = dial.limits
    try:
        thinking_plan(_tokenizer(*_tokenizer_source), *lams, budget=lim.thinking_token_budget,
                      min_tokens=lim.min_thinking_tokens, closing=lim.closing, end_marker=marker)  # fmt: skip
    except ValueError as e:
        key = "thinking_token_budget" if lim.active else "lam_think"
        raise _fail(str(e), key) from e


@dataclass(frozen=True)
class DialRequest:
    """A request's lam (float or LamSchedule) and thinking limits, validated."""

    lam: LamSpec
    limits: ThinkingLimits

    @property
    def needs_state(self) -> bool:
        """Whether the thinking state machine must run for this request (a schedule or a limit)."""
        return isinstance(self.lam, LamSchedule) or self.limits.active


def _fail(message: str, key: str, value: Any = None) -> VLLMValidationError:
    return VLLMValidationError(f"InRa: {message}", parameter=f"vllm_xargs.{key}", value=value)


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
    effort = _calibration.efforts.get(name)
    if effort is None:
        raise _fail(f"reasoning_effort {name!r} is not offered; this checkpoint offers: "
                    f"{', '.join(_calibration.efforts)}", "reasoning_effort", name)  # fmt: skip
    return effort


def dial_request(extra_args: dict | None) -> DialRequest:
    """Parse and check a request's dial keys; VLLMValidationError (HTTP 400) for bad values."""
    args = extra_args or {}
    effort = _effort(args)
    lam, think, answer = (_number(args, k) for k in LAM_KEYS)
    if (think is None) != (answer is None):
        raise _fail("lam_think and lam_answer go together", "lam_think")
    if lam is not None and think is not None:
        raise _fail("give either lam or lam_think with lam_answer", "lam")
    marker = args.get("lam_marker")
    if marker is not None and (not isinstance(marker, str) or not marker):
        raise _fail(f"'lam_marker' must be a non-empty string, got {marker!r}", "lam_marker", marker)
    spec: LamSpec
    if think is not None:
        spec = LamSchedule.think_answer(think, answer, marker)  # type: ignore[arg-type]
    else:
        spec = lam if lam is not None else effort.lam if effort is not None else DEFAULT_LAM
    return DialRequest(spec, _limits(args, effort, marker))


def _limits(args: dict, effort: Effort | None, marker: str | None) -> ThinkingLimits:
    budget, minimum = _count(args, "thinking_token_budget"), _count(args, "min_thinking_tokens") or 0
    if budget is None and effort is not None:
        # an effort that skips thinking through the template cannot re-render a vLLM prompt: a budget of 0
        # forces the end marker at once, which is the same for the answer
        budget = 0 if effort.chat_template_kwargs else effort.thinking_token_budget
    closing = args.get("thinking_closing")
    if closing is not None and not isinstance(closing, str):
        raise _fail(f"'thinking_closing' must be a string, got {closing!r}", "thinking_closing", closing)
    try:
        return ThinkingLimits(budget, minimum, closing, marker)
    except ValueError as e:
        raise _fail(str(e), "thinking_token_budget", budget) from e


__all__ = ["DEFAULT_LAM", "DialRequest", "KEYS", "check_markers", "dial_request", "set_served_model"]
