"""The Ray engine: ``lieprop predict ... --engine ray`` runs the same pipeline on a Ray cluster (``pip install
'lieprop[ray]'``).

The driver (the ``lieprop predict`` process) splits the input into chunks of raw records, as the local engine
does, and hands them to Ray Data in windows of ``window_chunks`` chunks::

    from_items(chunks) -> [map_batches(parse, CPU tasks)] -> map_batches(ModelActor, actors)
        -> iter_rows() in input order (preserve_order) -> the driver's ResultFile

On a cluster with GPUs every model actor holds one GPU and parsing (SMILES embedding, CPU-bound) runs in CPU tasks
of its own; on CPUs only, each actor parses and predicts its chunks (one CPU each), which needs no hand-off.

Each step calls the functions of the local engine (:func:`~lieprop.scoring.records.parse_records`,
:func:`~lieprop.scoring.pipeline.chunk_rows`) on whole chunks, so the output is the local engine's, row for row and
(on CPU) bit for bit, and ``--resume`` works as it does locally. Windows bound the driver's memory; a window's
actors load the model once (the bundle travels through the object store, so workers need no access to the file).

Connecting: ``address=None`` joins the cluster named by ``RAY_ADDRESS`` or started with ``ray start``, and
otherwise starts a Ray instance on this machine (``num_cpus = workers``). Cluster workers need lieprop installed
(same version) and must be able to import it; the input file is read by the driver only.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lieprop.model.prediction import Predictions
from lieprop.scoring.pipeline import Plan, batched, chunk_rows
from lieprop.scoring.records import Source, parse_records

#: Chunks per Ray Data window (the driver holds at most two windows of raw records and results).
WINDOW_CHUNKS = 32


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _parse_batch(batch: dict[str, Any], plan_blob: bytes) -> dict[str, Any]:
    """Ray Data task: raw records -> parsed (record, item) pairs, one chunk per row."""
    plan: Plan = pickle.loads(plan_blob)
    parsed = []
    for blob in batch["records"]:
        records = pickle.loads(blob)
        items = parse_records(plan.kind, records, plan.seed, plan.limits, plan.conformers)
        parsed.append(pickle.dumps(list(zip(records, items, strict=True)), protocol=pickle.HIGHEST_PROTOCOL))
    return {"chunk": np.asarray(batch["chunk"]), "parsed": np.array(parsed, dtype=object)}


class ModelActor:
    """Ray Data actor: loads the bundle once, turns parsed chunks into output rows."""

    def __init__(self, bundle: Any, plan_blob: bytes, threads: int) -> None:
        import ray
        import torch

        from lieprop.model.bundle import load_bundle

        if isinstance(bundle, list):  # [ObjectRef]: nested, so that Ray does not pin it as a constructor argument
            bundle = ray.get(bundle[0])
        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            path.write_bytes(bundle)
            self.bundle = load_bundle(path, device=device)
        self.plan: Plan = pickle.loads(plan_blob)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for blob in batch["parsed"] if "parsed" in batch else batch["records"]:
            pairs = pickle.loads(blob)
            if "parsed" not in batch:  # fused: this actor parses too (CPU-only clusters)
                pairs = list(zip(pairs, parse_records(self.plan.kind, pairs, self.plan.seed, self.plan.limits,
                                                        self.plan.conformers),
                                 strict=True))
            rows.append(pickle.dumps(chunk_rows(pairs, self.plan, self._predict), protocol=pickle.HIGHEST_PROTOCOL))
        return {"chunk": np.asarray(batch["chunk"]), "rows": np.array(rows, dtype=object)}

    def _predict(self, numbers: list[np.ndarray], positions: list[np.ndarray]) -> Predictions:
        return self.bundle.model.predictions(numbers, positions, batch_size=self.plan.frame_batch)


class RayEngine:
    """Score chunks on Ray (see the module doc). ``bundle_path``: the model file (read once by the driver).
    ``workers``: model actors (default: the cluster's GPUs if it has any, else its CPUs); ``gpus_per_actor``
    (default 1 when the cluster has GPUs, else 0)."""

    name = "ray"

    def __init__(self, bundle_path: str | os.PathLike, *, address: str | None = None, workers: int | None = None,
                 gpus_per_actor: float | None = None, window_chunks: int = WINDOW_CHUNKS) -> None:
        if not ray_available():
            raise ImportError("the Ray engine needs Ray: pip install 'lieprop[ray]'")
        self.bundle_bytes = Path(bundle_path).read_bytes()
        self.address = address
        self.workers = workers
        self.gpus_per_actor = gpus_per_actor
        self.window_chunks = max(1, window_chunks)
        self._started_here = False

    def _connect(self) -> dict[str, float]:
        import ray

        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False, **quiet)
            else:
                ray.init(address=self.address, **quiet)
            self._started_here = True
        for name in ("ray", "ray.data"):  # its INFO lines would break through the progress bar
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        return ray.cluster_resources()

    def shutdown(self) -> None:
        """Stop the local Ray instance if this engine started it."""
        import ray

        if self._started_here and ray.is_initialized():
            ray.shutdown()
            self._started_here = False

    def score(self, source: Source, start: int, plan: Plan) -> Iterator[list[dict]]:
        import ray
        import ray.data

        resources = self._connect()
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # lieprop's own bar counts rows
        if hasattr(context, "print_on_execution_start"):  # Ray >= 2.4x
            context.print_on_execution_start = False
        cpus = max(1, int(resources.get("CPU", 1)))
        gpus = int(resources.get("GPU", 0))
        per_actor = self.gpus_per_actor if self.gpus_per_actor is not None else (1.0 if gpus else 0.0)
        actors = self.workers or (max(1, int(gpus / per_actor)) if per_actor else cpus)
        threads = 1 if not per_actor else max(1, cpus // actors)
        bundle_ref = ray.put(self.bundle_bytes)
        plan_blob = pickle.dumps(plan)
        first = start // plan.chunk_size
        window_rows = plan.chunk_size * self.window_chunks
        for w, window in enumerate(batched(source.records(start), window_rows)):
            items = [{"chunk": first + w * self.window_chunks + k,
                      "records": pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)}
                     for k, chunk in enumerate(batched(window, plan.chunk_size))]
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            if per_actor:  # GPU actors: parsing (CPU-bound) in tasks of its own, so the GPUs only run the model
                dataset = dataset.map_batches(_parse_batch, batch_size=1, fn_kwargs={"plan_blob": plan_blob},
                                              num_cpus=1)
            dataset = dataset.map_batches(
                ModelActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
                fn_constructor_kwargs={"bundle": [bundle_ref], "plan_blob": plan_blob, "threads": threads},
                num_cpus=0 if per_actor else 1, num_gpus=per_actor or None)
            expected = items[0]["chunk"]
            for row in dataset.iter_rows():
                if int(row["chunk"]) != expected:
                    raise RuntimeError(f"Ray returned chunk {row['chunk']} where chunk {expected} was due")
                expected += 1
                yield pickle.loads(row["rows"])
