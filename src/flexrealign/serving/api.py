"""The OpenAI-compatible HTTP API over an `Engine`: /v1/models, /v1/completions, /v1/chat/completions, /health.

Every request carries its own lam (`lam`, or for chats `lam_turns` or `lam_think`/`lam_answer`), validated
against the server's bounds. A chat is served only when its template renders every message into the prompt
(`serving.audit.audit_rendering`). Errors use OpenAI's body, {"error": {"message", "type", "param", "code"}}:
400 for every invalid request (malformed JSON, a body that does not fit the schema, values or messages this
server refuses), as OpenAI and vLLM answer them; 401 for a missing or wrong API key, 404 for an unknown model
or route, 503 when the engine is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from flexrealign.decoding.adaptive import AutoLam
from flexrealign.decoding.calibration import Calibration
from flexrealign.decoding.generation import LamSpec
from flexrealign.decoding.prompts import template_takes
from flexrealign.decoding.step import check_auto_policy
from flexrealign.serving.audit import Refused, audit_rendering
from flexrealign.serving.engine import (
    Engine,
    Event,
    InvalidRequest,
    RequestHandle,
    RequestOutput,
    SamplingParams,
)
from flexrealign.serving.errors import APIError, ApiKeyMiddleware, error_body, install_error_handlers
from flexrealign.serving.params import (
    LAM_FIELDS,  # noqa: F401  (re-exported)
    ServerConfig,
    check_common,
    check_model,
    completion_prompt,
    native_effort_kwargs,
    request_dial,
    sampling,
    serve_dial,
)
from flexrealign.serving.protocol import ChatCompletionRequest, CompletionRequest
from flexrealign.serving.reasoning import chat_deltas, chat_message

log = logging.getLogger("flexrealign.serve")


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    lam_default: float = 1.0,
    lam_min: float | None = None,
    lam_max: float | None = None,
    max_tokens_limit: int = 2048,
    calibration: Calibration | None = None,
) -> FastAPI:
    """A FastAPI app serving `engine` as `model_name`. The engine's lifecycle stays with the caller.

    calibration: the model's reasoning_effort table (`flexrealign.decoding.calibration.load_calibration(ckpt)`); without
    one, requests with reasoning_effort, lam auto or a soft landing get a 400 that says how to calibrate.

    Raises:
        ValueError: a calibration whose auto policy does not fit the model (another hidden size).
    """
    if calibration is not None and calibration.auto is not None and engine.is_fused:
        check_auto_policy(engine.model, calibration.auto)
    app = FastAPI(title="flexrealign", summary="OpenAI-compatible server with per-request lam")
    app.state.engine = engine
    app.state.config = ServerConfig(model_name, lam_default, lam_min, lam_max, max_tokens_limit, calibration)
    install_error_handlers(app)
    app.include_router(router)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    return app


router = APIRouter()


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    if not engine.is_alive:
        raise APIError(503, "the generation engine is not running", code="engine_down", type="server_error")
    return engine


# ------------------------------------------------------------------------------------------------- routes
@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness: `{"status": "ok", "active": n, "pending": m}` with 200, or `"down"` with 503 once the generation
    engine has stopped."""
    engine: Engine = request.app.state.engine
    body = {"status": "ok" if engine.is_alive else "down", "active": engine.num_active}
    return JSONResponse(body | {"pending": engine.num_pending}, status_code=200 if engine.is_alive else 503)


def _model_card(request: Request) -> dict:
    cfg: ServerConfig = request.app.state.config
    engine: Engine = request.app.state.engine
    return {
        "id": cfg.model_name,
        "object": "model",
        "created": 0,
        "owned_by": "flexrealign",
        "max_model_len": engine.context_length,
        "lam": {"default": cfg.lam_default, "min": cfg.lam_min, "max": cfg.lam_max}
        if engine.is_fused
        else None,
        # the reasoning_effort values this model offers, with the lam (and budget) each one means
        "reasoning_efforts": _efforts(cfg.calibration, engine.is_fused),
    }


def _efforts(cal: Calibration | None, fused: bool) -> dict:
    """The calibrated efforts by name, and "auto" (lam auto) where the calibration has its policy."""
    if cal is None:
        return {}
    auto = {"auto": {"lam": "auto"}} if cal.auto is not None and fused else {}
    return {k: e.to_json() for k, e in cal.efforts.items()} | auto


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The one model this server serves, as OpenAI lists models, plus its `lam` range (default, min, max; null
    for a plain model) and the `reasoning_efforts` it offers, each with the lam (and budget) it means."""
    return {"object": "list", "data": [_model_card(request)]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict:
    """The model card of `model` (as in `/v1/models`); 404 `model_not_found` for any other name."""
    check_model(model, request.app.state.config)
    return _model_card(request)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    """OpenAI's completions. `prompt` is a string, a list of token ids, or a batch of exactly one of those;
    `stream: true` answers with server-sent events ending in `data: [DONE]`.

    The alignment dial may be sent at the top level or in `vllm_xargs` (not both):

    - `lam`: the alignment strength of the whole reply, any finite real (0: the reference model, 1: the
      aligned model, > 1 beyond it), fusing the logits as softmax(lam * h_aligned + (1 - lam) * h_ref);
    - `lam_think` with `lam_answer`: one lam until the think-end marker, another after it
      (`lam_marker`, `lam_start_marker` override the tokenizer's markers);
    - `thinking_token_budget`, `min_thinking_tokens`, `thinking_closing`: limits on the thinking tokens;
    - `reasoning_effort`: a level of the checkpoint's calibration (its lam and budget; an explicit lam wins).

    Errors (OpenAI's error body): 400 for a bad dial field (non-finite lam, lam outside the server's range, two
    lam forms at once, an unknown effort, a field in both places), a body that fails validation, an
    unsupported option or a prompt or max_tokens over the limits, with `param` naming the field; 401 for a
    missing API key when one is required; 404 for another model; 500 if generation fails; 503 when the engine
    is down.
    """
    engine, cfg = _engine(request), request.app.state.config
    check_common(body, cfg)
    dial = request_dial(body, cfg)
    ids = completion_prompt(body.prompt, engine)
    lam, limits = serve_dial(dial, None, cfg, engine)
    params = sampling(body, None, len(ids), cfg, engine, limits)
    return await _serve(request, engine, ids, lam, params, body, _TEXT)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI's chat completions. `messages` are rendered by the model's chat template (`chat_template_kwargs`
    are passed to it); `stream: true` answers with server-sent events ending in `data: [DONE]`.

    The dial fields are those of `/v1/completions` (`lam`, `lam_think`/`lam_answer`, the thinking limits,
    `reasoning_effort`, at the top level or in `vllm_xargs`), plus `lam_turns`: one lam per assistant turn.
    `reasoning_effort` maps to the calibrated lam (and budget), an explicit lam wins; an effort that skips
    thinking renders the chat with enable_thinking=False. A chat template that reads reasoning_effort itself
    (gpt-oss) gets the level too, and without a calibration only it. Thinking tokens are counted in
    `usage.completion_tokens_details.reasoning_tokens`. The reply's thinking is split out of `content` into
    `reasoning` and `reasoning_content` by the tokens' thinking stage (`flexrealign.serving.reasoning`);
    `include_reasoning: false` drops it.

    Errors: as `/v1/completions` (400 naming the bad dial field or option, 401, 404, 500, 503), and 400 for
    messages that the chat template cannot render faithfully.
    """
    engine, cfg = _engine(request), request.app.state.config
    check_common(body, cfg)
    native = template_takes(engine.tokenizer, "reasoning_effort")
    dial = request_dial(body, cfg, native)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    template_kwargs = (
        dict(dial.template_kwargs)
        | native_effort_kwargs(dial, body.chat_template_kwargs, native)
        | (body.chat_template_kwargs or {})
    )
    ids = chat_prompt(engine, messages, template_kwargs)
    lam, limits = serve_dial(dial, messages, cfg, engine)
    params = sampling(body, body.max_completion_tokens, len(ids), cfg, engine, limits)
    return await _serve(request, engine, ids, lam, params, body, _CHAT)


def chat_prompt(engine: Engine, messages: list[dict], template_kwargs: dict) -> list[int]:
    """The prompt ids of a chat, once the chat template is seen to render every message (`audit_rendering`).

    Args:
        engine: the engine whose tokenizer and chat_template_kwargs render the chat.
        messages: `{"role", "content"}` dicts with string content.
        template_kwargs: the request's chat template arguments, over the engine's.

    Returns:
        The token ids the engine will condition on.

    Raises:
        APIError: 400 naming the first message the template drops or refuses, or a chat it cannot encode.
    """
    try:
        audit_rendering(engine.tokenizer, messages, (engine.chat_template_kwargs or {}) | template_kwargs)
        return engine.encode(messages, template_kwargs)
    except Refused as e:
        raise APIError(400, e.message, param=e.param, code=e.code) from e
    except InvalidRequest as e:
        raise APIError(400, str(e), param="messages") from e


# ---------------------------------------------------------------------------------------------- responses
def lam_json(lam: LamSpec | None, marker: str | None = None) -> float | dict | None:
    """The lam echoed in responses: a number, or the think/answer schedule with the end marker it used."""
    if lam is None or isinstance(lam, (int, float)):
        return lam
    if isinstance(lam, AutoLam):  # the policy chooses at the first token: see `auto` in the final body
        return {"auto": None}
    return {"think": lam.lams[0], "answer": lam.lams[1], "marker": lam.marker or marker}


def _usage(out: RequestOutput) -> dict:
    """OpenAI's usage, with the thinking tokens in completion_tokens_details.reasoning_tokens."""
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": out.reasoning_tokens},
    }


@dataclass(frozen=True)
class _Shape:
    """How one endpoint spells its bodies: completions put text in `text`, chats in a message or delta."""

    prefix: str
    obj: str
    chunk_obj: str
    chat: bool


_TEXT = _Shape("cmpl", "text_completion", "text_completion", chat=False)
_CHAT = _Shape("chatcmpl", "chat.completion", "chat.completion.chunk", chat=True)


@dataclass
class _Reply:
    """The identity of one response: shared by its body or all its stream chunks."""

    shape: _Shape
    model: str
    lam: float | dict | None
    include_reasoning: bool = True  # False: a chat's split-out thinking is dropped
    id: str = ""
    created: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.id, self.created = f"{self.shape.prefix}-{uuid.uuid4().hex}", int(time.time())
        self.started = time.perf_counter()

    def chose(self, out: RequestOutput) -> None:
        """Echo the lam that lam auto chose for this request."""
        if out.auto_lam is not None:
            self.lam = {"auto": out.auto_lam}

    def body(self, choices: list[dict], usage: dict | None, stream: bool) -> dict:
        obj = self.shape.chunk_obj if stream else self.shape.obj
        head = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        return head | {"choices": choices, "usage": usage, "lam": self.lam}

    def sse(self, choices: list[dict], usage: dict | None = None) -> str:
        return f"data: {json.dumps(self.body(choices, usage, stream=True))}\n\n"

    def choice(self, out: RequestOutput) -> dict:
        """The one choice of a non-streamed reply: the whole text, or a chat's message with its thinking split."""
        if not self.shape.chat:
            return {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}
        message = chat_message(out, self.include_reasoning)
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": out.finish_reason}

    def chunk_choices(self, event: Event) -> list[dict]:
        """The stream choices of one engine event: its text delta, or a chat's parts by thinking stage."""
        finish = event.output.finish_reason if event.output is not None else None
        if self.shape.chat:
            return chat_deltas(event.parts, finish, self.include_reasoning)
        if not (event.delta or finish):
            return []
        return [{"index": 0, "text": event.delta, "logprobs": None, "finish_reason": finish}]


async def _serve(
    request: Request,
    engine: Engine,
    ids: list[int],
    lam: LamSpec | None,
    params: SamplingParams,
    body: CompletionRequest | ChatCompletionRequest,
    shape: _Shape,
) -> Response:
    """Submit to the engine and answer with one body, or a stream of SSE chunks ending in `data: [DONE]`."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:  # runs on the engine thread; a non-streamed reply needs only the end
        if body.stream or event.output is not None:
            loop.call_soon_threadsafe(events.put_nowait, event)

    try:
        handle = engine.submit(ids, lam, params, sink=sink)
    except RuntimeError as e:
        raise APIError(503, str(e), code="engine_down", type="server_error") from e
    marker = handle.thinking.plan.markers.end_text if handle.thinking is not None else None
    reply = _Reply(shape, body.model, lam_json(lam, marker), getattr(body, "include_reasoning", True))
    log.info("%s %s: %d prompt tokens, max_tokens=%d, lam=%s, stream=%s", reply.id, shape.obj, len(ids),
             params.max_tokens, reply.lam, body.stream)  # fmt: skip
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(reply, handle, events, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _reply_once(request, reply, handle, events)


async def _reply_once(
    request: Request, reply: _Reply, handle: RequestHandle, events: asyncio.Queue[Event]
) -> Response:
    try:
        out = await _wait_output(events, request.is_disconnected)
    finally:
        handle.cancel()  # no-op when finished; frees the slot when the client went away
    if out is None:
        return Response(status_code=499)  # nobody is listening
    _log_done(reply, out)
    if out.finish_reason == "error":
        raise APIError(500, f"generation failed: {out.error}", type="server_error")
    reply.chose(out)
    return JSONResponse(reply.body([reply.choice(out)], _usage(out), stream=False))


async def _wait_output(
    events: asyncio.Queue[Event], disconnected: Callable[[], Awaitable[bool]]
) -> RequestOutput | None:
    """The final output, or None once the client has disconnected (checked each second while waiting)."""
    while True:
        try:
            event = await asyncio.wait_for(events.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await disconnected():
                return None
            continue
        if event.output is not None:
            return event.output


async def _stream(
    reply: _Reply, handle: RequestHandle, events: asyncio.Queue[Event], include_usage: bool
) -> AsyncIterator[str]:
    """SSE chunks as text arrives. Starlette cancels this generator when the client disconnects; the
    `finally` then cancels the request, which frees its batch slot at the engine's next step."""
    try:
        if reply.shape.chat:
            yield reply.sse(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        while True:
            event = await events.get()
            out = event.output
            if out is not None and out.finish_reason == "error":
                yield f"data: {json.dumps(error_body(f'generation failed: {out.error}', 'server_error'))}\n\n"
                break
            if out is not None:
                reply.chose(out)  # the final chunks carry the lam that lam auto chose
            for choice in reply.chunk_choices(event):
                yield reply.sse([choice])
            if out is not None:
                _log_done(reply, out)
                if include_usage:
                    yield reply.sse([], _usage(out))
                break
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()


def _log_done(reply: _Reply, out: RequestOutput) -> None:
    log.info("%s done: %d tokens, finish_reason=%s, %.2f s", reply.id, out.completion_tokens,
             out.finish_reason, time.perf_counter() - reply.started)  # fmt: skip
