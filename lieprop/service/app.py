"""The REST service: ``create_app(settings)`` builds the FastAPI app of docs/DESIGN.md's contract v1.

Life of a ``POST /v1/predict``: the edge middleware gives it a request id, checks the API key and reads the body
(at most ``max_body_bytes``); FastAPI validates it against :mod:`lieprop.service.schemas`; SMILES and MOL blocks are
embedded in the process pool, XYZ and arrays are read on a thread; the valid molecules go to the
:class:`~lieprop.service.batcher.DynamicBatcher`, whose single worker thread runs the model; results are built by
the same functions as the library's ``lieprop.predict``. Nothing CPU-heavy runs on the event loop.

Start-up (lifespan) loads and verifies the bundle (a missing or broken bundle stops start-up with its reason), then
warms the model and the embedding pool in the background; ``/readyz`` answers 503 until that is done and again
while shutting down. Shutdown (SIGTERM) lets uvicorn finish in-flight requests, then drains the batcher.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

import lieprop
from lieprop.data.molecule import Molecule
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.inference import (
    EMBEDDING_KINDS,
    Column,
    Parsed,
    UnknownPropertyError,
    build_results,
    fallback_id,
    input_kind,
    load_model,
    model_card,
    model_info,
    parse_items,
    select_properties,
    size_warnings,
)
from lieprop.model.device import pick_device
from lieprop.service import schemas
from lieprop.service.batcher import BatcherClosed, DynamicBatcher, Priority, QueueFull
from lieprop.service.jobs import JobManager, add_job_routes, limited_receive
from lieprop.service.logs import request_id
from lieprop.service.metrics import CONTENT_TYPE, ServiceMetrics
from lieprop.service.settings import Settings

log = logging.getLogger("lieprop.service")

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text} for code, text in {
        400: "the body is not JSON", 401: "missing or wrong X-API-Key", 413: "body or molecule count over the limit",
        415: "the body was not sent as application/json",
        422: "the body does not follow the contract, or names unknown properties / models",
        503: "overloaded or shutting down", 504: "the request took longer than request_timeout_s",
    }.items()
}
_PROTECTED = re.compile(r"^/(v1/|metrics$)")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STATUS_CODES = {400: "invalid_json", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "body_too_large", 415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body of every non-2xx answer: ``{"error": {"code", "message", "details"?}, "request_id"}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error, "request_id": request_id.get()}, status_code=status, headers=headers)


# --------------------------------------------------------------------------------------------------
# The shared state: model, batcher, embedding pool, readiness


class Service:
    """What the routes share: settings, metrics, the model bundle, the batcher, the embedding pool, readiness."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = ValidationLimits(max_atoms=settings.max_atoms)
        self.state = "starting"  # starting -> warming -> ready (or failed) -> stopping
        self.detail: str | None = None
        self.bundle: Any = None
        self.batcher: DynamicBatcher | None = None
        self.pool: ProcessPoolExecutor | None = None
        self.info: dict[str, str] = {}
        self.size_warnings: dict[str, str] = {}  # size bins the model is known to fail on (lieprop.inference)
        self.cards: dict[str, Any] = {}
        self._warm_task: asyncio.Task | None = None
        self.jobs: JobManager | None = None  # batch jobs (lieprop/service/jobs.py)
        self.parsing = 0  # requests being read: their molecules will reach the batcher soon

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self) -> None:
        s = self.settings
        self.bundle = await asyncio.to_thread(load_model, s.model)  # ModelNotFoundError / BundleError stop start-up
        self.size_warnings = size_warnings(self.bundle.meta)
        self.bundle.model.to(pick_device(s.device))  # batches are moved to the model's device by predict
        self.info = model_info(self.bundle)
        card = model_card(self.bundle)
        self.cards = {"card": {**card, "default": True}, "properties": card["properties"]}
        threads = s.model_threads or os.cpu_count() or 1
        self.batcher = DynamicBatcher(
            functools.partial(self.bundle.model.predict, batch_size=s.model_chunk),
            max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, batching=s.batching,
            max_queue=s.max_queue, initializer=functools.partial(_init_model_thread, threads),
            on_batch=self.metrics.observe_batch, incoming=lambda: self.parsing,
        ).start()
        self.metrics.track_queue(lambda: self.batcher.queued if self.batcher else 0)
        self.metrics.model.labels(**self.info).set(1)
        self.pool = self._new_pool()
        self.state = "warming"
        self._warm_task = asyncio.create_task(self._warm())
        self.jobs = JobManager(self)
        await asyncio.to_thread(self.jobs.start)  # jobs a dead server left running resume
        log.info("model loaded", extra={"model": self.info, "threads": threads, "path": str(s.model)})

    async def stop(self) -> None:
        self.state = "stopping"
        self.metrics.ready.set(0)
        if self._warm_task is not None:
            self._warm_task.cancel()
        timeout = self.settings.shutdown_timeout_s
        if self.jobs is not None:  # first: a running job pauses (resumable) before the model worker stops
            await asyncio.to_thread(self.jobs.stop, timeout)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close, True, timeout)
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, True, cancel_futures=True)
        log.info("stopped")

    def _new_pool(self) -> ProcessPoolExecutor:
        from lieprop.data.readers import embedding_pool

        return embedding_pool(self.settings.workers_embed)

    async def _warm(self) -> None:
        try:
            if self.settings.warmup:
                start = time.perf_counter()
                await asyncio.wrap_future(self.batcher.call(self._warm_model))
                warm = [{"smiles": "CCO"}] * self.settings.workers_embed
                await asyncio.gather(*(self._run_pool([(0, item)]) for item in warm))
                log.info("warm", extra={"seconds": round(time.perf_counter() - start, 3)})
            self.state = "ready"
            self.metrics.ready.set(1)
            log.info("ready")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state, self.detail = "failed", f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("warm-up failed")

    def _warm_model(self) -> None:
        """Run the model on one small molecule and on a full batch, so first requests pay no allocation."""
        from lieprop.inference import parse_item

        molecules = [parse_item(schemas.WATER, 0), parse_item({"xyz": schemas.ETHANOL_XYZ}, 1)]
        predict = functools.partial(self.bundle.model.predict, batch_size=self.settings.model_chunk)
        for m in molecules:
            predict([m.numbers], [m.positions])
        full = molecules * max(1, self.settings.max_batch_size // 2)
        predict([m.numbers for m in full], [m.positions for m in full])

    async def _run_pool(self, chunk: list[tuple[int, dict]]) -> list[Parsed]:
        loop = asyncio.get_running_loop()
        pool = self.pool
        try:
            return await loop.run_in_executor(pool, parse_items, chunk, self.limits)
        except BrokenProcessPool:
            log.error("the embedding pool broke (a worker died); starting a new one")
            if self.pool is pool:
                self.pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            return [Parsed(i, MoleculeError("embedding_failed", "the embedding worker died on this request"), 0.0)
                    for i, _ in chunk]

    async def parse(self, items: list[dict]) -> list[Parsed]:
        """Read every item: SMILES and MOL blocks in the process pool (split over its workers), the rest on a
        thread. Returns one :class:`Parsed` per item, in order."""
        loop = asyncio.get_running_loop()
        heavy = [(i, d) for i, d in enumerate(items) if input_kind(d) in EMBEDDING_KINDS]
        light = [(i, d) for i, d in enumerate(items) if input_kind(d) not in EMBEDDING_KINDS]
        jobs: list[Awaitable[list[Parsed]]] = []
        if light:
            jobs.append(loop.run_in_executor(None, parse_items, light, self.limits))
        if heavy:
            n = min(self.settings.workers_embed, len(heavy))
            jobs.extend(self._run_pool(heavy[k::n]) for k in range(n))
        parsed = [p for chunk in await asyncio.gather(*jobs) for p in chunk]
        for p in parsed:
            if input_kind(items[p.index]) in EMBEDDING_KINDS:
                self.metrics.embedding.observe(p.seconds)
        return sorted(parsed, key=lambda p: p.index)

    async def predict(self, items: list[dict], columns: list[Column],
                      priority: Priority = Priority.INTERACTIVE) -> list[dict]:
        """Results for REST items, in order (raises QueueFull / BatcherClosed)."""
        self.parsing += 1
        try:
            parsed = await self.parse(items)
        finally:
            self.parsing -= 1  # before enqueueing, so the worker never waits for this request itself
        outcomes = [p.outcome for p in parsed]
        valid = [o for o in outcomes if isinstance(o, Molecule)]
        future = self.batcher.submit_nowait([(m.numbers, m.positions) for m in valid], priority)
        rows = await asyncio.wrap_future(future)
        ids = [fallback_id(item, i) for i, item in enumerate(items)]
        return build_results(outcomes, ids, rows, columns, self.bundle.model.targets, self.size_warnings)


def _init_model_thread(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    log.info("model worker started", extra={"torch_threads": torch.get_num_threads()})


# --------------------------------------------------------------------------------------------------
# The edge: request id, API key, body limit, metrics, access log, last-resort error handling


class EdgeMiddleware:
    """Pure ASGI middleware (no per-request task or body copy beyond the limit check)."""

    def __init__(self, app: Callable, service: Service, routes: set[str]) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        key = service.settings.api_key
        self.api_key = key.get_secret_value().encode() if key is not None else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = {"code": 500, "started": False}
        start = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        metrics = self.service.metrics
        metrics.in_flight.inc()
        try:
            await self._handle(scope, receive, send_with_id, headers)
        except Exception:
            log.exception("unhandled error")
            if not status["started"]:
                await error_response(500, "internal_error", "the server failed on this request; the logs have "
                                     f"the details under request id {rid}")(scope, receive, send_with_id)
        finally:
            metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = scope.get("route")
            path = scope.get("path", "")
            template = getattr(route, "path", None) or (path if path in self.routes else "unmatched")
            method = scope.get("method", "")
            metrics.requests.labels(template, method, str(status["code"])).inc()
            metrics.latency.labels(template, method, str(status["code"])).observe(seconds)
            log.info("request", extra={"method": method, "path": path, "status": status["code"],
                                       "duration_ms": round(seconds * 1000, 2),
                                       "client": (scope.get("client") or ("-",))[0]})
            request_id.reset(token)

    async def _handle(self, scope: dict, receive: Callable, send: Callable, headers: dict[str, bytes]) -> None:
        if (self.api_key is not None and scope.get("method") != "OPTIONS"  # CORS preflights carry no key
                and _PROTECTED.match(scope.get("path", ""))):
            given = headers.get("x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key):
                what = "wrong" if given else "missing"
                await error_response(401, "unauthorized", f"{what} API key: send it in the X-API-Key header")(
                    scope, receive, send)
                return
        if scope.get("method") == "POST" and scope.get("path") == "/v1/jobs":  # uploads stream to disk
            limit = self.service.settings.max_upload_bytes
            declared = headers.get("content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                await error_response(413, "body_too_large", f"the upload is larger than {limit} bytes")(
                    scope, receive, send)
                return
            receive = limited_receive(receive, limit)
        elif scope.get("method") in ("POST", "PUT", "PATCH"):
            limit = self.service.settings.max_body_bytes
            declared = headers.get("content-length", b"")
            too_large = error_response(413, "body_too_large", f"the request body is larger than {limit} bytes")
            if declared.isdigit() and int(declared) > limit:
                await too_large(scope, receive, send)
                return
            body = await _read_body(receive, limit)
            if body is None:
                await too_large(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


async def _read_body(receive: Callable, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --------------------------------------------------------------------------------------------------
# The app


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app. Cheap to call: the model is loaded by the lifespan (when uvicorn starts the app)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="lieprop", version=lieprop.__version__, lifespan=lifespan,
        description="Quantum-chemical properties (QM9) of small organic molecules, predicted by a LieConv network. "
                    "Every value carries its unit; one bad molecule never fails the others.",
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for e in errors:
            if e.get("type") == "json_invalid":
                where = e.get("loc", ("", "?"))[-1]
                reason = (e.get("ctx") or {}).get("error", "JSON decode error")
                return error_response(400, "invalid_json", f"the body is not valid JSON: {reason} (at character "
                                      f"{where})")
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type.lower() and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
            return error_response(415, "unsupported_media_type", f"the body must be JSON, sent with Content-Type: "
                                  f"application/json (got {content_type[:100]!r})")
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in errors[:50]]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:]) or "body"
        return error_response(422, "invalid_request", f"{where}: {first['msg']}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.post("/v1/predict", response_model=schemas.PredictResponse, responses=_ERROR_RESPONSES,
              summary="Predict properties of molecules", tags=["predict"])
    async def predict(request: Request,
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
        items = [m.model_dump(exclude_none=True) for m in body.molecules]
        try:
            results = await asyncio.wait_for(service.predict(items, columns), s.request_timeout_s)
        except asyncio.TimeoutError:
            return error_response(504, "timeout", f"the request took longer than {s.request_timeout_s} s")
        except QueueFull as exc:
            return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})
        except BatcherClosed:
            return error_response(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"})
        metrics.count_results(results)
        return JSONResponse({"model": service.info, "results": results})

    @app.get("/v1/models", response_model=schemas.ModelsResponse, responses={401: _ERROR_RESPONSES[401]},
             tags=["models"])
    async def models() -> Response:
        """The served model: name, version, sha256, targets, properties with units and test MAE, training facts."""
        return JSONResponse({"models": [service.cards["card"]]})

    @app.get("/v1/properties", response_model=schemas.PropertiesResponse, responses={401: _ERROR_RESPONSES[401]},
             tags=["models"])
    async def properties() -> Response:
        """The properties the served model predicts, with units, descriptions and test MAE."""
        return JSONResponse({"model": service.info, "properties": service.cards["properties"]})

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"])
    async def healthz() -> Response:
        """The process is alive."""
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}},
             tags=["operations"])
    async def readyz() -> Response:
        """200 once the model is loaded and warm; 503 before, after a failed warm-up and while shutting down."""
        if service.ready:
            return JSONResponse({"status": "ready", "model": service.info})
        return JSONResponse({"status": service.state, "detail": service.detail}, status_code=503)

    @app.get("/metrics", response_class=Response, tags=["operations"],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: _ERROR_RESPONSES[401]})
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key", "X-Request-ID"],
                           expose_headers=["X-Request-ID"])
    add_job_routes(app, service)
    routes = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(EdgeMiddleware, service=service, routes=routes)
    return app


__all__ = ["Service", "create_app", "error_response"]
