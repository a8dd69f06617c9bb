"""OpenAI-style errors for the HTTP API: {"error": {"message", "type", "param", "code"}}, the FastAPI handlers
that produce them, and the API-key middleware."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flexrealign.serving.engine import InvalidRequest

log = logging.getLogger("flexrealign.serve")


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


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)


# how pydantic names the members of a union field in an error's `loc`: str, int, list[str], dict[str,any], ...
_UNION_TAGS = ("str", "int", "float", "bool")


def validation_error(exc: RequestValidationError, content_type: str = "application/json") -> APIError:
    """The 400 for a body that FastAPI could not parse or validate, as OpenAI and vLLM answer it (a 422 would
    be the `openai` client's UnprocessableEntityError, not its BadRequestError).

    Args:
        exc: the validation error; its first error is reported.
        content_type: the request's Content-Type, named when the body is not a JSON object.

    Returns:
        An APIError(400) whose `param` names the field (`max_tokens`, `messages[0].content[1].type`); `param`
        is None when the body as a whole is missing, not JSON or not an object.
    """
    errors = exc.errors()
    first = errors[0] if errors else {"type": "missing", "loc": ("body",)}
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "cannot parse")
        return APIError(400, f"malformed JSON body: {reason}", code="invalid_json")
    path = _field_path(first["loc"])
    if not path:
        return APIError(400, _body_message(first, content_type), code="invalid_body")
    if len(path) < len(first["loc"]) - 1:  # a union: each member it tried reported an error
        return _union_error(path, errors)
    param = field_param(path)
    return APIError(400, f"{param}: {first.get('msg', 'invalid value')}{_got(first)}", param, "invalid_value")


def field_param(path: list[str | int]) -> str:
    """`messages[0].content` for ["messages", 0, "content"]: how every 400 of this server spells `param`."""
    text = ""
    for x in path:
        text += f"[{x}]" if isinstance(x, int) else f".{x}" if text else str(x)
    return text


def _field_path(loc: tuple | list) -> list[str | int]:
    """The field names and list indices of an error's location, up to the first union member tag."""
    path: list[str | int] = []
    for x in list(loc)[1:] if loc and loc[0] == "body" else loc:
        if _is_union_tag(x):
            break
        path.append(x)
    return path


def _union_error(path: list[str | int], errors: list[dict]) -> APIError:
    """A value that fits no member of a union field; when a single member got past the type check (a list of
    content parts, one of them bad), its own error is the useful one."""
    param = field_param(path)
    group = [e for e in errors if _field_path(e["loc"]) == path]
    deeper = [e for e in group if len(e["loc"]) > len(path) + 2]
    if len({e["loc"][len(path) + 1] for e in deeper}) == 1:  # one member only got past the type check
        where = field_param([x for x in deeper[0]["loc"][1:] if not _is_union_tag(x)])
        return APIError(400, f"{where}: {deeper[0].get('msg')}{_got(deeper[0])}", where, "invalid_value")
    tags = ", ".join(dict.fromkeys(str(e["loc"][len(path) + 1]) for e in group))
    message = f"{param}: {group[0].get('input')!r:.60} is none of the accepted types ({tags})"
    return APIError(400, message, param, "invalid_value")


def _is_union_tag(x: str | int) -> bool:
    return isinstance(x, str) and ("[" in x or x in _UNION_TAGS)


def _body_message(error: dict, content_type: str) -> str:
    if error.get("type") == "missing":
        return "the request body is missing: send a JSON object with Content-Type: application/json"
    if "json" not in content_type.lower():
        return f"the request body must be JSON sent with Content-Type: application/json, not {content_type!r}"
    return f"the request body must be a JSON object, got {error.get('input')!r:.60}"


def _got(error: dict) -> str:
    return "" if error.get("type") == "missing" else f", got {error.get('input')!r:.60}"


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, e: Exception) -> JSONResponse:
        return error_response(e)  # type: ignore[arg-type]

    async def invalid(_: Request, e: Exception) -> JSONResponse:
        return error_response(APIError(400, str(e), param=e.param, code=e.code))  # type: ignore[attr-defined]

    async def validation(request: Request, e: Exception) -> JSONResponse:
        content_type = request.headers.get("content-type", "none")
        return error_response(validation_error(e, content_type))  # type: ignore[arg-type]

    async def http(_: Request, e: Exception) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)  # type: ignore[attr-defined]
        return error_response(APIError(e.status_code, str(e.detail), code=code))  # type: ignore[attr-defined]

    async def crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, crash)


class ApiKeyMiddleware:
    """401 for /v1 requests without `Authorization: Bearer <key>` (a plain ASGI middleware, so streaming and
    disconnect detection pass through untouched)."""

    def __init__(self, app: Callable, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                e = APIError(401, "missing or incorrect API key", code="invalid_api_key")
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)
