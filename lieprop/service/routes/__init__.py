"""The routes of the REST service, one :class:`fastapi.APIRouter` per area (predict, models,
operations, jobs, and web: the page, the offline API docs and their static files), in the order the app includes them.

Each router declares its own access (:mod:`lieprop.service.access`) and reaches the shared state through
``service: ServiceDep`` (:mod:`lieprop.service.state`). Adding an endpoint: a function in the area's module (or a
new module with a router, listed here).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.routing import Mount

from lieprop.service.routes import jobs, models, operations, predict, web

#: The routers :func:`lieprop.service.app.create_app` includes, in OpenAPI order.
ROUTERS: tuple[APIRouter, ...] = (predict.router, models.router, operations.router, jobs.router, web.router)
#: The mounts it adds (the web page's static files).
MOUNTS: tuple[Mount, ...] = (web.STATIC,)

__all__ = ["MOUNTS", "ROUTERS"]
