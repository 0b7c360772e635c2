"""Deprecated: the old name of :mod:`lieprop.scoring` (file scoring), kept for one release.

``import lieprop.jobs`` and ``from lieprop.jobs.pipeline import score_file`` still work and give the very same
module objects as ``lieprop.scoring`` (so monkeypatching and isinstance checks keep working), with a
``DeprecationWarning``. The REST job store moved to :mod:`lieprop.service.job_store` (``lieprop.jobs.store``).
"""

from __future__ import annotations

import warnings
from typing import Any

warnings.warn("lieprop.jobs is deprecated: file scoring is lieprop.scoring, the REST job store "
              "lieprop.service.job_store", DeprecationWarning, stacklevel=2)

__all__ = ["LocalEngine", "RayEngine", "ScoreOptions", "Summary", "score_file"]


def __getattr__(name: str) -> Any:
    import lieprop.scoring

    return getattr(lieprop.scoring, name)
