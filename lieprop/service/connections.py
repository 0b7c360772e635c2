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

It also caps the size of a request's headers at ``max_header_bytes``: httptools accepts headers of any size (a
50 MB header line was read into memory whole), so a request whose headers are not complete within that many bytes
gets a JSON 431 ``headers_too_large`` and its connection is closed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
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


def _too_large_response(limit: int) -> bytes:
    """The raw 431 answer (sent before uvicorn has a request to hand to the app): the JSON error body with a request id
    of its own, as :func:`over_capacity` has."""
    rid = uuid.uuid4().hex
    body = json.dumps({"error": {"code": "headers_too_large",
                                 "message": f"the request headers are larger than {limit} bytes"},
                       "request_id": rid}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"x-request-id: " + rid.encode() + b"\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def protocol_class(header_timeout_s: float, max_header_bytes: int = 65536) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with a ``header_timeout_s`` deadline and (httptools) a ``max_header_bytes`` cap
    on each request's headers (``uvicorn.run(..., http=protocol_class(5.0))``), whose refusals past
    ``limit_concurrency`` are :func:`over_capacity`. With h11, h11's own limit on an incomplete event (16 KiB by
    default) bounds the headers instead."""
    base: Any = _base_protocol()
    parser_callbacks = hasattr(base, "on_headers_complete")  # httptools: the parser says where the headers end
    module = sys.modules[base.__module__]
    if hasattr(module, "service_unavailable"):  # what uvicorn calls past limit_concurrency
        module.service_unavailable = over_capacity

    class HeaderTimeoutProtocol(base):
        _header_timer: asyncio.TimerHandle | None = None
        _in_headers: bool = True  # httptools: the bytes arriving now belong to a request's headers
        _header_bytes: int = 0
        _tail: bytes = b""

        def _waiting_for_headers(self) -> bool:
            if parser_callbacks:
                return self._in_headers
            # h11: the current request's headers are parsed exactly when uvicorn has made its cycle for it
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
                if parser_callbacks and self._count_header_bytes(data) > max_header_bytes:
                    self._refuse_headers()
                    return
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        # httptools parser callbacks: where one request's headers end and the next one's begin
        def on_headers_complete(self) -> None:
            self._in_headers, self._header_bytes, self._tail = False, 0, b""
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_headers = True
            super().on_message_complete()

        def _count_header_bytes(self, data: bytes) -> int:
            """Header bytes of the current request seen so far, ``data`` included (up to the blank line that ends
            the headers; the previous chunk's last 3 bytes are kept in case the blank line straddles chunks)."""
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = seen[-3:]
            return self._header_bytes

        def _refuse_headers(self) -> None:
            if not self.transport.is_closing():
                log.info("connection closed: headers larger than max_header_bytes",
                         extra={"client": (self.client or ("-",))[0], "limit": max_header_bytes})
                self.transport.write(_too_large_response(max_header_bytes))
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    HeaderTimeoutProtocol.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol
