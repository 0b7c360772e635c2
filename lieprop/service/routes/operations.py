"""Operations: ``/healthz`` (alive), ``/readyz`` (model loaded and warm; the job runner's state) and ``/metrics``
(Prometheus, needs the API key)."""

from __future__ import annotations

import asyncio
import contextlib

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
async def readyz(service: ServiceDep, jobs: bool = False) -> Response:
    """200 once the model is loaded and warm; 503 before, after a failed warm-up and while shutting down.

    The body's `jobs` says whether the batch-job runner is `up` or `down` (with the reason). A dead runner or an
    unusable job database does not make `/readyz` 503, so that predictions keep being routed to the instance; with
    `?jobs=true` it does (for a probe of an instance that serves jobs)."""
    if not service.settings.jobs:
        up, detail = False, "batch jobs are off on this instance (jobs=false)"
    elif service.jobs is not None:
        up, detail = service.jobs.health()
    else:
        up, detail = False, "the job runner has not started"
    runner = {"status": "up" if up else "down", "detail": detail}
    if service.ready and (up or not jobs):
        return JSONResponse({"status": "ready", "model": service.info, "jobs": runner})
    if service.ready:
        return JSONResponse({"status": "jobs_down", "detail": detail, "jobs": runner}, status_code=503)
    return JSONResponse({"status": service.state, "detail": service.detail, "jobs": runner}, status_code=503)


@router.get("/metrics", response_class=Response, dependencies=[API_KEY],
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                       401: ERROR_RESPONSES[401]})
async def prometheus(service: ServiceDep) -> Response:
    """Prometheus metrics."""
    jobs = service.jobs
    if jobs is not None:  # the storage gauges come from the job database, on its own threads
        with contextlib.suppress(Exception):  # an unusable database: the gauges keep their last values
            await asyncio.get_running_loop().run_in_executor(jobs.db_executor, jobs.refresh_storage_metrics)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
