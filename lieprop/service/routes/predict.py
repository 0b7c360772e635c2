"""``POST /v1/predict``: properties of up to ``max_molecules`` molecules, answered in order.

Life of a request: the edge (:mod:`lieprop.service.edge`) gives it a request id, checks the API key, reads the
body (at most ``max_body_bytes``) and parses it on a thread (:mod:`lieprop.service.json_body`); more than
``max_molecules`` molecules is a 413 before anything is validated; FastAPI validates the rest against
:mod:`lieprop.service.schemas`; the :class:`~lieprop.service.state.Service` embeds SMILES and MOL blocks in its
process pool, reads XYZ and arrays on a thread, estimates each molecule's model time (``too_expensive`` over the
limits) and hands the admitted molecules to the :class:`~lieprop.service.batcher.DynamicBatcher`, whose single
worker thread runs the model; results are built by the same functions as the library's ``lieprop.predict``. Nothing
CPU-heavy runs on the event loop.

A request that runs past ``request_timeout_s`` (504) or whose client disconnects is cancelled: its embedding tasks
not yet started and its molecules still waiting for the model are dropped (``lieprop_cancelled_molecules``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response

from lieprop.data.records import DEFAULT_CONFORMERS
from lieprop.inference import EMBEDDING_KINDS, ResultContext, UnknownPropertyError, input_kind, select_properties
from lieprop.service import schemas
from lieprop.service.access import API_KEY
from lieprop.service.batcher import BatcherClosed, QueueFull
from lieprop.service.errors import ERROR_RESPONSES, error_response
from lieprop.service.json_body import ParsedJSONRoute
from lieprop.service.state import ServiceDep, get_service

T = TypeVar("T")


def _too_many(count: int, limit: int) -> Response:
    return error_response(413, "too_many_molecules", f"{count} molecules in one request; the limit is {limit} (use "
                          "/v1/jobs for files)")


class PredictRoute(ParsedJSONRoute):
    """Counts the molecules of a parsed body before FastAPI validates them: too many is a 413 at once."""

    def precheck(self, request: Request, body: Any) -> Response | None:
        molecules = body.get("molecules") if isinstance(body, dict) else None
        limit = get_service(request).settings.max_molecules
        if isinstance(molecules, list) and len(molecules) > limit:
            return _too_many(len(molecules), limit)
        return None


router = APIRouter(prefix="/v1", dependencies=[API_KEY], route_class=PredictRoute)


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read already, so the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_done_or_gone(work: Awaitable[T], request: Request, timeout: float) -> T:
    """``work``'s result; cancels it and raises ``TimeoutError`` after ``timeout`` seconds, or
    :class:`ClientDisconnected` as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # its cancellation drops the queued work before we answer
    if gone in done:
        raise ClientDisconnected()
    raise TimeoutError()


@router.post("/predict", response_model=schemas.PredictResponse, responses=ERROR_RESPONSES,
             summary="Predict properties of molecules", tags=["predict"])
async def predict(service: ServiceDep, request: Request,
                  body: Annotated[schemas.PredictRequest, Body(openapi_examples=schemas.PREDICT_EXAMPLES)]
                  ) -> Response:
    """One result per molecule, in order: values with units, provenance and warnings, or an error code."""
    s = service.settings
    if len(body.molecules) > s.max_molecules:
        return _too_many(len(body.molecules), s.max_molecules)
    embedded = sum(1 for m in body.molecules if input_kind(m.model_dump(exclude_none=True)) in EMBEDDING_KINDS)
    if embedded * body.conformers > s.max_molecules * DEFAULT_CONFORMERS:
        # embedding and model work grow with both: bounded as for a full request of SMILES at the default count
        return error_response(413, "too_many_molecules", f"{embedded} SMILES or MOL blocks x {body.conformers} "
                              f"conformers in one request; the limit is {s.max_molecules * DEFAULT_CONFORMERS} "
                              f"(max_molecules x {DEFAULT_CONFORMERS}): send fewer molecules or fewer conformers")
    served = service.served(body.model)
    if served is None:
        names = ", ".join(repr(n) for n in service.models)
        return error_response(422, "unknown_model", f"model {body.model!r} is not served; this server serves "
                              f"{names} (GET /v1/models)")
    try:
        columns = select_properties(served.bundle.model.targets, body.properties)
    except UnknownPropertyError as exc:
        return error_response(422, "unknown_property", str(exc), [{"unknown": exc.names}])
    try:
        context = (ResultContext.of(served.bundle, body.coverage, body.relaxed_with)
                   if body.coverage is not None or body.relaxed_with != "dft" else None)
    except ValueError as exc:
        return error_response(422, "invalid_request", f"coverage: {exc}")
    items = [m.model_dump(exclude_none=True) for m in body.molecules]
    try:
        results = await until_done_or_gone(service.predict(items, columns, context=context,
                                                           geometry=body.return_geometry, model=served,
                                                           conformers=body.conformers), request,
                                           s.request_timeout_s)
    except TimeoutError:
        return error_response(504, "timeout", f"the request took longer than {s.request_timeout_s} s; its work "
                              "was cancelled")
    except ClientDisconnected:  # nobody reads this answer; the access log shows 499
        return error_response(499, "client_disconnected", "the client disconnected; the work was cancelled")
    except QueueFull as exc:
        return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})
    except BatcherClosed:
        return error_response(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"})
    service.metrics.count_results(results)
    return JSONResponse({"model": served.info, "results": results})
