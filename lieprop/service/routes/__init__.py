"""The routes of the REST service, one :class:`fastapi.APIRouter` per area, in the order the app includes them.

Each router declares its own access (:mod:`lieprop.service.access`) and reaches the shared state through
``service: ServiceDep`` (:mod:`lieprop.service.state`). Adding an endpoint: a function in the area's module (or a
new module with a router, listed here).
"""

from __future__ import annotations

from fastapi import APIRouter

from lieprop.service.routes import jobs, models, operations, predict

#: The routers :func:`lieprop.service.app.create_app` includes, in OpenAPI order.
ROUTERS: tuple[APIRouter, ...] = (predict.router, models.router, operations.router, jobs.router)

__all__ = ["ROUTERS"]
