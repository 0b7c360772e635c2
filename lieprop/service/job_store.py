"""REST batch jobs in SQLite: one row per job, in a file under the service's data directory.

SQLite is the embedded default: no server to run, transactions that survive ``kill -9`` (WAL journal, full sync),
and plenty for the write rate of a job queue (one update per committed chunk). The rows hold state, options and
progress; inputs and results live next to the database, in ``jobs/<id>/``. The store is shared by the event loop
(requests) and the job runner thread, through one connection behind a lock.

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``. A job that was ``running`` when
the server died is ``queued`` again at the next start (:meth:`JobStore.requeue_running`) and resumes from its
last committed chunk.

Every job belongs to a tenant (the API key that created it, see ``api_keys`` in docs/JOBS.md); databases written
before tenants existed get the column on open, their rows belonging to :data:`DEFAULT_TENANT`. A file that is not a
SQLite database (a garbled header) raises :class:`JobsUnavailable` on open instead of taking the server down.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from lieprop.service.settings import DEFAULT_TENANT

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
_JSON_FIELDS = ("options", "counts", "columns", "model")
_FIELDS = ("id", "state", "created_at", "started_at", "finished_at", "filename", "format", "input_bytes", "options",
           "columns", "model", "total", "done", "counts", "rate", "error", "attempts", "results_deleted", "tenant",
           "stored_bytes", "expired_at")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    filename TEXT,
    format TEXT NOT NULL,
    input_bytes INTEGER NOT NULL,
    options TEXT NOT NULL,
    columns TEXT NOT NULL,
    model TEXT NOT NULL,
    total INTEGER,
    done INTEGER NOT NULL DEFAULT 0,
    counts TEXT,
    rate REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    results_deleted INTEGER NOT NULL DEFAULT 0,
    tenant TEXT NOT NULL DEFAULT 'default',
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    expired_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
"""
#: Columns added after the first release, with their declarations (added on open to an older database).
_ADDED_COLUMNS = {"stored_bytes": "INTEGER NOT NULL DEFAULT 0", "expired_at": "REAL"}

#: How long one statement waits for another connection's lock before it raises ``database is locked`` (seconds);
#: the job runner retries such errors with backoff, a request answers 503 ``jobs_unavailable``.
BUSY_TIMEOUT_S = 5.0


class JobsUnavailable(Exception):
    """The job database cannot be used (not a SQLite file, empty next to existing jobs, locked, I/O errors)."""


class JobStore:
    """The jobs table. Every method is one short transaction; rows come back as plain dicts."""

    def __init__(self, path: str | Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "tenant" not in columns:  # a database from before tenants: its jobs belong to the default tenant
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'")
            for column, declaration in _ADDED_COLUMNS.items():  # databases from before retention
                if column not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_at)")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JobsUnavailable(f"the job database {self.path} cannot be opened: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, job: dict[str, Any]) -> dict[str, Any]:
        row = {"state": "queued", "created_at": time.time(), "done": 0, "attempts": 0, "results_deleted": 0,
               "stored_bytes": job.get("input_bytes", 0), **job}
        row = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in row.items()}
        names = ", ".join(row)
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        return self.get(job["id"])  # type: ignore[return-value]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode(row) if row is not None else None

    def list(self, limit: int = 100, state: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        """The latest ``limit`` jobs that have not expired, optionally only those in ``state`` and of ``tenant``."""
        where, args = ["expired_at IS NULL"], []
        if state is not None:
            where, args = [*where, "state = ?"], [*args, state]
        if tenant is not None:
            where, args = [*where, "tenant = ?"], [*args, tenant]
        query = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at DESC LIMIT ?", [*args, limit]).fetchall()
        return [_decode(r) for r in rows]

    def update(self, job_id: str, *, only_if_state: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``only_if_state``, only while the job is in one of those states. True if changed."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()]
        query = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        args = [*values, job_id]
        if only_if_state:
            query += f" AND state IN ({', '.join('?' * len(only_if_state))})"
            args += list(only_if_state)
        with self._lock:
            return self._db.execute(query, args).rowcount > 0

    def next_queued(self) -> dict[str, Any] | None:
        """Claim the oldest queued job (queued -> running) and return it, or None."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
                                       ).fetchone()
                if row is not None:
                    self._db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                                     "started_at = COALESCE(started_at, ?) WHERE id = ?", (time.time(), row["id"]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row["id"]) if row is not None else None

    def stored(self, tenant: str) -> tuple[int, int]:
        """(jobs, bytes) that ``tenant`` holds on disk: jobs whose files were neither deleted nor expired."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM jobs "
                                   "WHERE tenant = ? AND results_deleted = 0", (tenant,)).fetchone()
        return int(row[0]), int(row[1])

    def storage_by_state(self) -> dict[str, tuple[int, int]]:
        """{state: (jobs, bytes)} of the jobs whose files are on disk (every state, zeros included)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM jobs "
                                    "WHERE results_deleted = 0 GROUP BY state").fetchall()
        found = {r[0]: (int(r[1]), int(r[2])) for r in rows}
        return {state: found.get(state, (0, 0)) for state in STATES}

    def expiring(self, finished_before: float, limit: int = 1000) -> list[str]:
        """Ids of finished jobs (succeeded, failed, cancelled; never queued or running) that finished before
        ``finished_before`` and have not expired yet, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND expired_at IS NULL "
                "AND finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?",
                (finished_before, limit)).fetchall()
        return [r["id"] for r in rows]

    def purge_expired(self, expired_before: float) -> int:
        """Delete the records of jobs that expired before ``expired_before``; returns how many."""
        with self._lock:
            return self._db.execute("DELETE FROM jobs WHERE expired_at IS NOT NULL AND expired_at < ?",
                                    (expired_before,)).rowcount

    def requeue_running(self) -> list[str]:
        """Jobs left ``running`` by a server that died: back to ``queued`` (they resume). Returns their ids."""
        with self._lock:
            ids = [r["id"] for r in self._db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            self._db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
        return ids


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    for key in _JSON_FIELDS:
        if job.get(key) is not None:
            job[key] = json.loads(job[key])
    job["results_deleted"] = bool(job["results_deleted"])
    return job
