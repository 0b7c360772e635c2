"""Dynamic batching: molecules from concurrent requests share model batches, computed on one worker thread.

Why one thread: torch already spreads one forward pass over its threads (``model_threads``), and a single consumer
keeps the model's memory flat and its results independent of scheduling. The event loop only enqueues and awaits; it
never runs the model.

How a batch forms. Molecules wait in one FIFO queue per :class:`Priority`; the worker serves the most urgent
non-empty queue. When the batch cannot be filled at once, it waits until the queue holds ``max_batch_size``
molecules or the oldest has waited ``max_wait_ms`` (under load, batches fill while the previous one computes, so
the wait is only paid at low load). It does not wait at all when the ``incoming`` hint says that no other work is
on its way (the service counts requests still being parsed): a lone request never pays ``max_wait_ms``.
When more molecules wait than fit, the batch is the oldest molecule plus the ones closest to it in atom count:
padded all-pairs convolutions cost the square of the largest molecule, so similar sizes batch cheaply, and taking
the oldest first means nobody starves. With batching off, every submission runs alone.

Cost. Each molecule may carry its estimated model time (:mod:`lieprop.model.cost`, reference milliseconds). With
``max_batch_cost`` set, a batch holds molecules up to that total (at least one), and a molecule costing more is
*heavy*: it runs alone, and the oldest *light* molecule anchors a batch before any heavy one. While a heavy
molecule (or a background call) computes, the model calls :meth:`DynamicBatcher.between_chunks` between forward
passes (``chunked=True``: ``predict`` takes that keyword, and ``light``, true when the batch is not heavy, so that it
may compute a light batch in as few passes as it likes); there waiting interactive light molecules get a batch of
their own, run right away on the worker thread. So one heavy client delays a light request by one forward pass,
not by its whole work.

Cancellation. Cancelling a submission's future (an asyncio task awaiting :meth:`DynamicBatcher.submit` cancelled
by a timeout or a disconnected client) drops its molecules still queued, and a batch whose submissions are all
cancelled is abandoned at its next forward pass; ``on_cancel(n)`` counts the molecules nobody gets.

Failures. If a batch raises, each of its molecules is retried alone, so one molecule that breaks the model fails
only itself; its slot gets the exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from lieprop.model.prediction import predict_each

log = logging.getLogger("lieprop.service.batcher")

#: (numbers per molecule, positions per molecule) -> one prediction per molecule, in order (the model's
#: ``predictions``; any sequence with one entry per molecule works).
PredictFn = Callable[[list[np.ndarray], list[np.ndarray]], Sequence[Any]]
Outcome = Any  # a molecule's prediction, or the BaseException it met


class Priority(IntEnum):
    """Queue priority: interactive requests always go before background (batch job) work."""

    INTERACTIVE = 0
    BACKGROUND = 1


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class QueueFull(RuntimeError):
    """More model inputs (molecules; a SMILES once per distinct conformer) are waiting than ``max_queue`` allows."""


class BatchAbandoned(BaseException):  # noqa: N818 - not an error: a BaseException so that predict_each passes it on
    """Raised by :meth:`DynamicBatcher.between_chunks` to stop a batch nobody waits for any more."""


@dataclass(eq=False)
class _Ticket:
    future: concurrent.futures.Future
    results: list[Outcome | None]
    remaining: int


@dataclass(eq=False)
class _Entry:
    ticket: _Ticket
    slot: int
    numbers: np.ndarray
    positions: np.ndarray
    enqueued: float
    seq: int
    cost: float = 0.0
    n_atoms: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_atoms = int(len(self.numbers))


@dataclass(frozen=True)
class BatchStats:
    """What a finished batch reports to the ``on_batch`` observer."""

    size: int
    seconds: float
    waits: list[float]
    priority: Priority
    failed: int


class DynamicBatcher:
    """Queue molecules, batch them, run ``predict`` on one worker thread, hand each submission its rows in order.

    ``predict(numbers_list, positions_list)`` returns one prediction per molecule (e.g.
    :meth:`~lieprop.model.predictor.PropertyModel.predictions`) and must give each molecule the same prediction
    whatever batch it shares. ``initializer`` runs first on the worker thread (e.g.
    ``torch.set_num_threads``); ``on_batch`` is called there after every batch with :class:`BatchStats`;
    ``incoming()``, if given, counts submissions on their way (0: do not wait for the batch to fill);
    ``max_batch_cost`` caps a batch's summed molecule costs and ``chunked`` says that ``predict`` takes a
    ``between_chunks`` keyword (see the module doc); ``on_cancel(n)`` is told of ``n`` molecules dropped because
    their submission was cancelled.

    Use :meth:`submit` from asyncio code, :meth:`submit_nowait` from threads; both return one outcome per
    molecule: a row of ``predict``'s output or the exception that molecule met.
    """

    def __init__(self, predict: PredictFn, *, max_batch_size: int = 64, max_wait_ms: float = 5.0,
                 batching: bool = True, max_queue: int | None = None,
                 initializer: Callable[[], None] | None = None,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 incoming: Callable[[], int] | None = None, max_batch_cost: float | None = None,
                 chunked: bool = False, on_cancel: Callable[[int], None] | None = None,
                 name: str = "lieprop-model") -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_batch_cost is not None and max_batch_cost <= 0:
            raise ValueError(f"max_batch_cost must be > 0, got {max_batch_cost}")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.batching = batching
        self.max_queue = max_queue
        self._initializer = initializer
        self._on_batch = on_batch
        self._incoming = incoming
        self.max_batch_cost = max_batch_cost
        self._chunked = chunked
        self._on_cancel = on_cancel
        #: Molecules dropped or abandoned because their submission was cancelled, since start.
        self.cancelled = 0
        self._running: list[_Entry] | None = None  # the batch being computed (None: idle or a call)
        self._nested = False  # a light batch runs inside a heavy one's between_chunks
        self._queues: tuple[deque[_Entry], ...] = tuple(deque() for _ in Priority)
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._background_calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closing = False
        self._drain = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    # ---------------------------------------------------------------------------------------------- public

    def start(self) -> DynamicBatcher:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    @property
    def queued(self) -> int:
        """Molecules waiting for the model."""
        return sum(len(q) for q in self._queues)

    @property
    def closed(self) -> bool:
        return self._closing

    def submit_nowait(self, molecules: Sequence[tuple[np.ndarray, np.ndarray]],
                      priority: Priority = Priority.INTERACTIVE,
                      costs: Sequence[float] | None = None) -> concurrent.futures.Future:
        """Enqueue ``(numbers, positions)`` pairs; the future resolves to a list of outcomes, in order.
        ``costs``: each molecule's estimated model time (reference ms; default 0, i.e. light).

        Raises :class:`BatcherClosed` after :meth:`close`, :class:`QueueFull` when ``max_queue`` would be
        exceeded. Cancelling the future drops the molecules not yet computed.
        """
        if costs is not None and len(costs) != len(molecules):
            raise ValueError(f"{len(costs)} costs for {len(molecules)} molecules")
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not molecules:
            future.set_result([])
            return future
        ticket = _Ticket(future, [None] * len(molecules), len(molecules))
        now = time.perf_counter()
        with self._cond:
            if self._closing:
                raise BatcherClosed("the model worker is shutting down")
            if self.max_queue is not None and self.queued + len(molecules) > self.max_queue:
                raise QueueFull(f"{self.queued} model inputs (a SMILES counts once per distinct conformer) are "
                                f"waiting for the model (limit {self.max_queue})")
            queue = self._queues[priority]
            for slot, (numbers, positions) in enumerate(molecules):
                cost = 0.0 if costs is None else float(costs[slot])
                queue.append(_Entry(ticket, slot, numbers, positions, now, next(self._seq), cost))
            self._cond.notify()
        return future

    async def submit(self, molecules: Sequence[tuple[np.ndarray, np.ndarray]],
                     priority: Priority = Priority.INTERACTIVE,
                     costs: Sequence[float] | None = None) -> list[Outcome]:
        """:meth:`submit_nowait` for asyncio: awaits the outcomes; cancelling the awaiting task drops the work."""
        return await asyncio.wrap_future(self.submit_nowait(molecules, priority, costs))

    def call(self, fn: Callable[[], Any], priority: Priority = Priority.INTERACTIVE) -> concurrent.futures.Future:
        """Run ``fn`` on the worker thread between batches; the future gets its result.

        ``INTERACTIVE`` calls (warm-up, reloading) go before any queued molecule. ``BACKGROUND`` calls (batch
        jobs running the model on a group of molecules) wait until no interactive molecule is queued, so a job
        delays an interactive request by at most the one call that is running when it arrives (by one forward
        pass when the call passes :meth:`between_chunks` to the model).
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closing:
                raise BatcherClosed("the model worker is shutting down")
            calls = self._calls if priority is Priority.INTERACTIVE else self._background_calls
            calls.append((fn, future))
            self._cond.notify()
        return future

    def between_chunks(self) -> None:
        """Call between forward passes of model work on the worker thread (the model's ``between_chunks``).

        Raises :class:`BatchAbandoned` when every submission of the running batch was cancelled. While a heavy
        batch or a background call runs, computes one batch of the waiting interactive light molecules first.
        Does nothing on any other thread, or inside such a batch.
        """
        if threading.current_thread() is not self._thread:
            return
        running = self._running
        if running is not None and all(e.ticket.future.done() for e in running):
            raise BatchAbandoned()
        if self._nested or (running is not None and not self._heavy(running)):
            return
        with self._cond:
            self._drop_cancelled()
            queue = self._queues[Priority.INTERACTIVE]
            if not any(self._light(e) for e in queue):
                return
            batch = self._take(queue)
        self._nested = True
        try:
            self._execute(batch, Priority.INTERACTIVE)
        finally:
            self._nested = False

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking work; with ``drain`` finish what is queued, else fail it with :class:`BatcherClosed`.
        Blocks until the worker has stopped (or ``timeout`` seconds): call it off the event loop."""
        with self._cond:
            self._closing = True
            self._drain = drain
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout)
        else:
            self._fail_pending(BatcherClosed("the model worker was never started"))

    # ---------------------------------------------------------------------------------------------- worker

    def _run(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer()
            except Exception:
                log.exception("model worker initializer failed")
        while True:
            with self._cond:
                batch, priority, call = self._next_work()
            if call is not None:
                fn, future = call
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        future.set_exception(exc)
                continue
            if batch is None:
                break
            self._execute(batch, priority)
        self._fail_pending(BatcherClosed("the model worker stopped"))

    def _next_work(self) -> tuple[list[_Entry] | None, Priority, tuple | None]:
        """Under the lock: the next call or batch; (None, _, None) means stop."""
        while True:
            if self._calls:
                return None, Priority.INTERACTIVE, self._calls.popleft()
            self._drop_cancelled()
            queue, priority = self._most_urgent()
            if (self._background_calls and (queue is None or priority is Priority.BACKGROUND)
                    and not (self._closing and not self._drain)):
                return None, Priority.BACKGROUND, self._background_calls.popleft()
            if queue is None:
                if self._closing:
                    return None, Priority.INTERACTIVE, None
                self._cond.wait()
                continue
            if self._closing and not self._drain:
                return None, Priority.INTERACTIVE, None
            if (self.batching and not self._closing and len(queue) < self.max_batch_size
                    and (self._incoming is None or self._incoming() > 0)):
                remaining = queue[0].enqueued + self.max_wait - time.perf_counter()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue  # re-check: more work, an urgent queue, a call or a close may have arrived
            return self._take(queue), priority, None

    def _most_urgent(self) -> tuple[deque[_Entry] | None, Priority]:
        for priority in Priority:
            if self._queues[priority]:
                return self._queues[priority], priority
        return None, Priority.INTERACTIVE

    def _drop_cancelled(self) -> None:
        for q in self._queues:
            if any(e.ticket.future.done() for e in q):
                kept = [e for e in q if not e.ticket.future.done()]
                self._count_cancelled(len(q) - len(kept))
                q.clear()
                q.extend(kept)

    def _count_cancelled(self, n: int) -> None:
        self.cancelled += n
        if self._on_cancel is not None and n:
            try:
                self._on_cancel(n)
            except Exception:
                log.exception("on_cancel observer failed")

    def _light(self, entry: _Entry) -> bool:
        return self.max_batch_cost is None or entry.cost <= self.max_batch_cost

    def _heavy(self, batch: list[_Entry]) -> bool:
        return self.max_batch_cost is not None and sum(e.cost for e in batch) > self.max_batch_cost

    def _take(self, queue: deque[_Entry]) -> list[_Entry]:
        size = self.max_batch_size
        if not self.batching:  # the oldest submission alone (its first max_batch_size molecules)
            ticket = queue[0].ticket
            batch = []
            while queue and queue[0].ticket is ticket and len(batch) < size:
                batch.append(queue.popleft())
            return batch
        cap = self.max_batch_cost
        if len(queue) <= size and (cap is None or sum(e.cost for e in queue) <= cap):
            batch = list(queue)
            queue.clear()
            return batch
        anchor = next((e for e in queue if self._light(e)), queue[0])  # light work first, oldest first
        chosen = sorted((e for e in queue if e is not anchor),
                        key=lambda e: (abs(e.n_atoms - anchor.n_atoms), e.seq))
        picked, total = {id(anchor)}, anchor.cost
        for e in chosen:
            if len(picked) >= size:
                break
            if cap is None or total + e.cost <= cap:
                picked.add(id(e))
                total += e.cost
        batch = [e for e in queue if id(e) in picked]
        kept = [e for e in queue if id(e) not in picked]
        queue.clear()
        queue.extend(kept)
        return batch

    def _execute(self, batch: list[_Entry], priority: Priority) -> None:
        start = time.perf_counter()
        waits = [start - e.enqueued for e in batch]
        predict = (functools.partial(self._predict, between_chunks=self.between_chunks, light=not self._heavy(batch))
                   if self._chunked else self._predict)
        outer, self._running = self._running, batch
        try:
            outcomes: list[Outcome] = predict_each(
                predict, [e.numbers for e in batch], [e.positions for e in batch],
                on_retry=lambda exc: log.warning("a batch of %d molecules failed (%s: %s); retrying them one by "
                                                 "one", len(batch), type(exc).__name__, exc))
        except BatchAbandoned:
            self._count_cancelled(len(batch))
            log.info("abandoned a batch of %d molecules: every request waiting for it was cancelled", len(batch))
            return
        finally:
            self._running = outer
        seconds = time.perf_counter() - start
        for entry, outcome in zip(batch, outcomes, strict=True):
            self._deliver(entry, outcome)
        if self._on_batch is not None:
            try:
                failed = sum(isinstance(o, BaseException) for o in outcomes)
                self._on_batch(BatchStats(len(batch), seconds, waits, priority, failed))
            except Exception:
                log.exception("on_batch observer failed")

    @staticmethod
    def _deliver(entry: _Entry, outcome: Outcome) -> None:
        ticket = entry.ticket
        ticket.results[entry.slot] = outcome
        ticket.remaining -= 1
        if ticket.remaining == 0 and not ticket.future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                ticket.future.set_result(ticket.results)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._cond:
            entries = [e for q in self._queues for e in q]
            for q in self._queues:
                q.clear()
            calls = list(self._calls) + list(self._background_calls)
            self._calls.clear()
            self._background_calls.clear()
        for entry in entries:
            if not entry.ticket.future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    entry.ticket.future.set_exception(exc)
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
