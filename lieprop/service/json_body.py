"""A JSON request body is parsed once, on a worker thread, never on the event loop.

The edge (:mod:`lieprop.service.edge`) reads a JSON body and calls :func:`parse_json` on a thread: one parse that
also finds a key given twice in one object (JSON parsers keep the last one silently). What it found goes into the
request's scope (``scope["state"]``, under :data:`PARSED_KEY`). A router whose ``route_class`` is
:class:`ParsedJSONRoute` hands FastAPI that value instead of letting it parse the bytes again on the event loop, and
may answer before FastAPI validates the body (:meth:`ParsedJSONRoute.precheck`: e.g. a count limit, so that a
request of 500,000 items is refused without validating them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

#: Where the edge puts the :class:`ParsedJSON` of a request, in ``scope["state"]``.
PARSED_KEY = "lieprop_parsed_json"


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


@dataclass(frozen=True)
class ParsedJSON:
    """A parsed body: its ``value``, or the ``error`` its parse raised (not JSON, too deep), or the ``duplicate``
    key found twice in one object (then there is no value)."""

    value: Any = None
    error: Exception | None = None
    duplicate: str | None = None

    def get(self) -> Any:
        """The value, or the parse error raised again (FastAPI answers it as it answers its own parse errors)."""
        if self.error is not None:
            raise self.error
        return self.value


def parse_json(body: bytes) -> ParsedJSON:
    """Parse ``body`` (JSON) once, finding the first key given twice in one object. CPU work: call it on a thread."""
    try:
        return ParsedJSON(value=json.loads(body, object_pairs_hook=_unique_pairs))
    except _DuplicateKey as exc:
        return ParsedJSON(duplicate=str(exc.args[0])[:200])
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return ParsedJSON(error=exc)


def parsed_json(request: Request) -> ParsedJSON | None:
    """What the edge parsed of this request's body, if it did."""
    found = request.scope.get("state", {}).get(PARSED_KEY)
    return found if isinstance(found, ParsedJSON) else None


class ParsedJSONRequest(Request):
    """A request whose :meth:`json` is the edge's parse when there is one."""

    async def json(self) -> Any:
        parsed = parsed_json(self)
        return await super().json() if parsed is None else parsed.get()


class ParsedJSONRoute(APIRoute):
    """A route that uses the edge's parse of the body, and answers :meth:`precheck`'s response (if any) before the
    body is validated. Use it as a router's ``route_class``."""

    def precheck(self, request: Request, body: Any) -> Response | None:
        """A response to send instead of validating ``body`` (the parsed JSON), or None to go on. Runs on the event
        loop: keep it O(1)."""
        return None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_once(request: Request) -> Response:
            request = ParsedJSONRequest(request.scope, request.receive)
            parsed = parsed_json(request)
            if parsed is not None and parsed.error is None:
                answer = self.precheck(request, parsed.value)
                if answer is not None:
                    return answer
            return await handler(request)

        return parsed_once
