"""What one vLLM request asks of the dial, read from `SamplingParams.extra_args` (`vllm_xargs` over HTTP).

The keys and rules are those of `flexrealign.decoding.dial` (lam, lam_think/lam_answer with lam_marker, the thinking
limits, reasoning_effort), parsed by the same `parse_dial` as `flexrealign serve` and `flexrealign generate`;
this module only turns a `DialError` into vLLM's `VLLMValidationError` (HTTP 400 before the request reaches
the engine, from the processor's `validate_params`). Keys that do not look like dial keys are left to other
plugins. `thinking_token_budget` here is our own key: vLLM's top-level field of the same name needs
--reasoning-parser and acts without lam.

A request is parsed once per distinct dial (`dial_request` caches the result), although the processor asks for
it several times (its paths, its validation, its row).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.exceptions import VLLMValidationError

from flexrealign.core.fusion import ALIGNED, REF
from flexrealign.decoding.adaptive import AutoLam
from flexrealign.decoding.calibration import Calibration, load_calibration
from flexrealign.decoding.dial import Dial, DialError, LamSchedule, LamSpec, ThinkingLimits, parse_dial

if TYPE_CHECKING:
    from vllm import SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_LAM = 1.0  # as flexrealign.generate: a request without lam gets the aligned model

_calibration: Calibration | None = None  # the served checkpoint's, set by the config hook
_tokenizer_source: tuple[str, bool] | None = (
    None  # (tokenizer path, trust_remote_code), set by the config hook
)


def set_served_model(calibration: Calibration | None, tokenizer: str | None, trust_remote_code: bool) -> None:
    """Record what the config hook found: the calibration, and where the tokenizer is (for marker checks)."""
    global _calibration, _tokenizer_source
    _calibration = calibration
    _tokenizer_source = None if tokenizer is None else (tokenizer, trust_remote_code)
    _parsed.cache_clear()  # an effort means what the new calibration says


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class DialRequest:
    """A request's lam (float or LamSchedule) and thinking limits, from its validated `dial`."""

    lam: LamSpec
    limits: ThinkingLimits
    dial: Dial

    @property
    def needs_state(self) -> bool:
        """Whether the thinking state machine must run for this request (a schedule or a limit)."""
        return isinstance(self.lam, LamSchedule) or self.limits.active


def validation_error(e: DialError) -> VLLMValidationError:
    """A DialError as vLLM's validation error (HTTP 400), its key placed in vllm_xargs."""
    return VLLMValidationError(f"InRa: {e.message}", parameter=f"vllm_xargs.{e.param}", value=e.value)


def dial_request(extra_args: dict | None) -> DialRequest:
    """Parse and check a request's dial keys, its reasoning_effort expanded under them (`parse_dial`).

    Args:
        extra_args: `SamplingParams.extra_args` (vllm_xargs over HTTP).

    Returns:
        The validated lam and limits.

    Raises:
        VLLMValidationError: HTTP 400 naming the bad key, or reasoning_effort for a value from the effort.
    """
    args = extra_args or {}
    # the type is part of the key: True == 1 and 1 == 1.0 would otherwise share an entry (True is refused)
    key = tuple(sorted((k, type(v), v) for k, v in args.items()))
    try:
        return _parsed(key)
    except TypeError:  # an unhashable value (a list): parse it uncached
        return _parse(args)


@functools.lru_cache(maxsize=1024)
def _parsed(key: tuple[tuple[str, type, Any], ...]) -> DialRequest:
    return _parse({k: v for k, _, v in key})


def _parse(args: dict) -> DialRequest:
    try:
        dial = parse_dial(args, _calibration, ignore_unknown=True)
        return DialRequest(dial.lam_spec(default=DEFAULT_LAM), dial.limits(), dial)
    except DialError as e:
        raise validation_error(e) from None


def check_markers(request: DialRequest) -> None:
    """The tokenizer has the think marker the request needs, and the limits fit it (closing text within the
    budget); VLLMValidationError naming the problem otherwise (reasoning_effort when the effort supplied
    every field involved). A no-op when the tokenizer is not known."""
    if _tokenizer_source is None:
        return
    try:
        request.dial.check_tokenizer(_tokenizer(*_tokenizer_source))
    except DialError as e:
        raise validation_error(e) from None


def lam_paths(lams: Iterable[float]) -> frozenset[str]:
    """The paths needed to serve every lam in `lams`: ref unless all are 1, aligned unless all are 0."""
    lams = list(lams)
    need = {REF} if any(lam != 1 for lam in lams) else set()
    return frozenset(need | ({ALIGNED} if any(lam != 0 for lam in lams) else set()))


def request_paths(params: SamplingParams) -> frozenset[str]:
    """The paths a request can ever need: those of every lam it may take (all stages of its schedule).

    Every stage counts, since a path skipped in one step leaves a hole in that path's KV cache that no
    later step (a later stage with another lam) can fill.
    """
    request = dial_request(params.extra_args)
    spec, landing = request.lam, request.limits.landing
    if isinstance(spec, AutoLam):  # its policy may choose either lam
        return lam_paths([0.5])
    lams = list(spec.lams) if isinstance(spec, LamSchedule) else [float(spec)]
    # a soft landing thinks between the request's lam and the shortest-thinking one, then steers to it
    return lam_paths(lams + ([landing.shortest_lam] if landing is not None else []))


def record_served_model(model_config: Any) -> None:
    """Load the checkpoint's reasoning_effort calibration and note its tokenizer, for request validation."""
    calibration = load_calibration(getattr(model_config, "model", None))  # None: a Hub name, no calibration
    tokenizer = getattr(model_config, "tokenizer", None)
    set_served_model(calibration, tokenizer, bool(getattr(model_config, "trust_remote_code", False)))
    if calibration is not None:
        logger.info("InRa: reasoning_effort %s", {k: e.to_json() for k, e in calibration.efforts.items()})


__all__ = [
    "DEFAULT_LAM",
    "DialRequest",
    "check_markers",
    "dial_request",
    "lam_paths",
    "record_served_model",
    "request_paths",
    "set_served_model",
]
