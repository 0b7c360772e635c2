"""The REST service: ``create_app(settings)`` builds the FastAPI app of docs/DESIGN.md's contract v1.

The app is assembled from modules with one idea each (docs/DESIGN.md, "Layers and what each may import"):

- :mod:`lieprop.service.state`: the :class:`Service` the routes share (model, batcher, embedding pool, readiness);
- :mod:`lieprop.service.routes`: one router per area (predict, models, operations, jobs, web: the page and the
  offline API docs);
- :mod:`lieprop.service.access`: which routes need the API key or take streamed uploads, declared with them;
- :mod:`lieprop.service.edge`: the outermost middleware (request id, API key, body limits, metrics, access log);
- :mod:`lieprop.service.errors`: the JSON error body and the exception handlers;
- :mod:`lieprop.service.job_runner` and :mod:`lieprop.service.uploads`: batch jobs and their uploads.

Start-up (lifespan) runs :meth:`Service.start`; shutdown (SIGTERM) lets uvicorn finish in-flight requests, then
runs :meth:`Service.stop`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from lieprop.service.access import RouteTable
from lieprop.service.edge import EdgeMiddleware
from lieprop.service.errors import add_exception_handlers, error_response
from lieprop.service.job_store import JobsUnavailable
from lieprop.service.metrics import ServiceMetrics
from lieprop.service.routes import MOUNTS, ROUTERS
from lieprop.service.routes.jobs import JobsDisabled, jobs_disabled, jobs_unavailable
from lieprop.service.settings import Settings
from lieprop.service.state import Service
from lieprop.version import __version__


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the app's :class:`Service` (model, batcher, pool, job runner) and stop it at shutdown."""
    service: Service = app.state.service
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app. Cheap to call: the model is loaded by the lifespan (when uvicorn starts the app)."""
    settings = settings or Settings()
    service = Service(settings, ServiceMetrics())
    app = FastAPI(
        title="lieprop", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served from vendored assets by lieprop.service.routes.web
        description="Quantum-chemical properties (QM9) of small organic molecules, predicted by a LieConv network. "
                    "Every value carries its unit; one bad molecule never fails the others.",
    )
    app.state.service = service
    add_exception_handlers(app)
    app.add_exception_handler(JobsUnavailable, jobs_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(JobsDisabled, jobs_disabled)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    for mount in MOUNTS:
        app.router.routes.append(mount)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key", "X-Request-ID"],
                           expose_headers=["X-Request-ID"])
    # The app's own routes (/openapi.json, the static mount) first, then the routers' (an older FastAPI lists those in
    # app.routes too; the first match wins, and both carry the same declarations).
    routes = RouteTable([*app.routes, *(route for router in ROUTERS for route in router.routes)])
    app.add_middleware(EdgeMiddleware, settings=settings, metrics=service.metrics, routes=routes)  # outermost
    return app


__all__ = ["Service", "create_app", "error_response"]
