"""The OpenAI-compatible HTTP API over an `Engine`: /v1/models, /v1/completions, /v1/chat/completions, /health.

Every request carries its own lam (`lam`, or for chats `lam_turns` or `lam_think`/`lam_answer`), validated
against the server's bounds. Errors use OpenAI's body, {"error": {"message", "type", "param", "code"}}:
400 for malformed JSON and values this server refuses, 401 for a missing or wrong API key, 404 for an
unknown model or route, 422 for bodies that do not fit the schema, 503 when the engine is down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flexrealign.generation import LamSchedule, LamSpec, lam_for_next_turn
from flexrealign.serving.audit import Refused, audit_request
from flexrealign.serving.engine import (
    Engine,
    Event,
    InvalidRequest,
    RequestHandle,
    RequestOutput,
    SamplingParams,
)
from flexrealign.serving.protocol import ChatCompletionRequest, CompletionRequest, LamArgs

log = logging.getLogger("flexrealign.serve")
LAM_FIELDS = frozenset(LamArgs.model_fields)


# ------------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"malformed JSON body: {first.get('ctx', {}).get('error', 'cannot parse')}")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = loc[0] if loc else None
    same_field = [e for e in errors if [str(x) for x in e.get("loc", ()) if x != "body"][:1] == loc[:1]]
    if len(same_field) > 1:  # a union field: pydantic reports one error per accepted type
        message = f"{param}: {first.get('input')!r:.60} matches none of the accepted types"
    else:
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
    return APIError(422, message, param=param, code="invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, e: Exception) -> JSONResponse:
        return _error_response(e)  # type: ignore[arg-type]

    async def invalid(_: Request, e: Exception) -> JSONResponse:
        return _error_response(APIError(400, str(e), param=e.param, code=e.code))  # type: ignore[attr-defined]

    async def validation(_: Request, e: Exception) -> JSONResponse:
        return _error_response(_validation_error(e))  # type: ignore[arg-type]

    async def http(_: Request, e: Exception) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)  # type: ignore[attr-defined]
        return _error_response(APIError(e.status_code, str(e.detail), code=code))  # type: ignore[attr-defined]

    async def crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, crash)


class _ApiKeyMiddleware:
    """401 for /v1 requests without `Authorization: Bearer <key>` (a plain ASGI middleware, so streaming and
    disconnect detection pass through untouched)."""

    def __init__(self, app: Callable, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                e = APIError(401, "missing or incorrect API key", code="invalid_api_key")
                await _error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    lam_default: float = 1.0
    lam_min: float | None = None
    lam_max: float | None = None
    max_tokens_limit: int = 2048

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


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    lam_default: float = 1.0,
    lam_min: float | None = None,
    lam_max: float | None = None,
    max_tokens_limit: int = 2048,
) -> FastAPI:
    """A FastAPI app serving `engine` as `model_name`. The engine's lifecycle stays with the caller."""
    app = FastAPI(title="flexrealign", summary="OpenAI-compatible server with per-request lam")
    app.state.engine = engine
    app.state.config = ServerConfig(model_name, lam_default, lam_min, lam_max, max_tokens_limit)
    _install_error_handlers(app)
    app.include_router(router)
    if api_key:
        app.add_middleware(_ApiKeyMiddleware, api_key=api_key)
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
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(request)]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict:
    _check_model(model, request.app.state.config)
    return _model_card(request)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    engine, cfg = _engine(request), request.app.state.config
    _check_common(body, cfg)
    ids = _completion_prompt(body.prompt, engine)
    lam = resolve_lam(body, None, cfg, engine.is_fused)
    return await _serve(request, engine, ids, lam, _sampling(body, None, len(ids), cfg, engine), body, _TEXT)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    engine, cfg = _engine(request), request.app.state.config
    _check_common(body, cfg)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        ids = engine.encode(messages, body.chat_template_kwargs)
    except InvalidRequest as e:
        raise APIError(400, str(e), param="messages") from e
    lam = resolve_lam(body, messages, cfg, engine.is_fused)
    params = _sampling(body, body.max_completion_tokens, len(ids), cfg, engine)
    return await _serve(request, engine, ids, lam, params, body, _CHAT)


# ------------------------------------------------------------------------------------------ validation
def _check_model(name: str, cfg: ServerConfig) -> None:
    if name != cfg.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {cfg.model_name!r}",
                       param="model", code="model_not_found")  # fmt: skip


def _check_common(body: CompletionRequest | ChatCompletionRequest, cfg: ServerConfig) -> None:
    """404 for another model; 400 naming any field, option or message part this server does not honour."""
    _check_model(body.model, cfg)
    try:
        audit_request(body)
    except Refused as e:
        raise APIError(400, e.message, param=e.param, code=e.code) from e


def _completion_prompt(prompt: str | list, engine: Engine) -> list[int]:
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
    body: CompletionRequest | ChatCompletionRequest,
    messages: list[dict] | None,
    cfg: ServerConfig,
    fused: bool,
) -> LamSpec | None:
    """The lam (or think/answer LamSchedule) for this request: from the body, else the server default."""
    args = _lam_args(body)
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
            _check_lam_values(name, getattr(args, name), cfg)
    if args.lam_turns is not None:
        if messages is None:
            raise APIError(400, "lam_turns applies to chat completions only", "lam_turns")
        return lam_for_next_turn(messages, args.lam_turns)
    if "think" in modes:
        if args.lam_think is None or args.lam_answer is None:
            raise APIError(400, "lam_think and lam_answer go together", "lam_think")
        return LamSchedule.think_answer(args.lam_think, args.lam_answer, args.lam_marker or "</think>")
    return cfg.lam_default if args.lam is None else args.lam


def _lam_args(body: CompletionRequest | ChatCompletionRequest) -> LamArgs:
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


def _check_lam_values(name: str, value: float | list[float], cfg: ServerConfig) -> None:
    for v in value if isinstance(value, list) else [value]:
        if not math.isfinite(v):
            raise APIError(400, f"{name} must be a finite number, got {v}", name, "invalid_lam")
        if (cfg.lam_min is not None and v < cfg.lam_min) or (cfg.lam_max is not None and v > cfg.lam_max):
            raise APIError(400, f"{name}={v} is outside this server's range [{cfg.lam_min}, {cfg.lam_max}]",
                           name, "lam_out_of_range")  # fmt: skip


def _sampling(
    body: CompletionRequest | ChatCompletionRequest,
    max_tokens: int | None,
    prompt_len: int,
    cfg: ServerConfig,
    engine: Engine,
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
        seed=body.seed, stop=body.stop_list(), ignore_eos=body.ignore_eos,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- responses
def lam_json(lam: LamSpec | None) -> float | dict | None:
    """The lam echoed in responses: a number, or the think/answer schedule."""
    if lam is None or isinstance(lam, (int, float)):
        return lam
    if len(lam.lams) == 2:
        return {"think": lam.lams[0], "answer": lam.lams[1], "marker": lam.markers[0]}
    return {"lams": list(lam.lams), "markers": list(lam.markers)}


def _usage(out: RequestOutput) -> dict:
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
    }


@dataclass(frozen=True)
class _Shape:
    """How one endpoint spells its bodies: completions put text in `text`, chats in a message or delta."""

    prefix: str
    obj: str
    chunk_obj: str
    chat: bool

    def choice(self, text: str, finish_reason: str | None, stream: bool) -> dict:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        key = "delta" if stream else "message"
        content = {"content": text} if text or not stream else {}
        role = {} if stream else {"role": "assistant"}
        return {"index": 0, key: role | content, "logprobs": None, "finish_reason": finish_reason}


_TEXT = _Shape("cmpl", "text_completion", "text_completion", chat=False)
_CHAT = _Shape("chatcmpl", "chat.completion", "chat.completion.chunk", chat=True)


@dataclass
class _Reply:
    """The identity of one response: shared by its body or all its stream chunks."""

    shape: _Shape
    model: str
    lam: float | dict | None
    id: str = ""
    created: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.id, self.created = f"{self.shape.prefix}-{uuid.uuid4().hex}", int(time.time())
        self.started = time.perf_counter()

    def body(self, choices: list[dict], usage: dict | None, stream: bool) -> dict:
        obj = self.shape.chunk_obj if stream else self.shape.obj
        head = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        return head | {"choices": choices, "usage": usage, "lam": self.lam}

    def sse(self, choices: list[dict], usage: dict | None = None) -> str:
        return f"data: {json.dumps(self.body(choices, usage, stream=True))}\n\n"


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
    reply = _Reply(shape, body.model, lam_json(lam))
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
    choice = reply.shape.choice(out.text, out.finish_reason, stream=False)
    return JSONResponse(reply.body([choice], _usage(out), stream=False))


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
            if event.delta or out is not None:
                finish = out.finish_reason if out is not None else None
                yield reply.sse([reply.shape.choice(event.delta, finish, True)])
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
