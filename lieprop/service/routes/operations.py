"""Operations: ``/healthz`` (alive), ``/readyz`` (model loaded and warm) and ``/metrics`` (Prometheus, needs the API
key)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from lieprop.service import schemas
from lieprop.service.access import API_KEY
from lieprop.service.errors import ERROR_RESPONSES
from lieprop.service.metrics import CONTENT_TYPE
from lieprop.service.state import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=schemas.Health)
async def healthz() -> Response:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
async def readyz(service: ServiceDep) -> Response:
    """200 once the model is loaded and warm; 503 before, after a failed warm-up and while shutting down."""
    if service.ready:
        return JSONResponse({"status": "ready", "model": service.info})
    return JSONResponse({"status": service.state, "detail": service.detail}, status_code=503)


@router.get("/metrics", response_class=Response, dependencies=[API_KEY],
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                       401: ERROR_RESPONSES[401]})
async def prometheus(service: ServiceDep) -> Response:
    """Prometheus metrics."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
