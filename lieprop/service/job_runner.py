"""The batch-job runner of the REST service: the job store, the job files and one runner thread.

One runner thread works through queued jobs, oldest first, with the pipeline of ``lieprop predict``
(:func:`lieprop.scoring.pipeline.score_file`): records are parsed in a pool of ``job_workers`` processes running below
normal CPU priority, and the model runs on the service's model thread as *background* calls of the
:class:`~lieprop.service.batcher.DynamicBatcher`, ``max_batch_size`` molecules per call, which wait whenever
interactive molecules are queued. So ``/v1/predict`` keeps its latency while a job runs (it waits for at most one
background call), and the job gets the model whenever the interactive queue is empty.

Job state lives in SQLite (:class:`~lieprop.service.job_store.JobStore`, ``<data_dir>/jobs.sqlite3``), results on disk
(``results.jsonl``, written chunk by chunk by :class:`~lieprop.scoring.output.ResultFile`). If the server dies, the
jobs it was running are queued again at the next start and resume from their last committed chunk; a graceful
shutdown stops a job between model calls in the same resumable way. The routes are in
:mod:`lieprop.service.routes.jobs`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lieprop.inference import UnknownPropertyError
from lieprop.model.prediction import Predictions
from lieprop.scoring.options import JobOptions
from lieprop.scoring.output import NothingToResume, OutputError
from lieprop.scoring.pipeline import LocalEngine, RunInterrupted, Summary, score_file
from lieprop.service.batcher import BatcherClosed, BatchStats, DynamicBatcher, Priority
from lieprop.service.job_store import FINAL_STATES, JobStore
from lieprop.service.metrics import ServiceMetrics
from lieprop.service.settings import Settings

if TYPE_CHECKING:  # torch loads with the bundle, not with this module
    from lieprop.model.bundle import Bundle

log = logging.getLogger("lieprop.service.jobs")

#: A job's results, in its folder.
RESULTS = "results.jsonl"


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
        job_id = job["id"]
        folder = self.job_dir(job_id)
        s = self.settings
        options = JobOptions.parse({**job["options"], "format": job["format"]}).score_options(
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
            metric = self.metrics.job_rows
            metric.labels("ok", "").inc(counts.ok - before["ok"])
            for code, n in counts.errors.items():
                metric.labels("error", code).inc(n - before["errors"].get(code, 0))
            written.update(ok=counts.ok, errors=dict(counts.errors))

        try:
            summary = score_file(folder / input_name(folder), folder / RESULTS, options, model=self.bundle,
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
            self.metrics.jobs.labels("succeeded").inc()
            log.info("job succeeded", extra={"job": job_id})
        else:  # shutting down: resume at the next start
            self.store.update(job_id, only_if_state=("running",), state="queued")
            log.info("job paused for shutdown", extra={"job": job_id})

    def _fail(self, job_id: str, message: str) -> None:
        self.store.update(job_id, only_if_state=("running",), state="failed", finished_at=time.time(),
                          error=message)
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
            "error": job["error"], "attempts": job["attempts"],
            "links": {"self": base, "results": f"{base}/results" if available else None},
        }


def input_name(folder: Path) -> str:
    """The file name of a job's stored input (``input.csv``, ``input.sdf.gz``, ...) in its folder."""
    found = [p.name for p in folder.iterdir() if p.name.startswith("input")] if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"the job's input file is gone from {folder}")
    return found[0]
