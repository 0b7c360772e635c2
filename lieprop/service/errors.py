"""Errors of the REST service: the one JSON error body, its OpenAPI descriptions and the app's exception handlers.

Every non-2xx answer is ``{"error": {"code", "message", "details"?}, "request_id"}`` (docs/API.md), whether a
route, the edge middleware (:mod:`lieprop.service.edge`) or FastAPI's validation produced it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lieprop.service import schemas
from lieprop.service.logs import request_id

#: OpenAPI ``responses`` entries of the error statuses, for routes to pick from (``ERROR_RESPONSES[401]``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text} for code, text in {
        400: "the body is not JSON", 401: "missing or wrong X-API-Key", 413: "body or molecule count over the limit",
        415: "the body was not sent as application/json",
        422: "the body does not follow the contract, or names unknown properties / models",
        503: "overloaded or shutting down", 504: "the request took longer than request_timeout_s",
    }.items()
}
#: Error codes of the HTTP errors Starlette raises itself (unknown path, wrong method, ...).
STATUS_CODES = {400: "invalid_json", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large", 415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body of every non-2xx answer: ``{"error": {"code", "message", "details"?}, "request_id"}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error, "request_id": request_id.get()}, status_code=status, headers=headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body or parameter that does not validate: 400 (not JSON), 415 (not sent as JSON) or 422 (the first
    problem in the message, all of them, at most 50, in ``details``)."""
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e.get("loc", ("", "?"))[-1]
            reason = (e.get("ctx") or {}).get("error", "JSON decode error")
            return error_response(400, "invalid_json", f"the body is not valid JSON: {reason} (at character "
                                  f"{where})")
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower() and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        return error_response(415, "unsupported_media_type", f"the body must be JSON, sent with Content-Type: "
                              f"application/json (got {content_type[:100]!r})")
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                "type": str(e.get("type", ""))} for e in errors[:50]]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"][1:]) or "body"
    return error_response(422, "invalid_request", f"{where}: {first['msg']}", details)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own HTTP errors (404, 405, ...) in the JSON error body."""
    code = STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


def add_exception_handlers(app: FastAPI) -> None:
    """Answer validation and HTTP errors with the JSON error body."""
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
