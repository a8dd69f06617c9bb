"""Request bodies of the OpenAI-compatible API (pydantic), with the lam extensions.

lam fields may sit at the top level (the `openai` client sends them through `extra_body`) or inside
`vllm_xargs`, as the vLLM plugin expects; giving the same field in both places is an error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model

from flexrealign.decoding.dial import dial_fields


def _dial_args() -> type[BaseModel]:
    """The dial fields of `flexrealign.decoding.dial`, as optional body fields. Their values are checked once, by
    `parse_dial` (the schema takes any JSON value, so that every surface answers a bad value alike)."""
    fields: dict[str, Any] = {
        name: (Any, Field(None, description=meta["help"])) for name, meta in dial_fields()
    }
    return create_model("LamArgs", __config__=ConfigDict(extra="forbid"), __doc__=_DIAL_DOC, **fields)


_DIAL_DOC = """The lam and thinking fields (`flexrealign.decoding.dial.Dial`); exactly one of lam, lam_turns (chat only) or
the lam_think/lam_answer pair may be set. The thinking limits and reasoning_effort combine with any of them (an
explicit lam wins over the effort's lam)."""
LamArgs = _dial_args()


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown options are refused by name (serving.audit)

    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Common(LamArgs):  # type: ignore[valid-type,misc]
    """Fields shared by both endpoints: every field of OpenAI's schema is declared, so that `serving.audit` can
    honour it or refuse it by name. Unknown fields land in `model_extra` and are refused there too."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="vLLM extension: keep the k most likely tokens (0 or -1: all)")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    n: int = Field(1, ge=1)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # an end-user id for abuse monitoring: accepted, no effect on the output
    ignore_eos: bool = Field(False, description="vLLM extension: keep decoding past EOS up to max_tokens")
    vllm_xargs: dict[str, Any] | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ContentPart(BaseModel):
    """One part of a message's content; only "text" parts are served (others are refused by type)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A message as OpenAI defines it; fields and roles this server cannot honour are refused by name."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any | None = None
    refusal: str | None = None
    audio: Any | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's field: False drops the thinking that replies carry in `reasoning`; strict, as a string such as
    # "false" would otherwise pass as a bool
    include_reasoning: StrictBool = True
