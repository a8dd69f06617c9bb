"""What the server does with each field of OpenAI's request schema: honour it, or refuse it with a 400 naming it.

Audited against OpenAI's chat completions and (legacy) completions request schemas, fields and message
roles alike. Three kinds of field:
* honoured: the model, the prompt or messages, max_tokens / max_completion_tokens, temperature, top_p,
  stop, stream, stream_options.include_usage, seed, reasoning_effort (through the checkpoint's calibration,
  400 without one), and our extensions (lam and thinking fields, top_k, ignore_eos, chat_template_kwargs,
  vllm_xargs);
* accepted as metadata: fields that ask nothing of the output (user, metadata, safety_identifier,
  prompt_cache_key, prompt_cache_retention, parallel_tool_calls without tools, service_tier auto/default);
* everything else is refused unless its value asks for nothing (None, false, 0, the default): the
  `LIMITS` tables below. A field outside the schema is refused as unknown, so a typo is never ignored.
Message roles system, developer, user and assistant with text content are rendered by the chat template;
tool and function messages, tool calls, names, audio and non-text content parts are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from flexrealign.serving.protocol import ChatCompletionRequest, CompletionRequest, LamArgs

Check = tuple[Callable[[Any], bool], str]  # (the value asks for nothing we lack, why it is refused)

_TOOLS = "tools and function calling are not supported by this server"
COMMON_LIMITS: dict[str, Check] = {
    "n": (lambda v: v == 1, "n > 1 is not supported: send one request per completion"),
    "presence_penalty": (lambda v: v == 0, "presence_penalty is not supported by this server"),
    "frequency_penalty": (lambda v: v == 0, "frequency_penalty is not supported by this server"),
    "logit_bias": (lambda v: not v, "logit_bias is not supported by this server"),
}
COMPLETION_LIMITS: dict[str, Check] = {
    "logprobs": (lambda v: not v, "logprobs is not supported by this server"),
    "echo": (lambda v: not v, "echo is not supported by this server"),
    "suffix": (lambda v: not v, "suffix (insertion) is not supported by this server"),
    "best_of": (lambda v: v is None or v <= 1, "best_of > 1 is not supported by this server"),
}
CHAT_LIMITS: dict[str, Check] = {
    "logprobs": (lambda v: not v, "logprobs is not supported by this server"),
    "top_logprobs": (lambda v: not v, "top_logprobs is not supported by this server"),
    "tools": (lambda v: not v, _TOOLS),
    "tool_choice": (lambda v: v in (None, "none"), _TOOLS),
    "functions": (lambda v: not v, _TOOLS),
    "function_call": (lambda v: v in (None, "none"), _TOOLS),
    "response_format": (
        lambda v: v is None or v == {"type": "text"},
        "response_format json_object / json_schema (structured output) is not supported by this server",
    ),
    "verbosity": (lambda v: v is None, "verbosity is not supported by this server"),
    "modalities": (lambda v: v in (None, ["text"]), "only the text modality is supported"),
    "audio": (lambda v: v is None, "audio output is not supported by this server"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported by this server"),
    "web_search_options": (lambda v: v is None, "web search is not supported by this server"),
    "store": (lambda v: not v, "store: this server does not store completions"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "this server has one service tier"),
}
STREAM_OPTION_LIMITS: dict[str, Check] = {
    "include_obfuscation": (lambda v: not v, "stream obfuscation is not supported by this server"),
}
ROLES = ("system", "developer", "user", "assistant")
MESSAGE_FIELDS_REFUSED = {
    "name": "participant names are not supported (the chat template has no place for them)",
    "tool_calls": _TOOLS,
    "tool_call_id": _TOOLS,
    "function_call": _TOOLS,
    "refusal": "assistant refusal messages are not supported as input",
    "audio": "audio messages are not supported by this server",
}


class Refused(Exception):
    """A request field this server does not implement: answered with a 400 naming `param`."""

    def __init__(self, message: str, param: str, code: str = "unsupported") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def audit_request(body: CompletionRequest | ChatCompletionRequest) -> None:
    """Raise Refused for the first field, stream option or message part the server would not honour."""
    _refuse_unknown(body, "")
    chat = isinstance(body, ChatCompletionRequest)
    limits = COMMON_LIMITS | (CHAT_LIMITS if chat else COMPLETION_LIMITS)
    _apply(limits, body, "")
    if body.stream_options is not None:
        _refuse_unknown(body.stream_options, "stream_options.")
        _apply(STREAM_OPTION_LIMITS, body.stream_options, "stream_options.")
    if chat:
        for i, message in enumerate(body.messages):
            audit_message(message, f"messages[{i}]")


def audit_message(message: Any, where: str) -> None:
    if message.role not in ROLES:
        why = _TOOLS if message.role in ("tool", "function") else f"the roles served are {', '.join(ROLES)}"
        raise Refused(f"{where}.role {message.role!r} is not supported: {why}", f"{where}.role")
    _refuse_unknown(message, f"{where}.")
    for field, why in MESSAGE_FIELDS_REFUSED.items():
        if getattr(message, field) not in (None, []):
            raise Refused(f"{where}.{field}: {why}", f"{where}.{field}")
    for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
        if part.type != "text" or part.text is None:
            raise Refused(
                f"{where}.content[{j}]: content parts of type {part.type!r} are not supported (text only)",
                f"{where}.content[{j}].type",
            )
        _refuse_unknown(part, f"{where}.content[{j}].")


def _apply(limits: dict[str, Check], model: BaseModel, prefix: str) -> None:
    for field, (fine, why) in limits.items():
        if not fine(getattr(model, field)):
            raise Refused(why, prefix + field)


def _refuse_unknown(model: BaseModel, prefix: str) -> None:
    for key in model.model_extra or {}:
        hint = ""
        if key.lower().startswith(("lam", "think", "min_think")):  # a typo would silently serve the default
            hint = f"; the lam and thinking fields are {', '.join(sorted(LamArgs.model_fields))}"
        raise Refused(f"unknown field {prefix + key!r}: this server does not implement it{hint}",
                      prefix + key, "unknown_field")  # fmt: skip
