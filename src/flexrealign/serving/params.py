"""Request validation for the HTTP API: the server's bounds, and the lam / thinking / reasoning_effort fields
turned into what the engine takes (a LamSpec, ThinkingLimits, SamplingParams)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pydantic import ValidationError

from flexrealign.calibration import CALIBRATE_HINT, Calibration, Effort, blame, expand_effort
from flexrealign.generation import LamSchedule, LamSpec, ThinkingLimits, lam_for_next_turn
from flexrealign.serving.audit import Refused, audit_request
from flexrealign.serving.engine import Engine, SamplingParams
from flexrealign.serving.errors import APIError
from flexrealign.serving.protocol import ChatCompletionRequest, CompletionRequest, LamArgs
from flexrealign.thinking import MissingThinkMarker, limit_conflict, thinking_plan

LAM_FIELDS = frozenset(LamArgs.model_fields)
log = logging.getLogger("flexrealign.serve")


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


def resolve_lam(
    args: LamArgs, messages: list[dict] | None, cfg: ServerConfig, fused: bool, effort: Effort | None = None
) -> LamSpec | None:
    """The lam (or think/answer LamSchedule) for this request: from the body (an explicit lam wins), else the
    reasoning_effort's lam fields, else the server default. The effort's fields go through the same checks as
    the body's (the server's lam range included); an error about them names reasoning_effort.

    Args:
        args: the request's lam and thinking fields.
        messages: the chat (for lam_turns), None for completions.
        cfg: the server's bounds.
        fused: whether the model has two paths (lam applies).
        effort: the calibrated effort the request names (resolve_effort), or None.

    Returns:
        A float or LamSchedule; None for a single-path model.

    Raises:
        APIError: 400 for a lam the server refuses.
    """
    dial, taken = effort_dial(args, effort)
    try:
        return _lam_spec(dial, messages, cfg, fused, taken)
    except APIError as e:
        raise _blamed(e, dial, taken) from None


def _lam_spec(
    args: LamArgs, messages: list[dict] | None, cfg: ServerConfig, fused: bool, taken: frozenset[str]
) -> LamSpec | None:
    # lam_marker alone names the end marker of the thinking limits (`thinking_limits`), as in the vLLM plugin
    given = [k for k in ("lam", "lam_turns", "lam_think", "lam_answer") if getattr(args, k) is not None]
    first = blame(given, taken) or (given[0] if given else None)  # what the client sent, when it sent any
    if not fused:
        if given:
            raise APIError(400, "this model has a single path: lam applies to InRa and DeRa models", first)
        return None
    modes = {"lam" if k == "lam" else "lam_turns" if k == "lam_turns" else "think" for k in given}
    if len(modes) > 1:
        raise APIError(400, "give only one of lam, lam_turns, or lam_think with lam_answer", first)
    for name in given:
        check_lam_values(name, getattr(args, name), cfg)
    if args.lam_turns is not None:
        if messages is None:
            raise APIError(400, "lam_turns applies to chat completions only", "lam_turns")
        return lam_for_next_turn(messages, args.lam_turns)
    if "think" in modes:
        if args.lam_think is None or args.lam_answer is None:
            raise APIError(400, "lam_think and lam_answer go together", "lam_think")
        return LamSchedule.think_answer(args.lam_think, args.lam_answer, args.lam_marker)
    return args.lam if args.lam is not None else cfg.lam_default


def resolve_effort(args: LamArgs, cfg: ServerConfig, native: bool = False) -> Effort | None:
    """The calibrated entry for the request's reasoning_effort; 400 when the model has no calibration (saying
    how to make one) or does not offer that effort. Never ignored silently.

    Args:
        native: the chat template takes reasoning_effort itself (gpt-oss): without a calibration the level then
            goes to the template alone (None is returned), as in vLLM; with one, it selects the calibrated lam
            and budget and goes to the template too (`native_effort_kwargs`).
    """
    name = args.reasoning_effort
    if name is None or (native and cfg.calibration is None):
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


def effort_dial(args: LamArgs, effort: Effort | None) -> tuple[LamArgs, frozenset[str]]:
    """The request's fields with the effort's expanded under them (`calibration.expand_effort`: the body's
    lam fields win as a group, its thinking limits one by one), validated as if the client had sent them.

    Args:
        args: the fields the client sent.
        effort: the effort it names, or None.

    Returns:
        (all the fields, the names among them that came from the effort).

    Raises:
        APIError: 400 naming reasoning_effort for an effort value the request schema refuses.
    """
    explicit = args.model_dump(exclude_none=True, exclude={"reasoning_effort"})
    fields, taken = expand_effort(explicit, effort)
    try:
        dial = LamArgs.model_validate(fields | {"reasoning_effort": args.reasoning_effort})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "reasoning_effort"
        raise _effort_error(args.reasoning_effort, key, fields.get(key), err["msg"], "invalid_value") from e
    return dial, taken


def _effort_error(name: str | None, key: str, value: object, message: str, code: str | None) -> APIError:
    return APIError(400, f"reasoning_effort {name!r} stands for {key}={value!r}, and {message}",
                    "reasoning_effort", code)  # fmt: skip


def _blamed(e: APIError, dial: LamArgs, taken: frozenset[str]) -> APIError:
    """`e` as the effort's error when the field it names came from the effort, else `e` itself."""
    if e.param not in taken:
        return e
    return _effort_error(dial.reasoning_effort, e.param, getattr(dial, e.param), e.message, e.code)


def thinking_limits(args: LamArgs, effort: Effort | None, tokenizer=None) -> ThinkingLimits:
    """Budget, minimum and closing text: each from the body, else from the effort (whose enable_thinking =
    false means a budget of 0, on every endpoint).

    Args:
        args: the fields the client sent.
        effort: the effort it names, or None.
        tokenizer: the model's tokenizer, to check an effort's marker and closing text (`_check_effort_thinking`).

    Returns:
        The limits for the engine.

    Raises:
        APIError: 400 for limits that do not fit together, naming the field the client sent, or
            reasoning_effort when the effort supplied all the fields involved.
    """
    dial, taken = effort_dial(args, effort)
    conflict = limit_conflict(dial.model_dump())
    if conflict is not None:
        message, keys = conflict
        raise _blamed(APIError(400, message, blame(keys, taken) or keys[0]), dial, taken)
    if effort is not None and tokenizer is not None:
        _check_effort_thinking(dial, taken, tokenizer)
    budget = dial.thinking_token_budget
    try:
        return ThinkingLimits(budget, dial.min_thinking_tokens or 0, dial.thinking_closing, dial.lam_marker)
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


def _check_effort_thinking(dial: LamArgs, taken: frozenset[str], tokenizer) -> None:
    """The request's dial (an effort expanded under its fields) against the model's tokenizer: the think marker
    its schedule or limits need, and its closing text within its budget. When every field involved came from
    the effort, a 400 names reasoning_effort (the engine would name fields the client never sent); otherwise
    the engine's own check answers.

    Raises:
        APIError: 400 naming reasoning_effort.
    """
    marker = ["lam_marker"] if dial.lam_marker is not None else []
    needs = [k for k in ("lam_think", "thinking_token_budget") if getattr(dial, k) is not None]
    needs += ["min_thinking_tokens"] if dial.min_thinking_tokens else []
    if not needs:
        return
    try:
        thinking_plan(tokenizer, 0.0, 0.0, budget=dial.thinking_token_budget, closing=dial.thinking_closing,
                      min_tokens=dial.min_thinking_tokens or 0, end_marker=dial.lam_marker)  # fmt: skip
    except MissingThinkMarker as e:
        keys, code, error = [*needs, *marker], "missing_think_marker", e
    except ValueError as e:
        keys, code, error = ["thinking_closing", "thinking_token_budget"], None, e
    else:
        return
    if blame(keys, taken) is None:
        raise _effort_error(
            dial.reasoning_effort, keys[0], getattr(dial, keys[0]), str(error), code
        ) from error


def native_effort_kwargs(args: LamArgs, body_kwargs: dict | None, native: bool) -> dict:
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
