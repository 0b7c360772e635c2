"""Parse many records, in this process or in a pool of worker processes, keeping input order.

Parsing is the slow half of reading (embedding a SMILES takes ~10 ms), and it is per record, so it spreads over
processes; splitting a file into records stays in the caller. Memory stays bounded for any input length: records
go out in chunks, with at most ``4 * workers`` chunks in flight. Results equal the single-process ones exactly
(parsers are deterministic; embedding is seeded). Parsers and records are pickled into the workers, so parsers must
be module-level functions (see :data:`~lieprop.data.records.RecordParser`).

Pool workers never outlive the process that made the pool (its *owner*), even one killed with ``kill -9``, which runs
no clean-up. Without care they would: a ``forkserver`` worker is the fork server's child, and holds the pipe whose
closing tells the fork server that the owner died, so workers and fork server wait for each other for ever, holding
their memory. Every worker watches the owner from a daemon thread (every :data:`OWNER_CHECK_S`) and exits as soon as
the owner is gone (no such process, a zombie, or another process with its pid), or the worker was re-parented; the
fork server then exits too. On Linux a worker also asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to kill it
when its parent exits, where that parent is the single-threaded fork server (the signal follows the parent *thread*,
so it is not used where the parent is a multi-threaded server).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from lieprop.data.records import (
    DEFAULT_CONFORMERS,
    DEFAULT_SEED,
    Item,
    ParseOptions,
    RecordParser,
    SmilesRecord,
    parse_record,
)
from lieprop.data.smiles import parse_smiles_record
from lieprop.data.validation import DEFAULT_LIMITS, ValidationLimits


def parse_many(
    parse: RecordParser,
    records: Iterable[tuple[int, Any]],
    options: ParseOptions,
    workers: int | None = 1,
    *,
    chunk_size: int = 16,
    mp_context: str | None = None,
    executor: Executor | None = None,
) -> Iterator[Item]:
    """Parse ``(index, record)`` pairs with ``parse`` (see :func:`~lieprop.data.records.parse_record`), yielding
    one :class:`Item` per record in input order.

    ``workers=1`` runs in this process; more (``None``: all cores) use a process pool fed ``chunk_size``
    records per task. ``mp_context`` defaults to ``"forkserver"`` (safe in a multi-threaded server), else
    ``"spawn"``. A long-lived caller (a job runner) can pass its own ``executor`` to skip the pool start-up
    (~1 s); it is not shut down. Raises ``ValueError`` at once for ``workers`` or ``chunk_size`` below 1.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if workers == 1 and executor is None:
        return (parse_record(parse, index, record, options) for index, record in records)
    return _parse_in_pool(parse, iter(records), options, workers, chunk_size, mp_context, executor)


def embed_many(
    records: Iterable[SmilesRecord | tuple[int, str | None, str]],
    workers: int | None = 1,
    *,
    seed: int = DEFAULT_SEED,
    n_conformers: int = DEFAULT_CONFORMERS,
    limits: ValidationLimits = DEFAULT_LIMITS,
    chunk_size: int = 16,
    mp_context: str | None = None,
    executor: Executor | None = None,
) -> Iterator[Item]:
    """Embed SMILES records (:func:`~lieprop.data.smiles.from_smiles`), yielding one :class:`Item` per record in
    input order: :func:`parse_many` with the SMILES parser (same ``workers``, ``chunk_size``, ``mp_context``,
    ``executor``). Results equal the single-process ones exactly (embedding is seeded).
    """
    pairs = ((r.index, r) for r in (SmilesRecord(*r) for r in records))
    options = ParseOptions(limits, seed, n_conformers)
    return parse_many(parse_smiles_record, pairs, options, workers, chunk_size=chunk_size, mp_context=mp_context,
                      executor=executor)


def process_pool(workers: int | None = None, mp_context: str | None = None, *,
                 preload: tuple[str, ...] = ("lieprop.data.readers",), nice: int = 0,
                 ignore_interrupts: bool = False) -> ProcessPoolExecutor:
    """The process pool every parser runs in (``None`` workers: all cores). With the default ``"forkserver"``
    start method, the ``preload`` modules and RDKit are imported once in the server, not in every worker. ``nice``:
    CPU priority steps below normal (the service's job pool, so that interactive requests win the CPU);
    ``ignore_interrupts``: workers ignore Ctrl-C, so that the parent alone stops a run cleanly."""
    if mp_context is None:
        mp_context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(mp_context)
    if mp_context == "forkserver":
        context.set_forkserver_preload([*preload, "rdkit.Chem.AllChem"])
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context,
                               initializer=_init_worker,
                               initargs=(nice, ignore_interrupts, os.getpid(), _start_time(os.getpid()),
                                         mp_context == "forkserver"))


def embedding_pool(workers: int | None = None, mp_context: str | None = None) -> ProcessPoolExecutor:
    """A process pool for :func:`parse_many` / :func:`embed_many` (``None`` workers: all cores)."""
    return process_pool(workers, mp_context)


#: How often a pool worker checks that the pool's owner is alive (seconds).
OWNER_CHECK_S = 0.5
_PR_SET_PDEATHSIG = 1


def _start_time(pid: int) -> str | None:
    """A process's start time (Linux: field 22 of ``/proc/PID/stat``), which tells it from a later one with its pid;
    None where ``/proc`` is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_alive(pid: int, start_time: str | None) -> bool:
    """Whether process ``pid`` (started at ``start_time``, from :func:`_start_time`) still runs: it exists, is not a
    zombie (killed, not yet reaped) and is the same process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0] not in ("Z", "X") and (start_time is None or fields[19] == start_time)
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _init_worker(nice: int, ignore_interrupts: bool, owner: int | None = None, owner_start: str | None = None,
                 parent_single_threaded: bool = False) -> None:
    parent = os.getppid()
    if parent_single_threaded and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if owner is not None:
        threading.Thread(target=_watch_owner, args=(owner, owner_start, parent), name="lieprop-owner-watch",
                         daemon=True).start()
    if ignore_interrupts:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)


def _watch_owner(owner: int, owner_start: str | None, parent: int) -> None:
    """Exit this worker (no clean-up: its results have nobody to go to) once the pool's owner is gone or this worker
    is no longer ``parent``'s child."""
    while os.getppid() == parent and owner_alive(owner, owner_start):
        time.sleep(OWNER_CHECK_S)
    os._exit(1)


def _parse_chunk(parse: RecordParser, pairs: list[tuple[int, Any]], options: ParseOptions) -> list[Item]:
    """One pool task (module level, so that workers unpickle it by name)."""
    return [parse_record(parse, index, record, options) for index, record in pairs]


def _parse_in_pool(parse: RecordParser, records: Iterator[tuple[int, Any]], options: ParseOptions, workers: int,
                   chunk_size: int, mp_context: str | None, executor: Executor | None) -> Iterator[Item]:
    pool = executor if executor is not None else embedding_pool(workers, mp_context)
    pending: deque[Future[list[Item]]] = deque()
    try:
        chunk: list[tuple[int, Any]] = []
        for pair in records:
            chunk.append(pair)
            if len(chunk) == chunk_size:
                pending.append(pool.submit(_parse_chunk, parse, chunk, options))
                chunk = []
                while len(pending) >= 4 * workers:
                    yield from pending.popleft().result()
        if chunk:
            pending.append(pool.submit(_parse_chunk, parse, chunk, options))
        while pending:
            yield from pending.popleft().result()
    finally:
        if executor is None:
            pool.shutdown(wait=True, cancel_futures=True)
        else:
            for future in pending:
                future.cancel()
