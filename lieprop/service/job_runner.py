"""The batch-job runner of the REST service: the job store, the job files and one runner thread.

One runner thread works through queued jobs, oldest first, with the pipeline of ``lieprop predict``
(:func:`lieprop.scoring.pipeline.score_file`): records are parsed in a pool of ``job_workers`` processes running below
normal CPU priority, and the model runs on the service's model thread as *background* calls of the
:class:`~lieprop.service.batcher.DynamicBatcher`, ``max_batch_size`` molecules per call, which wait whenever
interactive molecules are queued. So ``/v1/predict`` keeps its latency while a job runs (it waits for at most one
background call), and the job gets the model whenever the interactive queue is empty.

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

from lieprop.inference import UnknownPropertyError
from lieprop.model.prediction import Predictions
from lieprop.scoring.options import JobOptions
from lieprop.scoring.output import NothingToResume, OutputError, verify_finished
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

    It gets what it uses: the settings, the metrics, the loaded model bundle and the batcher whose model thread
    runs the model.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics, bundle: Bundle, batcher: DynamicBatcher) -> None:
        self.settings = settings
        self.metrics = metrics
        self.bundle = bundle
        self.batcher = batcher
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
        """Queue again the jobs a dead server left running, and start the runner if there is work. A database that
        cannot be used is logged (the job routes answer 503), never fatal: predictions go on."""
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
                    self.retried(self.store_call, "update", job["id"], results_deleted=1)

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
        options = JobOptions.parse({**job["options"], "format": job["format"]}).score_options(
            model_batch=s.max_batch_size, frame_batch=s.model_chunk, max_atoms=s.max_atoms,
            max_rows=s.job_max_rows, max_decompressed_bytes=s.job_max_decompressed_bytes)
        should_stop = functools.partial(self._should_stop, job_id)
        engine = LocalEngine(self._background_predict(should_stop), s.job_workers, nice=s.job_nice, in_process=False,
                             should_stop=should_stop)
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
            summary = score_file(folder / input_name(folder), folder / RESULTS, options, model=self.bundle,
                                 engine=engine, resume=True, should_stop=should_stop, on_chunk=on_chunk,
                                 sidecar=True)  # verified before it finishes; its manifest lets the route verify
            complete = summary.complete
            if complete:
                self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="succeeded",
                             finished_at=time.time(), done=summary.counts.rows, total=summary.counts.rows,
                             counts=summary.counts.to_dict())
        except (RunInterrupted, BatcherClosed):
            complete = False
        except NothingToResume:  # the results were complete when the server died, before the state was saved
            try:
                verify_finished(folder / RESULTS)
            except OutputError as exc:
                self._fail(job_id, f"{exc}")
                return
            complete = True
            self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="succeeded",
                         finished_at=time.time())
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
            self.metrics.jobs.labels("succeeded").inc()
            log.info("job succeeded", extra={"job": job_id})
        else:  # shutting down: resume at the next start
            with contextlib.suppress(sqlite3.Error, JobsUnavailable):  # else requeue_running does it at the start
                self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="queued")
            log.info("job paused for shutdown", extra={"job": job_id})

    def _fail(self, job_id: str, message: str) -> None:
        self.retried(self.store_call, "update", job_id, only_if_state=("running",), state="failed",
                     finished_at=time.time(), error=message)
        self.metrics.jobs.labels("failed").inc()
        log.warning("job failed", extra={"job": job_id, "error": message})

    def _background_predict(self, should_stop: Callable[[], bool]
                            ) -> Callable[[list[np.ndarray], list[np.ndarray]], Predictions]:
        model, metrics, batcher = self.bundle.model, self.metrics, self.batcher
        frame_batch = self.settings.model_chunk

        def predict(numbers: list[np.ndarray], positions: list[np.ndarray]) -> Predictions:
            batch = functools.partial(model.predictions, numbers, positions, batch_size=frame_batch)

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
            "error": job["error"], "attempts": job["attempts"], "tenant": job["tenant"],
            "links": {"self": base, "results": f"{base}/results" if available else None},
        }


def input_name(folder: Path) -> str:
    """The file name of a job's stored input (``input.csv``, ``input.sdf.gz``, ...) in its folder."""
    found = [p.name for p in folder.iterdir() if p.name.startswith("input")] if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"the job's input file is gone from {folder}")
    return found[0]
