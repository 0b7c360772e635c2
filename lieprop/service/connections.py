"""Connection hygiene of the REST service: a header timeout for uvicorn's HTTP protocol, and a JSON 503 at the cap.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` and answers 503 past
``limit_concurrency``, but it has no timeout for a request's headers: a connection that never sends a byte, or
trickles its headers one byte at a time, is held open for ever (slowloris), each one a file descriptor.
:func:`protocol_class` wraps uvicorn's HTTP protocol (httptools when installed, else h11, as uvicorn's ``auto``)
so that the headers of each request must be complete within ``header_timeout_s``, counted from the moment the
connection opens or, on a kept-alive connection, from the first byte of the next request; else the connection is
closed (no response: the request never started). The body's own deadline is the edge's ``body_timeout_s`` (and a
job upload's, its minimum rate ``upload_min_rate_bytes_s``: :mod:`lieprop.service.uploads`).

Past ``limit_concurrency`` (``max_connections``) uvicorn answers a request itself, before the app sees it, with a
plain-text 503. :func:`protocol_class` replaces that answer with :func:`over_capacity`, the project's JSON error body
(code ``overloaded``, a request id, ``Retry-After``): uvicorn looks its ``service_unavailable`` up in its protocol's
module at each refusal, so the replacement is set there, for the uvicorn protocol of this process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import uuid
from typing import Any

from lieprop.service.errors import error_response
from lieprop.service.logs import request_id

log = logging.getLogger("lieprop.service")


def _base_protocol() -> type:
    if importlib.util.find_spec("httptools") is None:  # uvicorn's "auto": httptools when installed, else h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


async def over_capacity(scope: dict, receive: Any, send: Any) -> None:
    """The ASGI answer to a request past ``max_connections``: 503 ``overloaded`` in the JSON error body, with a
    request id, ``Retry-After: 1`` and ``Connection: close`` (as uvicorn's own plain-text answer closes)."""
    rid = uuid.uuid4().hex
    token = request_id.set(rid)
    try:
        response = error_response(503, "overloaded", "the server has as many connections open as it allows "
                                  "(max_connections); retry shortly", headers={
                                      "Retry-After": "1", "Connection": "close", "X-Request-ID": rid})
    finally:
        request_id.reset(token)
    await response(scope, receive, send)


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with a ``header_timeout_s`` deadline on each request's headers (``uvicorn.run(
    ..., http=protocol_class(5.0))``), whose refusals past ``limit_concurrency`` are :func:`over_capacity`."""
    base: Any = _base_protocol()
    module = sys.modules[base.__module__]
    if hasattr(module, "service_unavailable"):  # what uvicorn calls past limit_concurrency
        module.service_unavailable = over_capacity

    class HeaderTimeoutProtocol(base):
        _header_timer: asyncio.TimerHandle | None = None

        def _waiting_for_headers(self) -> bool:
            # the current request's headers are parsed exactly when uvicorn has made its cycle for it
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                log.info("connection closed: headers not complete within header_timeout_s",
                         extra={"client": (self.client or ("-",))[0], "timeout_s": header_timeout_s})
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is cut too

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()  # first byte of a kept-alive connection's next request (or armed already)
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    HeaderTimeoutProtocol.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol
