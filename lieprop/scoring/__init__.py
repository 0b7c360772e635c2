"""File scoring: whole files of molecules, streamed in chunks, resumable, on this machine or on Ray.

``lieprop predict INPUT --out OUTPUT`` (:mod:`lieprop.cli`), ``POST /v1/jobs`` (:mod:`lieprop.service.routes.jobs`)
and :func:`score_file` run the same pipeline (:mod:`lieprop.scoring.pipeline`): raw records from the input
(:mod:`~lieprop.scoring.records`), parsed in worker processes, scored by the model a chunk at a time, written to a
result file that a killed run resumes (:mod:`~lieprop.scoring.output`). :mod:`~lieprop.scoring.ray_engine` runs it on
Ray; :mod:`~lieprop.scoring.options` declares the options of a job once, for the CLI, REST and the pipeline. (REST
jobs, their SQLite store and runner, are the service's: :mod:`lieprop.service.job_store`.) This package was called
``lieprop.jobs`` before; that name still imports, with a ``DeprecationWarning``. Worker processes import this
package to unpickle their tasks, so it stays light: names load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalEngine", "RayEngine", "ScoreOptions", "Summary", "score_file"]


def __getattr__(name: str) -> Any:
    if name in ("LocalEngine", "ScoreOptions", "Summary", "score_file"):
        from lieprop.scoring import pipeline

        return getattr(pipeline, name)
    if name == "RayEngine":
        from lieprop.scoring.ray_engine import RayEngine

        return RayEngine
    raise AttributeError(f"module 'lieprop.scoring' has no attribute {name!r}")
