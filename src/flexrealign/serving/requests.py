"""What callers hand the engine and get back: sampling settings, request handles, events and outputs."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from flexrealign.decoding.adaptive import AutoLam
from flexrealign.decoding.generation import LamSchedule, LamSpec, ThinkingLimits, check_sampling, row_thinking
from flexrealign.decoding.sampling import RowSampling
from flexrealign.decoding.thinking import ThinkingState


class InvalidRequest(ValueError):
    """A request the engine refuses; `param` names the offending field and `code` classifies the problem."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # decode past EOS up to max_tokens (benchmarks want fixed-length outputs)
    thinking: ThinkingLimits = field(default_factory=ThinkingLimits)  # budget, minimum, closing text

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        try:
            check_sampling(self.max_tokens, self.temperature, self.top_p, self.top_k)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e

    @property
    def sampling(self) -> RowSampling:
        return RowSampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


@dataclass(frozen=True)
class RequestOutput:
    """A finished request. finish_reason: "stop" (EOS or a stop string), "length", "cancelled" or "error"."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    lam: LamSpec | None
    error: str | None = None
    reasoning_tokens: int = 0  # thinking tokens (0 when the tokenizer has no think markers)
    reasoning: str = ""  # the think blocks' text, markers left out (split by token, `decoding.staged`)
    content: str = ""  # the rest of `text`: all of it when the tokenizer has no think markers
    auto_lam: float | None = None  # the lam its policy chose, for a request at lam auto

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Event:
    """What one step produced for one request: a text delta (may be empty while bytes are incomplete), the
    sampled token, on the request's last event its `output`, and the text passed on split by thinking stage:
    (THINKING or ANSWERING, text) parts, markers left out (`decoding.staged`; they add up to the output's
    `reasoning` and `content`, and may lag `delta` while a marker of several tokens is unresolved)."""

    delta: str
    token_id: int | None
    output: RequestOutput | None = None
    parts: tuple[tuple[str, str], ...] = ()


EventSink = Callable[[Event], None]


class RequestHandle:
    """A submitted request: cancel it, or wait for its output (events also go to its sink, if any)."""

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        lam: LamSpec | None,
        params: SamplingParams,
        sink: EventSink | None,
        wake: Callable[[], None],
        thinking: ThinkingState | None = None,
    ) -> None:
        self.request_id, self.prompt_ids, self.lam, self.params = request_id, prompt_ids, lam, params
        self.sink, self.thinking = sink, thinking
        self.output: RequestOutput | None = None
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._wake = wake

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating at the next step boundary and free the slot (no-op once done)."""
        if not self.done:
            self._cancelled.set()
            self._wake()

    def result(self, timeout: float | None = None) -> RequestOutput:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        assert self.output is not None
        return self.output


# ---------------------------------------------------------------------------------------------- admission
def check_prompt(ids: list[int], params: SamplingParams, vocab: int, context_length: int | None) -> list[int]:
    """The prompt's token ids, or InvalidRequest: empty, ids outside [0, vocab), or no room for max_tokens."""
    if not ids:
        raise InvalidRequest("empty prompt: at least one token is needed to condition on", "prompt")
    if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise InvalidRequest(f"prompt token ids must be ints in [0, {vocab})", "prompt")
    limit = context_length
    if limit is not None and len(ids) + params.max_tokens > limit:
        raise InvalidRequest(
            f"this model's maximum context length is {limit} tokens, but {len(ids)} prompt tokens + "
            f"max_tokens {params.max_tokens} = {len(ids) + params.max_tokens}",
            "max_tokens" if len(ids) < limit else "prompt",
            "context_length_exceeded",
        )
    return ids


def check_lam(lam: LamSpec | None, fused: bool, model_name: str) -> LamSpec | None:
    """The request's lam, checked once when it enters (None means 1.0 for two-path models)."""
    if not fused:
        if lam is not None:
            raise InvalidRequest(
                f"lam applies to InRa and DeRa models; this {model_name} has a single path", "lam"
            )
        return None
    if lam is None:
        return 1.0
    if isinstance(lam, (LamSchedule, AutoLam)):
        return lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise InvalidRequest(f"lam must be a finite real number or a LamSchedule, got {lam!r}", "lam")
    return float(lam)


def request_thinking(
    tokenizer, prompt_ids: list[int], lam: LamSpec | None, params: SamplingParams, eos: set[int]
) -> ThinkingState | None:
    """The request's thinking state machine, built when it enters, so a missing marker is a 400, not a crash."""
    try:
        return row_thinking(tokenizer, 0.0 if lam is None else lam, params.thinking, prompt_ids, eos)
    except ValueError as e:
        param = "thinking_token_budget" if params.thinking.active else "lam_think"
        raise InvalidRequest(str(e), param, "missing_think_marker") from e
