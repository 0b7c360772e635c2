"""lieprop: quantum-chemical properties of small organic molecules with LieConv, trained on QM9."""

from __future__ import annotations

import os
from typing import Any

from lieprop.version import __version__

# Bitwise-reproducible matrix products on Intel MKL (torch's CPU BLAS): by default MKL picks its code path by the
# threads it gets and the memory's alignment, so the same batch could differ in the last bits from run to run (a
# resumed file would not equal an uninterrupted one). MKL reads this once, at its first call, so it is set here,
# before lieprop loads torch; it costs no measurable time (docs/JOBS.md, "Reproducibility"). A user's own value
# wins; an empty MKL_CBWR restores MKL's default.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__all__ = ["__version__", "predict"]


def __getattr__(name: str) -> Any:  # `import lieprop` stays light: torch, RDKit and ASE load on first use
    if name == "predict":
        from lieprop.inference import predict

        return predict
    raise AttributeError(f"module 'lieprop' has no attribute {name!r}")
