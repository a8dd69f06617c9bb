"""Request validation for the HTTP API: the server's bounds, and the request's dial (`flexrealign.decoding.dial`: lam,
thinking limits, reasoning_effort) turned into what the engine takes (a LamSpec, ThinkingLimits,
SamplingParams). The dial is parsed by `parse_dial`, as in the CLI and the vLLM plugin; this module only reads
the fields from the body and turns a DialError into a 400."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from flexrealign.core.keywords import refuse_unknown_keywords
from flexrealign.decoding.calibration import Calibration
from flexrealign.decoding.dial import FIELD_NAMES, Dial, DialError, LamSpec, ThinkingLimits, parse_dial
from flexrealign.serving.audit import Refused, audit_request
from flexrealign.serving.engine import Engine, SamplingParams
from flexrealign.serving.errors import APIError
from flexrealign.serving.protocol import ChatCompletionRequest, CompletionRequest

LAM_FIELDS = frozenset(FIELD_NAMES)
log = logging.getLogger("flexrealign.serve")


@refuse_unknown_keywords
@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    lam_default: float = 1.0
    lam_min: float | None = None
    lam_max: float | None = None
    max_tokens_limit: int = 2048
    calibration: Calibration | None = None  # the reasoning_effort table (flexrealign calibrate)

    def __post_init__(self) -> None:
        lo, hi = self.lam_min, self.lam_max
        if any(v is not None and not math.isfinite(v) for v in (lo, hi, self.lam_default)):
            raise ValueError("lam_default, lam_min and lam_max must be finite")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"lam_min ({lo}) is above lam_max ({hi})")
        if (lo is not None and self.lam_default < lo) or (hi is not None and self.lam_default > hi):
            raise ValueError(f"lam_default {self.lam_default} is outside [lam_min, lam_max] = [{lo}, {hi}]")
        if self.max_tokens_limit < 1:
            raise ValueError(f"max_tokens_limit must be >= 1, got {self.max_tokens_limit}")
        for name, key, value in self.efforts_out_of_range():
            log.warning("reasoning_effort %r has %s=%s, outside this server's lam range [%s, %s]: requests "
                        "for it get a 400, as explicit %s does", name, key, value, lo, hi, key)  # fmt: skip

    def efforts_out_of_range(self) -> list[tuple[str, str, float]]:
        """(effort, field, lam) for each lam of the calibration outside [lam_min, lam_max]."""
        lo, hi = self.lam_min, self.lam_max
        efforts = self.calibration.efforts if self.calibration is not None else {}
        lams = [
            (name, key, getattr(e, key))
            for name, e in efforts.items()
            for key in ("lam", "lam_think", "lam_answer")
        ]
        return [(name, key, v) for name, key, v in lams if v is not None
                and ((lo is not None and v < lo) or (hi is not None and v > hi))]  # fmt: skip


def check_model(name: str, cfg: ServerConfig) -> None:
    if name != cfg.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {cfg.model_name!r}",
                       param="model", code="model_not_found")  # fmt: skip


def check_common(body: CompletionRequest | ChatCompletionRequest, cfg: ServerConfig) -> None:
    """404 for another model; 400 naming any field, option or message part this server does not honour."""
    check_model(body.model, cfg)
    try:
        audit_request(body)
    except Refused as e:
        raise APIError(400, e.message, param=e.param, code=e.code) from e


def completion_prompt(prompt: str | list, engine: Engine) -> list[int]:
    """A string, a list of token ids, or a batch of exactly one of those."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(
                400, "send one prompt per request (batches of prompts are not supported)", "prompt"
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        return engine.encode(prompt)
    return list(prompt)  # token ids: range-checked by the engine


def request_dial(
    body: CompletionRequest | ChatCompletionRequest, cfg: ServerConfig, native: bool = False
) -> Dial:
    """The request's dial, from the top level of the body or from vllm_xargs (not both), parsed once.

    Args:
        body: the request.
        cfg: the server's lam range and calibration.
        native: the chat template reads reasoning_effort itself (gpt-oss; see `parse_dial`).

    Returns:
        The validated Dial, the request's reasoning_effort expanded under its fields.

    Raises:
        APIError: 400 naming the field at fault (reasoning_effort for a value the effort supplied).
    """
    top = body.model_dump(include=set(LAM_FIELDS), exclude_none=True)
    extra = body.vllm_xargs or {}
    both = sorted(top.keys() & extra.keys())
    if both:
        raise APIError(400, f"{both[0]} is given both in the body and in vllm_xargs", both[0])
    try:
        return parse_dial(top | extra, cfg.calibration, lam_range=(cfg.lam_min, cfg.lam_max),
                          native_effort=native)  # fmt: skip
    except DialError as e:
        raise dial_error(e, "vllm_xargs." if e.code == "unknown_field" else "") from e


def dial_error(e: DialError, prefix: str = "") -> APIError:
    """A DialError as the 400 this server answers (`prefix` places a key that is no field: `vllm_xargs.`)."""
    return APIError(400, e.message, prefix + e.param, e.code)


def serve_dial(
    dial: Dial, messages: list[dict] | None, cfg: ServerConfig, engine: Engine
) -> tuple[LamSpec | None, ThinkingLimits]:
    """What the engine takes of a dial: the lam (a float or LamSchedule; None for a single-path model) and the
    thinking limits, checked against the model (its paths, its tokenizer's think markers).

    Args:
        dial: the request's dial (`request_dial`).
        messages: the chat (lam_turns picks the turn's entry), None for completions.
        cfg: the server's default lam.
        engine: the engine serving the request.

    Returns:
        (lam, limits).

    Raises:
        APIError: 400 naming the field at fault.
    """
    try:
        lam = dial.lam_spec(messages, engine.is_fused, cfg.lam_default)
        dial.check_tokenizer(engine.tokenizer)
        return lam, dial.limits()
    except DialError as e:
        raise dial_error(e) from e


def sampling(
    body: CompletionRequest | ChatCompletionRequest,
    max_tokens: int | None,
    prompt_len: int,
    cfg: ServerConfig,
    engine: Engine,
    thinking: ThinkingLimits | None = None,
) -> SamplingParams:
    """Sampling settings; max_tokens defaults to what fits the context, up to the server's limit."""
    requested = max_tokens or body.max_tokens
    room = None if engine.context_length is None else engine.context_length - prompt_len
    if room is not None and room < 1:
        raise APIError(400, f"the prompt has {prompt_len} tokens; this model's maximum context length is "
                       f"{engine.context_length}", "messages" if isinstance(body, ChatCompletionRequest) else
                       "prompt", "context_length_exceeded")  # fmt: skip
    if requested is not None and requested > cfg.max_tokens_limit:
        raise APIError(400, f"max_tokens={requested} is above this server's limit of {cfg.max_tokens_limit}",
                       "max_tokens", "max_tokens_too_large")  # fmt: skip
    if requested is None:
        requested = min(cfg.max_tokens_limit, room if room is not None else cfg.max_tokens_limit)
    return SamplingParams(
        max_tokens=requested, temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0),
        seed=body.seed, stop=body.stop_list(), ignore_eos=body.ignore_eos, thinking=thinking or ThinkingLimits(),
    )  # fmt: skip


def native_effort_kwargs(args: Dial, body_kwargs: dict | None, native: bool) -> dict:
    """The chat template arguments that carry the request's reasoning_effort to a template that reads it.

    Raises:
        APIError: 400 when chat_template_kwargs names another reasoning_effort than the request.
    """
    name = args.reasoning_effort
    if not native or name is None:
        return {}
    given = (body_kwargs or {}).get("reasoning_effort", name)
    if given != name:
        raise APIError(400, f"reasoning_effort {name!r} and chat_template_kwargs.reasoning_effort {given!r} "
                       "disagree; send one", "chat_template_kwargs.reasoning_effort", "invalid_value")  # fmt: skip
    return {"reasoning_effort": name}
