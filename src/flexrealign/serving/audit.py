"""What the server does with each field of OpenAI's request schema: honour it, or refuse it with a 400 naming it.

Audited against OpenAI's chat completions and (legacy) completions request schemas, fields and message
roles alike. Three kinds of field:
* honoured: the model, the prompt or messages, max_tokens / max_completion_tokens, temperature, top_p,
  stop, stream, stream_options.include_usage, seed, reasoning_effort (through the checkpoint's calibration,
  400 without one), and our extensions (lam and thinking fields, top_k, ignore_eos, chat_template_kwargs,
  vllm_xargs, include_reasoning);
* accepted as metadata: fields that ask nothing of the output (user, metadata, safety_identifier,
  prompt_cache_key, prompt_cache_retention, parallel_tool_calls without tools, service_tier auto/default);
* everything else is refused unless its value asks for nothing (None, false, 0, the default): the
  `LIMITS` tables below. A field outside the schema is refused as unknown, so a typo is never ignored.
Messages: roles system, developer, user and assistant with text content are accepted by the schema; tool
and function messages, other roles, tool calls, names, audio and non-text content parts are refused. That the
chat template renders each accepted message is checked on what it produced (`audit_rendering`):
* the chat is rendered once more with each message's content replaced by a unique sentinel (digits, which
  survive trimming and case changes); a message whose sentinel is not in that prompt is one the template has
  no branch for (Qwen3 has none for "developer"): refused with a 400 naming its index and role;
* each message's own text must be in the real prompt, with runs of whitespace collapsed (templates trim
  content); otherwise it is refused with a 400 naming its index, role and content;
* a template that raises (`raise_exception`) is a 400 naming the first message it refuses.
Allowed on purpose: an assistant message's text up to its last `</think>` is its thinking, and reasoning
templates (Qwen3, DeepSeek-R1) leave the thinking of earlier turns out of the prompt, as the model was
trained; only the answer after `</think>` must reach the prompt. A message with empty content has no text to
lose, but still needs its sentinel in the prompt.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from flexrealign.decoding.prompts import render_chat
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


# ------------------------------------------------------------------------------- what the template renders
THINK_END = "</think>"  # reasoning templates drop an earlier assistant turn's text up to this marker


def audit_rendering(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], template_kwargs: dict
) -> None:
    """Raise Refused for the first message the chat template leaves out of the prompt (module docstring).

    Args:
        tokenizer: the served tokenizer; without a chat template nothing is checked (encoding refuses).
        messages: the chat as the template gets it, `{"role", "content"}` dicts with string content.
        template_kwargs: the keyword arguments the prompt is rendered with (enable_thinking, ...).

    Raises:
        Refused: naming `messages[i].role` (the template renders nothing of that message, or raises on it) or
            `messages[i].content` (the template renders the message without its text).
    """
    if tokenizer.chat_template is None:
        return
    prompt = _render_or_refuse(tokenizer, messages, template_kwargs)
    tags = _sentinels(len(messages))
    try:
        probe = render_chat(tokenizer, [m | {"content": t} for m, t in zip(messages, tags, strict=True)],
                            template_kwargs)  # fmt: skip
    except (TemplateError, TypeError, ValueError):
        probe = None  # a template that refuses sentinel content: the content check below still holds
    if probe is not None:
        _refuse_unrendered(messages, [t in probe for t in tags])
    flat = _squeeze(prompt)
    for i, message in enumerate(messages):
        if _squeeze(required_text(message)) not in flat:
            raise Refused(f"messages[{i}] (role {message['role']!r}): its content "
                          f"{message['content']!r:.80} does not reach the prompt: the model's chat "
                          "template drops or rewrites it", f"messages[{i}].content",
                          "message_not_rendered")  # fmt: skip


def _refuse_unrendered(messages: Sequence[dict], rendered: list[bool]) -> None:
    """Refused for the first message whose sentinel the template left out, with the roles it did render."""
    shown = sorted({m["role"] for m, r in zip(messages, rendered, strict=True) if r})
    for i, (message, seen) in enumerate(zip(messages, rendered, strict=True)):
        if not seen:
            role = message["role"]
            hint = f"; the roles it rendered in this chat are {', '.join(shown)}" if shown else ""
            raise Refused(f"messages[{i}] (role {role!r}) does not reach the prompt: the model's chat "
                          f"template renders nothing of a {role!r} message at this place{hint}",
                          f"messages[{i}].role", "message_not_rendered")  # fmt: skip


def required_text(message: dict) -> str:
    """What of a message must reach the prompt: its content, or an assistant turn's answer after </think>."""
    content = message.get("content") or ""
    if message.get("role") == "assistant" and THINK_END in content:
        return content.rsplit(THINK_END, 1)[1]
    return content


def _render_or_refuse(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], kwargs: dict) -> str:
    """The rendered prompt; a template that raises names the first message whose prefix it refuses."""
    try:
        return render_chat(tokenizer, messages, kwargs)
    except (TypeError, ValueError) as e:  # arguments apply_chat_template refuses (tokenize, ...)
        raise Refused(f"the chat cannot be rendered with the chat template arguments {sorted(kwargs)}: {e}",
                      "chat_template_kwargs", "invalid_value") from e  # fmt: skip
    except TemplateError as e:
        if _refuses(tokenizer, [{"role": "user", "content": "Hi"}], kwargs):  # broken whatever it is given
            if "chat_template" not in kwargs:
                raise  # the server's own template: a 500, not the request's fault
            raise Refused(
                f"chat_template_kwargs.chat_template: {e}", "chat_template_kwargs.chat_template"
            ) from e
        i = next((k for k in range(len(messages)) if _refuses(tokenizer, messages[: k + 1], kwargs)), None)
        if i is None:
            why = f"the model's chat template refuses this conversation: {e}"
            raise Refused(why, "messages", "template_error") from e
        raise Refused(f"messages[{i}] (role {messages[i]['role']!r}): the model's chat template refuses "
                      f"the conversation from this message on: {e}", f"messages[{i}].role",
                      "template_error") from e  # fmt: skip


def _refuses(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], kwargs: dict) -> bool:
    try:
        render_chat(tokenizer, messages, kwargs)
    except (TemplateError, TypeError, ValueError):
        return True
    return False


def _sentinels(n: int) -> list[str]:
    """n distinct strings of 24 random digits: no template text has them; trim, upper and lower keep them."""
    base = f"{secrets.randbelow(10**18):018d}"
    return [f"{base}{i:06d}" for i in range(n)]


def _squeeze(text: str) -> str:
    return " ".join(text.split())
