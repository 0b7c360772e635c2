"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lieprop.service.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """Request counts and latencies by route and status, model batch sizes and times, queue wait and depth,
    molecules by outcome and error code, molecules cancelled with their request, conformer embedding time, batch jobs
    (final states, rows, quota refusals, expiry, storage, results verification), readiness and the served model."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lieprop_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("lieprop_http_request_duration_seconds",
                                 "HTTP request latency by route, method and status (seconds)",
                                 ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("lieprop_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram("lieprop_batch_size", "Molecules per model batch", ["priority"],
                                    buckets=_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("lieprop_batch_duration_seconds", "Model time per batch (seconds)",
                                       ["priority"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("lieprop_queue_wait_seconds",
                                    "Time a molecule waited for its model batch to start (seconds)",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("lieprop_queue_depth", "Molecules waiting for the model", registry=r)
        self.molecules = Counter("lieprop_molecules", "Molecules answered, by outcome (ok/error) and error code",
                                 ["outcome", "code"], registry=r)
        self.cancelled = Counter("lieprop_cancelled_molecules",
                                 "Molecules whose request timed out or was disconnected, dropped before their work "
                                 "(stage: embedding, model)", ["stage"], registry=r)
        self.model_process_starts = Gauge("lieprop_model_process_starts",
                                          "Times the model process was started (1 when it never died; "
                                          "lieprop/service/model_process.py)", registry=r)
        self.embedding = Histogram("lieprop_embedding_duration_seconds",
                                   "Time to build one 3D conformer from a SMILES or 2D MOL block (seconds)",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.jobs = Counter("lieprop_jobs", "Batch jobs finished, by final state", ["state"], registry=r)
        self.job_rows = Counter("lieprop_job_rows", "Batch job rows written, by outcome (ok/error) and error code",
                                ["outcome", "code"], registry=r)
        self.job_quota = Counter("lieprop_job_quota_refusals",
                                 "Batch jobs refused (at upload) or failed (while running) by a quota: rows, "
                                 "decompressed_bytes, stored_jobs, stored_bytes", ["quota"], registry=r)
        self.jobs_expired = Counter("lieprop_jobs_expired",
                                    "Finished batch jobs whose files retention deleted (job_ttl_hours)", registry=r)
        self.jobs_stored = Gauge("lieprop_jobs_stored", "Batch jobs with files on disk, by state", ["state"],
                                 registry=r)
        self.jobs_stored_bytes = Gauge("lieprop_jobs_stored_bytes",
                                       "Bytes of batch job files on disk, by state (running jobs: their input)",
                                       ["state"], registry=r)
        self.results_verifications = Counter("lieprop_job_results_verifications",
                                             "Job results checked against their manifest before being sent: hashed, "
                                             "or cached (unchanged since a check that passed)", ["how"], registry=r)
        self.job_runner_up = Gauge("lieprop_job_runner_up",
                                   "1 when the batch-job runner can run jobs (0: dead, stuck, or its database fails)",
                                   registry=r)
        self.ready = Gauge("lieprop_ready", "1 when the model is loaded and warm", registry=r)
        self.model = Gauge("lieprop_model_info", "The served model (value 1)", ["name", "version", "sha256"],
                           registry=r)

    def observe_batch(self, stats: BatchStats) -> None:
        priority = stats.priority.name.lower()
        self.batch_size.labels(priority).observe(stats.size)
        self.batch_seconds.labels(priority).observe(stats.seconds)
        for wait in stats.waits:
            self.queue_wait.observe(wait)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def count_results(self, results: list[dict]) -> None:
        for result in results:
            if result["ok"]:
                self.molecules.labels("ok", "").inc()
            else:
                self.molecules.labels("error", result["error"]["code"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
