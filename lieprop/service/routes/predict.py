"""``POST /v1/predict``: properties of up to ``max_molecules`` molecules, answered in order.

Life of a request: the edge (:mod:`lieprop.service.edge`) gives it a request id, checks the API key and reads the
body (at most ``max_body_bytes``); FastAPI validates it against :mod:`lieprop.service.schemas`; the
:class:`~lieprop.service.state.Service` embeds SMILES and MOL blocks in its process pool, reads XYZ and arrays on a
thread and hands the valid molecules to the :class:`~lieprop.service.batcher.DynamicBatcher`, whose single worker
thread runs the model; results are built by the same functions as the library's ``lieprop.predict``. Nothing
CPU-heavy runs on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse, Response

from lieprop.inference import ResultContext, UnknownPropertyError, select_properties
from lieprop.service import schemas
from lieprop.service.access import API_KEY
from lieprop.service.batcher import BatcherClosed, QueueFull
from lieprop.service.errors import ERROR_RESPONSES, error_response
from lieprop.service.state import ServiceDep

router = APIRouter(prefix="/v1", dependencies=[API_KEY])


@router.post("/predict", response_model=schemas.PredictResponse, responses=ERROR_RESPONSES,
             summary="Predict properties of molecules", tags=["predict"])
async def predict(service: ServiceDep,
                  body: Annotated[schemas.PredictRequest, Body(openapi_examples=schemas.PREDICT_EXAMPLES)]
                  ) -> Response:
    """One result per molecule, in order: values with units, provenance and warnings, or an error code."""
    s = service.settings
    if len(body.molecules) > s.max_molecules:
        return error_response(413, "too_many_molecules", f"{len(body.molecules)} molecules in one request; the "
                              f"limit is {s.max_molecules} (use /v1/jobs for files)")
    if body.model is not None and body.model != service.info["name"]:
        return error_response(422, "unknown_model", f"model {body.model!r} is not served; this server serves "
                              f"{service.info['name']!r}")
    try:
        columns = select_properties(service.bundle.model.targets, body.properties)
    except UnknownPropertyError as exc:
        return error_response(422, "unknown_property", str(exc), [{"unknown": exc.names}])
    try:
        context = ResultContext.of(service.bundle, body.coverage) if body.coverage is not None else None
    except ValueError as exc:
        return error_response(422, "invalid_request", f"coverage: {exc}")
    items = [m.model_dump(exclude_none=True) for m in body.molecules]
    try:
        results = await asyncio.wait_for(service.predict(items, columns, context=context,
                                                                geometry=body.return_geometry), s.request_timeout_s)
    except asyncio.TimeoutError:
        return error_response(504, "timeout", f"the request took longer than {s.request_timeout_s} s")
    except QueueFull as exc:
        return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})
    except BatcherClosed:
        return error_response(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"})
    service.metrics.count_results(results)
    return JSONResponse({"model": service.info, "results": results})
