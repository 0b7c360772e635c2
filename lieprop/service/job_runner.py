"""The batch-job runner of the REST service: the job store, the job files and one runner thread.

One runner thread works through queued jobs, oldest first, with the pipeline of ``lieprop predict``
(:func:`lieprop.scoring.pipeline.score_file`): records are parsed in a pool of ``job_workers`` processes running below
normal CPU priority, and the model runs on the service's model thread as *background* calls of the
:class:`~lieprop.service.batcher.DynamicBatcher`, ``max_batch_size`` molecules per call, which wait whenever
interactive molecules are queued and let them go between their forward passes
(:meth:`~lieprop.service.batcher.DynamicBatcher.between_chunks`). So ``/v1/predict`` keeps its latency while a job runs
(it waits for at most one forward pass), and the job gets the model whenever the interactive queue is empty.

Job state lives in SQLite (:class:`~lieprop.service.job_store.JobStore`, ``<data_dir>/jobs.sqlite3``), results on disk
(``results.jsonl``, written chunk by chunk by :class:`~lieprop.scoring.output.ResultFile`, verified against its
manifest before the job is marked succeeded: damage fails the job with the message, and ``results.jsonl.manifest.json``
lets the results route verify the file again before serving it). If the server dies, the
jobs it was running are queued again at the next start and resume from their last committed chunk; a graceful
shutdown stops a job between model calls in the same resumable way. The routes are in
:mod:`lieprop.service.routes.jobs`.

The runner cannot die of the database: every store call it makes is retried with backoff (a locked or briefly failing
database delays jobs, it does not stop them), and the thread's loop catches everything else, logs it and goes on.
:meth:`JobManager.health` tells ``/readyz`` and the ``lieprop_job_runner_up`` gauge whether the runner is dead, stuck
or failing. The routes' database calls run on the manager's own small thread pool (:attr:`JobManager.db_executor`),
not on the default one that parses requests. A database that cannot be used (not a SQLite file; empty while job
folders exist) makes the job routes answer 503 ``jobs_unavailable`` and never takes the server down.

Retention: a finished job (succeeded, failed, cancelled) expires ``job_ttl_hours`` after it finished. A sweeper thread
(:meth:`JobManager.sweep`, at start and every ``job_sweep_interval_s``) deletes an expired job's files and marks its
record expired (the routes answer 410 ``job_expired``); the record itself is deleted one more TTL later (then 404).
Queued and running jobs are never touched. Each job's ``stored_bytes`` (its folder's size, measured when it finishes)
feeds the per-tenant storage quotas and the ``lieprop_jobs_stored`` gauges.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lieprop.data.textio import QuotaExceeded
from lieprop.inference import UnknownPropertyError
from lieprop.model.prediction import Predictions
from lieprop.scoring.options import JobOptions
from lieprop.scoring.output import NothingToResume, OutputError, manifest_path, verify_finished
from lieprop.scoring.pipeline import LocalEngine, RunInterrupted, Summary, score_file
from lieprop.service.batcher import BatcherClosed, BatchStats, DynamicBatcher, Priority
from lieprop.service.job_store import FINAL_STATES, JobStore, JobsUnavailable
from lieprop.service.metrics import ServiceMetrics
from lieprop.service.settings import Settings

if TYPE_CHECKING:  # torch loads with the bundle, not with this module
    from lieprop.model.bundle import Bundle

log = logging.getLogger("lieprop.service.jobs")

#: A job's results, in its folder.
RESULTS = "results.jsonl"
#: Backoff of the runner's retried store calls: first and longest wait (seconds).
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 5.0
#: An idle runner checks the queue every second; one silent for this long is reported stuck.
STUCK_AFTER_S = 60.0


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


class JobManager:
    """The job store, the job files and the runner thread of one service.

    It gets what it uses: the settings, the metrics, and ``models``, which gives the served model a job names (its
    record's ``model.name``; None: the default) as (bundle, the batcher whose model thread runs it), or None when this
    server does not serve it.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics,
                 models: Callable[[str | None], tuple[Bundle, DynamicBatcher] | None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self.root = Path(self.settings.data_dir)
        self._store: JobStore | None = None
        self._store_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # between claiming a job and cancelling it
        self._thread: threading.Thread | None = None
        self.current: str | None = None
        #: The routes' database calls run here, not on the default pool that parses requests.
        self.db_executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lieprop-jobs-db")
        self.beat = time.monotonic()  # the runner's last sign of life (each loop and each committed chunk)
        self.failing: str | None = None  # the runner's last failed store call, until one succeeds again
        self.unavailable: str | None = None  # why the database cannot be opened, while it cannot
        self._sweeper: threading.Thread | None = None
        #: results files verified against their manifest: path -> the file's and manifest's identity when verified
        self._verified: dict[str, tuple[int, ...]] = {}
        self._verified_lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- lifecycle

    @property
    def db_path(self) -> Path:
        return self.root / "jobs.sqlite3"

    @property
    def store(self) -> JobStore:
        """The store, created with the data directory on first use (a server that never gets a job writes
        nothing). Raises :class:`JobsUnavailable` while the database cannot be used (tried again on each use)."""
        with self._store_lock:
            if self._store is None:
                try:
                    self._check_not_emptied()
                    self._store = JobStore(self.db_path)
                except JobsUnavailable as exc:
                    self.unavailable = str(exc)
                    raise
                self.unavailable = None
            return self._store

    def _check_not_emptied(self) -> None:
        """A zero-byte database next to job folders lost its jobs (a real one is never empty): refuse to start a new
        one over it, so that the jobs are not silently forgotten and their files orphaned."""
        try:
            empty = self.db_path.stat().st_size == 0
        except FileNotFoundError:
            return
        folders = self.root / "jobs"
        if empty and folders.is_dir() and any(folders.iterdir()):
            message = (f"the job database {self.db_path} is empty (0 bytes) but job folders exist in {folders}: "
                       "restore the database from a backup, or move it and the folders aside to start afresh")
            log.error("job database damaged", extra={"path": str(self.db_path), "error": message})
            raise JobsUnavailable(message)

    def health(self) -> tuple[bool, str | None]:
        """(In memory, cheap.) Whether the runner can run jobs, and why not: the database cannot be used, the
        runner's store calls fail, its thread died, or it stopped looping."""
        if self.unavailable is not None:
            return False, f"the job runner is down: {self.unavailable}"
        if self.failing is not None:
            return False, f"the job runner is down: its database calls fail ({self.failing}); retrying"
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stopping.is_set():
            return False, "the job runner is down: its thread died"
        if thread is not None and self.current is None and time.monotonic() - self.beat > STUCK_AFTER_S:
            return False, f"the job runner is stuck: no sign of life for {time.monotonic() - self.beat:.0f} s"
        return True, None

    def retried(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` on the store, retried with backoff while the database is locked or failing;
        gives up (raises) only when the service stops."""
        wait = RETRY_FIRST_S
        while True:
            try:
                result = call(*args, **kwargs)
            except (sqlite3.Error, JobsUnavailable) as exc:
                self.failing = f"{type(exc).__name__}: {exc}"
                log.warning("job database call failed; retrying", extra={"error": self.failing, "wait_s": wait})
                if self._stopping.wait(wait):
                    raise
                wait = min(2 * wait, RETRY_MAX_S)
                continue
            self.failing = None
            self.beat = time.monotonic()
            return result

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def start(self) -> None:
        """Queue again the jobs a dead server left running, and start the runner if there is work; start the
        retention sweeper. A database that cannot be used is logged (the job routes answer 503), never fatal:
        predictions go on."""
        self._sweeper = threading.Thread(target=self._sweep_forever, name="lieprop-jobs-retention", daemon=True)
        self._sweeper.start()
        if self.db_path.exists():
            try:
                requeued = self.store.requeue_running()
                queued = self.store.list(limit=1, state="queued")
            except (sqlite3.Error, JobsUnavailable) as exc:
                log.error("job database unusable; jobs are unavailable, predictions go on",
                          extra={"path": str(self.db_path), "error": f"{type(exc).__name__}: {exc}"})
                return
            if requeued:
                log.info("resuming jobs", extra={"jobs": requeued})
            if queued:
                self.ensure_runner()

    def ensure_runner(self) -> None:
        """Start the runner thread, or a new one if it died, and wake it."""
        alive = self._thread is not None and self._thread.is_alive()
        if not alive and not self._stopping.is_set():
            if self._thread is not None:
                log.error("the job runner thread had died; starting a new one")
            self._thread = threading.Thread(target=self._run_forever, name="lieprop-jobs", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the runner between model calls; a running job stays resumable (it is queued again)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sweeper is not None:
            self._sweeper.join(timeout)
        self.db_executor.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()

    # ---------------------------------------------------------------------------------------------- runner

    def _run_forever(self) -> None:
        """The runner thread: :meth:`_run`, started again after anything it did not handle."""
        wait = RETRY_FIRST_S
        while not self._stopping.is_set():
            try:
                self._run()
            except BaseException as exc:  # a bug: log it, wait a little, go on
                self.failing = f"{type(exc).__name__}: {exc}"
                log.exception("job runner failed; restarting it", extra={"error": self.failing})
                self._stopping.wait(wait)
                wait = min(2 * wait, RETRY_MAX_S)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.beat = time.monotonic()
            job = self.retried(self._claim)
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
                    cancelled = job["id"] in self._cancelled
                    self._cancelled.discard(job["id"])
                if cancelled:
                    shutil.rmtree(self.job_dir(job["id"]), ignore_errors=True)
                    self.retried(self.store_call, "update", job["id"], results_deleted=1, stored_bytes=0)

    def store_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.store.<method>(*args, **kwargs)``, the store opened anew if need be (for :meth:`retried`)."""
        return getattr(self.store, method)(*args, **kwargs)

    def _claim(self) -> dict[str, Any] | None:
        with self._lock:
            job = self.store.next_queued()
            self.current = job["id"] if job is not None else None
        return job

    def _should_stop(self, job_id: str) -> bool:
        return self._stopping.is_set() or job_id in self._cancelled

    def _run_job(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        folder = self.job_dir(job_id)
        s = self.settings
        # a job recorded before conformer averaging embedded one conformer per SMILES: it goes on as it began
        recorded = {"conformers": 1, **job["options"], "format": job["format"]}
        options = JobOptions.parse(recorded).score_options(
            model_batch=s.max_batch_size, frame_batch=s.model_chunk, max_atoms=s.max_atoms,
            max_rows=s.job_max_rows, max_decompressed_bytes=s.job_max_decompressed_bytes)
        should_stop = functools.partial(self._should_stop, job_id)
        name = (job.get("model") or {}).get("name")
        served = self.models(name)
        if served is None:  # the server was started again without it
            self._fail(job_id, f"the job's model {name!r} is not served by this server any more; submit the file "
                               "again, naming a served model (GET /v1/models)")
            return
        bundle, batcher = served
        engine = LocalEngine(self._background_predict(should_stop, bundle, batcher), s.job_workers,
                             nice=s.job_nice, in_process=False, should_stop=should_stop)
        log.info("job started", extra={"job": job_id, "attempt": job["attempts"]})
        written = {"ok": None, "errors": None}

        def on_chunk(summary: Summary, total: int | None) -> None:
            counts = summary.counts
            self.beat = time.monotonic()
            self.retried(self.store_call, "update", job_id, done=counts.rows, counts=counts.to_dict(), total=total,
                              rate=summary.rows_per_s)
            before = written if written["ok"] is not None else {"ok": summary.initial.ok,
                                                                 "errors": summary.initial.errors}
            metric = self.metrics.job_rows
            metric.labels("ok", "").inc(counts.ok - before["ok"])
            for code, n in counts.errors.items():
                metric.labels("error", code).inc(n - before["errors"].get(code, 0))
            written.update(ok=counts.ok, errors=dict(counts.errors))

        try:
            summary = score_file(folder / input_name(folder), folder / RESULTS, options, model=bundle,
                                 engine=engine, resume=True, should_stop=should_stop, on_chunk=on_chunk,
                                 sidecar=True)  # verified before it finishes; its manifest lets the route verify
            complete = summary.complete
            if complete:
                self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="succeeded",
                             finished_at=time.time(), done=summary.counts.rows, total=summary.counts.rows,
                             counts=summary.counts.to_dict(), stored_bytes=folder_bytes(folder))
        except (RunInterrupted, BatcherClosed):
            complete = False
        except NothingToResume:  # the results were complete when the server died, before the state was saved
            try:
                verify_finished(folder / RESULTS)
            except OutputError as exc:
                self._fail(job_id, self._rest_message(exc, folder))
                return
            complete = True
            self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="succeeded",
                         finished_at=time.time(), stored_bytes=folder_bytes(folder))
        except OutputError as exc:
            self._fail(job_id, self._rest_message(exc, folder))
            return
        except (ValueError, OSError, UnknownPropertyError) as exc:
            if isinstance(exc, QuotaExceeded):
                self.metrics.job_quota.labels(exc.quota).inc()
            self._fail(job_id, f"{exc}")
            return
        except Exception as exc:
            log.exception("job failed", extra={"job": job_id})
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
            return
        if job_id in self._cancelled:
            log.info("job cancelled", extra={"job": job_id})
        elif complete:
            self.metrics.jobs.labels("succeeded").inc()
            log.info("job succeeded", extra={"job": job_id})
        else:  # shutting down: resume at the next start
            with contextlib.suppress(sqlite3.Error, JobsUnavailable):  # else requeue_running does it at the start
                self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="queued")
            log.info("job paused for shutdown", extra={"job": job_id})

    def _fail(self, job_id: str, message: str) -> None:
        self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="failed",
                     finished_at=time.time(), error=message, stored_bytes=folder_bytes(self.job_dir(job_id)))
        self.metrics.jobs.labels("failed").inc()
        log.warning("job failed", extra={"job": job_id, "error": message})

    @staticmethod
    def _rest_message(exc: OutputError, folder: Path) -> str:
        """An output error as a REST client should read it: no server paths, no ``lieprop predict`` flags (the job
        cannot be resumed or overwritten by its client; it can be submitted again)."""
        problem = exc.problem.replace(f"{folder}/", "").replace(str(folder), "the job's folder")
        return f"{problem}; the job cannot continue: submit the file again as a new job"

    def _background_predict(self, should_stop: Callable[[], bool], bundle: Bundle, batcher: DynamicBatcher
                            ) -> Callable[[list[np.ndarray], list[np.ndarray]], Predictions]:
        model, metrics = bundle.model, self.metrics
        # model_chunk frames per pass, as `lieprop predict` evaluates them: the job's file is then the CLI's, byte for
        # byte (docs/JOBS.md). With an ensemble evaluated jointly a pass runs every member, so interactive requests
        # wait up to that long between two passes.
        frame_batch = self.settings.model_chunk

        def predict(numbers: list[np.ndarray], positions: list[np.ndarray]) -> Predictions:
            batch = functools.partial(model.predictions, numbers, positions, batch_size=frame_batch,
                                      between_chunks=batcher.between_chunks)  # interactive work goes in between

            def timed() -> Predictions:
                start = time.perf_counter()
                try:
                    return batch()
                finally:
                    metrics.observe_batch(BatchStats(len(numbers), time.perf_counter() - start, [],
                                                     Priority.BACKGROUND, 0))

            future = batcher.call(timed, Priority.BACKGROUND)
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
                self.metrics.jobs.labels("cancelled").inc()
            if self.current == job_id:
                self._cancelled.add(job_id)  # the runner stops at its next model call, then removes the files
                self.store.update(job_id, results_deleted=1, stored_bytes=0)
            else:
                self._remove_files(job_id)
        return self.store.get(job_id)  # type: ignore[return-value]

    def _remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self.store.update(job_id, results_deleted=1, stored_bytes=0)

    # ---------------------------------------------------------------------------------------------- retention

    @property
    def ttl_s(self) -> float | None:
        """How long a finished job is kept (seconds), or None: for ever."""
        return self.settings.job_ttl_hours * 3600.0 or None

    def expires_at(self, job: dict[str, Any]) -> float | None:
        """When a job expires (epoch seconds): ``ttl_s`` after it finished; None while it is unfinished or when
        jobs are kept for ever."""
        ttl = self.ttl_s
        if ttl is None or job["state"] not in FINAL_STATES or job["finished_at"] is None:
            return None
        return job["finished_at"] + ttl

    def _sweep_forever(self) -> None:
        """The sweeper thread: :meth:`sweep` at start and every ``job_sweep_interval_s`` until the service stops."""
        while not self._stopping.is_set():
            if self.db_path.exists():
                try:
                    self.sweep()
                except Exception as exc:  # a locked or broken database: try again at the next interval
                    log.warning("job retention sweep failed; trying again later",
                                extra={"error": f"{type(exc).__name__}: {exc}"})
            self._stopping.wait(self.settings.job_sweep_interval_s)

    def sweep(self, now: float | None = None) -> list[str]:
        """Expire the finished jobs older than the TTL (delete their files, mark their records) and delete the
        records that expired more than one TTL ago. Never touches a queued or running job. Returns the ids expired."""
        ttl = self.ttl_s
        if ttl is None:
            return []
        now = time.time() if now is None else now
        expired = []
        for job_id in self.store.expiring(now - ttl):
            with self._lock:  # not while the runner claims or finishes it, nor while a request cancels it
                if job_id == self.current:  # cancelled, but the runner has not stopped it yet
                    continue
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
                if self.store.update(job_id, only_if_state=tuple(FINAL_STATES), expired_at=now, results_deleted=1,
                                     stored_bytes=0):
                    expired.append(job_id)
        if expired:
            self.metrics.jobs_expired.inc(len(expired))
            log.info("jobs expired", extra={"jobs": expired, "ttl_hours": self.settings.job_ttl_hours})
        purged = self.store.purge_expired(now - ttl)
        if purged:
            log.info("expired job records deleted", extra={"count": purged})
        return expired

    def refresh_storage_metrics(self) -> None:
        """Set the ``lieprop_jobs_stored`` and ``lieprop_jobs_stored_bytes`` gauges from the database (a cheap
        aggregate; called before ``/metrics`` is rendered)."""
        if not self.db_path.exists() or self.unavailable is not None:
            return
        for state, (jobs, size) in self.store.storage_by_state().items():
            self.metrics.jobs_stored.labels(state).set(jobs)
            self.metrics.jobs_stored_bytes.labels(state).set(size)

    # ---------------------------------------------------------------------------------------------- results

    def verify_results(self, path: Path) -> bool:
        """Check a finished results file against its manifest (:func:`verify_finished`), hashing it only when it or
        its manifest changed since the last check that passed (size, mtime, ctime and inode of both are the cache
        key, so damage after a verification is caught on the next call). Returns True when it hashed the file, False
        when the cached verification held. Raises what :func:`verify_finished` raises."""
        key = _identity(path)
        with self._verified_lock:
            if key is not None and self._verified.get(str(path)) == key:
                self.metrics.results_verifications.labels("cached").inc()
                return False
            self._verified.pop(str(path), None)
        try:
            verify_finished(path)
        finally:
            self.metrics.results_verifications.labels("hashed").inc()
        if key is not None and _identity(path) == key:  # unchanged while it was hashed
            with self._verified_lock:
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[str(path)] = key
        return True

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
            "error": job["error"], "attempts": job["attempts"], "tenant": job["tenant"],
            "expires_at": _iso(self.expires_at(job)),
            "links": {"self": base, "results": f"{base}/results" if available else None},
        }


#: Results files whose verification :meth:`JobManager.verify_results` remembers, at most.
VERIFIED_CACHE_SIZE = 4096


def _identity(path: Path) -> tuple[int, ...] | None:
    """Inode, size, mtime and ctime of a results file and of its manifest (None when either is missing): any write,
    truncation, replacement or ``touch`` changes it (ctime cannot be set back by a user)."""
    try:
        stats = [path.stat(), manifest_path(path).stat()]
    except OSError:
        return None
    return tuple(v for st in stats for v in (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under a job's folder (0 when it is gone)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def input_name(folder: Path) -> str:
    """The file name of a job's stored input (``input.csv``, ``input.sdf.gz``, ...) in its folder."""
    found = [p.name for p in folder.iterdir() if p.name.startswith("input")] if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"the job's input file is gone from {folder}")
    return found[0]
