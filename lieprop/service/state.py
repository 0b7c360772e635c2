"""The state the routes of the REST service share: the :class:`Service` object, and :func:`get_service` to reach it.

The app (:func:`lieprop.service.app.create_app`) keeps one :class:`Service` in ``app.state.service``; a route takes it
as a parameter ``service: ServiceDep`` (FastAPI calls :func:`get_service`).

Start-up (:meth:`Service.start`, from the app's lifespan) loads and verifies the bundle (a missing or broken bundle
stops start-up with its reason), then warms the model and the embedding pool in the background; ``/readyz`` answers
503 until that is done and again while shutting down. :meth:`Service.stop` pauses a running batch job, drains the
batcher and stops the embedding pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from lieprop.data.molecule import Molecule
from lieprop.data.readers import embedding_pool
from lieprop.data.records import DEFAULT_CONFORMERS
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.inference import (
    EMBEDDING_KINDS,
    Column,
    Parsed,
    ResultContext,
    build_results,
    fallback_id,
    input_kind,
    load_model,
    model_card,
    model_info,
    parse_item,
)
from lieprop.model.cost import CostModel
from lieprop.model.device import pick_device
from lieprop.model.prediction import conformer_inputs
from lieprop.service import schemas
from lieprop.service.admission import FORWARD_SHARE, CostLimits, Estimated, admit, chunked_predict, read_items
from lieprop.service.batcher import DynamicBatcher, Priority
from lieprop.service.job_runner import JobManager
from lieprop.service.metrics import ServiceMetrics
from lieprop.service.model_process import NetworkProcess
from lieprop.service.settings import Settings

log = logging.getLogger("lieprop.service")

#: Most SMILES / MOL blocks per embedding-pool task: small tasks let other requests' items in between, and the tasks
#: of a cancelled request that have not started are dropped.
EMBED_TASK_ITEMS = 4


@dataclass
class ServedModel:
    """One served bundle with what serves it: its model worker (the dynamic batcher), its model process (when
    ``model_process``), the context its results are built in, its cost model and its card."""

    bundle: Any
    info: dict[str, str]
    card: dict[str, Any]
    context: ResultContext
    costs: CostModel
    batcher: DynamicBatcher
    process: NetworkProcess | None = None

    @property
    def name(self) -> str:
        return self.info["name"]


class Service:
    """What the routes share: settings, metrics, the served models (the default one's bundle, batcher, context and
    card also as attributes), the embedding pool, readiness."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = ValidationLimits(max_atoms=settings.max_atoms)
        self.cost_limits = CostLimits(molecule=settings.max_molecule_cost_ms, request=settings.max_request_cost_ms)
        self.tenant_keys = settings.tenant_keys()  # (API key, tenant) pairs; empty: no key needed
        self.state = "starting"  # starting -> warming -> ready (or failed) -> stopping
        self.detail: str | None = None
        #: name -> served model, in the order of settings.model then settings.extra_models (the first: the default)
        self.models: dict[str, ServedModel] = {}
        self.pool: ProcessPoolExecutor | None = None
        self._warm_task: asyncio.Task | None = None
        self.jobs: JobManager | None = None  # batch jobs (lieprop/service/job_runner.py), once started
        self.parsing = 0  # requests being read: their molecules will reach the batcher soon

    @property
    def default(self) -> ServedModel | None:
        """The model a request gets when it names none (settings.model), once started."""
        return next(iter(self.models.values()), None)

    @property
    def bundle(self) -> Any:
        return self.default.bundle if self.default else None

    @property
    def batcher(self) -> DynamicBatcher | None:
        return self.default.batcher if self.default else None

    @property
    def network_process(self) -> NetworkProcess | None:
        return self.default.process if self.default else None

    @property
    def info(self) -> dict[str, str]:
        return self.default.info if self.default else {}

    @property
    def context(self) -> ResultContext:
        """The default model's result warnings and intervals (lieprop.inference)."""
        return self.default.context if self.default else ResultContext()

    @property
    def costs(self) -> CostModel:
        """The default model's cost model (lieprop.model.cost)."""
        return self.default.costs if self.default else CostModel()

    @property
    def cards(self) -> dict[str, Any]:
        """The default model's card (``card``) and its properties (``properties``)."""
        if self.default is None:
            return {}
        return {"card": self.default.card, "properties": self.default.card["properties"]}

    def _job_model(self, name: str | None) -> tuple[Any, DynamicBatcher] | None:
        served = self.served(name)
        return None if served is None else (served.bundle, served.batcher)

    def served(self, name: str | None) -> ServedModel | None:
        """The served model called ``name`` (None: the default); None when no such model is served."""
        return self.default if name is None else self.models.get(name)

    @property
    def ready(self) -> bool:
        """The model is loaded and warm, and the service is not shutting down."""
        return self.state == "ready"

    async def start(self) -> None:
        """Load the model, start the batcher, the embedding pool and the job runner; warm up in the background."""
        s = self.settings
        threads = s.model_threads or default_model_threads()
        for path in [s.model, *s.extra_models]:
            served = await self._serve(path, threads, default=not self.models)
            self.models[served.name] = served
        if s.model_process:
            self.metrics.model_process_starts.set_function(
                lambda: float(sum(m.process.starts for m in self.models.values() if m.process)))
        self.metrics.track_queue(lambda: sum(m.batcher.queued for m in self.models.values()))
        for m in self.models.values():
            self.metrics.model.labels(**m.info).set(1)
        self.pool = self._new_pool()
        self.state = "warming"
        self._warm_task = asyncio.create_task(self._warm())
        if s.jobs:  # replicas leave jobs to one instance (docs/SCALING.md): one runner per job database
            self.jobs = JobManager(s, self.metrics, self._job_model)
            jobs = self.jobs
            self.metrics.job_runner_up.set_function(lambda: float(jobs.health()[0]))
            await asyncio.to_thread(self.jobs.start)  # jobs a dead server left running resume

    async def _serve(self, path: Any, threads: int, default: bool) -> ServedModel:
        """Load the bundle at ``path`` (``ModelNotFoundError`` / ``BundleError`` stop start-up) and start its model
        process and model worker."""
        s = self.settings
        bundle = await asyncio.to_thread(load_model, path)
        info = model_info(bundle)
        if info["name"] in self.models:
            raise ValueError(f"two served models are called {info['name']!r} ({path} and another): a request "
                             "chooses a model by its name, so the names must differ")
        costs = CostModel.of(bundle.model)
        process = None
        if s.model_process:  # the networks compute in their own process, on the device; the rest stays on the CPU
            process = await asyncio.to_thread(NetworkProcess, bundle.model, threads, s.device, s.model_compile)
            process.attach(bundle.model)
        else:
            bundle.model.to(pick_device(s.device))  # batches are moved to the model's device by predict
        batcher = DynamicBatcher(
            chunked_predict(bundle.model, costs, s.model_chunk, s.max_batch_cost_ms / FORWARD_SHARE),
            max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, batching=s.batching,
            max_queue=s.max_queue, initializer=functools.partial(_init_model_thread, 1 if process else threads),
            on_batch=self.metrics.observe_batch, incoming=lambda: self.parsing,
            max_batch_cost=s.max_batch_cost_ms, chunked=True, on_cancel=self.metrics.cancelled.labels("model").inc,
        ).start()
        log.info("model loaded", extra={"model": info, "threads": threads, "path": str(path), "default": default})
        return ServedModel(bundle, info, {**model_card(bundle), "default": default}, ResultContext.of(bundle), costs,
                           batcher, process)

    async def stop(self) -> None:
        """Pause a running job (resumable), drain the batcher, stop the embedding pool."""
        self.state = "stopping"
        self.metrics.ready.set(0)
        if self._warm_task is not None:
            self._warm_task.cancel()
        timeout = self.settings.shutdown_timeout_s
        if self.jobs is not None:  # first: a running job pauses (resumable) before the model worker stops
            await asyncio.to_thread(self.jobs.stop, timeout)
        for m in self.models.values():
            await asyncio.to_thread(m.batcher.close, True, timeout)
            if m.process is not None:
                await asyncio.to_thread(m.process.close, timeout)
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, True, cancel_futures=True)
        log.info("stopped")

    def _new_pool(self) -> ProcessPoolExecutor:
        return embedding_pool(self.settings.workers_embed)

    async def _warm(self) -> None:
        try:
            if self.settings.warmup:
                start = time.perf_counter()
                for m in self.models.values():
                    await asyncio.wrap_future(m.batcher.call(functools.partial(self._warm_model, m.bundle.model)))
                warm = [{"smiles": "CCO"}] * self.settings.workers_embed
                await asyncio.gather(*(self._run_pool([(0, item)]) for item in warm))
                log.info("warm", extra={"seconds": round(time.perf_counter() - start, 3)})
            self.state = "ready"
            self.metrics.ready.set(1)
            log.info("ready")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state, self.detail = "failed", f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("warm-up failed")

    def _warm_model(self, model: Any) -> None:
        """Run ``model`` on one small molecule and on a full batch, so first requests pay no allocation."""
        molecules = [parse_item(schemas.WATER, 0), parse_item({"xyz": schemas.ETHANOL_XYZ}, 1)]
        predict = functools.partial(model.predictions, batch_size=self.settings.model_chunk)
        for m in molecules:
            predict([m.numbers], [m.positions])
        full = molecules * max(1, self.settings.max_batch_size // 2)
        predict([m.numbers for m in full], [m.positions for m in full])

    async def _run_pool(self, chunk: list[tuple[int, dict]], costs: CostModel | None = None,
                        conformers: int = DEFAULT_CONFORMERS) -> list[Estimated]:
        pool = self.pool
        future = None
        try:
            future = pool.submit(read_items, chunk, self.limits, costs or self.costs, conformers)
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future is not None and future.cancel():  # not started yet: nobody will embed these
                self.metrics.cancelled.labels("embedding").inc(len(chunk))
            raise
        except BrokenProcessPool:
            log.error("the embedding pool broke (a worker died); starting a new one")
            if self.pool is pool:
                self.pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            return [Estimated(Parsed(i, MoleculeError("embedding_failed", "the embedding worker died on this "
                                                      "request"), 0.0), None) for i, _ in chunk]

    async def parse(self, items: list[dict], costs: CostModel | None = None,
                    conformers: int = DEFAULT_CONFORMERS) -> list[Estimated]:
        """Read every item: SMILES and MOL blocks in the process pool (in tasks of at most
        :data:`EMBED_TASK_ITEMS`, spread over its workers; ``conformers`` each), the rest on a thread, each molecule
        with its cost estimate (by ``costs``, default the default model's). Returns one :class:`Estimated` per item,
        in order. Cancelled, it drops the pool tasks that have not started."""
        costs = costs or self.costs
        loop = asyncio.get_running_loop()
        heavy = [(i, d) for i, d in enumerate(items) if input_kind(d) in EMBEDDING_KINDS]
        light = [(i, d) for i, d in enumerate(items) if input_kind(d) not in EMBEDDING_KINDS]
        jobs: list[Awaitable[list[Estimated]]] = []
        if light:
            jobs.append(loop.run_in_executor(None, read_items, light, self.limits, costs))
        if heavy:
            n = max(min(self.settings.workers_embed, len(heavy)), math.ceil(len(heavy) / EMBED_TASK_ITEMS))
            jobs.extend(self._run_pool(heavy[k::n], costs, conformers) for k in range(n))
        read = [e for chunk in await asyncio.gather(*jobs) for e in chunk]
        for e in read:
            if input_kind(items[e.parsed.index]) in EMBEDDING_KINDS:
                self.metrics.embedding.observe(e.parsed.seconds)
        return sorted(read, key=lambda e: e.parsed.index)

    async def predict(self, items: list[dict], columns: list[Column],
                      priority: Priority = Priority.INTERACTIVE, context: ResultContext | None = None,
                      geometry: bool = False, model: ServedModel | None = None,
                      conformers: int = DEFAULT_CONFORMERS) -> list[dict]:
        """Results for REST items, in order (raises QueueFull / BatcherClosed); ``context``: another coverage than
        the model's default (:meth:`ResultContext.of`); ``geometry``: ok results carry the predicted geometry;
        ``model``: the served model to ask (default: the default one); ``conformers``: how many a SMILES or 2D MOL
        block gets (the values average over them).

        Molecules over the cost limits get ``too_expensive`` (:mod:`lieprop.service.admission`). Cancelling the
        awaiting task (a timeout, a disconnected client) drops the work not yet started: embedding-pool tasks
        and molecules waiting for the model."""
        served = model or self.default
        self.parsing += 1
        try:
            admitted = admit(await self.parse(items, served.costs, conformers), self.cost_limits)
        finally:
            self.parsing -= 1  # before enqueueing, so the worker never waits for this request itself
        outcomes = admitted.outcomes
        valid = [o for o in outcomes if isinstance(o, Molecule)]
        # a molecule with several conformers (a SMILES) is one batcher entry per distinct conformer, each with its
        # own cost (a copy of another conformer is answered by that one's pass; the copies were found with the cost)
        inputs = conformer_inputs(valid, copies=admitted.copies)
        costs = [c for parts in admitted.costs for c in parts]
        future = served.batcher.submit_nowait(list(zip(inputs.numbers, inputs.positions, strict=True)), priority,
                                              [costs[k] for k in inputs.kept])
        rows = inputs.average(await asyncio.wrap_future(future))
        ids = [fallback_id(item, i) for i, item in enumerate(items)]
        return build_results(outcomes, ids, rows, columns, served.bundle.model.targets, context or served.context,
                             geometry=geometry)


def default_model_threads(cpus: int | None = None) -> int:
    """Torch threads of the model worker when ``model_threads`` is not set: all cores (``cpus``, default
    ``os.cpu_count()``) but one, at least 1. The event loop and the reader threads need a core of their own: torch's
    threads wait for each other at every operation, so one of them descheduled by the event loop (or by another
    process) stalls the whole forward pass (measured in docs/BENCHMARKS.md, "Service throughput")."""
    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) - 1)


def _init_model_thread(threads: int) -> None:
    import torch  # heavy: loads with the model worker, not with this module

    torch.set_num_threads(threads)
    log.info("model worker started", extra={"torch_threads": torch.get_num_threads()})


def get_service(request: Request) -> Service:
    """The app's :class:`Service`."""
    return request.app.state.service


async def _service_dependency(request: Request) -> Service:
    # async: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per request for one lookup
    return request.app.state.service


#: A route parameter ``service: ServiceDep`` receives the app's :class:`Service`.
ServiceDep = Annotated[Service, Depends(_service_dependency)]
