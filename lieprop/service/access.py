"""Which routes need the API key and which take streamed uploads: declared with the route or its router.

A router or route declares its access with FastAPI dependencies::

    router = APIRouter(prefix="/v1", dependencies=[API_KEY])          # every route of the router needs the key
    @router.post("/jobs", dependencies=[STREAMED_UPLOAD])             # the body streams to disk

The edge (:mod:`lieprop.service.edge`) must act before FastAPI reads a body (a wrong key must never upload 1 GB), so
it does not wait for the dependencies to run: :class:`RouteTable` collects the routes' declarations when the app is
built, and the edge looks the request's route up in it (path and method, as the router matches them). The
:data:`API_KEY` dependency checks the key once more when the route runs, so a route mounted without the edge is not
left open.

With several API keys (``api_keys``, ``api_keys_file``) each key names a tenant: :func:`match_key` compares the given
key with every configured key in constant time, and the edge (or :data:`API_KEY`) puts the matched tenant in the
request state (``request.state.tenant``), where the job routes read it.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from lieprop.service.settings import DEFAULT_TENANT
from lieprop.service.state import get_service


def match_key(keys: list[tuple[bytes, str]], given: bytes) -> tuple[str | None, str | None]:
    """``(tenant, None)`` when ``given`` is one of the configured ``(key, tenant)`` pairs, or no key is configured
    (tenant ``default``); else ``(None, reason)``. Every key is compared, each in constant time, whichever matches."""
    if not keys:
        return DEFAULT_TENANT, None
    tenant = None
    for key, name in keys:
        if hmac.compare_digest(given, key) and tenant is None:
            tenant = name
    if tenant is not None:
        return tenant, None
    what = "wrong" if given else "missing"
    return None, f"{what} API key: send it in the X-API-Key header"


async def requires_api_key(request: Request) -> None:
    """Marker of routes that need ``X-API-Key`` (when the service has keys); raises 401 when it is wrong, else puts
    the key's tenant in ``request.state.tenant``."""
    keys = get_service(request).tenant_keys
    tenant, problem = match_key(keys, request.headers.get("x-api-key", "").encode("latin-1"))
    if problem is not None:
        raise StarletteHTTPException(401, problem)
    request.state.tenant = tenant


async def streamed_upload() -> None:
    """Marker of routes whose body streams to disk: bounded by ``max_upload_bytes`` instead of ``max_body_bytes``,
    and not read by the edge (the route reads it, see :mod:`lieprop.service.uploads`)."""


#: ``dependencies=[API_KEY]`` on a router or route: it needs the API key.
API_KEY = Depends(requires_api_key)
#: ``dependencies=[STREAMED_UPLOAD]`` on a route: its body is a streamed upload.
STREAMED_UPLOAD = Depends(streamed_upload)


@dataclass(frozen=True)
class RouteAccess:
    """What the edge needs to know of one route."""

    template: str  #: the path template (``/v1/jobs/{job_id}``), the ``route`` label of the request metrics
    regex: re.Pattern[str]
    methods: frozenset[str] | None  #: None: any
    api_key: bool
    upload: bool


class RouteTable:
    """The declared access of an app's routes, looked up by path and method."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self.routes: list[RouteAccess] = []
        for route in routes:
            regex = getattr(route, "path_regex", None)
            if regex is None:
                continue
            markers = {d.dependency for d in getattr(route, "dependencies", ())}
            methods = getattr(route, "methods", None)
            self.routes.append(RouteAccess(
                template=getattr(route, "path", ""), regex=regex,
                methods=frozenset(methods) if methods is not None else None,
                api_key=requires_api_key in markers, upload=streamed_upload in markers))

    def match(self, path: str, method: str) -> tuple[RouteAccess | None, bool]:
        """The route a request goes to and whether its method matches too: the first route of the path and
        method, else the first of the path (which answers 405), else ``(None, False)`` (404)."""
        partial = None
        for route in self.routes:
            if route.regex.match(path):
                if route.methods is None or method in route.methods:
                    return route, True
                partial = partial or route
        return partial, False
