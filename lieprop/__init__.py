"""lieprop: quantum-chemical properties of small organic molecules with LieConv, trained on QM9."""

from __future__ import annotations

from typing import Any

from lieprop.version import __version__

__all__ = ["__version__", "predict"]


def __getattr__(name: str) -> Any:  # `import lieprop` stays light: torch, RDKit and ASE load on first use
    if name == "predict":
        from lieprop.inference import predict

        return predict
    raise AttributeError(f"module 'lieprop' has no attribute {name!r}")
