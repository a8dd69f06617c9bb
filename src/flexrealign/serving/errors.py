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


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, e: Exception) -> JSONResponse:
        return error_response(e)  # type: ignore[arg-type]

    async def invalid(_: Request, e: Exception) -> JSONResponse:
        return error_response(APIError(400, str(e), param=e.param, code=e.code))  # type: ignore[attr-defined]

    async def validation(_: Request, e: Exception) -> JSONResponse:
        return error_response(_validation_error(e))  # type: ignore[arg-type]

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
