"""The edge of the REST service: request id, API key, body limits, request metrics, access log, last-resort errors.

A pure ASGI middleware (no per-request task, no body copy beyond the limit check), outermost in the app. It looks
the request's route up in a :class:`~lieprop.service.access.RouteTable` (the access the routes declared, see
:mod:`lieprop.service.access`) before anything else, so that:

- a route that needs the API key answers 401 before any of the body is read (CORS preflights carry no key and are
  let through); a good key's tenant goes into the request state (``request.state.tenant``);
- a route marked as a streamed upload gets ``max_upload_bytes`` (checked against Content-Length, then while the route
  receives the body) and a minimum rate, ``upload_min_rate_bytes_s`` after ``body_timeout_s`` (else 408); every other
  POST/PUT/PATCH is read here, at most ``max_body_bytes`` within ``body_timeout_s`` (else 408, and the connection is
  closed), and replayed to the app;
- a JSON body is parsed once, on a thread (:mod:`lieprop.service.json_body`), and the parse is handed to the app;
  a key twice in one object is a 422 ``invalid_request`` naming the key (JSON parsers, FastAPI's too, keep the last
  one silently).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import MutableHeaders

from lieprop.service.access import RouteTable, match_key
from lieprop.service.errors import error_response
from lieprop.service.json_body import PARSED_KEY, parse_json
from lieprop.service.logs import request_id
from lieprop.service.metrics import ServiceMetrics
from lieprop.service.settings import Settings
from lieprop.service.uploads import limited_receive

log = logging.getLogger("lieprop.service")

#: JSON bodies up to this size are parsed on the event loop (a thread hop would cost more); larger ones on a thread.
INLINE_JSON_BYTES = 4096

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class EdgeMiddleware:
    """Pure ASGI middleware: ``app.add_middleware(EdgeMiddleware, settings=..., metrics=..., routes=RouteTable)``."""

    def __init__(self, app: Callable, settings: Settings, metrics: ServiceMetrics, routes: RouteTable) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.routes = routes
        self.keys = settings.tenant_keys()  # (key, tenant) pairs; empty: no key needed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = {"code": 500, "started": False}
        start = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        metrics = self.metrics
        path, method = scope.get("path", ""), scope.get("method", "")
        route, full = self.routes.match(path, method)
        metrics.in_flight.inc()
        try:
            await self._handle(scope, receive, send_with_id, headers, route is not None and route.api_key,
                               route is not None and full and route.upload)
        except Exception:
            log.exception("unhandled error")
            if not status["started"]:
                await error_response(500, "internal_error", "the server failed on this request; the logs have "
                                     f"the details under request id {rid}")(scope, receive, send_with_id)
        finally:
            metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            template = route.template if route is not None else "unmatched"
            metrics.requests.labels(template, method, str(status["code"])).inc()
            metrics.latency.labels(template, method, str(status["code"])).observe(seconds)
            log.info("request", extra={"method": method, "path": path, "status": status["code"],
                                       "duration_ms": round(seconds * 1000, 2),
                                       "client": (scope.get("client") or ("-",))[0]})
            request_id.reset(token)

    async def _handle(self, scope: dict, receive: Callable, send: Callable, headers: dict[str, bytes],
                      needs_key: bool, upload: bool) -> None:
        method = scope.get("method")
        if needs_key and method != "OPTIONS":  # CORS preflights carry no key
            tenant, problem = match_key(self.keys, headers.get("x-api-key", b""))
            if problem is not None:
                await error_response(401, "unauthorized", problem)(scope, receive, send)
                return
            scope.setdefault("state", {})["tenant"] = tenant  # request.state.tenant for the routes
        if upload:  # the route streams the body to disk
            limit = self.settings.max_upload_bytes
            declared = headers.get("content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                await error_response(413, "body_too_large", f"the upload is larger than {limit} bytes")(
                    scope, receive, send)
                return
            receive = limited_receive(receive, limit, self.settings.upload_min_rate_bytes_s,
                                      self.settings.body_timeout_s)
        elif method in ("POST", "PUT", "PATCH"):
            limit = self.settings.max_body_bytes
            declared = headers.get("content-length", b"")
            too_large = error_response(413, "body_too_large", f"the request body is larger than {limit} bytes")
            if declared.isdigit() and int(declared) > limit:
                await too_large(scope, receive, send)
                return
            try:
                body = await asyncio.wait_for(_read_body(receive, limit), self.settings.body_timeout_s)
            except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
                await error_response(408, "request_timeout", f"the request body did not arrive within "
                                     f"{self.settings.body_timeout_s:g} s", headers={"Connection": "close"})(
                    scope, receive, send)
                return
            if body is None:
                await too_large(scope, receive, send)
                return
            parsed = None
            if body and b"json" in headers.get("content-type", b"").lower():
                # a small body is parsed at once (well under a millisecond), a larger one on a thread
                parsed = parse_json(body) if len(body) <= INLINE_JSON_BYTES else await asyncio.to_thread(parse_json,
                                                                                                           body)
                scope.setdefault("state", {})[PARSED_KEY] = parsed
            duplicate = parsed.duplicate if parsed is not None else None
            if duplicate is not None:
                await error_response(422, "invalid_request", f"body: the key {duplicate!r} appears twice in one "
                                     "JSON object", [{"loc": ["body"], "msg": f"duplicate key {duplicate!r}",
                                                      "type": "duplicate_key"}])(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


async def _read_body(receive: Callable, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands the app the body read already, then the connection's further messages."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
