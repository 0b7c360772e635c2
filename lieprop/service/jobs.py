"""REST batch jobs: ``POST /v1/jobs`` (file upload), ``GET /v1/jobs[/{id}[/results]]``, ``DELETE /v1/jobs/{id}``.

An upload is streamed to ``<data_dir>/jobs/<id>/`` (never held in memory; at most ``max_upload_bytes``), checked
(format, SMILES column, properties) and answered at once with 202 and the job. One runner thread works through
queued jobs, oldest first, with the pipeline of ``lieprop predict`` (:func:`lieprop.jobs.pipeline.score_file`):
records are parsed in a pool of ``job_workers`` processes running below normal CPU priority, and the model runs
on the service's model thread as *background* calls of the :class:`~lieprop.service.batcher.DynamicBatcher`,
``max_batch_size`` molecules per call, which wait whenever interactive molecules are queued. So ``/v1/predict``
keeps its latency while a job runs (it waits for at most one background call), and the job gets the model
whenever the interactive queue is empty.

Job state lives in SQLite (:class:`~lieprop.jobs.store.JobStore`, ``<data_dir>/jobs.sqlite3``), results on disk
(``results.jsonl``, written chunk by chunk by :class:`~lieprop.jobs.output.ResultFile`). If the server dies, the
jobs it was running are queued again at the next start and resume from their last committed chunk; a graceful
shutdown stops a job between model calls in the same resumable way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from lieprop.data.readers import FORMATS
from lieprop.inference import Column, UnknownPropertyError, select_properties
from lieprop.jobs.output import NothingToResume, OutputError, Table, jsonl_to_csv
from lieprop.jobs.pipeline import RunInterrupted, ScoreOptions, Summary, score_file
from lieprop.jobs.store import FINAL_STATES, JobStore
from lieprop.service import schemas
from lieprop.service.batcher import BatcherClosed, BatchStats, Priority

if TYPE_CHECKING:
    from lieprop.service.app import Service

log = logging.getLogger("lieprop.service.jobs")

RESULTS = "results.jsonl"
_OPTION_NAMES = ("format", "smiles_column", "id_column", "properties", "chunk_size", "filename")
_MAX_CHUNK = 100_000


class UploadTooLarge(Exception):
    """The upload went over ``max_upload_bytes`` while it was being received."""


def limited_receive(receive: Callable, limit: int) -> Callable:
    """An ASGI ``receive`` that raises :class:`UploadTooLarge` once more than ``limit`` body bytes came in."""
    size = 0

    async def wrapped() -> dict:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise UploadTooLarge(f"the upload is larger than {limit} bytes")
        return message

    return wrapped


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


class JobManager:
    """The job store, the job files and the runner thread of one service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.root = Path(self.settings.data_dir)
        self._store: JobStore | None = None
        self._store_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # between claiming a job and cancelling it
        self._thread: threading.Thread | None = None
        self.current: str | None = None

    # ---------------------------------------------------------------------------------------------- lifecycle

    @property
    def db_path(self) -> Path:
        return self.root / "jobs.sqlite3"

    @property
    def store(self) -> JobStore:
        """The store, created with the data directory on first use (a server that never gets a job writes
        nothing)."""
        with self._store_lock:
            if self._store is None:
                self._store = JobStore(self.db_path)
            return self._store

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def start(self) -> None:
        """Queue again the jobs a dead server left running, and start the runner if there is work."""
        if self.db_path.exists():
            requeued = self.store.requeue_running()
            if requeued:
                log.info("resuming jobs", extra={"jobs": requeued})
            if self.store.list(limit=1, state="queued"):
                self.ensure_runner()

    def ensure_runner(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(target=self._run, name="lieprop-jobs", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the runner between model calls; a running job stays resumable (it is queued again)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None:
            self._store.close()

    # ---------------------------------------------------------------------------------------------- runner

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                job = self.store.next_queued()
                self.current = job["id"] if job is not None else None
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run_job(job)
            except Exception as exc:  # a bug or a broken data directory: fail the job, keep the runner going
                log.exception("job runner failed", extra={"job": job["id"]})
                with contextlib.suppress(Exception):
                    self._fail(job["id"], f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self.current = None
                    if job["id"] in self._cancelled:
                        self._cancelled.discard(job["id"])
                        self._remove_files(job["id"])

    def _should_stop(self, job_id: str) -> bool:
        return self._stopping.is_set() or job_id in self._cancelled

    def _run_job(self, job: dict[str, Any]) -> None:
        from lieprop.jobs.pipeline import LocalEngine

        job_id = job["id"]
        folder = self.job_dir(job_id)
        s = self.settings
        opts = job["options"]
        options = ScoreOptions(format=job["format"], smiles_column=opts["smiles_column"], id_column=opts["id_column"],
                               properties=opts["properties"], chunk_size=opts["chunk_size"],
                               model_batch=s.max_batch_size, frame_batch=s.model_chunk, max_atoms=s.max_atoms)
        should_stop = functools.partial(self._should_stop, job_id)
        engine = LocalEngine(self._background_predict(should_stop), s.job_workers, nice=s.job_nice, in_process=False,
                             should_stop=should_stop)
        log.info("job started", extra={"job": job_id, "attempt": job["attempts"]})
        written = {"ok": None, "errors": None}

        def on_chunk(summary: Summary, total: int | None) -> None:
            counts = summary.counts
            self.store.update(job_id, done=counts.rows, counts=counts.to_dict(), total=total,
                              rate=summary.rows_per_s)
            before = written if written["ok"] is not None else {"ok": summary.initial.ok,
                                                                 "errors": summary.initial.errors}
            metric = self.service.metrics.job_rows
            metric.labels("ok", "").inc(counts.ok - before["ok"])
            for code, n in counts.errors.items():
                metric.labels("error", code).inc(n - before["errors"].get(code, 0))
            written.update(ok=counts.ok, errors=dict(counts.errors))

        try:
            summary = score_file(folder / _input_name(folder), folder / RESULTS, options, model=self.service.bundle,
                                 engine=engine, resume=True, should_stop=should_stop, on_chunk=on_chunk)
            complete = summary.complete
            if complete:
                self.store.update(job_id, only_if_state=("running",), state="succeeded", finished_at=time.time(),
                                  done=summary.counts.rows, total=summary.counts.rows,
                                  counts=summary.counts.to_dict())
        except (RunInterrupted, BatcherClosed):
            complete = False
        except NothingToResume:  # the results were complete when the server died, before the state was saved
            complete = True
            self.store.update(job_id, only_if_state=("running",), state="succeeded", finished_at=time.time())
        except (OutputError, ValueError, OSError, UnknownPropertyError) as exc:
            self._fail(job_id, f"{exc}")
            return
        except Exception as exc:
            log.exception("job failed", extra={"job": job_id})
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
            return
        if job_id in self._cancelled:
            log.info("job cancelled", extra={"job": job_id})
        elif complete:
            self.service.metrics.jobs.labels("succeeded").inc()
            log.info("job succeeded", extra={"job": job_id})
        else:  # shutting down: resume at the next start
            self.store.update(job_id, only_if_state=("running",), state="queued")
            log.info("job paused for shutdown", extra={"job": job_id})

    def _fail(self, job_id: str, message: str) -> None:
        self.store.update(job_id, only_if_state=("running",), state="failed", finished_at=time.time(),
                          error=message)
        self.service.metrics.jobs.labels("failed").inc()
        log.warning("job failed", extra={"job": job_id, "error": message})

    def _background_predict(self, should_stop: Callable[[], bool]
                            ) -> Callable[[list[np.ndarray], list[np.ndarray]], np.ndarray]:
        service = self.service

        def predict(numbers: list[np.ndarray], positions: list[np.ndarray]) -> np.ndarray:
            model = service.bundle.model
            batch = functools.partial(model.predict, numbers, positions, batch_size=service.settings.model_chunk)

            def timed() -> np.ndarray:
                start = time.perf_counter()
                try:
                    return batch()
                finally:
                    service.metrics.observe_batch(BatchStats(len(numbers), time.perf_counter() - start, [],
                                                             Priority.BACKGROUND, 0))

            future = service.batcher.call(timed, Priority.BACKGROUND)
            while True:
                try:
                    return future.result(timeout=0.25)
                except concurrent.futures.TimeoutError:
                    if should_stop():
                        future.cancel()
                        raise RunInterrupted() from None
                except BatcherClosed:
                    raise RunInterrupted() from None

        return predict

    # ---------------------------------------------------------------------------------------------- requests

    def cancel(self, job: dict[str, Any]) -> dict[str, Any]:
        """Cancel an unfinished job and delete its files (a finished job's files are deleted)."""
        job_id = job["id"]
        with self._lock:
            if job["state"] not in FINAL_STATES and self.store.update(
                    job_id, only_if_state=("queued", "running"), state="cancelled", finished_at=time.time()):
                self.service.metrics.jobs.labels("cancelled").inc()
            if self.current == job_id:
                self._cancelled.add(job_id)  # the runner stops at its next model call, then removes the files
                self.store.update(job_id, results_deleted=1)
            else:
                self._remove_files(job_id)
        return self.store.get(job_id)  # type: ignore[return-value]

    def _remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self.store.update(job_id, results_deleted=1)

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job as the API shows it."""
        total, done, rate = job["total"], job["done"], job["rate"]
        fraction = done / total if total else (1.0 if job["state"] == "succeeded" else None)
        eta = (total - done) / rate if rate and total is not None and job["state"] == "running" else None
        available = job["state"] == "succeeded" and not job["results_deleted"]
        base = f"/v1/jobs/{job['id']}"
        return {
            "id": job["id"], "state": job["state"], "created_at": _iso(job["created_at"]),
            "started_at": _iso(job["started_at"]), "finished_at": _iso(job["finished_at"]),
            "input": {"filename": job["filename"], "format": job["format"], "bytes": job["input_bytes"]},
            "options": job["options"], "model": job["model"],
            "progress": {"rows_done": done, "rows_total": total, "fraction": fraction,
                         "rows_per_s": rate, "eta_s": eta},
            "counts": job["counts"] or {"rows": 0, "ok": 0, "failed": 0, "errors": {}},
            "error": job["error"], "attempts": job["attempts"],
            "links": {"self": base, "results": f"{base}/results" if available else None},
        }


def _input_name(folder: Path) -> str:
    found = [p.name for p in folder.iterdir() if p.name.startswith("input")] if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"the job's input file is gone from {folder}")
    return found[0]


def _suffix(filename: str | None, fmt: str | None) -> str | None:
    """The stored input's suffix: the format's, else the uploaded name's (``.csv``, ``.sdf.gz``), if known."""
    if fmt:
        return f".{fmt}"
    if not filename:
        return None
    suffixes = [s.lower() for s in Path(filename).suffixes]
    gz = suffixes[-1:] == [".gz"]
    ext = suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if not any(ext in exts for exts in FORMATS.values()):
        return None
    return ext + (".gz" if gz else "")


def _options(values: dict[str, list[str]], default_chunk: int) -> dict[str, Any]:
    """Job options from query parameters and form fields (ValueError with the reason)."""
    unknown = sorted(set(values) - set(_OPTION_NAMES) - {"file"})
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {', '.join(_OPTION_NAMES)}")

    def one(name: str) -> str | None:
        given = [v for v in values.get(name, []) if v.strip()]
        return given[-1].strip() if given else None

    fmt = one("format")
    if fmt is not None:
        fmt = {"smiles": "smi", "sd": "sdf"}.get(fmt.lower().lstrip("."), fmt.lower().lstrip("."))
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    properties = [p.strip() for v in values.get("properties", []) for p in v.split(",") if p.strip()] or None
    chunk = one("chunk_size")
    try:
        chunk_size = int(chunk) if chunk is not None else default_chunk
    except ValueError:
        raise ValueError(f"chunk_size must be an integer, got {chunk!r}") from None
    if not 1 <= chunk_size <= _MAX_CHUNK:
        raise ValueError(f"chunk_size must be between 1 and {_MAX_CHUNK}, got {chunk_size}")
    return {"format": fmt, "smiles_column": one("smiles_column") or "smiles", "id_column": one("id_column"),
            "properties": properties, "chunk_size": chunk_size, "filename": one("filename")}


_NOT_FOUND = {"model": schemas.ErrorResponse, "description": "no such job"}
_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "description": "The input file, as multipart/form-data (field `file`, options as further fields or query "
                       "parameters) or as the raw body (options as query parameters; give `format` or `filename`).",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "CSV with a SMILES column, .smi, SDF/MOL, multi-frame XYZ/extxyz "
                                            "(optionally .gz)"},
                    "format": {"type": "string", "description": "csv, smi, sdf, mol, xyz, extxyz (default: by "
                                                                "the file name's extension)"},
                    "smiles_column": {"type": "string", "description": "CSV column with the SMILES (default smiles)"},
                    "id_column": {"type": "string", "description": "CSV column with the ids"},
                    "properties": {"type": "string", "description": "comma-separated property names (default all)"},
                    "chunk_size": {"type": "integer", "minimum": 1, "maximum": _MAX_CHUNK,
                                   "description": "rows per committed chunk (the unit of progress and resumption)"},
                }}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def add_job_routes(app: FastAPI, service: Service) -> None:
    """Register the ``/v1/jobs`` routes on ``app``."""
    from lieprop.service.app import _ERROR_RESPONSES, error_response

    def not_found(job_id: str) -> JSONResponse:
        return error_response(404, "not_found", f"no job {job_id[:80]!r}")

    def manager() -> JobManager:
        assert service.jobs is not None
        return service.jobs

    async def get_job(job_id: str) -> dict[str, Any] | None:
        if not service.jobs or not service.jobs.db_path.exists():
            return None
        return await asyncio.to_thread(manager().store.get, job_id)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], summary="Score a file of molecules in the background",
              openapi_extra=_UPLOAD_SCHEMA, responses={
                  202: {"description": "the job was created; poll its `links.self`"}, **_ERROR_RESPONSES})
    async def create_job(request: Request) -> Response:
        """Upload a file; the answer (202) comes at once with the job and its links. Options as in `lieprop
        predict`: `format`, `smiles_column`, `id_column`, `properties`, `chunk_size`."""
        if not service.ready or service.jobs is None:
            return error_response(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "2"})
        jobs = manager()
        job_id = uuid.uuid4().hex
        folder = jobs.job_dir(job_id)
        values: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            values.setdefault(key, []).append(value)
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=False)
            stored = await _receive_upload(request, folder, values)
            if isinstance(stored, Response):
                await asyncio.to_thread(shutil.rmtree, folder, True)
                return stored
            options = _options(values, service.settings.job_chunk_size)
            columns = select_properties(service.bundle.model.targets, options["properties"])
            filename, size = stored
            suffix = _suffix(options["filename"] or filename, options["format"])
            if suffix is None:
                raise ValueError(f"cannot tell the format of {filename or 'the upload'!r}; pass format= one of "
                                 f"{', '.join(FORMATS)}")
            path = folder / f"input{suffix}"
            await asyncio.to_thread(os.replace, folder / "upload", path)
            source = await asyncio.to_thread(_open_source, path, options)
        except UploadTooLarge as exc:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return error_response(413, "body_too_large", str(exc))
        except UnknownPropertyError as exc:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return error_response(422, "unknown_property", str(exc), [{"unknown": exc.names}])
        except (ValueError, FileNotFoundError) as exc:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return error_response(422, "invalid_job", str(exc))
        job = {"id": job_id, "filename": (options["filename"] or filename or "")[:256] or None,
               "format": source.format, "input_bytes": size,
               "options": {k: options[k] for k in ("smiles_column", "id_column", "properties", "chunk_size")},
               "columns": [[c.name, c.unit] for c in columns], "model": service.info}
        created = await asyncio.to_thread(jobs.store.create, job)
        jobs.ensure_runner()
        log.info("job created", extra={"job": job_id, "bytes": size, "format": source.format})
        body = jobs.view(created)
        return JSONResponse(body, status_code=202, headers={"Location": body["links"]["self"]})

    @app.get("/v1/jobs", tags=["jobs"], summary="List jobs, newest first",
             responses={401: _ERROR_RESPONSES[401], 422: _ERROR_RESPONSES[422]})
    async def list_jobs(limit: int = 100, state: str | None = None) -> Response:
        """The latest `limit` (1-1000) jobs, optionally only those in `state`."""
        if not 1 <= limit <= 1000:
            return error_response(422, "invalid_request", "limit must be between 1 and 1000")
        if service.jobs is None or not service.jobs.db_path.exists():
            return JSONResponse({"jobs": []})
        rows = await asyncio.to_thread(manager().store.list, limit, state)
        return JSONResponse({"jobs": [manager().view(j) for j in rows]})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A job's state, counts and progress",
             responses={401: _ERROR_RESPONSES[401], 404: _NOT_FOUND})
    async def job_status(job_id: str) -> Response:
        """State (queued, running, succeeded, failed, cancelled), rows done of total, rate and ETA, counts by
        outcome and error code."""
        job = await get_job(job_id)
        return not_found(job_id) if job is None else JSONResponse(manager().view(job))

    @app.get("/v1/jobs/{job_id}/results", tags=["jobs"], summary="Stream a finished job's results",
             responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}},
                              "description": "one row per input record, in input order"},
                        401: _ERROR_RESPONSES[401], 404: _NOT_FOUND, 422: _ERROR_RESPONSES[422],
                        409: {"model": schemas.ErrorResponse, "description": "the job has not succeeded (yet)"},
                        410: {"model": schemas.ErrorResponse, "description": "the results were deleted"}})
    async def job_results(job_id: str, request: Request, format: str | None = None) -> Response:
        """JSON Lines (default; the REST result of every record, with its index) or CSV (`?format=csv` or
        `Accept: text/csv`; the same table as `lieprop predict --out x.csv`)."""
        job = await get_job(job_id)
        if job is None:
            return not_found(job_id)
        fmt = format or ("csv" if "text/csv" in request.headers.get("accept", "") else "jsonl")
        if fmt not in ("csv", "jsonl"):
            return error_response(422, "invalid_request", f"format must be csv or jsonl, got {fmt[:20]!r}")
        if job["results_deleted"]:
            return error_response(410, "gone", "the results of this job were deleted")
        if job["state"] != "succeeded":
            detail = f": {job['error']}" if job["state"] == "failed" else ""
            return error_response(409, "job_not_succeeded", f"the job is {job['state']}{detail}; results are "
                                  "available once it has succeeded")
        path = manager().job_dir(job_id) / RESULTS
        if not path.exists():
            return error_response(410, "gone", "the results of this job are no longer on disk")
        if fmt == "jsonl":
            return FileResponse(path, media_type="application/x-ndjson", filename=f"{job_id}.jsonl")
        table = Table(tuple(Column(n, u, -1, n.endswith("_atomization")) for n, u in job["columns"]),
                      with_smiles=job["format"] in ("csv", "smi"))
        return StreamingResponse(_csv_stream(path, table), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Cancel a job and delete its files",
                responses={401: _ERROR_RESPONSES[401], 404: _NOT_FOUND})
    async def delete_job(job_id: str) -> Response:
        """An unfinished job is cancelled; the input and results of any job are deleted. The job's record stays
        (`GET` shows it, `results` answers 410)."""
        job = await get_job(job_id)
        if job is None:
            return not_found(job_id)
        return JSONResponse(manager().view(await asyncio.to_thread(manager().cancel, job)))


def _open_source(path: Path, options: dict[str, Any]) -> Any:
    from lieprop.jobs.records import open_source

    return open_source(path, options["format"], options["smiles_column"], options["id_column"])


def _csv_stream(path: Path, table: Table) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from jsonl_to_csv(f, table)


async def _receive_upload(request: Request, folder: Path, values: dict[str, list[str]]
                          ) -> tuple[str | None, int] | Response:
    """Store the upload as ``folder/upload``; returns (file name, bytes), or an error response. Form fields are
    added to ``values``."""
    from lieprop.service.app import error_response

    target = folder / "upload"
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        try:
            async with request.form(max_files=1, max_fields=16) as form:
                upload = form.get("file")
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        values.setdefault(key, []).append(value)
                if not isinstance(upload, UploadFile):
                    return error_response(422, "invalid_job", "the form has no file field named 'file'")
                size = await asyncio.to_thread(_copy, upload.file, target)
                return upload.filename, size
        except (MultiPartException, StarletteHTTPException) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
            return error_response(400, "invalid_upload", f"cannot read the multipart form: {message}")
        except (KeyError, ValueError, AssertionError) as exc:  # malformed headers the parser does not wrap
            return error_response(400, "invalid_upload", f"cannot read the multipart form: {exc}")
    size = 0
    with open(target, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            f.write(chunk)
    return None, size


def _copy(source: Any, target: Path) -> int:
    source.seek(0)
    with open(target, "wb") as f:
        shutil.copyfileobj(source, f, 1 << 20)
        return f.tell()
