"""Score a file of molecules: stream it in chunks through parsing and the model into a resumable result file.

::

    records (split, cheap) --> parse (worker processes / Ray actors) --> chunks of `chunk_size` items
        --> model, `model_batch` valid molecules per call --> REST results --> ResultFile (commit per chunk)

Memory stays bounded whatever the file size: records are read lazily, at most ``4 * workers`` parse tasks and two
parsed chunks wait at any time, and a chunk is written and dropped before the next one is scored.

Results are built by :func:`lieprop.inference.build_results`, so the library, ``POST /v1/predict``, ``lieprop
predict`` and REST jobs give the same values. Which molecules share a model call is fixed by the input alone (the
valid molecules of a chunk, ``model_batch`` at a time, in order), never by timing, workers or engine: a resumed
run, the Ray engine and a REST job reproduce an uninterrupted local run bit for bit (for equal ``chunk_size`` and
``model_batch``; other values change the values by float32 rounding only).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import queue
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lieprop.data import formats
from lieprop.data.elements import QM9_MAX_ATOMS
from lieprop.data.molecule import Molecule
from lieprop.data.pool import process_pool
from lieprop.data.records import DEFAULT_CONFORMERS, DEFAULT_SEED, MAX_CONFORMERS, Item, SmilesRecord
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.data.views import LiveMapping
from lieprop.inference import Column, ResultContext, build_results, select_properties
from lieprop.model.calibration import calibrations_to_dict
from lieprop.model.loading import as_bundle
from lieprop.model.prediction import (
    Prediction,
    Predictions,
    conformer_inputs,
    predict_each,
)
from lieprop.scoring.output import Counts, ResultFile, Table, output_format, result_row, sha256_file
from lieprop.scoring.records import RawRecord, Source, open_source, parse_records, record_input
from lieprop.version import __version__

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_MODEL_BATCH = 64
DEFAULT_FRAME_BATCH = 128
#: Records per worker task, by record kind (a view of the registry, :mod:`lieprop.data.formats`: embedding a SMILES
#: takes ~10 ms, parsing an XYZ frame ~0.2 ms).
TASK_SIZE: LiveMapping[str, int] = LiveMapping(lambda: {k.name: k.task_size for k in formats.kinds()})

#: (numbers per molecule, positions per molecule) -> one prediction per molecule: the model's ``predictions``
#: (:class:`~lieprop.model.prediction.Predictions`), or any sequence of rows of values.
PredictFn = Callable[[list[np.ndarray], list[np.ndarray]], "Predictions | np.ndarray"]


class RunInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error of a molecule
    """The run was asked to stop (server shutdown, job cancelled); what is committed stays and can resume."""


@dataclass(frozen=True)
class ScoreOptions:
    """What to read and how to score it; every field except the quotas goes into the resume fingerprint.

    Quotas (None: no limit, the CLI's default): ``max_rows`` records and ``max_decompressed_bytes`` of a ``.gz``
    input. A run that reaches one stops with a ``ValueError`` naming it; the chunks committed before stay.
    """

    format: str | None = None  #: input format (default: by extension)
    smiles_column: str = "smiles"
    id_column: str | None = None
    properties: tuple[str, ...] | None = None  #: default: all the model predicts, plus atomization energies
    chunk_size: int = DEFAULT_CHUNK_SIZE  #: rows per committed chunk
    model_batch: int = DEFAULT_MODEL_BATCH  #: molecules per model call
    frame_batch: int = DEFAULT_FRAME_BATCH  #: frames per forward pass inside a model call
    seed: int = DEFAULT_SEED  #: conformer embedding seed
    conformers: int = DEFAULT_CONFORMERS  #: conformers per SMILES or 2D MOL block; the values average over them
    max_atoms: int = QM9_MAX_ATOMS
    coverage: float | None = None  #: level of the prediction intervals (default: the model's, 0.9)
    relaxed_with: str = "dft"  #: how the input's 3D geometries were relaxed (lieprop.model.calibration.RELAXED_WITH)
    max_rows: int | None = None  #: records a run may read (None: no limit)
    max_decompressed_bytes: int | None = None  #: bytes a ``.gz`` input may expand to (None: no limit)

    def __post_init__(self) -> None:
        if not 1 <= self.conformers <= MAX_CONFORMERS:
            raise ValueError(f"conformers must be between 1 and {MAX_CONFORMERS}, got {self.conformers}")
        for name in ("chunk_size", "model_batch", "frame_batch", "max_atoms", "max_rows", "max_decompressed_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.properties is not None:
            object.__setattr__(self, "properties", tuple(self.properties))


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to turn records into rows (picklable; sent to Ray actors)."""

    kind: str
    columns: tuple[Column, ...]
    targets: tuple[str, ...]
    chunk_size: int
    model_batch: int
    frame_batch: int
    seed: int
    limits: ValidationLimits
    context: ResultContext = ResultContext()  # the model's warnings and interval coverage (lieprop.inference)
    conformers: int = DEFAULT_CONFORMERS  # per SMILES or 2D MOL block


@dataclass
class Summary:
    """The outcome of a run: counts over the whole output (earlier sessions included) and this session's speed."""

    output: Path
    counts: Counts
    complete: bool
    engine: str
    resumed_from: int = 0  #: rows that were already done when this session started
    elapsed_s: float = 0.0  #: this session
    total_elapsed_s: float = 0.0  #: all sessions
    peak_rss_mb: float = 0.0  #: this process
    initial: Counts = field(default_factory=Counts)  #: the counts when this session started

    @property
    def rows_per_s(self) -> float:
        done = self.counts.rows - self.resumed_from
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format(self) -> str:
        c = self.counts
        state = "done" if self.complete else "stopped (run again with --resume to continue)"
        lines = [f"{state}: {c.rows:,} rows -> {self.output}",
                 f"  ok      {c.ok:>10,}", f"  failed  {c.failed:>10,}"]
        lines += [f"    {code:<22}{n:>10,}" for code, n in sorted(c.errors.items(), key=lambda kv: -kv[1])]
        resumed = f", resumed after {self.resumed_from:,} rows" if self.resumed_from else ""
        lines.append(f"  {self.elapsed_s:.1f} s, {self.rows_per_s:,.1f} rows/s ({self.engine} engine{resumed}), "
                     f"peak memory {self.peak_rss_mb:,.0f} MB")
        return "\n".join(lines)


class Engine(Protocol):
    """Turns a source's records, from ``start`` (a chunk boundary) on, into rows, one list per chunk, in order."""

    name: str

    def score(self, source: Source, start: int, plan: Plan) -> Iterator[list[dict]]: ...


# --------------------------------------------------------------------------------------------------
# The chunk -> rows step, shared by every engine


def predict_groups(predict: PredictFn, molecules: Sequence[Molecule], model_batch: int
                   ) -> list[Prediction | BaseException]:
    """One prediction row (or the exception it met) per molecule, ``model_batch`` molecules per call, in order; a
    molecule with several conformers is predicted in each distinct one and averaged
    (:meth:`~lieprop.model.prediction.ConformerInputs.average`).

    A call that fails is retried one molecule at a time, so a molecule that breaks the model fails only itself
    (as :class:`~lieprop.service.batcher.DynamicBatcher` does). :class:`RunInterrupted` is not caught.
    """
    out: list[Prediction | BaseException] = []
    for s in range(0, len(molecules), model_batch):
        group = molecules[s:s + model_batch]
        inputs = conformer_inputs(group)
        out.extend(inputs.average(predict_each(predict, inputs.numbers, inputs.positions)))
    return out


def chunk_rows(pairs: Sequence[tuple[SmilesRecord | RawRecord, Item]], plan: Plan, predict: PredictFn
               ) -> list[dict]:
    """The output rows of one chunk of parsed records."""
    items = [item for _, item in pairs]
    outcomes: list[Molecule | MoleculeError] = [i.molecule if i.ok else i.error for i in items]  # type: ignore[misc]
    valid = [o for o in outcomes if isinstance(o, Molecule)]
    predictions = predict_groups(predict, valid, plan.model_batch)
    results = build_results(outcomes, [i.id for i in items], predictions, plan.columns, plan.targets,
                            plan.context)
    return [result_row(item.index, result, record_input(record))
            for (record, item), result in zip(pairs, results, strict=True)]


def score_records(records: list[SmilesRecord | RawRecord], plan: Plan, predict: PredictFn) -> list[dict]:
    """Parse and score one chunk in this process (a Ray actor's whole job)."""
    items = parse_records(plan.kind, records, plan.seed, plan.limits, plan.conformers)
    return chunk_rows(list(zip(records, items, strict=True)), plan, predict)


def batched(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(iterable)
    while chunk := list(islice(it, n)):
        yield chunk


# --------------------------------------------------------------------------------------------------
# The local engine: worker processes parse, this process runs the model


def worker_pool(workers: int, nice: int = 0) -> ProcessPoolExecutor:
    """Processes for :func:`~lieprop.scoring.records.parse_records`. They ignore Ctrl-C (the parent stops the run
    cleanly) and run ``nice`` steps below normal priority (the server's job pool, so that interactive requests
    win the CPU). ``forkserver`` when the platform has it, so that RDKit loads once."""
    return process_pool(workers, preload=("lieprop.scoring.records",), nice=nice, ignore_interrupts=True)


class LocalEngine:
    """Parse on ``workers`` processes (1: in this process), predict with ``predict`` in the calling thread.

    A reader thread splits and dispatches records and re-assembles parsed chunks, two chunks ahead of the model.
    ``pool``: a long-lived executor to use (not shut down here). ``in_process``: parse in the reader thread
    instead of worker processes (default: when ``workers`` is 1 and no pool is given). ``nice``: CPU priority
    steps below normal for the worker processes. ``should_stop``: polled while waiting for parsed chunks; True
    raises :class:`RunInterrupted`. If a worker dies (a crash in RDKit, the OOM killer), the pool is replaced
    and the records it held are retried one at a time, so only a record that kills workers again fails (with its
    kind's ``failure_code``: ``embedding_failed`` for SMILES, ``invalid_xyz`` / ``invalid_sdf``, ...).
    """

    name = "local"

    def __init__(self, predict: PredictFn, workers: int | None = None, *, pool: Executor | None = None,
                 nice: int = 0, in_process: bool | None = None, should_stop: Callable[[], bool] | None = None
                 ) -> None:
        self.predict = predict
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.nice = nice
        self.in_process = (self.workers == 1 and pool is None) if in_process is None else in_process
        self.should_stop = should_stop
        self._shared_pool = pool
        self._pool: Executor | None = pool

    def score(self, source: Source, start: int, plan: Plan) -> Iterator[list[dict]]:
        chunks: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        done = object()

        def put(value: Any) -> bool:
            while not stop.is_set():
                try:
                    chunks.put(value, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for chunk in batched(self._parsed(source.records(start), plan, stop), plan.chunk_size):
                    if not put(chunk):
                        return
                put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                put(exc)

        reader = threading.Thread(target=read, name="lieprop-reader", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    got = chunks.get(timeout=0.25)
                except queue.Empty:
                    if self.should_stop is not None and self.should_stop():
                        raise RunInterrupted() from None
                    continue
                if got is done:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield chunk_rows(got, plan, self.predict)
        finally:
            stop.set()
            reader.join()
            if self._pool is not None and self._pool is not self._shared_pool:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _parsed(self, records: Iterator[SmilesRecord | RawRecord], plan: Plan, stop: threading.Event
                ) -> Iterator[tuple[SmilesRecord | RawRecord, Item]]:
        tasks = batched(records, formats.kind(plan.kind).task_size)
        if self.in_process:
            for task in tasks:
                parsed = parse_records(plan.kind, task, plan.seed, plan.limits, plan.conformers)
                yield from zip(task, parsed, strict=True)
            return
        if self._pool is None:
            self._pool = worker_pool(self.workers, self.nice)
        pending: deque[tuple[list, Future, Executor]] = deque()
        try:
            for task in tasks:
                if stop.is_set():
                    return
                pending.append((task, self._submit(task, plan), self._pool))
                while len(pending) >= 4 * self.workers:
                    yield from self._collect(*pending.popleft(), plan)
            while pending:
                yield from self._collect(*pending.popleft(), plan)
        finally:
            for _, future, _ in pending:
                future.cancel()

    def _submit(self, task: list, plan: Plan) -> Future:
        assert self._pool is not None
        return self._pool.submit(parse_records, plan.kind, task, plan.seed, plan.limits, plan.conformers)

    def _collect(self, task: list, future: Future, pool: Executor, plan: Plan
                 ) -> Iterator[tuple[SmilesRecord | RawRecord, Item]]:
        try:
            yield from zip(task, future.result(), strict=True)
            return
        except BrokenProcessPool:
            pass
        self._renew(pool)
        for record in task:  # alone, so that only a record that kills a worker again fails
            try:
                [item] = self._submit([record], plan).result()
            except BrokenProcessPool:
                self._renew(self._pool)
                index = record.index
                item = Item(index, getattr(record, "id", None) or str(index), error=MoleculeError(
                    formats.kind(plan.kind).failure_code, f"record {index}: the worker parsing it died"))
            yield record, item

    def _renew(self, broken: Executor | None) -> None:
        if self._pool is not broken or self._pool is None:
            return  # already replaced
        broken.shutdown(wait=False, cancel_futures=True)
        self._shared_pool = None  # a broken shared pool is replaced by one of our own, shut down at the end
        self._pool = worker_pool(self.workers, self.nice)


# --------------------------------------------------------------------------------------------------
# The driver


def make_plan(source: Source, targets: Sequence[str], options: ScoreOptions,
              context: ResultContext | None = None) -> Plan:
    columns = select_properties(list(targets), options.properties)
    return Plan(source.kind, tuple(columns), tuple(targets), options.chunk_size, options.model_batch,
                options.frame_batch, options.seed, ValidationLimits(max_atoms=options.max_atoms),
                context or ResultContext(), options.conformers)


def fingerprint(source: Source, plan: Plan, options: ScoreOptions, model_sha256: str, output_fmt: str
                ) -> dict[str, Any]:
    """What must not change between a run and its ``--resume``: the input's contents, the model and the options.

    The input is known by its size and the sha256 of its bytes, not by its path or modification time, so that a run
    resumes after its files were moved or copied (a REST job's data directory, a CLI run's folder), and refuses an
    input whose contents changed. Hashing reads the input once more (a few seconds per GiB; docs/JOBS.md)."""
    found = {
        "input_size": source.path.stat().st_size, "input_sha256": sha256_file(source.path),
        "format": source.format, "smiles_column": options.smiles_column, "id_column": options.id_column,
        "properties": [c.name for c in plan.columns], "model_sha256": model_sha256, "output_format": output_fmt,
        "chunk_size": options.chunk_size, "model_batch": options.model_batch, "frame_batch": options.frame_batch,
        "seed": options.seed, "max_atoms": options.max_atoms, "coverage": options.coverage, "lieprop": __version__,
    }
    # keys added after runs were already being resumed appear only when they differ from what those runs did, so
    # that an interrupted run of an older version still resumes
    if options.relaxed_with != "dft":
        found["relaxed_with"] = options.relaxed_with
    if options.conformers != 1 and formats.kind(plan.kind).embeds:
        # runs before conformer averaging embedded one conformer per SMILES; a kind never embedded has none
        found["conformers"] = options.conformers
    calibrations = dict(plan.context.calibrations)
    if any(cal.weights is not None for cal in calibrations.values()):
        # member weights make the values: a bundle re-calibrated under the same sha256 must not resume a file
        text = json.dumps(calibrations_to_dict(calibrations), sort_keys=True)
        found["calibration_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return found


def score_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    options: ScoreOptions | None = None,
    *,
    model: Any = None,
    engine: Engine | None = None,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    output_fmt: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_chunk: Callable[[Summary, int | None], None] | None = None,
    sidecar: bool = False,
) -> Summary:
    """Score every record of ``input`` into ``output`` (CSV, JSON Lines or Parquet by extension, or
    ``output_fmt``): the library face of ``lieprop predict``.

    ``model``: a loaded bundle, a bundle path or None (the bundled model). ``engine``: default a
    :class:`LocalEngine` on ``workers`` processes predicting with the bundle. ``resume`` continues an interrupted
    run; ``overwrite`` replaces an existing output. ``progress`` shows a tqdm bar on stderr. ``should_stop`` is
    asked after every chunk (a True stops the run, resumable); ``on_chunk(summary, total)`` is called after every
    committed chunk with the summary so far (``total``: the number of records, once counted, else None).
    ``sidecar`` writes the finished output's manifest next to it (REST jobs, see
    :func:`~lieprop.scoring.output.verify_finished`). Before finishing, the whole output is verified against the
    manifest of its committed chunks and its row total against the number of input records (an ``OutputError``).

    Raises ``FileNotFoundError`` / ``ValueError`` (input, format, column, property) and
    :class:`~lieprop.scoring.output.OutputError` before any work; what the engine raises during the run (the output
    stays resumable); :class:`RunInterrupted` when the predict function was interrupted.
    """
    options = options or ScoreOptions()
    source = open_source(input, options.format, options.smiles_column, options.id_column, max_rows=options.max_rows,
                         max_decompressed_bytes=options.max_decompressed_bytes)
    output_fmt = output_fmt or output_format(output)
    bundle = as_bundle(model)
    context = ResultContext.of(bundle, options.coverage, options.relaxed_with)
    plan = make_plan(source, bundle.model.targets, options, context)
    table = Table(plan.columns, with_smiles=source.kind == "smiles", with_std=bundle.has_spread,
                  with_interval=bundle.calibration is not None)
    started = time.perf_counter()
    with ResultFile(output, table, fingerprint(source, plan, options, bundle.sha256, output_fmt), output_fmt,
                    sidecar=sidecar) as rf:
        state = rf.open(resume=resume, overwrite=overwrite)
        counts = Counts.from_dict(state.counts)
        summary = Summary(Path(output), counts, False, getattr(engine, "name", "local"), resumed_from=state.rows_done,
                          initial=Counts.from_dict(state.counts))
        expected: int | None = None
        if not state.complete:
            if engine is None:
                engine = LocalEngine(functools.partial(bundle.model.predictions, batch_size=options.frame_batch),
                                     workers)
            total = _Total(source)
            bar = _bar(progress, state.rows_done)
            before = state.elapsed_s
            try:
                for rows in engine.score(source, state.rows_done, plan):
                    counts.add(rows)
                    rf.commit(rows, counts, before + time.perf_counter() - started)
                    if bar is not None:
                        if bar.total is None and total.value is not None:
                            bar.total = total.value
                        bar.set_postfix(ok=counts.ok, failed=counts.failed, refresh=False)
                        bar.update(len(rows))
                    if on_chunk is not None:
                        summary.elapsed_s = time.perf_counter() - started
                        on_chunk(summary, total.value)
                    if should_stop is not None and should_stop():
                        summary.elapsed_s = time.perf_counter() - started
                        summary.total_elapsed_s = before + summary.elapsed_s
                        summary.peak_rss_mb = peak_rss_mb()
                        return summary
            finally:
                if bar is not None:
                    bar.close()
            source.check_max_rows()  # every row up to the limit is committed; past it the run fails, never truncates
            expected = total.value if total.value is not None else source.count()
        rf.finish(expected_rows=expected)
    summary.complete = True
    summary.elapsed_s = time.perf_counter() - started
    summary.total_elapsed_s = state.elapsed_s + summary.elapsed_s
    summary.peak_rss_mb = peak_rss_mb()
    return summary


class _Total:
    """The number of records, counted on a background thread (the progress bar's total, the job's ETA)."""

    def __init__(self, source: Source) -> None:
        self.value: int | None = None
        self._source = source
        threading.Thread(target=self._count, name="lieprop-count", daemon=True).start()

    def _count(self) -> None:
        with contextlib.suppress(Exception):  # the reader meets the same error and reports it
            self.value = self._source.count()


def _bar(enabled: bool, initial: int) -> Any:
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=None, initial=initial, unit=" mol", dynamic_ncols=True, smoothing=0.1,
                mininterval=0.2 if sys.stderr.isatty() else 5.0, desc="scoring", file=sys.stderr)


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM where /proc has it, since ``ru_maxrss`` also counts the
    parent's memory when this process was started by fork + exec."""
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
