"""The REST service (docs/DESIGN.md contract v1): ``create_app(settings)``, :class:`Settings`, the dynamic batcher."""

from __future__ import annotations

from typing import Any

__all__ = ["DynamicBatcher", "Settings", "create_app"]


def __getattr__(name: str) -> Any:  # FastAPI and torch load only when the service is used
    if name == "create_app":
        from lieprop.service.app import create_app

        return create_app
    if name == "Settings":
        from lieprop.service.settings import Settings

        return Settings
    if name == "DynamicBatcher":
        from lieprop.service.batcher import DynamicBatcher

        return DynamicBatcher
    raise AttributeError(f"module 'lieprop.service' has no attribute {name!r}")
