"""Request validation for the HTTP API: the server's bounds, and the lam / thinking / reasoning_effort fields
turned into what the engine takes (a LamSpec, ThinkingLimits, SamplingParams)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import ValidationError

from flexrealign.calibration import CALIBRATE_HINT, Calibration, Effort
from flexrealign.generation import LamSchedule, LamSpec, ThinkingLimits, lam_for_next_turn
from flexrealign.serving.audit import Refused, audit_request
from flexrealign.serving.engine import Engine, SamplingParams
from flexrealign.serving.errors import APIError
from flexrealign.serving.protocol import ChatCompletionRequest, CompletionRequest, LamArgs

LAM_FIELDS = frozenset(LamArgs.model_fields)


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


def resolve_lam(
    args: LamArgs, messages: list[dict] | None, cfg: ServerConfig, fused: bool, effort: Effort | None = None
) -> LamSpec | None:
    """The lam (or think/answer LamSchedule) for this request: from the body (an explicit lam wins), else the
    reasoning_effort's calibrated lam, else the server default."""
    given = [
        k
        for k in ("lam", "lam_turns", "lam_think", "lam_answer", "lam_marker")
        if getattr(args, k) is not None
    ]
    if not fused:
        if given:
            raise APIError(400, "this model has a single path: lam applies to InRa and DeRa models", given[0])
        return None
    modes = {"lam" if k == "lam" else "lam_turns" if k == "lam_turns" else "think" for k in given}
    if len(modes) > 1:
        raise APIError(400, "give only one of lam, lam_turns, or lam_think with lam_answer", given[0])
    for name in given:
        if name != "lam_marker":
            check_lam_values(name, getattr(args, name), cfg)
    if args.lam_turns is not None:
        if messages is None:
            raise APIError(400, "lam_turns applies to chat completions only", "lam_turns")
        return lam_for_next_turn(messages, args.lam_turns)
    if "think" in modes:
        if args.lam_think is None or args.lam_answer is None:
            raise APIError(400, "lam_think and lam_answer go together", "lam_think")
        return LamSchedule.think_answer(args.lam_think, args.lam_answer, args.lam_marker)
    if args.lam is not None:
        return args.lam
    return effort.lam if effort is not None else cfg.lam_default


def resolve_effort(args: LamArgs, cfg: ServerConfig) -> Effort | None:
    """The calibrated entry for the request's reasoning_effort; 400 when the model has no calibration (saying
    how to make one) or does not offer that effort. Never ignored silently."""
    name = args.reasoning_effort
    if name is None:
        return None
    if cfg.calibration is None:
        raise APIError(400, f"reasoning_effort needs a calibration of this model, and {cfg.model_name!r} has none. "
                       f"Create one with: {CALIBRATE_HINT}; then restart the server (or send lam and "
                       "thinking_token_budget instead)", "reasoning_effort", "no_calibration")  # fmt: skip
    effort = cfg.calibration.efforts.get(name)
    if effort is None:
        offered = ", ".join(cfg.calibration.efforts)
        raise APIError(400, f"reasoning_effort {name!r} is not offered by this model; it offers: {offered}",
                       "reasoning_effort", "invalid_value")  # fmt: skip
    return effort


def thinking_limits(args: LamArgs, effort: Effort | None) -> ThinkingLimits:
    """Budget, minimum and closing text: from the body, else the effort's budget."""
    budget = args.thinking_token_budget
    if budget is None and effort is not None:
        budget = effort.thinking_token_budget
    try:
        return ThinkingLimits(budget, args.min_thinking_tokens or 0, args.thinking_closing, args.lam_marker)
    except ValueError as e:
        raise APIError(400, str(e), "thinking_token_budget" if budget is None else "thinking_closing") from e


def lam_args(body: CompletionRequest | ChatCompletionRequest) -> LamArgs:
    """The lam and thinking fields, from the top level of the body or from vllm_xargs (not both)."""
    typos = sorted(k for k in body.model_extra or {} if k.lower().startswith(("lam", "think", "min_think")))
    if typos:
        raise APIError(400, f"unknown field {typos[0]!r}; the lam and thinking fields are "
                       f"{', '.join(sorted(LAM_FIELDS))}", typos[0], "unknown_field")  # fmt: skip
    top = body.model_dump(include=set(LAM_FIELDS), exclude_none=True)
    extra = body.vllm_xargs or {}
    both = sorted(top.keys() & extra.keys())
    if both:
        raise APIError(400, f"{both[0]} is given both in the body and in vllm_xargs", both[0])
    try:
        return LamArgs.model_validate(top | extra)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(["vllm_xargs", *map(str, err["loc"])])
        raise APIError(400, f"{param}: {err['msg']}", param=param) from e


def check_lam_values(name: str, value: float | list[float], cfg: ServerConfig) -> None:
    for v in value if isinstance(value, list) else [value]:
        if not math.isfinite(v):
            raise APIError(400, f"{name} must be a finite number, got {v}", name, "invalid_lam")
        if (cfg.lam_min is not None and v < cfg.lam_min) or (cfg.lam_max is not None and v > cfg.lam_max):
            raise APIError(400, f"{name}={v} is outside this server's range [{cfg.lam_min}, {cfg.lam_max}]",
                           name, "lam_out_of_range")  # fmt: skip


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
