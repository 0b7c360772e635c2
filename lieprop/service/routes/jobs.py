"""REST batch jobs: ``POST /v1/jobs`` (file upload), ``GET /v1/jobs[/{id}[/results]]``, ``DELETE /v1/jobs/{id}``.

An upload is streamed to ``<data_dir>/jobs/<id>/`` (never held in memory; at most ``max_upload_bytes``, see
:mod:`lieprop.service.uploads`), checked (format, SMILES column, properties) and answered at once with 202 and the
job. Its options (form fields or query parameters) are those of ``lieprop predict``, declared once in
:class:`lieprop.scoring.options.JobOptions`. The runner thread (:mod:`lieprop.service.job_runner`) scores it.

A job belongs to the tenant whose API key created it (the edge puts the tenant in ``request.state.tenant``); every
route sees only the caller's jobs (another tenant's job is 404, like a missing one), the admin tenant sees all.
Database calls run on the job manager's own thread pool; a database that cannot be used answers 503
``jobs_unavailable`` (:func:`jobs_unavailable`).

Retention and quotas: a job that expired (``job_ttl_hours`` after it finished) answers 410 ``job_expired`` on every
route until its record is deleted one TTL later (then 404); a tenant holding ``job_max_stored_per_tenant`` jobs or
``job_max_stored_bytes_per_tenant`` bytes gets 429 ``storage_quota_exceeded`` for a new job. An upload slower than
``upload_min_rate_bytes_s`` gets 408 ``request_timeout`` and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from lieprop.data import formats
from lieprop.inference import Column, ResultContext, UnknownPropertyError, select_properties
from lieprop.scoring.options import JobOptions, form_fields_schema, input_suffix
from lieprop.scoring.output import ManifestMissing, OutputError, Table, jsonl_to_csv
from lieprop.scoring.records import Source, open_source
from lieprop.service import schemas
from lieprop.service.access import API_KEY, STREAMED_UPLOAD
from lieprop.service.errors import ERROR_RESPONSES, error_response
from lieprop.service.job_runner import RESULTS, JobManager
from lieprop.service.job_store import DEFAULT_TENANT, JobsUnavailable
from lieprop.service.settings import Settings
from lieprop.service.state import Service, ServiceDep
from lieprop.service.uploads import UPLOAD_NAME, UploadTimeout, UploadTooLarge, receive_upload

log = logging.getLogger("lieprop.service.jobs")



class JobsDisabled(Exception):
    """This instance does not serve batch jobs (``jobs=false``: a replica among several, docs/SCALING.md)."""


async def requires_jobs(service: ServiceDep) -> None:
    """Dependency of every job route: raises :class:`JobsDisabled` when the service runs with ``jobs=false``."""
    if not service.settings.jobs:
        raise JobsDisabled("batch jobs are off on this instance (jobs=false, as on Ray Serve replicas and scaled "
                           "pods): send them to the one instance that runs jobs (docs/SCALING.md), or score the file "
                           "with lieprop predict")


def jobs_disabled(request: Request, exc: Exception) -> Response:
    """The exception handler of :class:`JobsDisabled`: 503 ``jobs_disabled``, with the reason."""
    return error_response(503, "jobs_disabled", str(exc))


router = APIRouter(prefix="/v1/jobs", dependencies=[API_KEY, Depends(requires_jobs)], tags=["jobs"])

_NOT_FOUND = {"model": schemas.ErrorResponse, "description": "no such job"}
_EXPIRED = {"model": schemas.ErrorResponse, "description": "`job_expired`: the job expired (job_ttl_hours)"}
#: The form field that carries the file.
FILE_FIELD = "file"


def upload_request_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/jobs``: the file and the :class:`JobOptions` as form fields."""
    return {
        "required": True,
        "description": "The input file, as multipart/form-data (field `file`, options as further fields or query "
                       "parameters) or as the raw body (options as query parameters; give `format` or `filename`).",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": [FILE_FIELD],
                "properties": {
                    FILE_FIELD: {"type": "string", "format": "binary",
                                 "description": "CSV with a SMILES column, .smi, SDF/MOL, multi-frame XYZ/extxyz "
                                                "(optionally .gz)"},
                    **form_fields_schema(),
                }}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }


def _not_found(job_id: str) -> JSONResponse:
    return error_response(404, "not_found", f"no job {job_id[:80]!r}")


def _expired(job: dict[str, Any], settings: Settings) -> JSONResponse:
    return error_response(410, "job_expired", f"job {job['id']} expired: finished jobs and their files are deleted "
                          f"{settings.job_ttl_hours:g} hours after they finish (job_ttl_hours)")


async def _storage_refusal(service: Service, tenant: str, adding: int) -> JSONResponse | None:
    """429 ``storage_quota_exceeded`` when ``tenant`` holds its limit of stored jobs, or would hold more than its
    limit of bytes with ``adding`` more; else None."""
    s = service.settings
    if not s.job_max_stored_per_tenant and not s.job_max_stored_bytes_per_tenant:
        return None
    if not _manager(service).db_path.exists():
        return None
    jobs, size = await _db(service, "stored", tenant)
    quota = None
    if s.job_max_stored_per_tenant and jobs >= s.job_max_stored_per_tenant:
        quota, what = "stored_jobs", f"{jobs:,} jobs with files on disk (the limit is {s.job_max_stored_per_tenant:,})"
    elif s.job_max_stored_bytes_per_tenant and size + adding > s.job_max_stored_bytes_per_tenant:
        quota, what = "stored_bytes", (f"{size:,} bytes of job files, and this upload adds {adding:,} (the limit is "
                                       f"{s.job_max_stored_bytes_per_tenant:,})")
    if quota is None:
        return None
    service.metrics.job_quota.labels(quota).inc()
    return error_response(429, "storage_quota_exceeded", f"tenant {tenant!r} holds {what}: delete finished jobs "
                          "(DELETE /v1/jobs/{id}) or wait until they expire", [{"quota": quota}])


def jobs_unavailable(request: Request, exc: Exception) -> Response:
    """The exception handler of :class:`JobsUnavailable`: 503 ``jobs_unavailable``, with the reason."""
    return error_response(503, "jobs_unavailable", f"batch jobs are unavailable: {exc}", headers={"Retry-After": "5"})


def tenant_of(request: Request) -> str:
    """The caller's tenant, put in the request state by the edge (or the API_KEY dependency)."""
    return getattr(request.state, "tenant", None) or DEFAULT_TENANT


def _sees_all(service: Service, request: Request) -> bool:
    return tenant_of(request) == service.settings.admin_tenant


async def _db(service: Service, method: str, *args: Any, **kwargs: Any) -> Any:
    """``store.<method>(...)`` on the job manager's database threads; a database error raises
    :class:`JobsUnavailable` (503)."""
    manager = _manager(service)
    call = functools.partial(manager.store_call, method, *args, **kwargs)
    try:
        return await asyncio.get_running_loop().run_in_executor(manager.db_executor, call)
    except sqlite3.Error as exc:
        log.error("job database call failed", extra={"path": str(manager.db_path), "error": str(exc)})
        raise JobsUnavailable(f"the job database {manager.db_path} failed: {exc}") from exc


async def _get_job(service: Service, job_id: str, request: Request) -> dict[str, Any] | None:
    """The job, if it exists and the caller may see it (else None: 404 either way, so ids do not leak)."""
    if service.jobs is None or not service.jobs.db_path.exists():
        return None
    job = await _db(service, "get", job_id)
    if job is not None and job["tenant"] != tenant_of(request) and not _sees_all(service, request):
        return None
    return job


def _manager(service: Service) -> JobManager:
    assert service.jobs is not None  # a job was found, so the service started its job manager
    return service.jobs


@router.post("", status_code=202, summary="Score a file of molecules in the background",
             dependencies=[STREAMED_UPLOAD], openapi_extra={"requestBody": upload_request_body()},
             responses={202: {"description": "the job was created; poll its `links.self`"}, **ERROR_RESPONSES,
                        408: {"model": schemas.ErrorResponse,
                              "description": "`request_timeout`: the upload was slower than upload_min_rate_bytes_s"},
                        429: {"model": schemas.ErrorResponse,
                              "description": "`storage_quota_exceeded`: the tenant holds its limit of stored jobs "
                                             "or bytes"}})
async def create_job(service: ServiceDep, request: Request) -> Response:
    """Upload a file; the answer (202) comes at once with the job and its links. Options as in `lieprop
    predict`: `format`, `smiles_column`, `id_column`, `properties`, `chunk_size`."""
    if not service.ready or service.jobs is None:
        return error_response(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "2"})
    jobs = service.jobs
    if jobs.unavailable is not None:  # known before the upload is read
        raise JobsUnavailable(jobs.unavailable)
    declared = request.headers.get("content-length", "")
    refused = await _storage_refusal(service, tenant_of(request), int(declared) if declared.isdigit() else 0)
    if refused is not None:  # before the upload is read
        return refused
    job_id = uuid.uuid4().hex
    folder = jobs.job_dir(job_id)
    values: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        values.setdefault(key, []).append(value)
    try:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=False)
        stored = await receive_upload(request, folder, values)
        if isinstance(stored, Response):
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return stored
        options = JobOptions.from_strings(values, {"chunk_size": service.settings.job_chunk_size},
                                          ignore=(FILE_FIELD,))
        served = service.served(options.model)
        if served is None:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            names = ", ".join(repr(n) for n in service.models)
            return error_response(422, "unknown_model", f"model {options.model!r} is not served; this server serves "
                                  f"{names} (GET /v1/models)")
        columns = select_properties(served.bundle.model.targets, options.properties)
        ResultContext.of(served.bundle, options.coverage, options.relaxed_with)  # ValueError: no intervals
        intervals = served.bundle.calibration is not None
        filename, size = stored
        suffix = input_suffix(options.filename or filename, options.format)
        if suffix is None:
            raise ValueError(f"cannot tell the format of {filename or 'the upload'!r}; pass format= one of "
                             f"{', '.join(formats.names())}")
        path = folder / f"input{suffix}"
        await asyncio.to_thread(os.replace, folder / UPLOAD_NAME, path)
        source = await asyncio.to_thread(_open_source, path, options, service.settings)
    except UploadTooLarge as exc:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return error_response(413, "body_too_large", str(exc))
    except UploadTimeout as exc:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        log.info("job upload too slow; refused", extra={"job": job_id, "error": str(exc)})
        return error_response(408, "request_timeout", str(exc), headers={"Connection": "close"})
    except UnknownPropertyError as exc:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return error_response(422, "unknown_property", str(exc), [{"unknown": exc.names}])
    except (ValueError, FileNotFoundError) as exc:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return error_response(422, "invalid_job", str(exc))
    refused = await _storage_refusal(service, tenant_of(request), size)
    if refused is not None:  # the upload's real size
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return refused
    job = {"id": job_id, "filename": (options.filename or filename or "")[:256] or None,
           "format": source.format, "input_bytes": size, "options": options.record(),
           "columns": [[c.name, c.unit, served.bundle.has_spread, intervals] for c in columns],
           "model": served.info, "tenant": tenant_of(request)}
    try:
        created = await _db(service, "create", job)
    except JobsUnavailable:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    jobs.ensure_runner()
    log.info("job created", extra={"job": job_id, "bytes": size, "format": source.format})
    body = jobs.view(created)
    return JSONResponse(body, status_code=202, headers={"Location": body["links"]["self"]})


@router.get("", summary="List jobs, newest first",
            responses={401: ERROR_RESPONSES[401], 422: ERROR_RESPONSES[422]})
async def list_jobs(service: ServiceDep, request: Request, limit: int = 100, state: str | None = None) -> Response:
    """The latest `limit` (1-1000) jobs of the caller's tenant (all tenants' for the admin), optionally only those
    in `state`."""
    if not 1 <= limit <= 1000:
        return error_response(422, "invalid_request", "limit must be between 1 and 1000")
    if service.jobs is None or not service.jobs.db_path.exists():
        return JSONResponse({"jobs": []})
    tenant = None if _sees_all(service, request) else tenant_of(request)
    rows = await _db(service, "list", limit, state, tenant)
    return JSONResponse({"jobs": [service.jobs.view(j) for j in rows]})


@router.get("/{job_id}", summary="A job's state, counts and progress",
            responses={401: ERROR_RESPONSES[401], 404: _NOT_FOUND, 410: _EXPIRED})
async def job_status(service: ServiceDep, job_id: str, request: Request) -> Response:
    """State (queued, running, succeeded, failed, cancelled), rows done of total, rate and ETA, counts by
    outcome and error code."""
    job = await _get_job(service, job_id, request)
    if job is None:
        return _not_found(job_id)
    if job["expired_at"] is not None:
        return _expired(job, service.settings)
    return JSONResponse(_manager(service).view(job))


@router.get("/{job_id}/results", summary="Stream a finished job's results",
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}},
                             "description": "one row per input record, in input order"},
                       401: ERROR_RESPONSES[401], 404: _NOT_FOUND, 422: ERROR_RESPONSES[422],
                       409: {"model": schemas.ErrorResponse, "description": "the job has not succeeded (yet)"},
                       410: {"model": schemas.ErrorResponse,
                             "description": "`gone`: the results were deleted; `job_expired`: the job expired"},
                       500: {"model": schemas.ErrorResponse,
                             "description": "`results_damaged`: the results on disk fail their checksum"}})
async def job_results(service: ServiceDep, job_id: str, request: Request, format: str | None = None) -> Response:
    """JSON Lines (default; the REST result of every record, with its index) or CSV (`?format=csv` or
    `Accept: text/csv`; the same table as `lieprop predict --out x.csv`). The file is checked against its manifest
    (size, sha256, rows) before anything is sent: damaged results answer 500 `results_damaged`, never a 200 cut
    short."""
    job = await _get_job(service, job_id, request)
    if job is None:
        return _not_found(job_id)
    if job["expired_at"] is not None:
        return _expired(job, service.settings)
    fmt = format or ("csv" if "text/csv" in request.headers.get("accept", "") else "jsonl")
    if fmt not in ("csv", "jsonl"):
        return error_response(422, "invalid_request", f"format must be csv or jsonl, got {fmt[:20]!r}")
    if job["results_deleted"]:
        return error_response(410, "gone", "the results of this job were deleted")
    if job["state"] != "succeeded":
        detail = f": {job['error']}" if job["state"] == "failed" else ""
        return error_response(409, "job_not_succeeded", f"the job is {job['state']}{detail}; results are "
                              "available once it has succeeded")
    path = _manager(service).job_dir(job_id) / RESULTS
    if not path.exists():
        return error_response(410, "gone", "the results of this job are no longer on disk")
    headers = {}
    try:
        await asyncio.get_running_loop().run_in_executor(None, _manager(service).verify_results, path)
    except ManifestMissing:  # a job finished by an older lieprop: served as before, said to be unverified
        log.warning("job results have no manifest; sent unverified", extra={"job": job_id})
        headers["X-Lieprop-Results-Verified"] = "false"
    except OutputError as exc:
        log.error("job results damaged", extra={"job": job_id, "error": str(exc)})
        return error_response(500, "results_damaged", f"the results of this job are damaged and cannot be sent: "
                              f"{exc}")
    if fmt == "jsonl":
        return FileResponse(path, media_type="application/x-ndjson", filename=f"{job_id}.jsonl", headers=headers)
    table = Table(tuple(Column(c[0], c[1], -1, c[0].endswith("_atomization")) for c in job["columns"]),
                  with_smiles=_is_smiles(job["format"]),
                  with_std=any(len(c) > 2 and c[2] for c in job["columns"]),  # [name, unit(, std, interval)]
                  with_interval=any(len(c) > 3 and c[3] for c in job["columns"]))
    return StreamingResponse(_csv_stream(path, table), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"', **headers})


@router.delete("/{job_id}", summary="Cancel a job and delete its files",
               responses={401: ERROR_RESPONSES[401], 404: _NOT_FOUND, 410: _EXPIRED})
async def delete_job(service: ServiceDep, job_id: str, request: Request) -> Response:
    """An unfinished job is cancelled; the input and results of any job are deleted. The job's record stays
    (`GET` shows it, `results` answers 410)."""
    job = await _get_job(service, job_id, request)
    if job is None:
        return _not_found(job_id)
    if job["expired_at"] is not None:
        return _expired(job, service.settings)
    manager = _manager(service)
    try:
        cancelled = await asyncio.get_running_loop().run_in_executor(manager.db_executor, manager.cancel, job)
    except sqlite3.Error as exc:
        raise JobsUnavailable(f"the job database {manager.db_path} failed: {exc}") from exc
    return JSONResponse(manager.view(cancelled))


def _open_source(path: Path, options: JobOptions, settings: Settings) -> Source:
    return open_source(path, options.format, options.smiles_column, options.id_column,
                       max_rows=settings.job_max_rows, max_decompressed_bytes=settings.job_max_decompressed_bytes)


def _csv_stream(path: Path, table: Table) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from jsonl_to_csv(f, table)


def _is_smiles(name: str) -> bool:
    """Whether a job's input format holds SMILES (its results then carry a ``smiles`` column)."""
    fmt = formats.lookup(name)
    return fmt is not None and fmt.kind.name == "smiles"
